//! A run's lifecycle on real ZFS: signals, crashes and recovery, the lock,
//! holds against other tools, configured commands, many datasets.

use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use integration::*;

const LONG: Duration = Duration::from_secs(300);

/// `<pool>/data` with a file and a FIFO; borg with `--read-special` blocks
/// opening the FIFO (read live, and no writer ever comes), which keeps it
/// busy for as long as a test needs.
fn fifo_dataset(fx: &Fixture) -> PathBuf {
    fx.pool.dataset("data", &[]);
    fx.pool.write("data/a.txt", "a\n");
    mkfifo(&fx.pool.path("data/fifo"));
    fx.pool.path("data")
}

/// Starts the wrapper on `source` with `--read-special` and waits until
/// borg is blocked on the FIFO. Returns the wrapper and borg's pid.
fn start_blocked(fx: &Fixture, repo: &Repo, archive: &str, source: &Path) -> (Running, i32) {
    let cmd = fx.wrap_command(
        &[],
        &[
            "create",
            "--read-special",
            &repo.at(archive),
            &source.display().to_string(),
        ],
    );
    let mut running = fx.spawn(cmd);
    let mirror = fx.snapshot_path(source);
    let deadline = Instant::now() + LONG;
    let mut borg = None;
    while borg.is_none() {
        assert!(
            running.alive(),
            "the wrapper ended early:\n{}",
            running.stderr_so_far()
        );
        assert!(
            Instant::now() < deadline,
            "borg never started:\n{}",
            running.stderr_so_far()
        );
        borg = descendants(running.pid()).into_iter().find(|&p| {
            let c = cmdline(p);
            // Not zfs-snap itself (its own program is the first word; borg's
            // command line names zfs-snap's patterns file).
            let program = c.split_whitespace().next().unwrap_or_default();
            c.contains("borg") && c.contains(" create") && !program.contains("zfs-snap")
        });
        sleep(Duration::from_millis(50));
    }
    let borg = borg.expect("loop ends with borg found");
    assert!(
        mounts().iter().any(|m| m.mount_point == mirror),
        "borg runs but the snapshot is not mounted at {}",
        mirror.display()
    );
    wait_until(LONG, "borg to block on the FIFO", || {
        let blocked_in_open = std::fs::read_to_string(format!("/proc/{borg}/syscall"))
            .is_ok_and(|s| s.starts_with("257 "));
        let wchan = wchans(borg)
            .iter()
            .any(|w| w.contains("fifo") || w.contains("partner") || w.contains("pipe"));
        assert!(
            process_alive(borg),
            "borg ended early:\n{}",
            running.stderr_so_far()
        );
        blocked_in_open || wchan
    });
    (running, borg)
}

/// Sends `signal` to the wrapper while borg is blocked: borg must stop and
/// the wrapper must tear down and exit with 128+N or borg's error status.
fn signal_while_borg_runs(signal: Signal) {
    let fx = require_zfs!();
    let source = fifo_dataset(&fx);
    let (running, borg) = start_blocked(&fx, &fx.repo, "a", &source);
    kill(Pid::from_raw(running.pid()), signal).expect("send the signal");
    if signal == Signal::SIGINT {
        // borg takes a first SIGINT as "stop after the current file", and
        // the FIFO it blocks on never ends: a second ^C is what a user
        // sends, and zfs-snap passes that one on as SIGTERM.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            process_alive(borg),
            "borg should still wait for its current file"
        );
        kill(Pid::from_raw(running.pid()), signal).expect("send the signal again");
    }
    let out = running.wait(Duration::from_secs(60));
    let by_signal = 128 + signal as i32;
    assert!(
        [by_signal, 128 + Signal::SIGTERM as i32, 2].contains(&out.code()),
        "expected {by_signal} ({signal}) or borg's error status 2\n{}",
        out.dump()
    );
    assert!(
        !process_alive(borg),
        "borg ({borg}) still runs after the wrapper exited"
    );
    fx.assert_clean();
}

#[test]
fn sigterm_stops_borg_and_tears_down() {
    signal_while_borg_runs(Signal::SIGTERM);
}

#[test]
fn sigint_stops_borg_and_tears_down() {
    signal_while_borg_runs(Signal::SIGINT);
}

