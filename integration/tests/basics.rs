//! The core promise: borg reads a frozen snapshot, the archive keeps the
//! original paths and matches what plain borg stores, nothing is left behind.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::thread::sleep;
use std::time::{Duration, Instant};

use integration::*;

/// A mount command that changes the live tree first (the snapshot is
/// already taken when the wrapper mounts it), then mounts.
fn modifying_mount(fx: &Fixture, changes: &str) -> String {
    fx.script(
        "mount-after-change",
        &format!("{changes}\nexec mount \"$@\""),
    )
    .display()
    .to_string()
}

#[test]
fn data_changed_after_the_snapshot_is_not_archived() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let a = p.write("data/a.txt", "before\n");
    p.write("data/b.txt", "bee\n");
    let mount = modifying_mount(
        &fx,
        &format!(
            "echo after > {}\necho new > {}",
            sh_quote(&a),
            sh_quote(p.path("data/new.txt"))
        ),
    );
    let source = p.path("data").display().to_string();
    fx.wrap(
        &["--mount-command", &mount],
        &["create", &fx.repo.at("a"), &source],
    )
    .success();

    assert_eq!(
        read_file(&a),
        "after\n",
        "the mount command did not change the live file"
    );
    let data = format!("{}/data", p.name);
    assert_same_paths(
        &fx.repo.list("a"),
        &paths(&data, &["", "a.txt", "b.txt"]),
        "archive",
    );
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    assert_eq!(read_file(&x.join(&data).join("a.txt")), "before\n");
    fx.assert_clean();
}

#[test]
fn subdirectory_of_a_dataset() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/sub/x.txt", "x\n");
    p.write("data/sub/deeper/y.txt", "y\n");
    p.write("data/other/z.txt", "z\n");
    let mount = modifying_mount(
        &fx,
        &format!("echo changed > {}", sh_quote(p.path("data/sub/x.txt"))),
    );
    let source = p.path("data/sub").display().to_string();
    let out = fx
        .wrap(
            &["--mount-command", &mount],
            &["create", &fx.repo.at("a"), &source],
        )
        .success();

    let sub = format!("{}/data/sub", p.name);
    let listed = fx.repo.list("a");
    assert_same_paths(
        &listed,
        &paths(&sub, &["", "x.txt", "deeper", "deeper/y.txt"]),
        &format!("archive of a subdirectory\n{}", out.dump()),
    );
    fx.repo
        .create_plain(&[&fx.repo.at("plain"), &source])
        .success();
    assert_same_paths(&listed, &fx.repo.list("plain"), "wrapper vs plain borg");
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    assert_eq!(
        read_file(&x.join(&sub).join("x.txt")),
        "x\n",
        "archived the live file, not the snapshot"
    );
    fx.assert_clean();
}

#[test]
fn nested_datasets_are_followed_unless_one_file_system() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.dataset("data/child", &[]);
    p.dataset("data/child/grand", &[]);
    p.write("data/f.txt", "f\n");
    p.write("data/child/c.txt", "c\n");
    p.write("data/child/grand/g.txt", "g\n");
    let source = p.path("data").display().to_string();

    fx.wrap(&[], &["create", &fx.repo.at("a"), &source])
        .success();
    let data = format!("{}/data", p.name);
    let listed = fx.repo.list("a");
    assert_same_paths(
        &listed,
        &paths(
            &data,
            &[
                "",
                "f.txt",
                "child",
                "child/c.txt",
                "child/grand",
                "child/grand/g.txt",
            ],
        ),
        "archive without --one-file-system",
    );
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    assert_eq!(read_file(&x.join(&data).join("child/grand/g.txt")), "g\n");
    fx.repo
        .create_plain(&[&fx.repo.at("plain"), &source])
        .success();
    assert_same_paths(&listed, &fx.repo.list("plain"), "wrapper vs plain borg");
    fx.assert_clean();

    let out = fx
        .wrap(
            &[],
            &["create", "--one-file-system", &fx.repo.at("ax"), &source],
        )
        .success();
    fx.repo
        .create_plain(&["--one-file-system", &fx.repo.at("plainx"), &source])
        .success();
    let listed_x = fx.repo.list("ax");
    assert!(
        !listed_x.iter().any(|p| p.ends_with("c.txt")),
        "--one-file-system archive descended into the child dataset: {listed_x:?}"
    );
    assert_same_paths(
        &listed_x,
        &fx.repo.list("plainx"),
        &format!("wrapper vs plain borg, --one-file-system\n{}", out.dump()),
    );
    fx.assert_clean();
}

