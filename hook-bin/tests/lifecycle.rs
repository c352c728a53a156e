//! Teardown in every way a run can end, the lock, and recovery of what dead
//! runs left, against the fake zfs.

mod support;

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn failed_third_mount_tears_down_everything() {
    let w = World::new();
    let a = w.dataset("tank/a", "a");
    let b = w.dataset("tank/b", "b");
    let c = w.dataset("tank/c", "c");
    w.edit(|s| s["fail"] = serde_json::json!({"mount_at": 3}));
    let out = run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", "/nonexistent-repo::a"])
        .arg(&a)
        .arg(&b)
        .arg(&c));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("wrong fs type"),
        "mount's message shown"
    );
    w.assert_clean();
    let calls = w.calls();
    assert!(
        calls.contains("zfs release -r zfs-snap tank@zfs-snap-"),
        "{calls}"
    );
    assert!(calls.contains("zfs destroy -r tank@zfs-snap-"), "{calls}");
    assert_eq!(
        calls.lines().filter(|l| l.starts_with("umount")).count(),
        2,
        "{calls}"
    );
}

#[test]
fn failing_hold_tears_down_the_snapshot() {
    let w = World::new();
    let a = w.dataset("tank/a", "a");
    w.edit(|s| s["fail"] = serde_json::json!({"hold": "cannot hold snapshot 'tank/a@x': pool I/O is currently suspended"}));
    let out = run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", "/r::a"])
        .arg(&a));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pool I/O is currently suspended"));
    w.assert_clean();
}

/// A run whose borg blocks on a FIFO (`--read-special`) until killed.
fn blocked_run(w: &World) -> std::process::Child {
    let data = w.dataset("tank/data", "tank/data");
    let fifo = data.join("fifo");
    nix_mkfifo(&fifo);
    let repo = w.repo();
    let child = w
        .cmd()
        .args([
            "wrap",
            "--",
            "borg",
            "create",
            "--read-special",
            &format!("{repo}::blocked"),
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while w.state()["mounts"].as_array().is_none_or(|m| m.is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run never mounted"
        );
        sleep(Duration::from_millis(50));
    }
    // Give borg time to reach the FIFO.
    sleep(Duration::from_millis(1500));
    child
}

fn nix_mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

fn borg_processes_of(w: &World) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("{}/repo::blocked", w.dir.path().display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn sigterm_reaches_borg_and_teardown_completes() {
    need!(Need::Borg);
    let w = World::new();
    let child = blocked_run(&w);
    assert!(borg_processes_of(&w) >= 1, "borg should be running");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", stderr(&out));
    assert!(!out.status.success());
    assert_eq!(borg_processes_of(&w), 0, "borg stopped");
    assert!(
        stderr(&out).contains("passing the signal on to the child"),
        "{}",
        stderr(&out)
    );
    w.assert_clean();
}

#[test]
fn second_run_is_refused_with_the_holders_pid_or_waits() {
    need!(Need::Borg);
    let w = World::new();
    let first = blocked_run(&w);
    let other = w.dataset("tank/other", "other");
    w.write(&other.join("f"), "f");
    let repo = w.repo();
    let out = w.create("second", &[&other]);
    assert_eq!(out.status.code(), Some(75));
    assert!(
        stderr(&out).contains(&format!("pid {}", first.id())),
        "{}",
        stderr(&out)
    );

    let waiting = w
        .cmd()
        .args([
            "--wait=60",
            "wrap",
            "--",
            "borg",
            "create",
            &format!("{repo}::waited"),
        ])
        .arg(&other)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1000));
    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait_with_output().unwrap();
    let out = waiting.wait_with_output().unwrap();
    eprintln!("{}", stderr(&out));
    assert!(out.status.success());
    assert!(w
        .archive_paths("waited")
        .contains(&archived(&other.join("f"))));
    w.assert_clean();
}