#[test]
fn sighup_stops_borg_and_tears_down() {
    signal_while_borg_runs(Signal::SIGHUP);
}

#[test]
fn signal_before_borg_starts_stops_the_run() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let started = fx.work.join("started");
    let go = fx.work.join("go");
    let mount = fx.script(
        "mount-when-told",
        &format!(
            "touch {}\nwhile [ ! -e {} ]; do sleep 0.1; done\nexec mount \"$@\"",
            sh_quote(&started),
            sh_quote(&go)
        ),
    );
    let running = fx.spawn(fx.wrap_command(
        &["--mount-command", &mount.display().to_string()],
        &[
            "create",
            &fx.repo.at("a"),
            &p.path("data").display().to_string(),
        ],
    ));
    wait_until(LONG, "the run to reach its mount", || started.exists());
    kill(Pid::from_raw(running.pid()), Signal::SIGTERM).expect("send SIGTERM");
    sleep(Duration::from_millis(500));
    std::fs::write(&go, "").unwrap();
    let out = running.wait(LONG).expect_code(128 + 15);
    assert!(
        !out.stderr.contains("running borg"),
        "borg ran after SIGTERM\n{}",
        out.dump()
    );
    assert!(fx.repo.archives().is_empty());
    fx.assert_clean();
}

/// Snapshots other tools and users made, which recovery must never touch.
fn foreign_snapshots(fx: &Fixture) -> Vec<String> {
    let data = fx.pool.ds("data");
    let names: Vec<String> = [
        "borgmatic-1234",
        "autosnap_2026-11-26_00:00:01_daily",
        "mine",
    ]
    .iter()
    .map(|s| format!("{data}@{s}"))
    .collect();
    for name in &names {
        zfs(&["snapshot", name]);
    }
    zfs(&["hold", "keep", &names[2]]);
    names
}

#[track_caller]
fn assert_foreign_intact(fx: &Fixture, foreign: &[String]) {
    let now: Vec<String> = fx.pool.snapshots().into_iter().map(|(n, _)| n).collect();
    for name in foreign {
        assert!(
            now.contains(name),
            "{name} was destroyed; snapshots now: {now:?}"
        );
    }
    let holds = fx.pool.holds();
    assert!(
        holds.contains(&(foreign[2].clone(), "keep".to_owned())),
        "the user's hold on {} is gone: {holds:?}",
        foreign[2]
    );
}

/// SIGKILLs the wrapper and borg, and checks it left snapshot, hold and mount.
fn crash(fx: &Fixture, repo: &Repo, archive: &str, source: &Path) {
    let (running, borg) = start_blocked(fx, repo, archive, source);
    kill(Pid::from_raw(running.pid()), Signal::SIGKILL).expect("SIGKILL the wrapper");
    kill(Pid::from_raw(borg), Signal::SIGKILL).expect("SIGKILL borg");
    let out = running.wait(Duration::from_secs(60));
    assert_eq!(out.code(), 128 + 9, "{}", out.dump());
    wait_until(Duration::from_secs(60), "borg to die", || {
        !process_alive(borg)
    });
    let owned = fx.owned_snapshots();
    assert_eq!(
        owned.len(),
        1,
        "the killed run should leave its snapshot: {owned:?}"
    );
    assert!(
        fx.pool
            .holds()
            .iter()
            .any(|(n, t)| n == &owned[0] && t == HOLD_TAG),
        "the killed run should leave its hold"
    );
    assert!(
        !mounts_under(&fx.root).is_empty(),
        "the killed run should leave its mount under {}",
        fx.root.display()
    );
}

