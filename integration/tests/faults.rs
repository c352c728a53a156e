//! Crash and fault at every step, on real ZFS: for each external call a
//! run makes (every zfs, mount, umount and borg call, counted by a wrapper
//! given as --zfs-command, --mount-command, --umount-command and as borg),
//! (a) that call fails, (b) zfs-snap is SIGKILLed right after it returns,
//! (c) zfs-snap gets SIGTERM right after it returns. After each, the next
//! `wrap` and `cleanup` leave nothing of ours behind, and every foreign
//! snapshot, hold, mount and file is intact.
//!
//! The faulty run starts with a dead run's leftover (a held snapshot of
//! ours mounted in the mirror), no clean mark and no cached borg version,
//! so recovery's calls are crash points too. It uses the command backend,
//! where every zfs call is a process (libzetta's snapshot, hold, release
//! and destroy are in-process calls, with no point between to crash at);
//! the next run alternates between the command and libzetta backends, so
//! both recover what the faulty run left.

use std::io::Write;
use std::path::PathBuf;

use integration::*;

const FAULT_SH: &str = r#"kind=$1; shift
n=$(( $(cat "$FAULT_COUNTER" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$FAULT_COUNTER"
printf '%s %s %s\n' "$n" "$kind" "$*" >> "$FAULT_LOG"
real() {
    case $kind in
        zfs) zfs "$@" ;;
        mount) mount "$@" ;;
        umount) umount "$@" ;;
        borg)
            # The real borg's own answer, asked once by the test: one
            # Python start-up less per run under emulation.
            if [ "$*" = --version ] && [ -n "$FAULT_BORG_VERSION" ]; then
                printf '%s\n' "$FAULT_BORG_VERSION"
            else
                "$FAULT_BORG" "$@"
            fi ;;
    esac
}
if [ "$n" = "${FAULT_AT:-0}" ]; then
    case $FAULT_MODE in
        fail) echo "fault: call $n ($kind) made to fail" >&2; exit 1 ;;
        kill) real "$@"; rc=$?; kill -KILL "$PPID"; exit $rc ;;
        term) real "$@"; rc=$?; kill -TERM "$PPID"; exit $rc ;;
    esac
fi
real "$@""#;

/// What a test must find intact after every run.
struct Foreign {
    snapshots: Vec<String>,
    /// `(snapshot, tag)` holds of a user.
    holds: Vec<(String, String)>,
    mounts: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

fn foreign_world(fx: &Fixture) -> Foreign {
    let data = fx.pool.ds("data");
    let mut snapshots: Vec<String> = [
        "borgmatic-1234",
        "autosnap_2026-11-26_00:00:01_daily",
        "mine",
    ]
    .iter()
    .map(|s| format!("{data}@{s}"))
    .collect();
    for s in &snapshots {
        zfs(&["snapshot", s]);
    }
    zfs(&["hold", "keep", &snapshots[2]]);
    // A dataset carrying an ownership value naming this very root, set
    // locally on the filesystem: its snapshots inherit it.
    let inh = fx.pool.dataset("inh", &[]);
    zfs(&[
        "set",
        &format!("{OWNER_PROPERTY}=20260101T000000Z-7:{}", fx.root.display()),
        &inh,
    ]);
    let keepme = format!("{inh}@keepme");
    zfs(&["snapshot", &keepme]);
    snapshots.push(keepme);

    std::fs::create_dir_all(&fx.root).unwrap();
    let nas = fx.root.join("nas");
    std::fs::create_dir_all(&nas).unwrap();
    must(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "nas",
            &nas.display().to_string(),
        ],
    );
    let in_mirror = fx.root.join("snap/foreign");
    std::fs::create_dir_all(&in_mirror).unwrap();
    must(
        "mount",
        &["-t", "zfs", &snapshots[2], &in_mirror.display().to_string()],
    );
    let files = vec![
        write_file(&nas.join("keep.txt"), "theirs\n"),
        write_file(&fx.root.join("work/notes.txt"), "theirs\n"),
        write_file(&fx.root.join("mine.txt"), "theirs\n"),
    ];
    Foreign {
        holds: vec![(snapshots[2].clone(), "keep".to_owned())],
        snapshots,
        mounts: vec![nas, in_mirror],
        files,
    }
}

#[track_caller]
fn assert_intact(fx: &Fixture, foreign: &Foreign, context: &str) {
    let all = zfs(&["list", "-H", "-t", "snapshot", "-o", "name"]);
    for s in &foreign.snapshots {
        assert!(all.lines().any(|l| l == s), "{context}: {s} was destroyed");
    }
    let holds = fx.pool.holds();
    for h in &foreign.holds {
        assert!(holds.contains(h), "{context}: the hold {h:?} is gone");
    }
    let now = mounts();
    for m in &foreign.mounts {
        assert!(
            now.iter().any(|x| &x.mount_point == m),
            "{context}: {} was unmounted",
            m.display()
        );
    }
    for f in &foreign.files {
        assert_eq!(read_file(f), "theirs\n", "{context}: {}", f.display());
    }
    fx.assert_clean_except(&foreign.mounts);
}

