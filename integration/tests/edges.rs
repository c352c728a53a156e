//! Edges of the contract: live paths next to snapshotted ones, errors before
//! and during the freeze, borg calls that are not rewritten, `plan`.

use std::os::unix::fs::symlink;

use integration::*;

/// A `zfs` wrapper that logs each call's arguments; returns (command, log).
fn zfs_logger(fx: &Fixture) -> (String, std::path::PathBuf) {
    let log = fx.work.join("zfs.log");
    let script = fx.script(
        "zfs-log",
        &format!(
            "printf '%s\\n' \"$*\" >> {}\nexec zfs \"$@\"",
            sh_quote(&log)
        ),
    );
    (script.display().to_string(), log)
}

#[track_caller]
fn assert_no_snapshot_call(log: &std::path::Path, out: &Out) {
    let text = read_log(log);
    assert!(
        !text.lines().any(|l| l.starts_with("snapshot")),
        "a snapshot was taken:\n{text}\n{}",
        out.dump()
    );
}

#[test]
fn paths_off_zfs_are_read_live_next_to_snapshots() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/d.txt", "d\n");
    let live = fx.work.join("live");
    write_file(&live.join("l.txt"), "l\n");
    let live_s = live.display().to_string();
    let data = p.path("data").display().to_string();

    let out = fx
        .wrap(&[], &["create", &fx.repo.at("a"), &live_s, &data])
        .success();
    out.expect_stderr(&live_s);
    fx.repo
        .create_plain(&[&fx.repo.at("plain"), &live_s, &data])
        .success();
    let listed = fx.repo.list("a");
    let l = format!("{}/l.txt", live_s.trim_start_matches('/'));
    assert!(listed.contains(&l), "{l} missing: {listed:?}");
    assert_same_paths(
        &listed,
        &fx.repo.list("plain"),
        &format!("wrapper vs plain borg\n{}", out.dump()),
    );
    fx.assert_clean();
}

/// A source path that does not exist is what plain borg makes of it
/// (DESIGN Discovery 6): borg's warning naming it, exit 1, the rest
/// archived from snapshots; the listing is plain borg's.
#[test]
fn missing_source_is_borgs_warning_and_the_rest_is_archived() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/d.txt", "d\n");
    let (zfs_cmd, log) = zfs_logger(&fx);
    let data = p.path("data").display().to_string();
    let missing = p.path("data/no-such-dir").display().to_string();
    let out = fx
        .wrap(
            &["--zfs-command", &zfs_cmd],
            &["create", &fx.repo.at("a"), &data, &missing],
        )
        .expect_code(1);
    out.expect_stderr(&format!("source path {missing} does not exist"));
    out.expect_stderr(&format!("No such file or directory: '{missing}'"));
    assert!(
        read_log(&log).lines().any(|l| l.starts_with("snapshot")),
        "the rest is read from a snapshot\n{}",
        out.dump()
    );
    fx.repo
        .create_plain(&[&fx.repo.at("plain"), &data, &missing])
        .expect_code(1);
    let listed = fx.repo.list("a");
    let d = format!("{}/d.txt", data.trim_start_matches('/'));
    assert!(listed.contains(&d), "{d} missing: {listed:?}");
    assert_same_paths(
        &listed,
        &fx.repo.list("plain"),
        &format!("wrapper vs plain borg\n{}", out.dump()),
    );
    fx.assert_clean();
}

#[test]
fn failing_mount_is_torn_down_with_our_error() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data/kid", &[]);
    p.write("data/kid/k.txt", "k\n");
    let count = fx.work.join("mount.count");
    // The first mount works, the second (the child) fails.
    let mount = fx.script(
        "mount-once",
        &format!(
            "if [ -e {c} ]; then echo 'mount: simulated failure' >&2; exit 32; fi\ntouch {c}\nexec mount \"$@\"",
            c = sh_quote(&count)
        ),
    );
    let out = fx
        .wrap(
            &["--mount-command", &mount.display().to_string()],
            &[
                "create",
                &fx.repo.at("a"),
                &p.path("data").display().to_string(),
            ],
        )
        .expect_code(2);
    assert!(count.exists(), "the first mount never ran\n{}", out.dump());
    out.expect_stderr("simulated failure");
    assert!(fx.repo.archives().is_empty());
    fx.assert_clean();
}