/// After a clean run, the next one in the same boot does not list snapshots,
/// unless a pool it has not seen appears (or one is re-created under the same
/// name); `cleanup` always looks.
#[test]
fn clean_mark_skips_the_snapshot_listing_until_a_new_pool_appears() {
    need!(Need::Borg);
    let w = World::new();
    w.dataset("tank", "tank");
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let wrap = |archive: &str| {
        let out = w.create(archive, &[&data]);
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let lists = || {
        w.calls()
            .lines()
            .filter(|l| {
                (l.starts_with("zfs list") || l.starts_with("zfs get")) && l.contains("-t snapshot")
            })
            .count()
    };
    wrap("first");
    assert_eq!(lists(), 1, "no mark yet: the first run looks");
    assert!(w.runtime_root.join("clean").exists());

    // A leftover in a pool the last run saw, in this boot: trusted away
    // until `cleanup` (what a clean mark means).
    let known = "tank/data@zfs-snap-20260101T000000Z-1";
    w.leftover_snapshot(known, true);
    wrap("second");
    assert_eq!(lists(), 1, "the mark was trusted");
    assert!(w.snapshot_names().contains(&known.to_owned()));

    // A pool imported since (with a dead run's snapshot): the next run looks,
    // and recovers both.
    w.dataset("usb", "usb");
    let imported = "usb@zfs-snap-20260101T000000Z-2";
    w.leftover_snapshot(imported, true);
    let out = wrap("third");
    assert_eq!(lists(), 2, "a new pool: looked again");
    assert!(
        stderr(&out).contains("removed what an earlier run left behind"),
        "{}",
        stderr(&out)
    );
    w.assert_clean();

    // The same pool name with another guid (re-created): looks again.
    wrap("fourth");
    assert_eq!(lists(), 2);
    w.edit(|s| s["datasets"]["usb"]["guid"] = serde_json::json!("7"));
    wrap("fifth");
    assert_eq!(lists(), 3, "a re-created pool: looked again");

    // cleanup always looks.
    w.leftover_snapshot(known, false);
    assert!(run(w.cmd().arg("cleanup")).status.success());
    assert_eq!(lists(), 4);
    w.assert_clean();
}

/// A snapshot call that fails after ZFS made the snapshots (`zfs` killed by
/// a signal, say): the run fails, finds the snapshots that carry its own
/// ownership value and removes them itself.
#[test]
fn snapshots_of_a_failed_snapshot_call_are_found_by_the_next_run() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let wrap = |archive: &str| w.create(archive, &[&data]);
    assert!(wrap("a").status.success());
    assert!(w.runtime_root.join("clean").exists());

    w.edit(|s| s["fail_after"] = serde_json::json!({"snapshot": "zfs: killed"}));
    let out = wrap("b");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the snapshot call failed after ZFS made the snapshots"),
        "{}",
        stderr(&out)
    );
    assert!(
        w.calls().contains("zfs destroy -r tank@zfs-snap-"),
        "{}",
        w.calls()
    );
    w.assert_clean();

    // When ZFS cannot say (the lookup fails too), the run vouches for
    // nothing and the next run finds them.
    w.edit(|s| {
        s["fail_after"] = serde_json::json!({"snapshot": "zfs: killed"});
        s["fail"] = serde_json::json!({"get": "zfs: killed"});
    });
    let out = wrap("c");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        !w.runtime_root.join("clean").exists(),
        "a failed snapshot call in doubt must not leave a clean mark"
    );
    assert_eq!(w.snapshot_names().len(), 1, "the fake made the snapshot");

    w.edit(|s| {
        s["fail_after"] = serde_json::json!({});
        s["fail"] = serde_json::json!({});
    });
    let out = wrap("d");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("removed what an earlier run left behind"));
    w.assert_clean();
}

/// Recovery goes on when a candidate vanishes between the listing and the
/// property lookup (another runtime root's run tearing down); `cleanup`
/// finds ours by property whatever the name.
#[test]
fn recovery_tolerates_vanishing_candidates_and_cleanup_finds_renamed_ones() {
    let w = World::new();
    w.dataset("tank/data", "tank/data");
    let ours = "tank/data@zfs-snap-20260101T000000Z-1";
    w.leftover_snapshot(ours, true);
    let elsewhere = "tank/data@zfs-snap-20260101T000000Z-9";
    w.edit(|s| {
        s["snapshots"][elsewhere] = serde_json::json!({
            "props": {OWNER: "20260101T000000Z-9:/run/elsewhere"}, "holds": [], "store": "/nonexistent"
        });
        s["vanish_on_get"] = serde_json::json!([elsewhere]);
    });
    // wrap's recovery: `zfs get` reports the vanished one and goes on (borg
    // then fails on the missing repository; recovery came first).
    let out = run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", "/nonexistent-repo::a"])
        .arg(w.live.join("tank/data")));
    assert!(
        stderr(&out).contains("removed what an earlier run left behind"),
        "{}",
        stderr(&out)
    );
    assert!(
        !w.snapshot_names().contains(&ours.to_owned()),
        "our leftover was not recovered: {}",
        stderr(&out)
    );

    // Renamed by hand, still carrying our property: cleanup finds it.
    let renamed = "tank/data@kept";
    w.leftover_snapshot(renamed, false);
    let out = run(w.cmd().arg("cleanup"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(renamed), "{}", stdout(&out));
    w.assert_clean();
}