#[test]
fn names_and_mountpoints_with_spaces() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("my data", &[]);
    p.write("my data/a file.txt", "a\n");
    let kid_mp = p.path("mount point/kid dir");
    p.dataset(
        "my data/child ds",
        &[&format!("mountpoint={}", kid_mp.display())],
    );
    write_file(&kid_mp.join("k file.txt"), "k\n");
    let first = p.path("my data").display().to_string();
    let second = kid_mp.display().to_string();
    let mount = modifying_mount(
        &fx,
        &format!("echo changed > {}", sh_quote(kid_mp.join("k file.txt"))),
    );

    fx.wrap(
        &["--mount-command", &mount],
        &["create", &fx.repo.at("a"), &first, &second],
    )
    .success();
    let listed = fx.repo.list("a");
    for want in [
        format!("{}/my data/a file.txt", p.name),
        format!("{}/mount point/kid dir/k file.txt", p.name),
    ] {
        assert!(listed.contains(&want), "{want:?} missing from {listed:?}");
    }
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    assert_eq!(
        read_file(&x.join(&p.name).join("mount point/kid dir/k file.txt")),
        "k\n"
    );
    // The live tree changed during the run; compare against it as it was.
    write_file(&kid_mp.join("k file.txt"), "k\n");
    fx.repo
        .create_plain(&[&fx.repo.at("plain"), &first, &second])
        .success();
    assert_same_paths(&listed, &fx.repo.list("plain"), "wrapper vs plain borg");
    fx.assert_clean();
}

#[test]
fn borg_failure_status_comes_back_and_nothing_is_left() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let log = fx.work.join("mount.log");
    let mount = fx.script(
        "mount-log",
        &format!("echo \"$@\" >> {}\nexec mount \"$@\"", sh_quote(&log)),
    );
    let missing = fx.work.join("no-such-repo");
    let out = fx
        .wrap(
            &["--mount-command", &mount.display().to_string()],
            &[
                "create",
                &format!("{}::a", missing.display()),
                &p.path("data").display().to_string(),
            ],
        )
        .expect_code(2);
    assert!(
        read_log(&log).contains(&format!("{}@", p.ds("data"))),
        "the snapshot was never mounted, so borg's failure was not tested after a freeze\n{}",
        out.dump()
    );
    fx.assert_clean();
}

#[test]
fn quiet_pool_archive_equals_plain_borg() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.write("top.txt", "top\n");
    p.dataset("a", &[]);
    p.dataset("a/b", &[]);
    p.dataset("c", &[]);
    p.write("a/one.txt", "1\n");
    p.write("a/dir/two.txt", "2\n");
    fs::create_dir_all(p.path("a/empty")).unwrap();
    symlink("one.txt", p.path("a/link")).unwrap();
    p.write("a/b/three.txt", "3\n");
    p.write("c/four.txt", "4\n");
    let top = p.mountpoint().display().to_string();

    fx.wrap(&[], &["create", &fx.repo.at("a"), &top]).success();
    fx.repo
        .create_plain(&[&fx.repo.at("plain"), &top])
        .success();
    let listed = fx.repo.list("a");
    assert!(
        listed.contains(&format!("{}/a/b/three.txt", p.name)),
        "{listed:?}"
    );
    assert_same_paths(
        &listed,
        &fx.repo.list("plain"),
        "wrapper vs plain borg, pool root",
    );
    fx.assert_clean();

    // Relative source paths store relative archive paths, as with plain borg.
    let mut cmd = fx.wrap_command(&[], &["create", &fx.repo.at("rel"), "a", "c/four.txt"]);
    let out = run(cmd.current_dir(p.mountpoint())).success();
    let mut plain = fx.repo.borg();
    plain
        .current_dir(p.mountpoint())
        .args(["create", &fx.repo.at("relplain"), "a", "c/four.txt"]);
    run(&mut plain).success();
    let rel = fx.repo.list("rel");
    assert!(rel.contains(&"a/b/three.txt".to_owned()), "{rel:?}");
    assert_same_paths(
        &rel,
        &fx.repo.list("relplain"),
        &format!("wrapper vs plain borg, relative paths\n{}", out.dump()),
    );
    fx.assert_clean();
}

