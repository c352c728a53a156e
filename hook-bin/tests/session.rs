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
        "$LINK" create "$REPO::served" {data}
        "#,
        data = data.display(),
        dir = w.dir.path().display()
    );
    let out = run(&mut session(&w, &borg, &script));
    assert_eq!(
        out.status.code(),
        Some(0),
        "a create that is not the session's does not count against it: {}",
        stderr(&out)
    );
    let rc = |name: &str| std::fs::read_to_string(w.dir.path().join(name)).unwrap();
    assert_eq!(rc("stale.rc").trim(), "2");
    assert!(
        stderr(&out).contains("belongs to a zfs-snap session, but"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not-this-one"),
        "a claimed id may be another session's secret: never printed"
    );
    assert_eq!(
        rc("outside.rc").trim(),
        "75",
        "a plain run waits for the lock"
    );
    assert_eq!(w.snapshot_calls(), 1, "the served create's");
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
    assert_eq!(w.snapshot_calls(), 1);

    let out = run(w
        .cmd()
        .env("ZFS_SNAP_SESSION", "outer")
        .args(["session", "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already inside a zfs-snap session"));
}

/// `run.json`, as the last run left it.
fn run_record(w: &World) -> serde_json::Value {
    let path = w.state_dir().join("run.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The world's runtime root, made as zfs-snap makes it (0700, ours).
fn make_runtime_root(w: &World) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&w.runtime_root).unwrap();
    std::fs::set_permissions(&w.runtime_root, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_session_whose_freeze_failed_fails_whatever_its_command_says() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "d");
    w.edit(|s| s["fail"] = serde_json::json!({"snapshot": "out of space"}));
    // As borgmatic may: each create's failure seen, the run ending 0.
    let script = format!(
        r#"
        rc=0; "$LINK" create "$REPO::one" {data} || rc=$?
        echo "$rc" > {dir}/one.rc
        rc=0; "$LINK" create "$REPO2::two" {data} || rc=$?
        echo "$rc" > {dir}/two.rc
        exit 0
        "#,
        data = data.display(),
        dir = w.dir.path().display()
    );
    let out = run(&mut session(&w, &borg, &script));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let rc = |name: &str| std::fs::read_to_string(w.dir.path().join(name)).unwrap();
    assert_eq!(rc("one.rc").trim(), "2");
    assert_eq!(rc("two.rc").trim(), "2");
    assert!(
        err.contains("an earlier create of this session failed"),
        "{err}"
    );
    assert!(
        err.contains("the session refused 2 borg create(s) of its command")
            && err.contains("out of space")
            && err.contains("its command exited 0"),
        "{err}"
    );
    let record = run_record(&w);
    assert_eq!(record["kind"], "session");
    assert_eq!(record["status"], 2);
    assert_eq!(record["success"], false);
    assert_eq!(record["creates"], 0, "none served");
    let archives = w.borg(&["list", "--short", &w.repo()]);
    assert_eq!(stdout(&archives).trim(), "", "no archive was made");
    w.assert_clean();
}

#[test]
fn a_session_no_create_reached_warns_and_names_the_likely_cause() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "d");
    // borgmatic with `local_path` left at the real borg: a backup, read live.
    let script = format!(
        r#""$ZFS_SNAP_BORG" create "$REPO::live" {}"#,
        data.display()
    );
    let out = run(&mut session(&w, &borg, &script));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "a warning: {err}");
    assert!(
        err.contains("no borg create reached the session")
            && err.contains("local_path")
            && err.contains("ZFS_SNAP_BORG"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("ERROR") && l.contains("no borg create reached")),
        "at error level: {err}"
    );
    assert_eq!(w.snapshot_calls(), 0);
    assert!(
        w.archive_paths("live")
            .contains(&archived(&data.join("file"))),
        "the live backup was made"
    );
    let record = run_record(&w);
    assert_eq!(record["status"], 1);
    assert_eq!(record["success"], false);
    assert_eq!(record["creates"], 0);

    // A command that failed keeps its own status.
    let out = run(&mut session(&w, &borg, "exit 3"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no borg create reached the session"));
    assert_eq!(run_record(&w)["status"], 3);
    w.assert_clean();
}

#[test]
fn a_session_stopped_early_is_recorded_as_a_failed_run() {
    let w = World::new();
    make_runtime_root(&w);
    // Another run holds the lock.
    let holder = w.cmd();
    let mut cmd = Command::new("flock");
    cmd.arg(w.runtime_root.join("lock"))
        .arg(env!("CARGO_BIN_EXE_zfs-snap"))
        .args(["session", "--", "true"])
        .current_dir(w.dir.path());
    for (key, value) in holder.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let record = run_record(&w);
    assert_eq!(record["kind"], "session");
    assert_eq!(record["status"], 75);
    assert_eq!(record["success"], false);
    assert_eq!(record["runs_total"], 1);
    assert_eq!(record["failed_runs_total"], 1);

    // The command cannot be started.
    let out = run(w.cmd().args(["session", "--", "/nonexistent/borgmatic"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let record = run_record(&w);
    assert_eq!(record["status"], 2);
    assert_eq!(record["runs_total"], 2);
    assert_eq!(record["failed_runs_total"], 2);
    w.assert_clean();
}

#[test]
fn a_foreign_file_at_the_socket_path_is_refused_and_survives() {
    let w = World::new();
    make_runtime_root(&w);
    let socket = w.runtime_root.join("session.sock");
    std::fs::write(&socket, "someone else's").unwrap();
    let out = run(w.cmd().args(["session", "--", "true"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not zfs-snap's session socket"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "someone else's");
    let record = run_record(&w);
    assert_eq!(
        (record["status"].clone(), record["success"].clone()),
        (2.into(), false.into()),
        "recorded as a failed run"
    );
    w.assert_clean();
}

#[test]
fn the_sessions_secret_is_never_printed() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "d");
    let elsewhere = w.dir.path().join("rt2");
    std::fs::create_dir(&elsewhere).unwrap();
    let script = format!(
        r#"
        echo "$ZFS_SNAP_SESSION" > {dir}/id
        "$LINK" create "$REPO::one" {data}
        # The same pid, another secret; no session at all; a nested session.
        rc=0; ZFS_SNAP_SESSION="${{ZFS_SNAP_SESSION%-*}}-0000000000000000"             "$LINK" create "$REPO::stale" {data} || rc=$?
        rc=0; ZFS_SNAP_RUNTIME_ROOT={elsewhere} "$LINK" create "$REPO::nowhere" {data} || rc=$?
        rc=0; "$ZFS_SNAP" session -- true || rc=$?
        "#,
        data = data.display(),
        dir = w.dir.path().display(),
        elsewhere = elsewhere.display(),
    );
    let out = run(session(&w, &borg, &script)
        .env("ZFS_SNAP_VERBOSITY", "2")
        .env("ZFS_SNAP", env!("CARGO_BIN_EXE_zfs-snap")));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let id = std::fs::read_to_string(w.dir.path().join("id")).unwrap();
    let (pid, secret) = id.trim().split_once('-').unwrap();
    assert_eq!(secret.len(), 16, "{id}");
    assert!(!err.contains(secret), "the secret {secret} was printed");
    assert!(!stdout(&out).contains(secret));
    let named = format!("the zfs-snap session of pid {pid}");
    assert!(
        err.contains("belongs to another zfs-snap session, but")
            && err.contains(&format!("is held by {named}")),
        "{err}"
    );
    assert!(err.contains("no session serves"), "{err}");
    assert!(err.contains(&format!("already inside {named}")), "{err}");
    w.assert_clean();
}

#[test]
fn a_client_refuses_a_runtime_root_others_could_replace() {
    let borg = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    w.write(&data.join("file"), "d");
    let script = format!(
        r#"
        chmod 770 "$ZFS_SNAP_RUNTIME_ROOT"
        rc=0; "$LINK" create "$REPO::root" {data} || rc=$?
        echo "$rc" > {dir}/root.rc
        chmod 700 "$ZFS_SNAP_RUNTIME_ROOT"
        chmod 777 {dir}
        rc=0; "$LINK" create "$REPO::parent" {data} || rc=$?
        echo "$rc" > {dir}/parent.rc
        chmod 1777 {dir}
        "$LINK" create "$REPO::sticky" {data}
        chmod 700 {dir}
        "#,
        data = data.display(),
        dir = w.dir.path().display()
    );
    let out = run(&mut session(&w, &borg, &script));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let rc = |name: &str| std::fs::read_to_string(w.dir.path().join(name)).unwrap();
    assert_eq!(rc("root.rc").trim(), "2");
    assert_eq!(rc("parent.rc").trim(), "2");
    assert!(
        err.contains("will not ask a session through runtime root")
            && err.contains("writable by group or others (mode 770)"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}, above it: it is writable by group or others (mode 777) and not sticky",
            w.dir.path().display()
        )),
        "{err}"
    );
    assert_eq!(w.snapshot_calls(), 1, "only the sticky parent's create");
    assert!(!w.archive_paths("sticky").is_empty());
    w.assert_clean();
}

/// Root only: a server of another uid is staged by a process that drops
/// to `nobody` before it binds, its socket then moved into place.
#[test]
fn a_client_refuses_a_server_of_another_uid() {
    let borg = need!(Need::Borg);
    if !is_root() {
        eprintln!("SKIPPED: needs root to run a server as another uid");
        return;
    }
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    make_runtime_root(&w);
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    let server = r#"
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(10)
got = b""
try:
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError:
    pass
print("received %d bytes" % len(got), flush=True)
"#;
    let bound = theirs.path().join("s.sock");
    let mut child = Command::new("python3")
        .args(["-c", server])
        .arg(&bound)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    std::fs::rename(&bound, w.runtime_root.join("session.sock")).unwrap();
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_SESSION", "1-0123456789abcdef")
        .args(["wrap", "--", &borg.display().to_string(), "create"])
        .arg(format!("{}::x", w.repo()))
        .arg(&data));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is served by uid 65534"), "{err}");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "received 0 bytes",
        "the request (with the secret) was never sent"
    );
    child.wait().unwrap();
    assert_eq!(w.snapshot_calls(), 0);
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    stdout(&out).trim() == "0"
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

/// systemd's chain under `systemctl stop` with `KillMode=mixed`: SIGTERM
/// to the session alone; its child (as `systemd-inhibit`) dies of it and
/// so sends its own child SIGTERM (`PR_SET_PDEATHSIG`); that one (as
/// borgmatic) passes it to its process group and exits, leaving a hook in
/// its `TERM` trap. The session waits for the hook's trap to finish.
#[test]
fn sigterm_waits_for_every_process_the_command_started() {
    let w = World::new();
    let ready = w.dir.path().join("hook-ready");
    let trapped = w.dir.path().join("hook-trapped");
    let inhibit_like = r#"
import ctypes, signal, subprocess, sys
libc = ctypes.CDLL(None)
child = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: libc.prctl(1, signal.SIGTERM))
sys.exit(child.wait())
"#;
    let borgmatic_like = r#"
import os, signal, subprocess, sys, time
def handle(n, frame):
    if frame.f_back and frame.f_back.f_code.co_name == handle.__name__:
        return
    os.killpg(os.getpgrp(), n)
    sys.exit(128 + n)
signal.signal(signal.SIGTERM, handle)
hook = 'trap "sleep 1; echo trapped > \"$TRAPPED\"; exit 0" TERM; echo > "$READY"; while :; do sleep 0.1; done'
subprocess.Popen(["sh", "-c", hook], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(120)
"#;
    let mut cmd = w.cmd();
    cmd.args(["session", "--stop-timeout", "30", "--"])
        .args(["python3", "-c", inhibit_like])
        .args(["python3", "-c", borgmatic_like])
        .env("READY", &ready)
        .env("TRAPPED", &trapped)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the hook never started"
        );
        sleep(Duration::from_millis(50));
    }
    nix_kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    // At the moment the session has ended, the hook's trap has finished.
    let trap = std::fs::read_to_string(&trapped).unwrap_or_default();
    let err = stderr(&out);
    assert_eq!(
        trap, "trapped\n",
        "the session ended before the hook's trap:\n{err}"
    );
    assert!(
        err.contains("waiting for what the session's command left running"),
        "{err}"
    );
    w.assert_clean();
}

/// What the command leaves running is waited for at most --stop-timeout,
/// then named in a warning.
#[test]
fn what_the_command_leaves_running_is_waited_for_at_most_the_stop_timeout() {
    let w = World::new();
    let started = Instant::now();
    let out = run(w
        .cmd()
        .args(["session", "--stop-timeout", "2", "--"])
        .args(["sh", "-c", "sleep 30 >/dev/null 2>&1 & exit 0"])
        .process_group(0));
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(took >= Duration::from_secs(2), "waited: {took:?}\n{err}");
    assert!(
        took < Duration::from_secs(20),
        "at most the stop timeout: {took:?}\n{err}"
    );
    assert!(err.contains("tearing down anyway"), "{err}");
    assert!(err.contains("(sleep)"), "names what it left: {err}");
    w.assert_clean();
}