#[test]
fn other_borg_commands_and_dry_run_pass_through() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/d.txt", "d\n");
    let data = p.path("data").display().to_string();
    fx.repo
        .create_plain(&[&fx.repo.at("made-by-plain-borg"), &data])
        .success();
    let (zfs_cmd, log) = zfs_logger(&fx);

    let out = fx
        .wrap(
            &["--zfs-command", &zfs_cmd],
            &["list", &fx.repo.path.display().to_string()],
        )
        .success();
    assert!(
        out.stdout.contains("made-by-plain-borg"),
        "borg list output lost\n{}",
        out.dump()
    );
    assert_no_snapshot_call(&log, &out);

    let out = fx
        .wrap(
            &["--zfs-command", &zfs_cmd],
            &["create", "--dry-run", &fx.repo.at("dry"), &data],
        )
        .success();
    assert_no_snapshot_call(&log, &out);
    assert_eq!(fx.repo.archives(), vec!["made-by-plain-borg".to_owned()]);
    fx.assert_clean();
}

#[test]
fn runtime_root_through_a_symlink_is_refused() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let real = fx.work.join("real-root");
    std::fs::create_dir_all(&real).unwrap();
    let link = fx.work.join("root-link");
    symlink(&real, &link).unwrap();
    let link_s = link.display().to_string();
    // Not fx.zfs_snap(): that one sets the fixture's own runtime root.
    let mut cmd = std::process::Command::new(zfs_snap_bin());
    borg_env(&mut cmd, &fx.work.join("borg-base"));
    cmd.args(["--runtime-root", &link_s, "wrap", "--", "borg", "create"])
        .arg(fx.repo.at("a"))
        .arg(p.path("data"));
    let out = run(&mut cmd).expect_code(2);
    out.expect_stderr(&link_s);
    assert!(
        p.snapshots().is_empty(),
        "snapshots taken: {:?}\n{}",
        p.snapshots(),
        out.dump()
    );
    assert!(
        mounts_under(&real).is_empty(),
        "something mounted in {}",
        real.display()
    );
    fx.assert_clean();
}