#[test]
fn extracted_archive_equals_the_snapshot() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let data = p.path("data");
    p.write("data/plain.txt", "plain\n");
    p.write("data/empty", "");
    fs::write(
        data.join("binary"),
        (0u8..=255).cycle().take(5000).collect::<Vec<u8>>(),
    )
    .unwrap();
    p.write("data/run.sh", "#!/bin/sh\n");
    fs::set_permissions(data.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    p.write("data/secret", "s\n");
    fs::set_permissions(data.join("secret"), fs::Permissions::from_mode(0o640)).unwrap();
    p.write("data/private/inner.txt", "i\n");
    fs::set_permissions(data.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("plain.txt", data.join("link")).unwrap();
    symlink("/nowhere", data.join("dangling")).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
    zfs(&["snapshot", &format!("{}@ref", p.ds("data"))]);
    let mount = modifying_mount(
        &fx,
        &format!(
            "echo changed > {}\nrm -f {}\nmkdir -p {}",
            sh_quote(data.join("plain.txt")),
            sh_quote(data.join("empty")),
            sh_quote(data.join("newdir"))
        ),
    );

    fx.wrap(
        &["--mount-command", &mount],
        &["create", &fx.repo.at("a"), &data.display().to_string()],
    )
    .success();
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    let reference = fx.work.join("ref");
    fs::create_dir_all(&reference).unwrap();
    must(
        "mount",
        &[
            "-t",
            "zfs",
            &format!("{}@ref", p.ds("data")),
            &reference.display().to_string(),
        ],
    );
    let extracted_root = x.join(p.ds("data"));
    let extracted = tree(&extracted_root);
    let expected = tree(&reference);
    let root_modes = (
        fs::metadata(&extracted_root).map(|m| m.permissions().mode() & 0o7777),
        fs::metadata(&reference).map(|m| m.permissions().mode() & 0o7777),
    );
    must("umount", &[&reference]);
    assert_ne!(
        tree(&data),
        expected,
        "the live tree did not change during the run"
    );
    assert_same_tree(&extracted, &expected, "borg extract vs the snapshot");
    assert_eq!(
        root_modes.0.ok(),
        root_modes.1.ok(),
        "mode of the source root directory"
    );
    fx.assert_clean();
}

#[test]
fn second_run_finds_files_unchanged() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    for name in ["a.txt", "b.txt", "c.txt"] {
        p.write(&format!("data/{name}"), name);
    }
    // Borg never caches the file(s) with the newest ctime, so make that another one.
    sleep(Duration::from_millis(1500));
    p.write("data/newest.txt", "n");
    let source = p.path("data").display().to_string();

    let first = fx
        .wrap(&[], &["create", "--list", &fx.repo.at("one"), &source])
        .success();
    let second = fx
        .wrap(&[], &["create", "--list", &fx.repo.at("two"), &source])
        .success();
    for name in ["a.txt", "b.txt", "c.txt"] {
        let suffix = format!("{}/data/{name}", p.name);
        assert_eq!(
            listed_status(&first.stderr, &suffix),
            Some('A'),
            "first run should add {suffix}\n{}",
            first.dump()
        );
        assert_eq!(
            listed_status(&second.stderr, &suffix),
            Some('U'),
            "second run should find {suffix} unchanged (stable snapshot paths)\n{}",
            second.dump()
        );
    }
    fx.assert_clean();
}

/// A benchmark, run on demand (`vm-tests test --no-smoke -- --ignored
/// monitoring_cost`): what monitoring adds to a wrap, in one boot. Five
/// runs each of: nothing recorded (`--state-dir none`), recorded without
/// figures (`--metrics-info never`), the default (`auto`: `--json` added to
/// the create, whose own report gives the archive's figures and the
/// repository's totals: no borg process but the create), and `always`
/// (also one `borg list` after teardown for the archive count). Overhead =
/// wall time minus borg create's own (`--timings-json`); the borg
/// processes each run started are counted by a wrapper given as the
/// create's borg, and must be the create alone but for `always`.
#[test]
#[ignore]
fn monitoring_cost_measured() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    for i in 0..10 {
        p.dataset(&format!("data/d{i}"), &[]);
        p.write(&format!("data/d{i}/f"), "x\n");
    }
    let timings = fx.work.join("timings.json");
    let calls = fx.work.join("borg-calls");
    let borg = fx.counting_borg(&calls);
    let mut medians = Vec::new();
    for (mode, state, info) in [
        ("none", "none".to_owned(), "never"),
        ("recorded", fx.state_dir().display().to_string(), "never"),
        ("default", fx.state_dir().display().to_string(), "auto"),
        ("always", fx.state_dir().display().to_string(), "always"),
    ] {
        let mut overheads = Vec::new();
        for i in 0..6 {
            let _ = std::fs::remove_file(&calls);
            let started = Instant::now();
            let mut cmd = fx.zfs_snap();
            cmd.env("ZFS_SNAP_STATE_DIR", &state)
                .env("ZFS_SNAP_METRICS_INFO", info)
                .arg("--timings-json")
                .arg(&timings)
                .args(["wrap", "--"])
                .arg(&borg)
                .arg("create")
                .arg(fx.repo.at(&format!("{mode}-{i}")))
                .arg(p.path("data"));
            run(&mut cmd).success();
            // borg's version is asked once per runtime root, then cached.
            let started_borgs: Vec<String> = read_file(&calls)
                .lines()
                .filter(|c| *c != "--version")
                .map(str::to_owned)
                .collect();
            let expected: &[&str] = if info == "always" {
                &["create", "list"]
            } else {
                &["create"]
            };
            assert_eq!(
                started_borgs, expected,
                "{mode}: the borg processes of a wrap"
            );
            if i == 5 {
                println!(
                    "MEASURED monitoring {mode}: borg processes per wrap {} ({})",
                    started_borgs.len(),
                    started_borgs.join(", ")
                );
            }
            let wall = started.elapsed().as_secs_f64();
            let t: serde_json::Value = serde_json::from_str(&read_file(&timings)).unwrap();
            // The first run of each mode warms caches: not counted.
            if i > 0 {
                overheads.push(wall - t["borg_ms"].as_f64().unwrap() / 1000.0);
            }
        }
        overheads.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = overheads[overheads.len() / 2];
        println!("MEASURED monitoring {mode}: overhead median {median:.3} s of {overheads:.3?}");
        medians.push(median);
    }
    println!(
        "MEASURED monitoring ratios: recorded/none {:.2}, default/none {:.2}, always/none {:.2}",
        medians[1] / medians[0],
        medians[2] / medians[0],
        medians[3] / medians[0]
    );
    fx.assert_clean();
}