#[test]
fn sigkill_leftovers_are_removed_by_cleanup_and_by_the_next_run() {
    let fx = require_zfs!();
    let source = fifo_dataset(&fx);
    let foreign = foreign_snapshots(&fx);

    crash(&fx, &fx.repo, "a", &source);
    let owned = fx.owned_snapshots();
    let dry = run(fx.zfs_snap().args(["cleanup", "--dry-run"])).success();
    assert!(
        dry.stdout.contains(&owned[0]),
        "dry run does not name {}\n{}",
        owned[0],
        dry.dump()
    );
    assert_eq!(
        fx.owned_snapshots(),
        owned,
        "cleanup --dry-run destroyed something"
    );
    assert!(
        !mounts_under(&fx.root).is_empty(),
        "cleanup --dry-run unmounted something"
    );
    let out = run(fx.zfs_snap().arg("cleanup")).success();
    assert!(
        out.stdout.contains(&owned[0]),
        "cleanup does not report {}\n{}",
        owned[0],
        out.dump()
    );
    fx.assert_clean();
    assert_foreign_intact(&fx, &foreign);

    crash(&fx, &fx.new_repo("repo2"), "b", &source);
    // The next run, without --read-special (the FIFO is stored, not read),
    // into another repository: the killed borg's lock stays (in the guest,
    // PID 1 does not reap the orphan, so borg cannot tell its lock is stale).
    let repo = fx.new_repo("repo3");
    fx.wrap(
        &[],
        &["create", &repo.at("c"), &source.display().to_string()],
    )
    .success();
    let listed = repo.list("c");
    assert!(
        listed.contains(&format!("{}/a.txt", fx.pool.ds("data"))),
        "{listed:?}"
    );
    fx.assert_clean();
    assert_foreign_intact(&fx, &foreign);
}

#[test]
fn second_run_is_refused_or_waits() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let source = p.path("data").display().to_string();
    let started = fx.work.join("started");
    let go = fx.work.join("go");
    let mount = fx.script(
        "mount-when-told",
        &format!(
            "touch {}\nwhile [ ! -e {} ]; do sleep 0.1; done\nexec mount \"$@\"",
            sh_quote(&started),
            sh_quote(&go)
        ),
    );
    let first = fx.spawn(fx.wrap_command(
        &["--mount-command", &mount.display().to_string()],
        &["create", &fx.repo.at("one"), &source],
    ));
    wait_until(LONG, "the first run to reach its mount", || {
        started.exists()
    });

    let refused = fx
        .wrap(&[], &["create", &fx.repo.at("two"), &source])
        .expect_code(75);
    refused.expect_stderr(&first.pid().to_string());

    // Three waiters: `--wait=SECS`, a bare `--wait` right before the
    // subcommand, and ZFS_SNAP_WAIT from the environment.
    let mut waiters = vec![
        fx.spawn(fx.wrap_command(&["--wait=600"], &["create", &fx.repo.at("w1"), &source])),
        fx.spawn(fx.wrap_command(&["--wait"], &["create", &fx.repo.at("w2"), &source])),
    ];
    let mut env_wait = fx.wrap_command(&[], &["create", &fx.repo.at("w3"), &source]);
    env_wait.env("ZFS_SNAP_WAIT", "600");
    waiters.push(fx.spawn(env_wait));
    sleep(Duration::from_secs(3));
    for waiter in &mut waiters {
        assert!(
            waiter.alive(),
            "`{}` did not wait:\n{}",
            waiter.command,
            waiter.stderr_so_far()
        );
    }
    assert_eq!(
        fx.owned_snapshots().len(),
        1,
        "a waiting run snapshotted while the first held the lock"
    );
    std::fs::write(&go, "").unwrap();
    first.wait(LONG).success();
    for waiter in waiters {
        waiter.wait(LONG).success();
    }
    let mut archives = fx.repo.archives();
    archives.sort();
    assert_eq!(archives, ["one", "w1", "w2", "w3"]);
    for archive in ["w1", "w2", "w3"] {
        assert!(fx
            .repo
            .list(archive)
            .contains(&format!("{}/a.txt", p.ds("data"))));
    }
    fx.assert_clean();
}

