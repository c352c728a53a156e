//! `zfs-snap session -- COMMAND`: every create the command starts reads one
//! snapshot set, teardown happens once, and a create that claims another
//! session is refused; against the fake zfs and real borg.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::*;

/// zfs-snap's `borg` link, in a directory of its own.
fn link(w: &World) -> PathBuf {
    let dir = w.dir.path().join("link");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("borg");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), &link).unwrap();
    }
    link
}

/// A second repository next to the world's own.
fn second_repo(w: &World) -> String {
    let repo = w.dir.path().join("repo2");
    if !repo.exists() {
        w.borg(&["init", "-e", "none", repo.to_str().unwrap()]);
    }
    repo.display().to_string()
}

/// `zfs-snap session -- sh -c SCRIPT`, with `$LINK`, `$REPO`, `$REPO2` set;
/// in a process group of its own, as a shell job or a systemd unit is.
fn session(w: &World, borg: &Path, script: &str) -> Command {
    let mut cmd = w.cmd();
    cmd.args(["session", "--", "sh", "-ec", script])
        .env("ZFS_SNAP_BORG", borg)
        .env("LINK", link(w))
        .env("REPO", w.repo())
        .env("REPO2", second_repo(w))
        .process_group(0);
    cmd
}

fn file_in(w: &World, archive: &str, path: &Path) -> String {
    let dest = w.extract(archive);
    std::fs::read_to_string(dest.join(archived(path))).unwrap()
}

#[test]
fn every_create_of_the_command_reads_one_snapshot_set() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "before");
    w.write(&data.join("dir/other"), "x");
    let script = format!(
        r#"
        "$LINK" --version
        "$LINK" create "$REPO::one" {data}
        echo after > {data}/file
        "$LINK" create "$REPO2::two" {data}
        "$LINK" list "$REPO2"
        "#,
        data = data.display()
    );
    let out = run(&mut session(&w, &borg, &script));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.snapshot_calls(), 1, "{}", w.calls());
    assert!(stdout(&out).contains("two"), "borg list passed through");
    let repo2 = second_repo(&w);
    assert_eq!(w.archive_paths("one"), w.archive_paths_in(&repo2, "two"));
    assert!(w
        .archive_paths("one")
        .contains(&archived(&data.join("file"))));
    assert_eq!(file_in(&w, "one", &data.join("file")), "before");
    let two = w.extract_from(&repo2, "two");
    assert_eq!(
        std::fs::read_to_string(two.join(archived(&data.join("file")))).unwrap(),
        "before",
        "the second create read the session's snapshot, not the live file"
    );
    w.assert_clean();
    assert!(!w.runtime_root.join("session.sock").exists());
}

#[test]
fn a_create_needing_more_datasets_extends_the_set_at_a_later_point() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    let other = w.dataset("tank/other", "other");
    w.write(&data.join("file"), "d");
    w.write(&other.join("file"), "before");
    let script = format!(
        r#"
        "$LINK" create "$REPO::one" {data}
        echo after > {other}/file
        "$LINK" create --exclude-caches -e '*.tmp' "$REPO::two" {data} {other}
        "#,
        data = data.display(),
        other = other.display()
    );
    let out = run(&mut session(&w, &borg, &script));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let calls = w.calls();
    let snapshots: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("zfs snapshot"))
        .collect();
    assert_eq!(snapshots.len(), 2, "{calls}");
    assert!(snapshots[0].contains("tank/data@") && !snapshots[0].contains("tank/other@"));
    assert!(snapshots[1].contains("tank/other@") && !snapshots[1].contains("tank/data@"));
    assert!(
        stderr(&out).contains("later point in time"),
        "the extension is logged: {}",
        stderr(&out)
    );
    let two = w.archive_paths("two");
    assert!(two.contains(&archived(&data.join("file"))), "{two:?}");
    assert!(two.contains(&archived(&other.join("file"))), "{two:?}");
    assert_eq!(file_in(&w, "two", &other.join("file")), "after\n");
    w.assert_clean();
}

