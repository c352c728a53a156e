//! borgmatic under real systemd: borgmatic's upstream units (from its
//! sdist, installed as its docs say) with zfs-snap's drop-in
//! (systemd/borgmatic.service.d/zfs-snap.conf), on pools of the test's
//! own. Runs in the vm-tests guest that boots systemd as PID 1, the seed's
//! host (`vm-tests test` gives executables named `systemd*` that guest);
//! anywhere else it skips loudly, and where `ZFS_SNAP_REQUIRE` lists
//! `systemd` (that guest) without it, it fails. As the seed's host runs
//! them: both repositories `repokey-blake2`, the passphrase from upstream's
//! encrypted credential (the standalone unit's script: from a file), every
//! hardening line and zfs-snap's monitoring at their defaults (the totals
//! at a session's end included). Two repositories reading
//! one snapshot set, the figures recorded and the exporter unit: the seed's
//! host's own tests (tests/seedhost.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::units::{
    install_standalone_units, passphrase_and_credential, systemctl, LINK, PASSPHRASE_FILE,
};
use integration::*;

const RUNTIME_ROOT: &str = "/run/zfs-snap";
/// Repositories on the root file system: the unit has a private /tmp and /var/tmp.
const REPOS: &str = "/srv/zfs-snap-test";
/// Tests of other things than the pass-through of borgmatic's other
/// actions run `create` alone (under emulation each borg call costs seconds).
const CREATE_ONLY: &str = "skip_actions:\n    - prune\n    - compact\n    - check\n";

/// One borgmatic unit: its tests run one at a time.
static UNIT: Mutex<()> = Mutex::new(());

/// The test's fixture, with the borgmatic unit to itself and zfs-snap
/// installed; or a loud skip (`return`): it needs ZFS, systemd as PID 1
/// and borgmatic.
macro_rules! systemd_fixture {
    () => {{
        let fx = require_zfs!();
        need!(Need::Systemd);
        need!(Need::Borgmatic);
        let unit = UNIT.lock().unwrap_or_else(|e| e.into_inner());
        install();
        (fx, unit)
    }};
}

/// Installs zfs-snap and borgmatic's units ([`units::install`]) as they
/// ship, upstream's encrypted credential and zfs-snap's monitoring
/// defaults included, with a test drop-in that only removes what a test
/// cannot wait for (upstream's one-minute delay).
fn install() {
    passphrase_and_credential();
    integration::units::install("ExecStartPre=\n");
}

/// Plain borg with the repositories' passphrase (from its file).
fn borg() -> Command {
    let mut cmd = Command::new("borg");
    cmd.env("BORG_PASSCOMMAND", format!("cat {PASSPHRASE_FILE}"));
    cmd
}

#[track_caller]
fn borg_must(args: &[&str]) -> String {
    run(borg().args(args)).success().stdout
}

/// `/etc/borgmatic/config.yaml` (where upstream's unit finds it) for
/// `sources` and two repositories; after each repository, a command
/// appends to `changing`, so a later create reading the live tree would
/// see it.
fn configure(sources: &[PathBuf], changing: &Path, extra: &str) -> [PathBuf; 2] {
    configure_with_commands(sources, changing, extra, "")
}

/// [`configure`], with more items for borgmatic's `commands:` list.
fn configure_with_commands(
    sources: &[PathBuf],
    changing: &Path,
    extra: &str,
    commands: &str,
) -> [PathBuf; 2] {
    let repos = [1, 2].map(|n| PathBuf::from(format!("{REPOS}/repo-{n}")));
    for repo in &repos {
        let _ = std::fs::remove_dir_all(repo);
        std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
        borg_must(&["init", "-e", "repokey-blake2", &repo.display().to_string()]);
    }
    let sources: String = sources
        .iter()
        .map(|s| format!("    - {}\n", s.display()))
        .collect();
    write_file(
        Path::new("/etc/borgmatic/config.yaml"),
        &format!(
            "source_directories:\n{sources}\
             repositories:\n    - path: {r1}\n      label: one\n    - path: {r2}\n      label: two\n\
             local_path: {LINK}\n\
             encryption_passphrase: '{{credential systemd borgmatic.pw}}'\n\
             archive_name_format: 'sd-{{now:%Y%m%dT%H%M%S.%f}}'\n\
             store_config_files: false\n\
             keep_daily: 7\n\
             commands:\n    - after: repository\n      run:\n          - date +%s%N >> {changing}\n\
             {commands}{extra}",
            r1 = repos[0].display(),
            r2 = repos[1].display(),
            changing = changing.display(),
        ),
    );
    repos
}