#[test]
fn plan_json_on_a_real_pool_changes_nothing() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data/kid", &[]);
    let data = p.path("data").display().to_string();
    let out = run(fx.zfs_snap().args(["plan", "--json", &data])).success();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("plan --json is not JSON: {e}\n{}", out.dump()));
    let mounts: Vec<(String, String)> = plan["mounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no mounts array\n{}", out.dump()))
        .iter()
        .map(|m| {
            (
                m["dataset"].as_str().unwrap_or_default().to_owned(),
                m["snapshot_mountpoint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expect = |rel: &str| {
        (
            p.ds(rel),
            fx.snapshot_path(&p.path(rel)).display().to_string(),
        )
    };
    assert_eq!(
        mounts,
        vec![expect("data"), expect("data/kid")],
        "{}",
        out.dump()
    );
    assert_eq!(
        plan["roots"][0]["borg_path"].as_str(),
        Some(format!("{}/snap/./{}", fx.root.display(), p.ds("data")).as_str()),
        "{}",
        out.dump()
    );
    assert!(p.snapshots().is_empty(), "plan took a snapshot");
    assert!(!fx.root.join("lock").exists(), "plan took the lock");
    fx.assert_clean();
}

/// `zfs-snap wrap -- PROGRAM ARGS...` with the fixture's runtime root.
fn wrap_with(fx: &Fixture, program: &std::path::Path, args: &[&str]) -> Out {
    let mut cmd = fx.zfs_snap();
    cmd.args(["wrap", "--"]).arg(program).args(args);
    run(&mut cmd)
}

#[test]
fn borg_older_than_1_4_is_refused_before_any_snapshot() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let old = fx.script(
        "old-borg",
        "if [ \"$1\" = --version ]; then echo 'borg 1.2.8'; exit 0; fi\nexec borg \"$@\"",
    );
    let data = p.path("data").display().to_string();
    let out = wrap_with(&fx, &old, &["create", &fx.repo.at("a"), &data]).expect_code(2);
    out.expect_stderr("1.2.8");
    assert!(p.snapshots().is_empty(), "snapshot taken\n{}", out.dump());
    assert!(fx.repo.archives().is_empty());
    fx.assert_clean();
}

#[test]
fn borg_warning_and_signal_statuses_come_back() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let data = p.path("data").display().to_string();
    for (name, ending, code) in [("warns", "exit 1", 1), ("killed", "kill -KILL $$", 128 + 9)] {
        // Real borg does the work, then the script ends as borg might.
        let borg = fx.script(
            &format!("borg-{name}"),
            &format!(
                "if [ \"$1\" = --version ]; then exec borg \"$@\"; fi\nborg \"$@\" || exit $?\n{ending}"
            ),
        );
        let out = wrap_with(&fx, &borg, &["create", &fx.repo.at(name), &data]);
        assert_eq!(out.code(), code, "borg {name}: status lost\n{}", out.dump());
        assert!(
            fx.repo.archives().contains(&name.to_owned()),
            "{}",
            out.dump()
        );
        fx.assert_clean();
    }
}

#[test]
fn borg_link_wraps_and_finds_the_real_borg() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let a = p.write("data/a.txt", "before\n");
    let bin = fx.work.join("bin");
    let link = bin.join("borg");
    symlink(zfs_snap_bin(), &link).expect("symlink borg -> zfs-snap");
    let mount = fx.script(
        "mount-after-change",
        &format!("echo after > {}\nexec mount \"$@\"", sh_quote(&a)),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let link_command = || {
        let mut cmd = std::process::Command::new(&link);
        borg_env(&mut cmd, &fx.work.join("borg-base"));
        cmd.env("PATH", &path)
            .env("ZFS_SNAP_RUNTIME_ROOT", &fx.root)
            .env("ZFS_SNAP_MOUNT_COMMAND", &mount);
        cmd
    };
    let data = p.path("data").display().to_string();

    // The link itself is first on PATH: it must find the real borg behind it.
    let version = run(link_command().arg("--version")).success();
    assert!(version.stdout.starts_with("borg 1."), "{}", version.dump());
    let out = run(link_command().args(["create", &fx.repo.at("a"), &data])).success();
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    assert_eq!(
        read_file(&x.join(p.ds("data")).join("a.txt")),
        "before\n",
        "the link did not read the snapshot\n{}",
        out.dump()
    );
    fx.assert_clean();

    // ZFS_SNAP_BORG names the real borg explicitly (by its full path: a
    // plain `borg` in the script would find the link first on PATH).
    let real_borg = which("borg").expect("borg on PATH");
    let log = fx.work.join("borg.log");
    let logged = fx.script(
        "logged-borg",
        &format!(
            "printf '%s\\n' \"$*\" >> {}\nexec {} \"$@\"",
            sh_quote(&log),
            sh_quote(&real_borg)
        ),
    );
    let out =
        run(link_command()
            .env("ZFS_SNAP_BORG", &logged)
            .args(["create", &fx.repo.at("b"), &data]))
        .success();
    let text = read_log(&log);
    let mirror = format!("{}/snap/./{}", fx.root.display(), p.ds("data"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("create ") && l.contains(&mirror)),
        "ZFS_SNAP_BORG was not used for create (log: {text:?})\n{}",
        out.dump()
    );
    fx.assert_clean();
}