#[test]
fn held_snapshot_cannot_be_destroyed_during_the_run() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let result = fx.work.join("destroy.result");
    let err = fx.work.join("destroy.err");
    // $5 is the snapshot: `mount -t zfs -o OPTIONS SNAPSHOT DIR`.
    let mount = fx.script(
        "mount-after-destroy",
        &format!(
            "if zfs destroy \"$5\" 2>{err}; then echo destroyed >{res}; else echo refused >{res}; fi\nexec mount \"$@\"",
            err = sh_quote(&err),
            res = sh_quote(&result)
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
        .success();
    assert_eq!(
        read_log(&result).trim(),
        "refused",
        "zfs destroy of our snapshot during the run was not refused\n{}",
        out.dump()
    );
    let why = read_log(&err);
    assert!(
        why.contains("hold") || why.contains("busy"),
        "zfs destroy failed, but not for the hold: {why}"
    );
    assert!(fx
        .repo
        .list("a")
        .contains(&format!("{}/a.txt", p.ds("data"))));
    fx.assert_clean();
}

#[test]
fn configured_commands_are_the_ones_used() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data/kid", &[]);
    p.write("data/a.txt", "a\n");
    p.write("data/kid/k.txt", "k\n");
    let source = p.path("data").display().to_string();
    let logger = |name: &str, exec: &str, shift: bool| {
        let log = fx.work.join(format!("{name}.log"));
        let script = fx.script(
            name,
            &format!(
                "printf '%s\\n' \"$*\" >> {}\n{}exec {exec} \"$@\"",
                sh_quote(&log),
                if shift { "shift\n" } else { "" }
            ),
        );
        (script.display().to_string(), log)
    };
    let snap_data = fx.snapshot_path(&p.path("data")).display().to_string();
    let snap_kid = fx.snapshot_path(&p.path("data/kid")).display().to_string();
    let check = |zfs_log: &PathBuf,
                 mount_log: &PathBuf,
                 umount_log: &PathBuf,
                 zfs_prefix: &str,
                 out: &Out| {
        let z = read_log(zfs_log);
        for verb in [
            "list",
            &format!("snapshot -o {OWNER_PROPERTY}="),
            "hold -r zfs-snap",
            "release -r zfs-snap",
            "destroy",
        ] {
            assert!(
                z.lines()
                    .any(|l| l.starts_with(&format!("{zfs_prefix}{verb}"))),
                "no `{zfs_prefix}{verb}` call in the zfs log:\n{z}\n{}",
                out.dump()
            );
        }
        let m = read_log(mount_log);
        let mounts: Vec<&str> = m.lines().collect();
        assert_eq!(mounts.len(), 2, "two mounts expected:\n{m}\n{}", out.dump());
        for (line, (ds, dir)) in mounts
            .iter()
            .zip([(p.ds("data"), &snap_data), (p.ds("data/kid"), &snap_kid)])
        {
            assert!(
                line.starts_with(&format!("-t zfs -o ro,nosuid,nodev,noexec {ds}@zfs-snap-"))
                    && line.ends_with(&format!(" {dir}")),
                "unexpected mount call: {line}"
            );
        }
        let u = read_log(umount_log);
        let unmounts: Vec<&str> = u.lines().collect();
        assert_eq!(
            unmounts,
            vec![snap_kid.as_str(), snap_data.as_str()],
            "unmounts, deepest first:\n{}",
            out.dump()
        );
    };

    let (zfs1, zlog1) = logger("zfs-log", "zfs", false);
    let (mount1, mlog1) = logger("mount-log", "mount", false);
    let (umount1, ulog1) = logger("umount-log", "umount", false);
    let out = fx
        .wrap(
            &[
                "--zfs-command",
                &zfs1,
                "--mount-command",
                &mount1,
                "--umount-command",
                &umount1,
            ],
            &["create", &fx.repo.at("flags"), &source],
        )
        .success();
    check(&zlog1, &mlog1, &ulog1, "", &out);
    assert!(fx
        .repo
        .list("flags")
        .contains(&format!("{}/kid/k.txt", p.ds("data"))));
    fx.assert_clean();

    // The same through the environment, the zfs command with an argument of its own.
    let (zfs2, zlog2) = logger("zfs-log2", "zfs", true);
    let (mount2, mlog2) = logger("mount-log2", "mount", false);
    let (umount2, ulog2) = logger("umount-log2", "umount", false);
    let mut cmd = fx.wrap_command(&[], &["create", &fx.repo.at("env"), &source]);
    cmd.env("ZFS_SNAP_ZFS_COMMAND", format!("{zfs2} --marker"))
        .env("ZFS_SNAP_MOUNT_COMMAND", &mount2)
        .env("ZFS_SNAP_UMOUNT_COMMAND", &umount2);
    let out = run(&mut cmd).success();
    check(&zlog2, &mlog2, &ulog2, "--marker ", &out);
    fx.assert_clean();
}