fn archives(repo: &Path) -> Vec<String> {
    borg_must(&["list", "--short", &repo.display().to_string()])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn file_in(repo: &Path, archive: &str, path: &Path) -> String {
    borg_must(&[
        "extract",
        "--stdout",
        &format!("{}::{archive}", repo.display()),
        path.strip_prefix("/").unwrap().to_str().unwrap(),
    ])
}

/// Nothing of zfs-snap's is left: no snapshot carrying our ownership
/// property, no hold, no socket, no process of the unit.
#[track_caller]
fn assert_nothing_left(fx: &Fixture) {
    let ours = fx.pool.snapshots_with_local_owner();
    assert!(ours.is_empty(), "snapshots left: {ours:?}");
    let holds = fx.pool.holds();
    assert!(holds.is_empty(), "holds left: {holds:?}");
    assert!(!Path::new(RUNTIME_ROOT).join("session.sock").exists());
    let state = systemctl(&["show", "-p", "ActiveState", "--value", "borgmatic.service"]);
    assert!(
        ["inactive", "failed"].contains(&state.stdout.trim()),
        "the unit still runs: {}",
        state.stdout.trim()
    );
}

#[test]
fn systemctl_stop_while_borg_runs_tears_down_and_the_next_start_works() {
    let (fx, _unit) = systemd_fixture!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let changing = p.write("data/changing", "x\n");
    let fifo = p.path("data/fifo");
    mkfifo(&fifo);
    // borg opens the FIFO and waits for a writer that never comes.
    // A hook that leaves a process with a TERM trap behind, as a hook
    // starting a helper does; the first time only.
    let ready = Path::new(REPOS).join("hook-ready");
    let trapped = Path::new(REPOS).join("hook-trapped");
    let once = Path::new(REPOS).join("hook-once");
    for f in [&ready, &trapped, &once] {
        let _ = std::fs::remove_file(f);
    }
    // Where the unit sees it (its /tmp and /var/tmp are private).
    let hook = write_script(
        &Path::new(REPOS).join("hook.sh"),
        &format!(
            "[ -e {once} ] && exit 0\n: > {once}\n\
             ( trap 'sleep 2; echo trapped > {trapped}; exit 0' TERM\n\
               : > {ready}\n  while :; do sleep 0.2; done ) >/dev/null 2>&1 </dev/null &\n",
            once = once.display(),
            trapped = trapped.display(),
            ready = ready.display(),
        ),
    );
    let repos = configure_with_commands(
        &[p.path("data")],
        &changing,
        &format!("read_special: true\n{CREATE_ONLY}"),
        &format!(
            "    - before: repository\n      run:\n          - {}\n",
            hook.display()
        ),
    );
    systemctl(&["start", "--no-block", "borgmatic.service"]).success();
    // borgmatic gives borg its roots in a patterns file: look for the real
    // borg's create (its pattern file is ours, the mirror's).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let borg = run(Command::new("pgrep").args(["-f", "-a", "borg"])).stdout;
        if borg.lines().any(|l| {
            l.contains("/usr/bin/borg create") && !l.contains("--dry-run") && l.contains("zfs-snap")
        }) {
            break;
        }
        let state = systemctl(&["show", "-p", "ActiveState", "--value", "borgmatic.service"]);
        assert!(
            Instant::now() < deadline && ["active", "activating"].contains(&state.stdout.trim()),
            "borg never got to the FIFO ({}):\n{borg}\n{}",
            state.stdout.trim(),
            must(
                "journalctl",
                &["-u", "borgmatic", "--no-pager", "-o", "cat"]
            )
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let out = systemctl(&["stop", "borgmatic.service"]);
    let took = started.elapsed();
    let mut journal = String::new();
    assert_eq!(out.code(), 0, "{}", out.dump());
    eprintln!("systemctl stop took {took:.1?}");
    wait_until(Duration::from_secs(20), "the session's last line", || {
        journal = must(
            "journalctl",
            &["-u", "borgmatic", "--no-pager", "-o", "cat"],
        );
        journal.contains("session done")
    });
    assert!(
        took < Duration::from_secs(60),
        "stopped within its timeout, not killed: {took:?}\n{journal}"
    );
    assert!(ready.exists(), "the hook ran:\n{journal}");
    assert_eq!(
        std::fs::read_to_string(&trapped).unwrap_or_default(),
        "trapped\n",
        "the hook's TERM trap finished before the session ended:\n{journal}"
    );
    assert!(
        journal.contains("waiting for what the session's command left running"),
        "{journal}"
    );
    assert_nothing_left(&fx);
    let stray = run(Command::new("pgrep").args(["-f", "borg create"]));
    assert_ne!(stray.code(), 0, "no borg left: {}", stray.stdout);

    std::fs::remove_file(&fifo).unwrap();
    systemctl(&["reset-failed", "borgmatic.service"]);
    let out = systemctl(&["start", "borgmatic.service"]);
    assert_eq!(
        out.code(),
        0,
        "{}\n{}",
        out.dump(),
        must(
            "journalctl",
            &["-u", "borgmatic", "--no-pager", "-o", "cat"]
        )
    );
    assert_eq!(archives(&repos[0]).len(), 1);
    assert_eq!(archives(&repos[1]).len(), 1);
    assert_nothing_left(&fx);
}

/// The unit's journal entries as (priority, message).
fn journal_entries() -> Vec<(String, String)> {
    must(
        "journalctl",
        &["-u", "borgmatic", "--no-pager", "-o", "json"],
    )
    .lines()
    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    .filter_map(|v| {
        let message = v["MESSAGE"].as_str()?.to_owned();
        Some((v["PRIORITY"].as_str()?.to_owned(), message))
    })
    .collect()
}

/// The first run is the timer's (upstream's `borgmatic.timer`, its
/// calendar replaced by a two-second delay): one unit run for both.
#[test]
fn the_timer_fires_the_service_and_the_journal_shows_zfs_snap_lines_at_their_priority() {
    let (fx, _unit) = systemd_fixture!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let changing = p.write("data/changing", "x\n");
    // A dead run's leftover: recovery removes it and warns.
    let leftover = format!("{}@zfs-snap-20260101T000000Z-1", p.ds("data"));
    zfs(&[
        "snapshot",
        "-o",
        &format!("{OWNER_PROPERTY}=20260101T000000Z-1:{RUNTIME_ROOT}"),
        &leftover,
    ]);
    let repos = configure(&[p.path("data")], &changing, CREATE_ONLY);
    must("journalctl", &["--rotate"]);
    must("journalctl", &["--vacuum-time=1s"]);
    let timer = Path::new("/etc/systemd/system/borgmatic.timer.d");
    std::fs::create_dir_all(timer).unwrap();
    write_file(
        &timer.join("zz-test.conf"),
        "[Timer]\nOnCalendar=\nOnActiveSec=2s\nAccuracySec=1s\nRandomizedDelaySec=0\nPersistent=false\n",
    );
    systemctl(&["daemon-reload"]).success();
    // borgmatic's unit is a oneshot: it leaves `inactive` when started and
    // comes back to it when done (no `borg list` while waiting: each is a
    // Python start-up under emulation).
    let show = |p: &str| {
        systemctl(&["show", "-p", p, "--value", "borgmatic.service"])
            .stdout
            .trim()
            .to_owned()
    };
    let before = show("InactiveExitTimestampMonotonic");
    systemctl(&["start", "borgmatic.timer"]).success();
    wait_until(Duration::from_secs(300), "the timer's run", || {
        show("InactiveExitTimestampMonotonic") != before
            && ["inactive", "failed"].contains(&show("ActiveState").as_str())
    });
    assert_eq!(show("Result"), "success", "the timer's run");
    assert_eq!(archives(&repos[1]).len(), 1, "the timer's run");
    systemctl(&["stop", "borgmatic.timer"]).success();
    std::fs::remove_dir_all(timer).unwrap();
    systemctl(&["daemon-reload"]).success();
    // A runtime root others may write to: zfs-snap refuses it (an error).
    std::fs::set_permissions(RUNTIME_ROOT, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = systemctl(&["start", "borgmatic.service"]);
    std::fs::set_permissions(RUNTIME_ROOT, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_ne!(out.code(), 0, "a refused runtime root fails the run");
    let mut entries = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "zfs-snap's lines in the journal",
        || {
            entries = journal_entries();
            entries
                .iter()
                .any(|(_, m)| m.contains("refusing runtime root"))
        },
    );
    let shown: String = entries
        .iter()
        .map(|(p, m)| format!("<{p}> {m}\n"))
        .collect();
    assert!(
        entries
            .iter()
            .any(|(p, m)| p == "4" && m.contains("removed what an earlier run left behind")),
        "{shown}"
    );
    assert!(
        entries
            .iter()
            .any(|(p, m)| p == "3" && m.contains("refusing runtime root")),
        "{shown}"
    );
    // The link's lines reach the journal through borgmatic, which reads
    // them as borg's JSON log lines: at their own level, not as errors.
    assert!(
        entries
            .iter()
            .any(|(p, m)| p == "6" && m.contains("zfs-snap: running borg")),
        "{shown}"
    );
    assert!(
        !entries
            .iter()
            .any(|(p, m)| p.as_str() < "4" && m.contains("running borg")),
        "{shown}"
    );
    assert!(
        entries
            .iter()
            .any(|(p, m)| p == "6" && m.contains("session started")),
        "{shown}"
    );
    assert!(!shown.contains('\x1b'), "no colour in the journal");
    assert!(
        !entries.iter().any(|(_, m)| m.starts_with('<')),
        "journald took the priority prefixes: {shown}"
    );
    systemctl(&["reset-failed", "borgmatic.service"]);
    assert_nothing_left(&fx);
}

/// A benchmark, not a test, so not in CI's run (three two-repository
/// borgmatic runs cost minutes under emulation): one two-repository
/// `borgmatic create` through `zfs-snap session` against the same through
/// the `borg` link alone (each create its own snapshot set), in one boot.
/// `cargo run -p vm-tests -- test --no-smoke -- --ignored session_against_plain`.
#[test]
#[ignore = "a benchmark: vm-tests test --no-smoke -- --ignored session_against_plain"]
fn session_against_plain_runs_measured() {
    let (fx, _unit) = systemd_fixture!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.dataset("data/child", &[]);
    for i in 0..200 {
        p.write(&format!("data/child/f{i}"), &format!("{i}\n"));
    }
    let changing = p.write("data/changing", "x\n");
    let repos = configure(&[p.path("data")], &changing, CREATE_ONLY);
    let borgmatic = which("borgmatic").unwrap();
    let measure = |session: bool| {
        let before = p.snapshots_made().len();
        let mut cmd = if session {
            let mut c = Command::new("/usr/local/bin/zfs-snap");
            c.args(["session", "--"]).arg(&borgmatic);
            c
        } else {
            Command::new(&borgmatic)
        };
        cmd.args(["create", "--verbosity", "0"]);
        cmd.env("ZFS_SNAP_VERBOSITY", "1");
        let started = Instant::now();
        let out = run(&mut cmd).success();
        let elapsed = started.elapsed();
        // zfs-snap's own phase lines, to see where the time goes.
        for line in out.stderr.lines().filter(|l| {
            [
                "done",
                "session",
                "unmount",
                "running borg",
                "borg finished",
            ]
            .iter()
            .any(|k| l.contains(k))
        }) {
            eprintln!("  [{}] {line}", if session { "session" } else { "link" });
        }
        (elapsed, p.snapshots_made().len() - before)
    };
    // Once to warm borg's caches and the page cache, then measured.
    measure(true);
    let (plain, snaps_plain) = measure(false);
    let (with_session, snaps_session) = measure(true);
    eprintln!(
        "MEASURED two-repository borgmatic create: session {:.2} s ({snaps_session} snapshots), \
         plain link {:.2} s ({snaps_plain} snapshots), ratio plain/session {:.2}",
        with_session.as_secs_f64(),
        plain.as_secs_f64(),
        plain.as_secs_f64() / with_session.as_secs_f64()
    );
    assert_eq!(snaps_session, 2, "one set of data + data/child");
    assert_eq!(snaps_plain, 4, "one set per repository");
    assert_eq!(archives(&repos[0]).len(), 3);
    assert_nothing_left(&fx);
}

/// zfs-snap's own unit, for borg without borgmatic: a script of two
/// creates, run in a session; both read one snapshot set.
#[test]
fn the_standalone_unit_runs_a_script_on_one_snapshot_set() {
    let (fx, _unit) = systemd_fixture!();
    install_standalone_units();
    let p = &fx.pool;
    p.dataset("data", &[]);
    let changing = p.write("data/changing", "as snapshotted\n");
    let repos = configure(&[p.path("data")], &changing, CREATE_ONLY);
    write_file(
        Path::new("/etc/zfs-snap/backup.env"),
        &format!("BORG_PASSCOMMAND=cat {PASSPHRASE_FILE}\n"),
    );
    write_script(
        Path::new("/etc/zfs-snap/backup"),
        &format!(
            "set -e\n\
             {LINK} create {r1}::a {data}\n\
             echo changed >> {changing}\n\
             {LINK} create {r2}::b {data}\n",
            r1 = repos[0].display(),
            r2 = repos[1].display(),
            data = p.path("data").display(),
            changing = changing.display(),
        ),
    );
    systemctl(&["daemon-reload"]).success();
    let out = systemctl(&["start", "zfs-snap-backup.service"]);
    assert_eq!(
        out.code(),
        0,
        "{}\n{}",
        out.dump(),
        must(
            "journalctl",
            &["-u", "zfs-snap-backup", "--no-pager", "-o", "cat"]
        )
    );
    assert_eq!(file_in(&repos[0], "a", &changing), "as snapshotted\n");
    assert_eq!(file_in(&repos[1], "b", &changing), "as snapshotted\n");
    assert_eq!(p.snapshots_made().len(), 1);
    assert_nothing_left(&fx);
}
