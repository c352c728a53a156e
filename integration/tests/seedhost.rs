//! The seed's host (`../shared/seed/borgmatic-service.md`), end to end:
//! root on ZFS (`rpool/ROOT/debian` on `/`, `rpool/var/lib`, `rpool/home`;
//! `/etc` and `/tmp` on the root dataset), borgmatic under its upstream
//! unit with zfs-snap's drop-in and every upstream hardening line in
//! force, the seed's basic config (sources `/var/lib /home /etc`, its
//! excludes and retention), a `repokey-blake2` repository over SSH served
//! by a real sshd as rsync.net serves one (`borg serve --restrict-to-path`
//! forced by `authorized_keys`, a `/./` path) plus a local one, the
//! passphrase from a file (`encryption_passcommand`, as the seed's module
//! does) or from upstream's encrypted credential, and PostgreSQL dumped by
//! borgmatic's database hook while a writer keeps inserting rows.
//!
//! Runs in the vm-tests guest that is that host (`vm-tests test` gives it
//! executables named `seedhost*`); anywhere else it skips loudly, and where
//! `ZFS_SNAP_REQUIRE` lists `seedhost` without it, it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::units::{
    exporter_scrape, install, install_standalone_units, journal, passphrase_and_credential,
    systemctl, LINK, PASSPHRASE, PASSPHRASE_FILE, STATE_DIR,
};
use integration::*;

const SSH_KEY: &str = "/root/.ssh/id_ed25519_rsyncnet";
/// The "rsync.net" account: its home, where `/./` leads.
const SERVER_USER: &str = "rsyncnet";
const SERVER_HOME: &str = "/srv/rsyncnet";
const SSH_REPO: &str = "ssh://rsyncnet@localhost/./backups/seed";
const LOCAL_REPO: &str = "/srv/borg-local/seed";
const CONFIG: &str = "/etc/borgmatic/config.yaml";
/// The seed README's basic example.
const SOURCES: [&str; 3] = ["/var/lib", "/home", "/etc"];
const EXCLUDES: [&str; 6] = [
    "*.pyc",
    "__pycache__",
    "/var/cache",
    "/var/tmp",
    "*/node_modules",
    "*/.cache",
];
/// The datasets under the sources.
const ROOT_DATASETS: [&str; 3] = ["rpool/ROOT/debian", "rpool/var/lib", "rpool/home"];
const DATABASE: &str = "shop";
/// Rows in the table before a backup starts.
const SEEDED_ROWS: u64 = 2000;
/// Tests of other things than borgmatic's other actions run `create` alone.
const CREATE_ONLY: &str = "skip_actions:\n    - prune\n    - compact\n    - check\n";

/// One host, one borgmatic unit: one test at a time. Whether the host was
/// set up: `None` not yet, `Some(false)` its set-up failed (every later test
/// fails at once).
static HOST: Mutex<Option<bool>> = Mutex::new(None);

/// The host, set up once, held by this test; or a loud skip (`return`).
macro_rules! seed_host {
    () => {{
        need!(Need::Zfs);
        need!(Need::Borg);
        need!(Need::Borgmatic);
        need!(Need::Systemd);
        need!(Need::SeedHost);
        let mut ready = HOST.lock().unwrap_or_else(|e| e.into_inner());
        match *ready {
            Some(true) => {}
            Some(false) => panic!("the seed's host's set-up failed in an earlier test"),
            None => {
                *ready = Some(false);
                set_up_host();
                *ready = Some(true);
            }
        }
        // Only what a test cannot wait for: upstream's one-minute delay.
        install("ExecStartPre=\n");
        ready
    }};
}

/// `sh -c SCRIPT`, which must succeed; its stdout.
#[track_caller]
fn sh(script: &str) -> String {
    must("sh", &["-ec", script])
}

/// `psql` as the database's owner (root is mapped to `postgres`).
#[track_caller]
fn psql(database: &str, sql: &str) -> String {
    must(
        "psql",
        &[
            "-X", "-q", "-tA", "-U", "postgres", "-d", database, "-c", sql,
        ],
    )
    .trim()
    .to_owned()
}

/// Plain borg with the passphrase from its file and the SSH key.
fn borg() -> Command {
    let mut cmd = Command::new("borg");
    cmd.env("BORG_PASSCOMMAND", format!("cat {PASSPHRASE_FILE}"))
        .env("BORG_RSH", format!("ssh -i {SSH_KEY}"));
    cmd
}

#[track_caller]
fn borg_must(args: &[&str]) -> String {
    run(borg().args(args)).success().stdout
}