#[test]
fn a_hundred_datasets_in_one_run() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("many", &[]);
    let started = Instant::now();
    let script = format!(
        "set -e\nfor i in $(seq -w 0 99); do zfs create {pool}/many/d$i; echo $i > /{pool}/many/d$i/f.txt; done",
        pool = p.name
    );
    run(std::process::Command::new("sh").args(["-c", &script])).success();
    eprintln!(
        "created 100 datasets in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let out = fx
        .wrap(
            &[],
            &[
                "create",
                &fx.repo.at("a"),
                &p.path("many").display().to_string(),
            ],
        )
        .success();
    eprintln!(
        "wrapped borg over 101 datasets in {:.1} s",
        out.elapsed.as_secs_f64()
    );
    let listed = fx.repo.list("a");
    let files: Vec<&String> = listed.iter().filter(|l| l.ends_with("/f.txt")).collect();
    assert_eq!(files.len(), 100, "{listed:#?}");
    let x = fx.work.join("x");
    fx.repo.extract("a", &x);
    assert_eq!(read_file(&x.join(p.ds("many/d42/f.txt"))), "42\n");
    fx.assert_clean();
}

/// `<pool>/data` with one file; returns its path, the backup's source.
fn data_dataset(fx: &Fixture) -> String {
    fx.pool.dataset("data", &[]);
    fx.pool.write("data/a.txt", "a\n");
    fx.pool.path("data").display().to_string()
}

/// After a clean run, the next one in the same boot does not list snapshots
/// (seconds on hosts with thousands of other tools' snapshots), unless a pool
/// it has not seen appears or one is re-created under the same name;
/// `cleanup` always looks.
#[test]
fn clean_mark_skips_the_snapshot_listing_until_a_new_pool_appears() {
    // Alone: other tests' pools coming and going would count as new pools.
    let mut fx = require_zfs!(exclusive);
    let source = data_dataset(&fx);
    let log = fx.work.join("zfs.log");
    let zfs_cmd = fx.script(
        "zfs-logged",
        &format!(
            "printf '%s\\n' \"$*\" >> {}\nexec zfs \"$@\"",
            sh_quote(&log)
        ),
    );
    let zfs_cmd = zfs_cmd.display().to_string();
    let wrap = |fx: &Fixture, archive: &str| {
        fx.wrap(
            &["--zfs-command", &zfs_cmd],
            &["create", &fx.repo.at(archive), &source],
        )
        .success()
    };
    let lists = || {
        read_log(&log)
            .lines()
            .filter(|l| {
                (l.starts_with("list") || l.starts_with("get")) && l.contains("-t snapshot")
            })
            .count()
    };

    wrap(&fx, "first");
    assert_eq!(lists(), 1, "no mark yet: the first run looks");
    assert!(fx.root.join("clean").exists(), "no clean mark written");

    // A leftover in a pool the last run saw, in this boot: trusted away
    // until `cleanup` (what the mark means).
    let known = format!("{}@zfs-snap-20260101T000000Z-1", fx.pool.ds("data"));
    fx.plant_leftover(&known);
    wrap(&fx, "second");
    assert_eq!(lists(), 1, "the mark was trusted");
    assert_eq!(fx.owned_snapshots(), vec![known.clone()]);

    // A pool imported since, with a dead run's snapshot: the next run looks
    // and removes both.
    let imported = format!("{}@zfs-snap-20260101T000000Z-2", fx.add_pool().name);
    fx.plant_leftover(&imported);
    let out = wrap(&fx, "third");
    assert_eq!(lists(), 2, "a new pool: looked again");
    out.expect_stderr("removed what an earlier run left behind");
    fx.assert_clean();

    // The same pool name on a re-created pool (another guid): looks again.
    wrap(&fx, "fourth");
    assert_eq!(lists(), 2);
    fx.extra_pool(0).recreate();
    wrap(&fx, "fifth");
    assert_eq!(lists(), 3, "a re-created pool: looked again");

    // cleanup always looks.
    fx.plant_leftover(&known);
    let out = run(fx.zfs_snap().args(["--zfs-command", &zfs_cmd, "cleanup"])).success();
    assert_eq!(lists(), 4);
    assert!(out.stdout.contains(&known), "{}", out.dump());
    fx.assert_clean();
}

