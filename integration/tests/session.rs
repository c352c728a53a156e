//! `zfs-snap session` on real ZFS: later points of a session (a create that
//! needs datasets the session has not frozen yet), nested either way, a
//! killed session recovered by the next one, and a session whose creates
//! did not read its snapshots failing (or warning) although its command
//! succeeded.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use integration::*;

fn link(fx: &Fixture) -> PathBuf {
    let link = fx.work.join("bin/borg");
    if !link.exists() {
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(zfs_snap_bin(), &link).expect("symlink borg -> zfs-snap");
    }
    link
}

/// A parent frozen in a later point than its child: the parent's snapshot
/// is mounted over the child's, which is mounted again on top, so the
/// second create reads the child as the session froze it first.
#[test]
fn a_later_point_does_not_hide_what_an_earlier_one_froze() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("p", &[]);
    p.dataset("p/c", &[]);
    p.write("p/top.txt", "top\n");
    let file = p.write("p/c/file", "as frozen first\n");
    let script = fx.script(
        "two-creates",
        &format!(
            "set -e\n\
             {link} create {one} {child}\n\
             echo changed > {file}\n\
             {link} create {two} {parent}\n",
            link = sh_quote(link(&fx)),
            one = sh_quote(fx.repo.at("one")),
            two = sh_quote(fx.repo.at("two")),
            child = sh_quote(p.path("p/c")),
            parent = sh_quote(p.path("p")),
            file = sh_quote(&file),
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.args(["session", "--"]).arg(&script);
    let out = run(&mut cmd).success();
    out.expect_stderr("later point in time");

    let two = fx.repo.list("two");
    let rel = |s: &str| p.path(s).display().to_string()[1..].to_owned();
    for path in ["p/top.txt", "p/c/file"] {
        assert!(two.contains(&rel(path)), "{path}: {two:?}\n{}", out.dump());
    }
    let dest = fx.work.join("two");
    fx.repo.extract("two", &dest);
    assert_eq!(
        read_file(&dest.join(rel("p/c/file"))),
        "as frozen first\n",
        "the child as the session's first point froze it"
    );
    let snaps = p.snapshots_made();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_ne!(snaps[0].0, snaps[1].0, "two points, two txgs: {snaps:?}");
    let second = snaps[1].1.split('@').nth(1).unwrap();
    let first = snaps[0].1.split('@').nth(1).unwrap();
    assert!(
        second.starts_with(&format!("{first}.2-")) && second.len() == first.len() + 3 + 16,
        "a later point's name carries fresh random bits: {first} {second}"
    );
    fx.assert_clean();
}

#[test]
fn a_killed_session_is_recovered_by_the_next_session() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("a", &[]);
    p.dataset("b", &[]);
    p.write("a/f", "a\n");
    p.write("b/f", "b\n");
    let ready = fx.work.join("ready");
    let script = fx.script(
        "two-points-then-wait",
        &format!(
            "set -e\n\
             {link} create {one} {a}\n\
             {link} create {two} {b}\n\
             touch {ready}\n\
             sleep 600\n",
            link = sh_quote(link(&fx)),
            one = sh_quote(fx.repo.at("one")),
            two = sh_quote(fx.repo.at("two")),
            a = sh_quote(p.path("a")),
            b = sh_quote(p.path("b")),
            ready = sh_quote(&ready),
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.args(["session", "--"]).arg(&script).process_group(0);
    let mut session = fx.spawn(cmd);
    wait_until(
        Duration::from_secs(300),
        "both creates of the session",
        || ready.exists() || !session.alive(),
    );
    assert!(session.alive(), "{}", session.stderr_so_far());
    assert_eq!(fx.owned_snapshots().len(), 2, "two points, both alive");
    assert!(fx.root.join("session.sock").exists());
    // The whole process group, as a power cut or SIGKILL of a unit.
    must("kill", &["-KILL", "--", &format!("-{}", session.pid())]);
    session.wait(Duration::from_secs(30));

    // A session serving no create warns (1), whatever it recovered.
    let mut next = fx.zfs_snap();
    next.args(["session", "--", "true"]);
    let out = run(&mut next).expect_code(1);
    out.expect_stderr("removed what an earlier run left behind");
    out.expect_stderr("no borg create reached the session");
    fx.assert_clean();
    assert!(!fx.root.join("session.sock").exists());

    // A create claiming the dead session is refused, and takes nothing.
    let mut stale = fx.zfs_snap();
    stale
        .env("ZFS_SNAP_SESSION", "0123456789abcdef")
        .args(["wrap", "--", "borg", "create"])
        .arg(fx.repo.at("stale"))
        .arg(p.path("a"));
    run(&mut stale)
        .expect_code(2)
        .expect_stderr("no session serves");
    assert!(fx.owned_snapshots().is_empty());
}

/// A freeze that fails after its snapshot and hold (the mount command
/// fails): every create of the session is refused, the real snapshot and
/// hold go, and the session exits 2 and is recorded as failed although its
/// command, as borgmatic may, exited 0.
#[test]
fn a_session_whose_freeze_failed_fails_although_its_command_succeeded() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/f", "f\n");
    let mount = fx.script(
        "mount-fails",
        "echo 'mount: cannot mount, as the test wants' >&2\nexit 32\n",
    );
    let script = fx.script(
        "two-creates-ignoring-failures",
        &format!(
            "{link} create {one} {data} || echo \"one: $?\"\n\
             {link} create {two} {data} || echo \"two: $?\"\n\
             exit 0\n",
            link = sh_quote(link(&fx)),
            one = sh_quote(fx.repo.at("one")),
            two = sh_quote(fx.repo.at("two")),
            data = sh_quote(p.path("data")),
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.arg("--mount-command")
        .arg(&mount)
        .args(["session", "--"])
        .arg(&script);
    let out = run(&mut cmd).expect_code(2);
    out.expect_stderr("cannot mount, as the test wants");
    out.expect_stderr("an earlier create of this session failed");
    out.expect_stderr("the session refused 2 borg create(s) of its command");
    assert!(
        out.stdout.contains("one: 2") && out.stdout.contains("two: 2"),
        "{}",
        out.dump()
    );
    assert_eq!(
        p.snapshots_made().len(),
        1,
        "frozen once, by the first create"
    );
    assert!(fx.repo.archives().is_empty(), "no archive");
    let samples = recorded_samples(&fx.state_dir());
    assert_eq!(samples["zfs_snap_last_run_success"], 0.0);
    assert_eq!(samples["zfs_snap_last_run_status"], 2.0);
    assert_eq!(samples["zfs_snap_last_run_creates"], 0.0);
    fx.assert_clean();
}

/// borgmatic with `local_path` left at the real borg, in a session: its
/// creates read live files, borgmatic exits 0, the session warns (1) and
/// names the cause.
#[test]
fn a_borgmatic_bypassing_the_link_makes_the_session_warn() {
    let fx = require_zfs!();
    let borgmatic = need!(Need::Borgmatic);
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/f", "f\n");
    let config = write_file(
        &fx.work.join("borgmatic.yaml"),
        &format!(
            "source_directories:\n    - {source}\n\
             repositories:\n    - path: {repo}\n\
             archive_name_format: 'live-{{now:%Y%m%dT%H%M%S}}'\n\
             unknown_unencrypted_repo_access_is_ok: true\n\
             relocated_repo_access_is_ok: true\n\
             store_config_files: false\n",
            source = p.path("data").display(),
            repo = fx.repo.path.display(),
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.args(["session", "--"])
        .arg(&borgmatic)
        .arg("--config")
        .arg(&config)
        .args(["create", "--verbosity", "1"]);
    let out = run(&mut cmd).expect_code(1);
    out.expect_stderr("no borg create reached the session");
    out.expect_stderr("local_path");
    assert_eq!(fx.repo.archives().len(), 1, "borgmatic's live backup");
    assert!(p.snapshots_made().is_empty());
    let samples = recorded_samples(&fx.state_dir());
    assert_eq!(samples["zfs_snap_last_run_success"], 0.0);
    assert_eq!(samples["zfs_snap_last_run_status"], 1.0);
    fx.assert_clean();
}

/// Monitoring with its defaults (`auto`, totals at the session's end), in
/// borgmatic's way (the create through the `borg` link in a session): the
/// only borg process while the command runs is the create (its figures and
/// the repository's totals come from its own `--json`); the session's end
/// adds one `borg info` and one `borg list` per repository, after the
/// command (after borgmatic's prune and compact). Counted by a wrapper
/// given as the link's real borg.
#[test]
fn monitoring_adds_no_borg_process_to_a_create() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/f", "x\n");
    let calls = fx.work.join("borg-calls");
    let borg = fx.counting_borg(&calls);
    let script = fx.script(
        "one-create",
        &format!(
            "set -e\n{link} create {repo} {data}\necho '(command done)' >> {calls}\n",
            link = sh_quote(link(&fx)),
            repo = sh_quote(fx.repo.at("one")),
            data = sh_quote(p.path("data")),
            calls = sh_quote(&calls),
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.env("ZFS_SNAP_STATE_DIR", fx.state_dir())
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .env_remove("ZFS_SNAP_METRICS_TOTALS_TIMEOUT")
        .env("ZFS_SNAP_BORG", &borg)
        .args(["session", "--"])
        .arg(&script);
    let out = run(&mut cmd).success();
    let calls = read_file(&calls);
    let (during, after) = calls
        .split_once("(command done)\n")
        .unwrap_or_else(|| panic!("the command's marker:\n{calls}\n{}", out.dump()));
    // borg's version is asked once per runtime root, then cached.
    let during: Vec<&str> = during.lines().filter(|c| *c != "--version").collect();
    let after: Vec<&str> = after.lines().collect();
    eprintln!("borg during the session's command: {during:?}; at its end: {after:?}");
    assert_eq!(during, ["create"], "{}", out.dump());
    assert_eq!(after, ["info", "list"], "{}", out.dump());
    let samples = recorded_samples(&fx.state_dir());
    for name in [
        "borg_total_backups{",
        "borg_repository_size_bytes{",
        "borg_backup_size_bytes{",
    ] {
        assert!(
            samples.keys().any(|k| k.starts_with(name)),
            "{name} recorded: {samples:#?}"
        );
    }
    fx.assert_clean();
}