fn set_up_host() {
    // The passphrase: a file (the seed's module: an agenix secret), and
    // upstream's encrypted credential made from it.
    passphrase_and_credential();

    // "rsync.net": an account whose key may only run `borg serve` below
    // its backups directory.
    sh(&format!(
        "id {SERVER_USER} >/dev/null 2>&1 || useradd --create-home --home-dir {SERVER_HOME} --shell /bin/sh {SERVER_USER}\n\
         mkdir -p -m 0700 /root/.ssh {SERVER_HOME}/.ssh {SERVER_HOME}/backups\n\
         [ -e {SSH_KEY} ] || ssh-keygen -q -t ed25519 -N '' -f {SSH_KEY}\n\
         printf 'command=\"borg serve --restrict-to-path {SERVER_HOME}/backups\",restrict %s\\n' \"$(cat {SSH_KEY}.pub)\" > {SERVER_HOME}/.ssh/authorized_keys\n\
         chown -R {SERVER_USER}: {SERVER_HOME}\n\
         chmod 0600 {SERVER_HOME}/.ssh/authorized_keys\n\
         systemctl start ssh.service"
    ));
    wait_until(Duration::from_secs(60), "sshd's host key", || {
        let out = run(Command::new("ssh-keyscan").args(["-t", "ed25519", "localhost"]));
        out.code() == 0 && !out.stdout.trim().is_empty() && {
            write_file(Path::new("/root/.ssh/known_hosts"), &out.stdout);
            true
        }
    });

    // PostgreSQL: Debian's cluster, root allowed in as `postgres` (peer
    // authentication with an ident map), a table with rows.
    sh("[ -n \"$(pg_lsclusters -h)\" ] || pg_createcluster 15 main\n\
        conf=$(ls -d /etc/postgresql/*/main)\n\
        grep -q '^seed ' $conf/pg_ident.conf || printf 'seed root postgres\\nseed postgres postgres\\n' >> $conf/pg_ident.conf\n\
        sed -i 's/^\\(local *all *postgres *peer\\)$/\\1 map=seed/' $conf/pg_hba.conf\n\
        systemctl restart postgresql.service");
    let up = || {
        run(Command::new("psql").args(["-X", "-U", "postgres", "-d", "postgres", "-c", "select 1"]))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while up().code() != 0 {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL does not answer: {}\n{}\n{}",
            up().dump(),
            run(&mut Command::new("pg_lsclusters")).dump(),
            run(Command::new("journalctl").args(["-u", "postgresql@*", "--no-pager", "-o", "cat"]))
                .stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Between the oracle's snapshot and zfs-snap's (moments apart) only
    // the writer's rows may change, and they change no file's name: no
    // checkpoint by timer (it recycles WAL files under new names), no
    // autovacuum (a worker visiting a database writes its relation cache
    // file, `base/N/pg_internal.init`, or a table's new map forks). The
    // oracle below compares path lists.
    psql("postgres", "alter system set checkpoint_timeout = '1h'");
    psql("postgres", "alter system set autovacuum = off");
    psql("postgres", "select pg_reload_conf()");

    // What the seed's excludes and `exclude_caches` must leave out, next to
    // what they must keep.
    sh("mkdir -p /home/alice/.cache/thing /home/alice/app/node_modules/x /home/alice/src/__pycache__ \
              /home/alice/cachedir /var/lib/seedtest /etc/seedtest\n\
        echo keep > /home/alice/notes.txt\n\
        echo drop > /home/alice/.cache/thing/blob\n\
        echo drop > /home/alice/app/node_modules/x/index.js\n\
        echo keep > /home/alice/app/main.js\n\
        echo drop > /home/alice/src/__pycache__/m.cpython-311.pyc\n\
        echo drop > /home/alice/src/old.pyc\n\
        echo keep > /home/alice/src/m.py\n\
        printf 'Signature: 8a477f597d28d172789f06886806bc55\\n' > /home/alice/cachedir/CACHEDIR.TAG\n\
        echo drop > /home/alice/cachedir/blob\n\
        echo keep > /var/lib/seedtest/state\n\
        echo keep > /etc/seedtest/setting");
}

/// A fresh database with [`SEEDED_ROWS`] rows, vacuumed (so that its
/// visibility and free-space maps exist before any backup).
fn fresh_database() {
    let _ = run(Command::new("dropdb").args(["-U", "postgres", "--if-exists", DATABASE]));
    must("createdb", &["-U", "postgres", DATABASE]);
    psql(
        DATABASE,
        &format!(
            "create table ticks (id bigserial primary key, at timestamptz default now(), note text);\
             insert into ticks (note) select 'seed' from generate_series(1, {SEEDED_ROWS})"
        ),
    );
    psql(DATABASE, "vacuum analyze ticks");
    psql(DATABASE, "checkpoint");
}

/// Both repositories, empty: `repokey-blake2`, as the seed says for rsync.net.
fn fresh_repositories() {
    fresh(&[SSH_REPO, LOCAL_REPO]);
}

/// The `repos` (of [`SSH_REPO`] and [`LOCAL_REPO`]) a test uses, empty;
/// a test that uses one pays no borg start-ups for the other.
fn fresh(repos: &[&str]) {
    sh(&format!(
        "mkdir -p {SERVER_HOME}/backups && chown {SERVER_USER}: {SERVER_HOME}/backups\n\
         mkdir -p $(dirname {LOCAL_REPO})"
    ));
    for &repo in repos {
        let dir = if repo == SSH_REPO {
            format!("{SERVER_HOME}/backups/seed")
        } else {
            repo.to_owned()
        };
        let _ = std::fs::remove_dir_all(dir);
        borg_must(&["init", "-e", "repokey-blake2", repo]);
    }
}

/// The seed's basic config with both repositories, the database, `extra`
/// (more settings) and `commands` (more items of `commands:`).
fn configure(passphrase: Passphrase, extra: &str, commands: &str) {
    configure_with(&SOURCES, true, passphrase, extra, commands);
}

/// Where borgmatic gets the repositories' passphrase.
#[derive(Clone, Copy, PartialEq)]
enum Passphrase {
    /// `encryption_passcommand: cat FILE`: the NixOS module's way.
    File,
    /// Upstream's unit's encrypted credential.
    Credential,
}

/// borgmatic's configuration as the NixOS module generates it for this
/// host (nix/core.nix for the `seedHost` example of nix/tests/examples.nix,
/// with the guest's paths; `.ci/nix-checks.sh` proves the file is that).
const MODULE_SETTINGS: &str = include_str!("seedhost-config.json");

/// [`configure`] with other sources, with or without the database: for
/// the tests of one thing (a seed's full create costs minutes here). The
/// module's settings, written as YAML (each value in JSON's flow style,
/// which YAML reads), with these changes only.
fn configure_with(
    sources: &[&str],
    database: bool,
    passphrase: Passphrase,
    extra: &str,
    commands: &str,
) {
    let mut settings: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(MODULE_SETTINGS).expect("seedhost-config.json");
    let paths: Vec<&str> = settings["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert_eq!(paths, [SSH_REPO, LOCAL_REPO], "the module's repositories");
    assert_eq!(settings["local_path"], LINK);
    assert_eq!(
        settings["encryption_passcommand"],
        format!("cat {PASSPHRASE_FILE}").as_str()
    );
    assert_eq!(settings["source_directories"], serde_json::json!(SOURCES));
    assert_eq!(settings["exclude_patterns"], serde_json::json!(EXCLUDES));
    settings.insert("source_directories".into(), serde_json::json!(sources));
    if !database {
        settings.remove("postgresql_databases");
    }
    if passphrase == Passphrase::Credential {
        settings.remove("encryption_passcommand");
        settings.insert(
            "encryption_passphrase".into(),
            "{credential systemd borgmatic.pw}".into(),
        );
    }
    let mut yaml: String = settings
        .iter()
        .map(|(key, value)| format!("{key}: {value}\n"))
        .collect();
    if !commands.is_empty() {
        yaml.push_str(&format!("commands:\n{commands}"));
    }
    yaml.push_str(extra);
    write_file(Path::new(CONFIG), &yaml);
}

/// A borg that keeps what each create prints in `dir` (the JSON zfs-snap
/// asks the create for: the oracle of the figures recorded), installed as
/// the unit's `ZFS_SNAP_BORG`.
fn install_recording_borg(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let recorder = write_script(
        &dir.join("recording-borg"),
        &format!(
            "[ \"$1\" = create ] || exec /usr/bin/borg \"$@\"\n\
             case \" $* \" in *\" --dry-run \"*) exec /usr/bin/borg \"$@\" ;; esac\n\
             out=$(mktemp {dir}/printed.XXXXXX) || exit 2\nrc=0\n\
             /usr/bin/borg \"$@\" > \"$out\" || rc=$?\ncat \"$out\"\nexit $rc\n",
            dir = dir.display()
        ),
    );
    install(&format!(
        "ExecStartPre=\nEnvironment=ZFS_SNAP_BORG={}\n",
        recorder.display()
    ));
}

/// What the run recorded, as zfs-snap's exporter unit serves it, against
/// what each create printed (kept by [`install_recording_borg`] in `dir`):
/// figures for each create into each encrypted repository, labelled with
/// borg's own location; each repository's totals and archive count as the
/// session's end took them, after borgmatic's prune and compact (equal to
/// `borg info` and `borg list` now); one session with two creates.
#[track_caller]
fn assert_recorded_figures(dir: &Path, log: &str) {
    let samples = exporter_scrape();
    let texts: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("printed."))
        .map(|e| read_file(&e.path()))
        .collect();
    // borgmatic's other creates (its special-file scan) print no JSON.
    let printed: Vec<serde_json::Value> = texts
        .iter()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect();
    let shown: Vec<String> = texts
        .iter()
        .map(|t| t.chars().take(400).collect())
        .collect();
    for repo in [SSH_REPO, LOCAL_REPO] {
        let names = archives(repo);
        let name = names
            .last()
            .unwrap_or_else(|| panic!("no archive in {repo}\n{log}"));
        let json = printed
            .iter()
            // borgmatic 2 creates NAME.checkpoint and renames it after.
            .find(|j| {
                j["archive"]["name"] == name.as_str()
                    || j["archive"]["name"] == format!("{name}.checkpoint").as_str()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no JSON of {name}: zfs-snap did not ask its create for --json\n\
                     printed: {shown:#?}\n{log}"
                )
            });
        assert_eq!(json["repository"]["location"], repo, "borg's own location");
        assert_figures_match_borg(&samples, &borg, repo, name, Some(json), Totals::AfterTheRun);
    }
    let info: Vec<&String> = samples
        .keys()
        .filter(|k| k.starts_with("zfs_snap_last_run_info{"))
        .collect();
    assert!(
        info.len() == 1 && info[0].contains("kind=\"session\""),
        "{info:?}"
    );
    assert_eq!(samples["zfs_snap_last_run_creates"], 2.0);
    assert_eq!(samples["zfs_snap_last_run_success"], 1.0);
    assert_eq!(
        samples["zfs_snap_runs_total"], 1.0,
        "one session for the run"
    );
}

/// `systemctl start borgmatic.service`, waited for up to `limit`; the
/// unit's result and how long it took.
fn start_unit(limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    systemctl(&["start", "--no-block", "borgmatic.service"]).success();
    let mut result = String::new();
    wait_until(limit, "borgmatic.service to finish", || {
        let state = systemctl(&["show", "-p", "ActiveState,Result", "borgmatic.service"]).stdout;
        let active =
            state.contains("ActiveState=activating") || state.contains("ActiveState=active\n");
        result = state
            .lines()
            .find_map(|l| l.strip_prefix("Result="))
            .unwrap_or_default()
            .to_owned();
        !active
    });
    (result, started.elapsed())
}

fn archives(repo: &str) -> Vec<String> {
    borg_must(&["list", "--short", repo])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn paths_in(repo: &str, archive: &str) -> Vec<String> {
    let mut v: Vec<String> = borg_must(&[
        "list",
        "--format",
        "{path}{NL}",
        &format!("{repo}::{archive}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    v.sort();
    v
}

fn file_in(repo: &str, archive: &str, path: &str) -> String {
    borg_must(&[
        "extract",
        "--stdout",
        &format!("{repo}::{archive}"),
        path.trim_start_matches('/'),
    ])
}

/// Nothing of zfs-snap's is left on the host: no snapshot with our
/// ownership property, no hold on one, no mount of ours, no socket, and
/// the unit is not running.
#[track_caller]
fn assert_nothing_left() {
    let ours = zfs(&[
        "get",
        "-H",
        "-r",
        "-t",
        "snapshot",
        "-o",
        "name,value",
        OWNER_PROPERTY,
        "rpool",
    ]);
    let ours: Vec<&str> = ours.lines().filter(|l| !l.ends_with("\t-")).collect();
    assert!(ours.is_empty(), "snapshots of ours left: {ours:?}");
    let mounts: Vec<Mount> = mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with("/run/zfs-snap"))
        .collect();
    assert!(mounts.is_empty(), "mounts of ours left: {mounts:?}");
    assert!(!Path::new("/run/zfs-snap/session.sock").exists());
    let state = systemctl(&["show", "-p", "ActiveState", "--value", "borgmatic.service"]);
    assert!(
        ["inactive", "failed"].contains(&state.stdout.trim()),
        "the unit still runs: {}",
        state.stdout.trim()
    );
}

/// What plain borg stores of the sources, with the seed's excludes, from
/// the state frozen in the snapshots named `snap` of [`ROOT_DATASETS`]:
/// the snapshots mounted as the host's tree, plain borg run in a chroot
/// of it (so it sees the same paths and the same patterns).
fn oracle_paths(snap: &str, special: &[String]) -> Vec<String> {
    let top = Path::new("/var/tmp/seed-oracle");
    let work = Path::new("/var/tmp/seed-oracle-work");
    let _ = run(Command::new("umount").arg("-R").arg(top));
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(top).unwrap();
    // Where the chroot can write (the snapshots are read-only).
    std::fs::create_dir_all(work.join("tmp")).unwrap();
    // The seed's excludes, and the special files borgmatic excluded (its
    // database hook turns `--read-special` on).
    let mut excludes: Vec<String> = EXCLUDES.iter().map(|e| e.to_string()).collect();
    excludes.extend(special.iter().cloned());
    write_file(&work.join("excludes"), &(excludes.join("\n") + "\n"));
    sh(&format!(
        "mount -t zfs rpool/ROOT/debian@{snap} {top}\n\
         mount -t zfs rpool/var/lib@{snap} {top}/var/lib\n\
         mount -t zfs rpool/home@{snap} {top}/home\n\
         mount --bind {work} {top}/mnt\n\
         mount --rbind /dev {top}/dev\n\
         mount -t proc proc {top}/proc",
        top = top.display(),
        work = work.display()
    ));
    let in_chroot = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(top)
            .args([
                "env",
                "BORG_BASE_DIR=/mnt/base",
                "TMPDIR=/mnt/tmp",
                "BORG_PASSPHRASE=",
            ])
            .args(["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes", "borg"])
            .args(args);
        run(&mut cmd)
    };
    let init = in_chroot(&["init", "-e", "none", "/mnt/repo"]);
    let create = in_chroot(&[
        "create",
        "--read-special",
        "--exclude-caches",
        "--exclude-from",
        "/mnt/excludes",
        "/mnt/repo::oracle",
        SOURCES[0],
        SOURCES[1],
        SOURCES[2],
    ]);
    let list = in_chroot(&["list", "--format", "{path}{NL}", "/mnt/repo::oracle"]);
    let _ = run(Command::new("umount").arg("-R").arg(top));
    init.success();
    assert!(create.code() <= 1, "{}", create.dump());
    let mut paths: Vec<String> = list.success().stdout.lines().map(str::to_owned).collect();
    paths.sort();
    paths
}

fn destroy_snapshots(snap: &str) {
    for ds in ROOT_DATASETS {
        let _ = run(Command::new("zfs").args(["destroy", &format!("{ds}@{snap}")]));
    }
}

/// The seed's basic config with the database hook, run by upstream's unit
/// with every action borgmatic runs by default (create, prune, compact,
/// check) into the encrypted SSH repository and the local one, while a
/// writer inserts rows and another process keeps changing a file in /etc:
/// both archives hold one moment, the one plain borg stores from the same
/// frozen state; the dump restores; monitoring as shipped records each
/// create's figures ([`assert_recorded_figures`]); nothing of ours is left.
#[test]
fn the_seeds_host_backs_up_one_moment_into_an_encrypted_ssh_and_a_local_repository() {
    let _host = seed_host!();
    let printed = Path::new("/srv/seed-printed");
    install_recording_borg(printed);
    fresh_repositories();
    // Older archives of this host: one four days ago, two from one day
    // three days ago. The seed's retention keeps the later of that day's
    // two (`keep_daily`) and the oldest (borg keeps the oldest archive
    // while a rule has fewer periods than its count), so borgmatic's prune
    // deletes `pre-1` from each repository, and the totals at the session's
    // end must be those after it.
    for repo in [SSH_REPO, LOCAL_REPO] {
        for (n, at) in [
            (0, "4 days ago 01:00"),
            (1, "3 days ago 01:00"),
            (2, "3 days ago 02:00"),
        ] {
            let at = sh(&format!("date -u -d '{at}' +%Y-%m-%dT%H:%M:%S"));
            borg_must(&[
                "create",
                "--timestamp",
                at.trim(),
                &format!("{repo}::vm-tests-pre-{n}"),
                "/etc/seedtest",
            ]);
        }
    }
    fresh_database();
    let oracle = "seed-oracle";
    destroy_snapshots(oracle);
    let hooked = ["/var/lib/seedtest/hooked", "/home/alice/hooked"];
    for f in hooked {
        write_file(Path::new(f), "before\n");
    }
    write_file(Path::new("/etc/seedtest/ticking"), "0\n");
    // Before the first create (the session freezes at the first create):
    // the oracle's own snapshot, of the sources' datasets, in one call.
    // After each repository: a change a later create would see if it read
    // the live tree.
    let oracle_snapshot = ROOT_DATASETS
        .iter()
        .map(|d| format!("{d}@{oracle}"))
        .collect::<Vec<_>>()
        .join(" ");
    configure(
        Passphrase::File,
        "",
        &format!(
            "    - before: action\n      when:\n          - create\n      run:\n\
             \x20         - zfs list -H -o name {first} >/dev/null 2>&1 || zfs snapshot {oracle_snapshot}\n\
             \x20   - after: repository\n      run:\n\
             \x20         - date +%s%N >> {a}\n\
             \x20         - date +%s%N >> {b}\n",
            first = format_args!("{}@{oracle}", ROOT_DATASETS[0]),
            a = hooked[0],
            b = hooked[1],
        ),
    );
    let scratch = PathBuf::from("/var/tmp/seed-writers");
    std::fs::create_dir_all(&scratch).unwrap();
    let spawn = |name: &str, script: &str| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .stdout(std::fs::File::create(scratch.join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(scratch.join(format!("{name}.err"))).unwrap());
        KillOnDrop(cmd.spawn().unwrap())
    };
    let writer = spawn(
        "writer",
        &format!(
            "while :; do echo \"insert into ticks (note) values ('live');\"; sleep 0.2; done | \
             psql -X -q -U postgres -d {DATABASE}"
        ),
    );
    let ticker = spawn(
        "ticker",
        "while :; do date +%s%N >> /etc/seedtest/ticking; sleep 0.5; done",
    );
    let _ = std::fs::remove_dir_all(STATE_DIR);

    let (result, took) = start_unit(Duration::from_secs(1200));
    drop(ticker);
    drop(writer);
    let log = journal("borgmatic");
    eprintln!(
        "borgmatic.service (seed's config, default actions, 2 encrypted repositories): {took:.1?}"
    );
    assert_eq!(result, "success", "{log}");

    let ssh = archives(SSH_REPO);
    let local = archives(LOCAL_REPO);
    for names in [&ssh, &local] {
        assert_eq!(
            names[..2],
            ["vm-tests-pre-0", "vm-tests-pre-2"],
            "borgmatic's prune deleted vm-tests-pre-1 (and only it): {names:?}\n{log}"
        );
        assert_eq!(names.len(), 3, "the new archive: {names:?}\n{log}");
    }
    assert_recorded_figures(printed, &log);
    let (ssh, local) = (&ssh[2], &local[2]);
    assert!(ssh.starts_with("vm-tests-"), "{ssh}");

    // One moment in both repositories.
    let paths = paths_in(SSH_REPO, ssh);
    assert_same_paths(
        &paths_in(LOCAL_REPO, local),
        &paths,
        "the local archive against the SSH one",
    );
    let ticking = file_in(SSH_REPO, ssh, "/etc/seedtest/ticking");
    assert_eq!(
        file_in(LOCAL_REPO, local, "/etc/seedtest/ticking"),
        ticking,
        "/etc (a read-only self-bind in the unit) read from the snapshot by both creates"
    );
    assert!(
        read_file(Path::new("/etc/seedtest/ticking")).len() > ticking.len(),
        "the file changed while the unit ran"
    );
    for f in hooked {
        let live = read_file(Path::new(f));
        assert_eq!(live.lines().count(), 3, "{f}: one line per repository");
        for (repo, archive) in [(SSH_REPO, ssh), (LOCAL_REPO, local)] {
            assert_eq!(file_in(repo, archive, f), "before\n", "{f} in {repo}");
        }
    }

    // The archive holds what plain borg stores of the same frozen state
    // (its own snapshot, taken just before zfs-snap's), plus borgmatic's
    // own files (the dump, its manifest).
    let (borgmatic_own, from_sources): (Vec<String>, Vec<String>) = paths
        .iter()
        .cloned()
        .partition(|p| p == "borgmatic" || p.starts_with("borgmatic/"));
    // borgmatic's own list of special files it excluded, from its log.
    let special: Vec<String> = log
        .lines()
        .filter_map(|l| l.split_once("Excluding special files to prevent Borg from hanging: "))
        .flat_map(|(_, list)| list.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let expected = oracle_paths(oracle, &special);
    destroy_snapshots(oracle);
    assert_same_paths(
        &from_sources,
        &expected,
        "the archive against plain borg of the frozen tree",
    );
    for p in [
        "home/alice/notes.txt",
        "home/alice/app/main.js",
        "home/alice/src/m.py",
        "etc/seedtest/setting",
        "var/lib/seedtest/state",
    ] {
        assert!(paths.contains(&p.to_owned()), "{p} kept");
    }
    // The seed's bare `__pycache__` is a borg `fm:` pattern anchored at the
    // root: it matches no directory below it, so plain borg keeps
    // `home/alice/src/__pycache__` (the oracle above agrees); its `.pyc`
    // goes by `*.pyc`.
    for p in [
        "home/alice/.cache",
        "home/alice/app/node_modules",
        "home/alice/src/__pycache__/m.cpython-311.pyc",
        "home/alice/src/old.pyc",
        "home/alice/cachedir/blob",
    ] {
        assert!(!paths.contains(&p.to_owned()), "{p} excluded");
    }
    let dump = format!("borgmatic/postgresql_databases/localhost/{DATABASE}");
    assert!(borgmatic_own.contains(&dump), "the dump: {borgmatic_own:?}");

    // The dump restores into a fresh database, with rows the writer added.
    let rows_at_end: u64 = psql(DATABASE, "select count(*) from ticks")
        .parse()
        .unwrap();
    must("dropdb", &["-U", "postgres", DATABASE]);
    must("createdb", &["-U", "postgres", DATABASE]);
    let restore = run(Command::new("borgmatic").args([
        "restore",
        "--config",
        CONFIG,
        "--repository",
        "rsync.net",
        "--archive",
        "latest",
        "--data-source",
        DATABASE,
    ]));
    assert_eq!(restore.code(), 0, "{}", restore.dump());
    let restored: u64 = psql(DATABASE, "select count(*) from ticks")
        .parse()
        .unwrap();
    assert!(
        restored > SEEDED_ROWS && restored <= rows_at_end,
        "restored {restored} rows: more than the {SEEDED_ROWS} seeded, at most the {rows_at_end} at the end"
    );
    assert_nothing_left();
}

/// A child killed with its handle.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        for p in descendants(pid).into_iter().chain(std::iter::once(pid)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

/// borgmatic run by hand (no unit), where its runtime directory, and so
/// the named pipe its database hook dumps through, is on ZFS (`/tmp` on the
/// root dataset): borg must read the pipe live, not its copy in a
/// snapshot, which no writer would ever open (issue 19, item 1).
#[test]
fn a_dump_made_by_hand_with_the_runtime_directory_on_zfs_is_read_live() {
    let _host = seed_host!();
    fresh(&[LOCAL_REPO]);
    fresh_database();
    configure_with(&["/etc/seedtest"], true, Passphrase::File, CREATE_ONLY, "");
    assert_eq!(
        sh("stat -f -c %T /tmp").trim(),
        "zfs",
        "/tmp on the root dataset"
    );
    let out = run(Command::new(zfs_snap_bin())
        .args(["session", "--", "borgmatic", "create", "--config", CONFIG])
        .args(["--repository", "local", "--verbosity", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env("TMPDIR", "/tmp"));
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(
        out.stderr.contains("/tmp/borgmatic-"),
        "borgmatic's runtime directory under /tmp: {}",
        out.dump()
    );
    let archive = archives(LOCAL_REPO).pop().expect("an archive");
    // The dump is whole: pg_restore reads its table of contents.
    let toc = sh(&format!(
        "BORG_PASSCOMMAND='cat {PASSPHRASE_FILE}' borg extract --stdout {LOCAL_REPO}::{archive} \
         borgmatic/postgresql_databases/localhost/{DATABASE} | pg_restore -l"
    ));
    assert!(toc.contains("TABLE DATA public ticks"), "{toc}");
    assert_nothing_left();
}

/// A source path that does not exist costs a warning, as with plain borg,
/// not the backup: the same status and the same archive as plain borg of
/// the live tree (issue 19, item 3), into the encrypted SSH repository.
#[test]
fn a_missing_source_path_is_a_warning_as_with_plain_borg() {
    let _host = seed_host!();
    fresh(&[SSH_REPO]);
    let paths = ["/etc/seedtest", "/var/lib/gone", "/home/alice"];
    let ours = run(Command::new(zfs_snap_bin())
        .args(["wrap", "--", "borg", "create", &format!("{SSH_REPO}::ours")])
        .args(paths)
        .env("BORG_PASSCOMMAND", format!("cat {PASSPHRASE_FILE}"))
        .env("BORG_RSH", format!("ssh -i {SSH_KEY}")));
    let plain = run(borg()
        .args(["create", &format!("{SSH_REPO}::plain")])
        .args(paths));
    assert_eq!(plain.code(), 1, "{}", plain.dump());
    assert_eq!(ours.code(), plain.code(), "{}", ours.dump());
    assert!(ours.stderr.contains("/var/lib/gone"), "{}", ours.dump());
    let got = paths_in(SSH_REPO, "ours");
    assert_same_paths(&got, &paths_in(SSH_REPO, "plain"), "against plain borg");
    assert!(got.contains(&"home/alice/notes.txt".to_owned()), "{got:?}");
    assert_nothing_left();
}

/// Bind mounts of datasets are read from their snapshots (issue 19, item
/// 2), under zfs-snap's own hardened unit as it ships on this root-on-ZFS
/// host: its `ProtectSystem=full` makes `/etc` (on the root dataset) a
/// read-only self-bind in the unit's namespace, and NixOS impermanence's
/// bind of `/persist/var/lib/imp` (another dataset) onto `/var/lib/imp` is
/// a `mount --bind` of a dataset's directory onto a third. The unit's
/// script makes two creates with a change between them, made from outside
/// after the first has finished: both archives hold what was frozen, the
/// paths plain borg stores of the same tree, and no source is read live.
#[test]
fn bind_mounts_of_datasets_are_read_from_their_snapshots_under_the_hardened_unit() {
    let _host = seed_host!();
    fresh(&[LOCAL_REPO]);
    let sync = Path::new("/run/seed-binds");
    let _ = std::fs::remove_dir_all(sync);
    std::fs::create_dir_all(sync).unwrap();
    let imp = Path::new("/var/lib/imp");
    let _ = run(Command::new("umount").arg(imp));
    let _ = run(Command::new("zfs").args(["destroy", "-r", "rpool/persist"]));
    zfs(&["create", "-o", "mountpoint=/persist", "rpool/persist"]);
    write_file(Path::new("/persist/var/lib/imp/state"), "frozen\n");
    write_file(Path::new("/persist/var/lib/imp/sub/kept"), "kept\n");
    std::fs::create_dir_all(imp).unwrap();
    must(
        "mount",
        &["--bind", "/persist/var/lib/imp", &imp.display().to_string()],
    );
    write_file(Path::new("/etc/seedtest/bound"), "frozen\n");
    let sources = ["/etc/seedtest", "/var/lib/imp"];
    let plain = run(borg()
        .args(["create", &format!("{LOCAL_REPO}::plain")])
        .args(sources));

    install_standalone_units();
    write_file(
        Path::new("/etc/zfs-snap/backup.env"),
        &format!("BORG_PASSCOMMAND=cat {PASSPHRASE_FILE}\n"),
    );
    let sync_s = sync.display();
    let srcs = sources.join(" ");
    write_script(
        Path::new("/etc/zfs-snap/backup"),
        &format!(
            "set -e\n\
             {LINK} create {LOCAL_REPO}::a {srcs}\n\
             touch {sync_s}/frozen\n\
             while [ ! -e {sync_s}/changed ]; do sleep 0.2; done\n\
             {LINK} create {LOCAL_REPO}::b {srcs}\n"
        ),
    );
    systemctl(&["daemon-reload"]).success();
    systemctl(&["reset-failed", "zfs-snap-backup.service"]);
    systemctl(&["start", "--no-block", "zfs-snap-backup.service"]).success();
    wait_until(Duration::from_secs(600), "the unit's first create", || {
        sync.join("frozen").exists()
            || systemctl(&["is-active", "zfs-snap-backup.service"])
                .stdout
                .trim()
                == "failed"
    });
    // This run's id (an inactive unit shows none).
    let invocation = systemctl(&[
        "show",
        "-p",
        "InvocationID",
        "--value",
        "zfs-snap-backup.service",
    ])
    .stdout;
    // Inside the unit /etc is read-only; outside it is not.
    write_file(Path::new("/etc/seedtest/bound"), "changed\n");
    write_file(Path::new("/persist/var/lib/imp/state"), "changed\n");
    write_file(&sync.join("changed"), "");
    let mut state = String::new();
    wait_until(Duration::from_secs(600), "the unit to finish", || {
        state = systemctl(&[
            "show",
            "-p",
            "ActiveState,Result",
            "zfs-snap-backup.service",
        ])
        .stdout;
        !state.contains("ActiveState=activating") && !state.contains("ActiveState=active\n")
    });
    let log = journal("zfs-snap-backup");
    // This run's lines at warning priority or above (zfs-snap logs each
    // line at its level): a source read live is one.
    let this_run = |priority: &str| {
        must(
            "journalctl",
            &[
                &format!("_SYSTEMD_INVOCATION_ID={}", invocation.trim()),
                "-p",
                priority,
                "--no-pager",
                "-o",
                "cat",
            ],
        )
    };
    let warnings = this_run("warning");
    let lines = this_run("debug");
    let _ = run(Command::new("umount").arg(imp));
    let _ = run(Command::new("zfs").args(["destroy", "-r", "rpool/persist"]));
    let _ = std::fs::remove_dir(imp);
    let _ = std::fs::remove_file("/etc/seedtest/bound");

    assert!(state.contains("Result=success"), "{state}\n{log}");
    assert!(
        lines.contains("session done") && warnings.trim().is_empty(),
        "no warning (a source read live would be one):\n{warnings}\n{log}"
    );
    for archive in ["a", "b"] {
        for path in ["/etc/seedtest/bound", "/var/lib/imp/state"] {
            assert_eq!(
                file_in(LOCAL_REPO, archive, path),
                "frozen\n",
                "{path} in {archive}: read from the snapshot\n{log}"
            );
        }
        let got = paths_in(LOCAL_REPO, archive);
        assert!(got.contains(&"var/lib/imp/sub/kept".to_owned()), "{got:?}");
        assert_same_paths(
            &got,
            &paths_in(LOCAL_REPO, "plain"),
            &format!("{archive} against plain borg of the live tree"),
        );
    }
    assert_eq!(plain.code(), 0, "{}", plain.dump());
    let state = systemctl(&[
        "show",
        "-p",
        "ActiveState",
        "--value",
        "zfs-snap-backup.service",
    ]);
    assert_eq!(state.stdout.trim(), "inactive");
    assert_nothing_left();
}

/// A dataset whose mountpoint holds a tab (anyone with delegated `create`
/// and `mountpoint` rights can make one) stops no backup on the host
/// (issue 19, item 8).
#[test]
fn a_tab_in_another_datasets_mountpoint_stops_no_backup() {
    let _host = seed_host!();
    fresh(&[LOCAL_REPO]);
    let _ = run(Command::new("zfs").args(["destroy", "rpool/tab"]));
    zfs(&["create", "-o", "mountpoint=/srv/t\tab", "rpool/tab"]);
    let out = run(Command::new(zfs_snap_bin())
        .args([
            "wrap",
            "--",
            "borg",
            "create",
            &format!("{LOCAL_REPO}::tab"),
            "/home/alice",
        ])
        .env("BORG_PASSCOMMAND", format!("cat {PASSPHRASE_FILE}")));
    let _ = run(Command::new("zfs").args(["destroy", "rpool/tab"]));
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(paths_in(LOCAL_REPO, "tab").contains(&"home/alice/notes.txt".to_owned()));
    assert_nothing_left();
}

/// The seed's own config turns borgmatic's `zfs:` hook on. Left on next
/// to the link, borgmatic hands borg paths inside its own snapshot mounts:
/// zfs-snap takes no snapshot for them and says so, at warning priority in
/// the journal, with what to change (issue 19, item 7); the backup is made
/// and nothing of ours is left. The unit as it ships, credential included,
/// with borgmatic's default actions (create, prune, compact, check): the
/// passphrase of both encrypted repositories comes from upstream's
/// `LoadCredentialEncrypted=borgmatic.pw` (made with `systemd-creds
/// encrypt`), through borgmatic's pipe to each create and on to the
/// session's end for the totals, and is nowhere in the journal or in
/// zfs-snap's files; every figure recorded equals borg's own.
#[test]
fn borgmatics_own_zfs_hook_left_on_is_named_with_what_to_change() {
    let _host = seed_host!();
    let printed = Path::new("/srv/seed-printed");
    install_recording_borg(printed);
    fresh_repositories();
    configure_with(
        &["/home/alice", "/etc/seedtest"],
        false,
        Passphrase::Credential,
        "zfs: {}\n",
        "",
    );
    let _ = std::fs::remove_dir_all(STATE_DIR);
    let since = must("date", &["+%Y-%m-%d %H:%M:%S"]);
    let (result, took) = start_unit(Duration::from_secs(900));
    let log = journal("borgmatic");
    eprintln!("borgmatic.service (its own zfs hook on): {took:.1?}");
    let entries: Vec<serde_json::Value> = must(
        "journalctl",
        &[
            "-u",
            "borgmatic",
            "--since",
            since.trim(),
            "--no-pager",
            "-o",
            "json",
        ],
    )
    .lines()
    .filter_map(|l| serde_json::from_str(l).ok())
    .collect();
    let warned = entries.iter().any(|e| {
        e["PRIORITY"] == "4"
            && e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("remove `zfs:` from borgmatic's configuration"))
    });
    assert!(warned, "a warning that says what to change:\n{log}");
    assert_eq!(result, "success", "{log}");
    for repo in [SSH_REPO, LOCAL_REPO] {
        let names = archives(repo);
        assert_eq!(names.len(), 1, "{repo}: {names:?}\n{log}");
        let paths = paths_in(repo, &names[0]);
        assert!(
            paths.contains(&"etc/seedtest/setting".to_owned()),
            "{repo}: {paths:?}"
        );
    }
    let theirs = zfs(&["list", "-H", "-t", "snapshot", "-o", "name", "-r", "rpool"]);
    assert!(
        !theirs.contains("borgmatic"),
        "borgmatic removed its own snapshots: {theirs}"
    );
    let secret = PASSPHRASE;
    assert!(!log.contains(secret), "the passphrase in the journal");
    let leaked = run(Command::new("grep").args(["-rl", secret, STATE_DIR, "/run/zfs-snap"]));
    assert_ne!(leaked.code(), 0, "the passphrase in {}", leaked.stdout);
    // Every figure of both creates, and the totals and count the session's
    // end took after borgmatic's prune, compact and check, through the
    // credential's pipe.
    assert_recorded_figures(printed, &log);
    assert_nothing_left();
}

/// borgmatic with `local_path` left at the real borg, under the unit: its
/// creates read live files, so the session's status is a warning (1) and
/// the unit fails; the journal says why at warning priority, with what to
/// change; the run is recorded as not successful (issue 19, item 4).
#[test]
fn a_borgmatic_bypassing_the_link_fails_the_unit_and_says_why() {
    let _host = seed_host!();
    fresh_repositories();
    configure_with(&["/home/alice"], false, Passphrase::File, CREATE_ONLY, "");
    sh(&format!(
        "sed -i 's|^local_path: .*|local_path: /usr/bin/borg|' {CONFIG}"
    ));
    let (result, took) = start_unit(Duration::from_secs(900));
    let log = journal("borgmatic");
    eprintln!("borgmatic.service (local_path bypassing the link): {took:.1?}");
    assert_eq!(result, "exit-code", "{log}");
    let warned = must(
        "journalctl",
        &[
            "-u",
            "borgmatic",
            "-p",
            "warning",
            "--no-pager",
            "-o",
            "cat",
        ],
    );
    assert!(
        warned.contains("no borg create reached the session") && warned.contains("local_path"),
        "{warned}"
    );
    for repo in [SSH_REPO, LOCAL_REPO] {
        assert_eq!(archives(repo).len(), 1, "borgmatic's live backup in {repo}");
    }
    let samples = recorded_samples(Path::new(STATE_DIR));
    assert_eq!(samples["zfs_snap_last_run_success"], 0.0);
    assert_eq!(samples["zfs_snap_last_run_status"], 1.0);
    systemctl(&["reset-failed", "borgmatic.service"]);
    assert_nothing_left();
}

/// The session's socket on the host's real `/run` (issue 19, item 6): a
/// file found at its path is refused and stays; another user cannot reach
/// a running session, even with its id; a create naming a wrong secret is
/// refused, and neither the session nor the refusal prints the secret.
#[test]
fn the_sessions_socket_answers_its_own_creates_only_and_never_shows_its_secret() {
    let _host = seed_host!();
    fresh(&[LOCAL_REPO]);
    let root = Path::new("/run/zfs-snap");
    std::fs::create_dir_all(root).unwrap();
    let planted = root.join("session.sock");
    write_file(&planted, "someone else's\n");
    let refused = run(Command::new(zfs_snap_bin()).args(["session", "--", "true"]));
    assert_ne!(refused.code(), 0, "{}", refused.dump());
    assert!(
        refused.stderr.contains("session.sock"),
        "names the file: {}",
        refused.dump()
    );
    assert_eq!(read_file(&planted), "someone else's\n", "the file stays");
    std::fs::remove_file(&planted).unwrap();

    // A repository the other user could write to: were it served, its
    // create would succeed.
    let other_repo = "/tmp/seed-other-repo";
    let _ = std::fs::remove_dir_all(other_repo);
    let _ = std::fs::remove_dir_all("/tmp/seed-other-base");
    let as_other = |script: &str| {
        run(Command::new("runuser").args([
            "-u",
            SERVER_USER,
            "--",
            "env",
            "BORG_BASE_DIR=/tmp/seed-other-base",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
            "sh",
            "-c",
            script,
        ]))
    };
    as_other(&format!("borg init -e none {other_repo}")).success();
    let id_file = "/run/seed-session-id";
    let script = format!(
        "printf %s \"$ZFS_SNAP_SESSION\" > {id_file}\n\
         if runuser -u {SERVER_USER} -- env ZFS_SNAP_SESSION=\"$ZFS_SNAP_SESSION\" \
            BORG_BASE_DIR=/tmp/seed-other-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
            {LINK} create {other_repo}::x /home/alice/src 2>/run/seed-other.err; then\n\
           echo 'another user was served'; exit 9\n\
         fi\n\
         runuser -u {SERVER_USER} -- python3 -c 'import socket; \
            socket.socket(socket.AF_UNIX).connect(\"/run/zfs-snap/session.sock\")' \
            2>/run/seed-other-connect.err && echo 'another user reached the socket'\n\
         if ZFS_SNAP_SESSION=\"${{ZFS_SNAP_SESSION%-*}}-0123456789abcdef\" BORG_PASSCOMMAND='cat {PASSPHRASE_FILE}' \
            {LINK} create {LOCAL_REPO}::wrong /home/alice 2>/run/seed-wrong.err; then\n\
           echo 'a wrong secret was served'; exit 9\n\
         fi\n\
         BORG_PASSCOMMAND='cat {PASSPHRASE_FILE}' {LINK} create {LOCAL_REPO}::right /home/alice\n"
    );
    let out = run(Command::new(zfs_snap_bin()).args(["session", "--", "sh", "-c", &script]));
    let secret = read_file(Path::new(id_file))
        .rsplit_once('-')
        .map(|(_, s)| s.to_owned())
        .expect("the session's id");
    assert_eq!(secret.len(), 16, "{secret}");
    let other = read_file(Path::new("/run/seed-other.err"));
    let wrong = read_file(Path::new("/run/seed-wrong.err"));
    // Neither refused create was the session's own: its command's create
    // was served, and its status is the command's.
    assert_eq!(out.code(), 0, "{}\n{other}\n{wrong}", out.dump());
    assert!(
        wrong.contains("belongs to another zfs-snap session"),
        "{wrong}"
    );
    // The other user's link will not trust root's runtime root (someone
    // else's directory could hold a session of theirs), and the socket is
    // out of that user's reach anyway.
    assert!(
        other.contains("will not ask a session through runtime root /run/zfs-snap"),
        "the other user was told why: {other}"
    );
    assert!(
        read_file(Path::new("/run/seed-other-connect.err")).contains("PermissionError"),
        "the socket is out of another user's reach: {}\n{}",
        read_file(Path::new("/run/seed-other-connect.err")),
        out.stdout
    );
    assert!(
        !out.stdout.contains("another user reached the socket"),
        "{}",
        out.stdout
    );
    for (what, text) in [
        (
            "the session's output",
            &format!("{}{}", out.stdout, out.stderr),
        ),
        ("the other user's refusal", &other),
        ("the wrong secret's refusal", &wrong),
    ] {
        assert!(!text.contains(&secret), "{what} shows the secret:\n{text}");
    }
    assert_eq!(
        archives(LOCAL_REPO),
        ["right"],
        "only the session's own create"
    );
    assert_nothing_left();
}