#[test]
fn recovery_removes_only_our_leftovers() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    // A dead run: its snapshot held and mounted in the mirror.
    w.leftover_snapshot("tank/data@zfs-snap-20260101T000000Z-1", true);
    let mirror = w
        .runtime_root
        .join("snap")
        .join(data.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&mirror).unwrap();
    w.edit(|s| {
        s["mounts"] = serde_json::json!([{"source": "tank/data@zfs-snap-20260101T000000Z-1", "target": mirror}])
    });
    for foreign in [
        "tank/data@borgmatic-1234",
        "tank/data@autosnap_2026-11-26_00:00:01_daily",
        "tank/data@mine",
    ] {
        w.foreign_snapshot(foreign);
    }
    // Ours in name, but from another runtime root: not this run's to touch.
    w.edit(|s| {
        s["snapshots"]["tank/data@zfs-snap-other"] = serde_json::json!({
            "props": {OWNER: "20260101T000000Z-2:/run/elsewhere"}, "holds": [], "store": "/nonexistent"
        })
    });

    let out = run(w.cmd().args(["cleanup", "--dry-run"]));
    assert!(out.status.success());
    assert!(stdout(&out).contains("would destroy tank/data@zfs-snap-20260101T000000Z-1"));
    assert!(stdout(&out).contains("would unmount"));
    assert_eq!(w.snapshot_names().len(), 5, "dry run changes nothing");

    let out = run(w.cmd().args(["cleanup"]));
    assert!(out.status.success());
    let mut names = w.snapshot_names();
    names.sort();
    assert_eq!(
        names,
        [
            "tank/data@autosnap_2026-11-26_00:00:01_daily",
            "tank/data@borgmatic-1234",
            "tank/data@mine",
            "tank/data@zfs-snap-other"
        ]
    );
    w.assert_clean();
    let out = run(w.cmd().args(["cleanup"]));
    assert!(stdout(&out).contains("Nothing left behind"));
}

#[test]
fn a_new_run_recovers_first() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.leftover_snapshot("tank/data@zfs-snap-20260101T000000Z-1", false);
    w.foreign_snapshot("tank/data@borgmatic-1234");
    // borg is missing here on purpose: recovery happens after the lock,
    // before anything else can fail.
    let out = run(w.cmd().args(["plan"]).arg(&data));
    assert!(out.status.success());
    assert_eq!(w.snapshot_names().len(), 2, "plan changes nothing");
    need!(Need::Borg);
    let out = w.create("a", &[&data]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("removed what an earlier run left behind"));
    assert_eq!(w.snapshot_names(), ["tank/data@borgmatic-1234"]);
    w.assert_clean();
}

#[test]
fn busy_snapshot_is_marked_for_deferred_destroy_and_reported() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    w.edit(|s| s["fail"] = serde_json::json!({"umount": "target is busy."}));
    let out = w.create("a", &[&data]);
    // The backup itself worked; what was left behind makes it a warning.
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("target is busy"), "{err}");
    assert!(err.contains("zfs-snap cleanup"), "{err}");
    let state = w.state();
    let snapshot = state["snapshots"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(snapshot["deferred"], true, "{state}");
    assert_eq!(snapshot["holds"], serde_json::json!([]), "hold released");
    // Once the mount goes away, cleanup finishes the job.
    w.edit(|s| s["fail"] = serde_json::json!({}));
    assert!(run(w.cmd().arg("cleanup")).status.success());
    w.assert_clean();
}

#[test]
fn zfs_calls_do_not_grow_with_the_number_of_datasets() {
    need!(Need::Borg);
    // (first run, second run) per n: the first finds no clean mark and lists
    // snapshots to find leftovers; the second trusts the first's mark.
    let mut counts = Vec::new();
    for n in [1, 8] {
        let w = World::new();
        let repo = w.repo();
        let paths: Vec<_> = (0..n)
            .map(|i| w.dataset(&format!("tank/d{i}"), &format!("d{i}")))
            .collect();
        let timings = w.dir.path().join("timings.json");
        let mut per_run = Vec::new();
        for archive in ["a", "b"] {
            let before = counts_zfs(&w);
            let out = run(w
                .cmd()
                .arg("--timings-json")
                .arg(&timings)
                .args([
                    "wrap",
                    "--",
                    "borg",
                    "create",
                    &format!("{repo}::{archive}"),
                ])
                .args(&paths));
            assert!(out.status.success());
            let t: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&timings).unwrap()).unwrap();
            assert_eq!(t["datasets"], n);
            assert_eq!(t["pools"], 1);
            assert_eq!(t["backend"], "command");
            let zfs = counts_zfs(&w) - before;
            // The fake mounts by command: two processes per dataset on top;
            // `borg --version` on the first run only (then cached).
            let version = u64::from(archive == "a");
            assert_eq!(
                t["processes"].as_u64().unwrap(),
                zfs + version + 2 * n as u64
            );
            per_run.push(zfs);
            w.assert_clean();
        }
        let snapshot_lists = w
            .calls()
            .lines()
            .filter(|l| l.starts_with("zfs list") && l.contains("-t snapshot"))
            .count();
        assert_eq!(
            snapshot_lists,
            1,
            "only the first run lists snapshots:\n{}",
            w.calls()
        );
        counts.push(per_run);
    }
    assert_eq!(
        counts[0], counts[1],
        "zfs calls per run: list filesystems, [list snapshots,] snapshot, hold, release, destroy"
    );
    assert_eq!(counts[0], [6, 5]);
}

fn counts_zfs(w: &World) -> u64 {
    w.calls().lines().filter(|l| l.starts_with("zfs ")).count() as u64
}