#[test]
fn a_create_claiming_another_session_is_refused() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "d");
    let script = format!(
        r#"
        rc=0; ZFS_SNAP_SESSION=not-this-one "$LINK" create "$REPO::stale" {data} || rc=$?
        echo "$rc" > {dir}/stale.rc
        rc=0; env -u ZFS_SNAP_SESSION "$LINK" create "$REPO::outside" {data} || rc=$?
        echo "$rc" > {dir}/outside.rc
        "#,
        data = data.display(),
        dir = w.dir.path().display()
    );
    let out = run(&mut session(&w, &borg, &script));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rc = |name: &str| std::fs::read_to_string(w.dir.path().join(name)).unwrap();
    assert_eq!(rc("stale.rc").trim(), "2");
    assert!(
        stderr(&out).contains("belongs to session not-this-one"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        rc("outside.rc").trim(),
        "75",
        "a plain run waits for the lock"
    );
    assert_eq!(w.snapshot_calls(), 0);
    w.assert_clean();

    // Outside any session, a claim to one is refused before anything is
    // snapshotted.
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_SESSION", "gone")
        .args(["wrap", "--", &borg.display().to_string(), "create"])
        .arg(format!("{}::x", w.repo()))
        .arg(&data));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no session serves"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.snapshot_calls(), 0);

    let out = run(w
        .cmd()
        .env("ZFS_SNAP_SESSION", "outer")
        .args(["session", "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already inside session outer"));
}

/// A session whose second create blocks on a FIFO (`--read-special`), and
/// whose command passes signals to its process group as borgmatic does
/// (borgmatic/signals.py).
fn blocked_session(w: &World, borg: &Path) -> std::process::Child {
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "d");
    let status = Command::new("mkfifo")
        .arg(data.join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let borgmatic_like = r#"
import os, signal, subprocess, sys
def handle(n, frame):
    if frame.f_back.f_code.co_name == handle.__name__:
        return
    os.killpg(os.getpgrp(), n)
    sys.exit(128 + n)
signal.signal(signal.SIGTERM, handle)
link, repo, data = sys.argv[1:4]
subprocess.run([link, "create", repo + "::one", data], check=True)
subprocess.run([link, "create", "--read-special", repo + "::blocked", data])
"#;
    let mut cmd = w.cmd();
    cmd.args(["session", "--", "python3", "-c", borgmatic_like])
        .arg(link(w))
        .arg(w.repo())
        .arg(&data)
        .env("ZFS_SNAP_BORG", borg)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    // The link and its borg, both with the archive on their command line.
    while processes_with(&format!("{}::blocked", w.repo())) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never got going"
        );
        sleep(Duration::from_millis(100));
    }
    // Give borg time to reach the FIFO.
    sleep(Duration::from_millis(1500));
    child
}

fn processes_with(text: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", text]).output().unwrap();
    stdout(&out).lines().count()
}

#[test]
fn sigterm_stops_the_command_and_tears_down_once() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let child = blocked_session(&w, &borg);
    let started = Instant::now();
    nix_kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped in time"
    );
    assert_eq!(out.status.code(), Some(143), "the command's status");
    assert_eq!(w.snapshot_calls(), 1);
    assert_eq!(
        w.calls()
            .lines()
            .filter(|l| l.starts_with("zfs destroy"))
            .count(),
        1,
        "one teardown: {}",
        w.calls()
    );
    w.assert_clean();
    assert!(!w.runtime_root.join("session.sock").exists());
}

#[test]
fn a_killed_session_is_recovered_by_the_next_run() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let child = blocked_session(&w, &borg);
    // The whole process group, as systemd kills a unit's processes (or as
    // a power cut stops them).
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap();
    assert!(w.runtime_root.join("session.sock").exists());
    let out = run(w.cmd().arg("cleanup"));
    assert!(out.status.success(), "{}", stderr(&out));
    w.assert_clean();
    assert!(!w.runtime_root.join("session.sock").exists());
}

fn nix_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