/// A snapshot call that fails after ZFS made the snapshots (here a zfs
/// command that SIGKILLs itself after a successful `zfs snapshot`, as a
/// terminal's ^C or `systemctl stop` does to the whole process group): the
/// run fails, and removes the snapshots that carry its own ownership value
/// itself. When ZFS cannot say which exist (the lookup is killed too), the
/// run leaves no clean mark and the next run finds them.
#[test]
fn snapshots_of_a_killed_snapshot_call_are_removed() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let kill_snapshot = fx.work.join("kill-after-snapshot");
    let kill_get = fx.work.join("kill-get");
    // Only the lookup after the killed snapshot call is killed: recovery's
    // `zfs get` at a run's start may be about another test's snapshots
    // (tests run side by side in the guest), and killing it fails the run
    // before it snapshots anything.
    let snapped = fx.work.join("snapshot-killed");
    let zfs_cmd = fx.script(
        "zfs-killed",
        &format!(
            "if [ \"$1\" = get ] && [ -e {get} ] && [ -e {snapped} ]; then kill -KILL $$; fi\n\
             zfs \"$@\"; rc=$?\n\
             if [ \"$1\" = snapshot ] && [ -e {snap} ]; then : > {snapped}; kill -KILL $$; fi\nexit $rc",
            get = sh_quote(&kill_get),
            snap = sh_quote(&kill_snapshot),
            snapped = sh_quote(&snapped),
        ),
    );
    let zfs_cmd = zfs_cmd.display().to_string();
    let wrap = |archive: &str| {
        fx.wrap(
            &["--zfs-command", &zfs_cmd],
            &["create", &fx.repo.at(archive), &source],
        )
    };
    wrap("a").success();
    assert!(fx.root.join("clean").exists(), "no clean mark written");

    write_file(&kill_snapshot, "");
    let out = wrap("b").expect_code(2);
    out.expect_stderr("the snapshot call failed after ZFS made the snapshots");
    fx.assert_clean();

    write_file(&kill_get, "");
    let _ = std::fs::remove_file(&snapped);
    let out = wrap("c").expect_code(2);
    assert!(
        !fx.root.join("clean").exists(),
        "a failed snapshot call in doubt left a clean mark\n{}",
        out.dump()
    );
    assert_eq!(fx.owned_snapshots().len(), 1, "ZFS made the snapshot");

    std::fs::remove_file(&kill_snapshot).unwrap();
    std::fs::remove_file(&kill_get).unwrap();
    let out = wrap("d").success();
    out.expect_stderr("removed what an earlier run left behind");
    fx.assert_clean();
}

/// Recovery goes on when a candidate vanishes between the listing of names
/// and the property lookup (another runtime root's run tearing down, here a
/// zfs command that destroys it just before `zfs get`); `cleanup` finds ours
/// by property whatever the name.
#[test]
fn recovery_tolerates_vanishing_candidates_and_cleanup_finds_renamed_ones() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let ours = format!("{}@zfs-snap-20260101T000000Z-1", fx.pool.ds("data"));
    fx.plant_leftover(&ours);
    let elsewhere = format!("{}@zfs-snap-20260101T000000Z-9", fx.pool.ds("data"));
    zfs(&[
        "snapshot",
        "-o",
        &format!("{OWNER_PROPERTY}=20260101T000000Z-9:/run/elsewhere"),
        &elsewhere,
    ]);
    let flag = fx.work.join("vanish");
    write_file(&flag, "");
    let zfs_cmd = fx.script(
        "zfs-vanishing",
        &format!(
            "if [ \"$1\" = get ] && [ -e {flag} ]; then rm {flag}; zfs destroy {gone}; fi\nexec zfs \"$@\"",
            flag = sh_quote(&flag),
            gone = sh_quote(&elsewhere)
        ),
    );
    let out = fx
        .wrap(
            &["--zfs-command", &zfs_cmd.display().to_string()],
            &["create", &fx.repo.at("a"), &source],
        )
        .success();
    assert!(
        !flag.exists(),
        "the zfs get hook did not run\n{}",
        out.dump()
    );
    out.expect_stderr("removed what an earlier run left behind");
    fx.assert_clean();

    // Renamed by hand, still carrying our property: cleanup finds it.
    let renamed = format!("{}@kept", fx.pool.ds("data"));
    fx.plant_leftover(&renamed);
    let out = run(fx.zfs_snap().arg("cleanup")).success();
    assert!(out.stdout.contains(&renamed), "{}", out.dump());
    fx.assert_clean();
}