/// A dead run's leftover: our snapshot, held, mounted where runs mount it;
/// and no clean mark or cached borg version, so the run does every call.
fn plant_dead_run(fx: &Fixture) {
    let leftover = format!("{}@zfs-snap-20260101T000000Z-1", fx.pool.ds("data"));
    fx.plant_leftover(&leftover);
    let mirror = fx.snapshot_path(&fx.pool.path("data"));
    std::fs::create_dir_all(&mirror).unwrap();
    must(
        "mount",
        &["-t", "zfs", &leftover, &mirror.display().to_string()],
    );
    let _ = std::fs::remove_file(fx.root.join("clean"));
    let _ = std::fs::remove_file(fx.root.join("borg-version"));
}

/// Runs the faulty wrap for every crash point with `mode`, each followed by
/// a clean `wrap` and `cleanup`.
/// Crash points `part`, `part + parts`, ... (so tests can share them out
/// and run in parallel), each with every mode.
fn every_call(part: usize, parts: usize) {
    let backend = "command";
    let fx = require_zfs!();
    fx.pool.dataset("data", &[]);
    fx.pool.write("data/a.txt", "a\n");
    let source = fx.pool.path("data").display().to_string();
    let foreign = foreign_world(&fx);
    let fault = fx.script("fault", FAULT_SH);
    let borg = fx.script(
        "fault-borg",
        &format!("exec {} borg \"$@\"", sh_quote(&fault)),
    );
    let borg_version = must(
        which("borg").expect("borg").to_str().unwrap(),
        &["--version"],
    );
    let counter = fx.work.join("counter");
    let log = fx.work.join("calls.log");
    let faulty = |at: (usize, &str), archive: &str| {
        let _ = std::fs::remove_file(&counter);
        let _ = std::fs::remove_file(&log);
        let fault = fault.display().to_string();
        let (at, mode) = at;
        let mut cmd = fx.zfs_snap();
        cmd.args(["--backend", backend])
            .args(["--zfs-command", &format!("{fault} zfs")])
            .args(["--mount-command", &format!("{fault} mount")])
            .args(["--umount-command", &format!("{fault} umount")])
            .arg("wrap")
            .arg("--")
            .arg(&borg)
            .args(["create", &fx.repo.at(archive), &source])
            .env("FAULT_COUNTER", &counter)
            .env("FAULT_LOG", &log)
            .env("FAULT_BORG", which("borg").expect("borg"))
            .env("FAULT_BORG_VERSION", borg_version.trim())
            .env("FAULT_AT", at.to_string())
            .env("FAULT_MODE", mode);
        run(&mut cmd)
    };

    plant_dead_run(&fx);
    faulty((0, "none"), "count").success();
    let calls = read_log(&log);
    let points = calls.lines().count();
    // Past libtest's capture: the count is part of what this test reports.
    let _ = writeln!(
        std::io::stderr(),
        "[part {part} of {parts}] crash points: {points} external calls, each made to fail, \
         and followed by SIGKILL and by SIGTERM:\n{calls}"
    );
    assert!(points >= 8, "too few calls counted:\n{calls}");
    assert_intact(&fx, &foreign, "after the counting run");

    let modes = ["fail", "kill", "term"];
    // The real borg's version as the first next run cached it: put back
    // for each later next run (the faulty runs remove it, so that
    // recovery's calls are crash points), one Python start-up less each.
    let version_cache = fx.root.join("borg-version");
    let mut real_borg_version: Option<String> = None;
    for (n, (at, mode)) in (1..=points)
        .filter(|at| at % parts == part)
        .flat_map(|at| modes.iter().map(move |m| (at, *m)))
        .enumerate()
    {
        let call = calls.lines().nth(at - 1).unwrap_or_default().to_owned();
        let context = format!("{mode} at call {call} ({backend})");
        plant_dead_run(&fx);
        let out = faulty((at, mode), &format!("f{at}-{mode}"));
        eprintln!("[{context}] faulty run exited {}", out.code());
        // The next run recovers with each backend in turn.
        let next_backend = if n % 2 == 0 { "command" } else { "auto" };
        if let Some(cached) = &real_borg_version {
            write_file(&version_cache, cached);
        }
        let next = fx.wrap(
            &["--backend", next_backend],
            &["create", &fx.repo.at(&format!("n{at}-{mode}")), &source],
        );
        assert_eq!(
            next.code(),
            0,
            "{context}: the next run failed\n{}\n{}",
            next.dump(),
            out.dump()
        );
        assert_intact(&fx, &foreign, &format!("{context}, after the next wrap"));
        if real_borg_version.is_none() {
            real_borg_version = std::fs::read_to_string(&version_cache).ok();
        }
        let clean = run(fx.zfs_snap().arg("cleanup")).success();
        assert!(
            clean.stdout.contains("Nothing left behind"),
            "{context}: cleanup after the next run found something\n{}",
            clean.dump()
        );
        assert_intact(&fx, &foreign, &format!("{context}, after cleanup"));
    }
    for m in foreign.mounts.iter().rev() {
        must("umount", &[m]);
    }
}

#[test]
fn faults_at_odd_calls() {
    every_call(1, 2);
}

#[test]
fn faults_at_even_calls() {
    every_call(0, 2);
}
