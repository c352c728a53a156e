//! What runs recorded, for monitoring. Per repository: the last `borg
//! create` through zfs-snap (when, how it ended), and for the last one that
//! made an archive, borg's own figures (the archive's sizes and file
//! count, the repository's totals). For zfs-snap itself: its last run
//! (phases, datasets, leftovers) and running totals.
//!
//! One JSON file per repository (`repositories/<hash>.json`) and one for
//! the runs (`run.json`), in the state directory; each is replaced
//! atomically (written to a temporary file beside it, then renamed), under
//! the directory's lock. `zfs-snap metrics` and the exporter only read
//! them: they never run borg or zfs.
//!
//! Recording never fails a backup: what cannot be recorded is a warning.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::borg::CreateArgs;
use crate::command::CommandLine;
use crate::session::{Report, Timings};

pub const DEFAULT_DIR: &str = "/var/lib/zfs-snap";
/// The version of the files' layout; a file without it is not ours.
pub const FORMAT: u32 = 1;
pub const REPOSITORIES_DIR: &str = "repositories";
pub const RUN_FILE: &str = "run.json";
const LOCK_FILE: &str = "lock";

/// When a create without `--json` is followed by `borg info --json` (and
/// `borg list --json`, for the archive count) to learn borg's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoPolicy {
    /// Local repositories only: a remote one costs an SSH connection and a
    /// `borg serve` start per call.
    Auto,
    Always,
    Never,
}

impl std::str::FromStr for InfoPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(InfoPolicy::Auto),
            "always" => Ok(InfoPolicy::Always),
            "never" => Ok(InfoPolicy::Never),
            other => Err(format!(
                "unknown value {other:?}: use auto (local repositories only), always or never"
            )),
        }
    }
}

impl InfoPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InfoPolicy::Auto => "auto",
            InfoPolicy::Always => "always",
            InfoPolicy::Never => "never",
        }
    }
}

/// Where and how runs are recorded.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    pub info: InfoPolicy,
    /// Also write the exposition here (node_exporter's textfile collector).
    pub textfile: Option<PathBuf>,
}

/// One repository's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepositoryState {
    pub format: u32,
    /// The repository as the create named it (a relative local path made
    /// absolute).
    pub repository: String,
    /// Creates recorded, and how many of them failed (no archive).
    pub creates: u64,
    pub failures: u64,
    pub last_attempt: Attempt,
    /// The last create that made an archive (borg exit 0 or 1).
    pub last_success: Option<Success>,
    pub last_failure: Option<Attempt>,
}

/// One create: Unix times in seconds, borg's exit code (128+N: signal N).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub start: f64,
    pub end: f64,
    pub status: i32,
    /// The archive argument as given (placeholders unexpanded).
    pub archive: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Success {
    #[serde(flatten)]
    pub attempt: Attempt,
    /// borg's figures for the archive; `None` when not asked for.
    pub archive_figures: Option<ArchiveFigures>,
    pub totals: Option<RepositoryTotals>,
    /// Archives in the repository after this create.
    pub archives: Option<u64>,
    /// Where the figures came from: `create --json`, `borg info`, or `none`.
    pub figures_from: String,
    /// When the create the figures describe ended: this one, or an
    /// earlier one when this one brought none.
    #[serde(default)]
    pub figures_end: Option<f64>,
}

/// `archive` of `borg create --json` / `archives[0]` of `borg info --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiveFigures {
    pub name: String,
    /// borg's own duration of the archive, seconds.
    pub duration: f64,
    pub original_size: u64,
    pub compressed_size: u64,
    pub deduplicated_size: u64,
    pub nfiles: u64,
}

/// `cache.stats` of borg's JSON: the repository's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepositoryTotals {
    pub total_chunks: u64,
    pub total_csize: u64,
    pub total_size: u64,
    pub total_unique_chunks: u64,
    pub unique_csize: u64,
    pub unique_size: u64,
}

/// zfs-snap's last run that took snapshots (a `wrap` or a whole session),
/// and totals over all runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// `wrap` or `session`.
    pub kind: String,
    pub start: f64,
    pub end: f64,
    /// The command's (or borg's) exit code.
    pub status: i32,
    /// Ended without error and left nothing behind.
    pub success: bool,
    pub backend: String,
    pub datasets: u64,
    pub pools: u64,
    pub processes: u64,
    /// Creates served (a session); 1 for a wrap.
    pub creates: u64,
    /// Seconds per phase: discovery, snapshot, hold, mount, borg, teardown.
    pub phases: BTreeMap<String, f64>,
    /// What earlier runs had left and this run found at its start.
    pub leftovers_found: u64,
    pub leftovers_removed: u64,
    /// Snapshots whose destroy ZFS deferred (someone else holds them).
    pub deferred_destroys: u64,
    /// What this run's teardown could not remove.
    pub left_behind: u64,
    pub runs_total: u64,
    pub failed_runs_total: u64,
    pub leftovers_removed_total: u64,
}

/// Everything in a state directory, as read for an exposition.
#[derive(Debug, Default)]
pub struct Recorded {
    pub repositories: Vec<RepositoryState>,
    pub run: Option<RunState>,
    /// Files that are not records of ours, and why.
    pub unreadable: Vec<(PathBuf, String)>,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A `borg create` that ended: what [`record_create`] needs.
pub struct Create<'a> {
    pub borg: &'a CommandLine,
    pub args: &'a CreateArgs,
    pub cwd: &'a Path,
    pub start: f64,
    pub end: f64,
    pub status: i32,
    /// borg's stdout, when the create had `--json`.
    pub stdout: Option<&'a [u8]>,
    /// Signals reach the `borg info` / `borg list` calls through it; after
    /// one, none is made.
    pub signals: &'a crate::signals::Signals,
}

/// Whether borg took its passphrase from `BORG_PASSPHRASE_FD`: only when
/// neither `BORG_PASSPHRASE` nor `BORG_PASSCOMMAND` is set (borg's order).
fn passphrase_through_a_pipe() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some();
    set("BORG_PASSPHRASE_FD") && !set("BORG_PASSPHRASE") && !set("BORG_PASSCOMMAND")
}

/// Whether borg's exit code says the archive was made: 0, a warning (1,
/// or 100-127 with `BORG_EXIT_CODES=modern`, which borgmatic 2 sets).
pub fn made_archive(status: i32) -> bool {
    matches!(status, 0 | 1 | 100..=127)
}

/// Records a create in its repository's file; on success, with borg's
/// figures (from its `--json` output, or else one `borg info --json`, as
/// `settings.info` allows). A failure leaves the last success as it was.
pub fn record_create(settings: &Settings, create: &Create<'_>) {
    let Some((given, archive)) = repository_of(create.args) else {
        tracing::debug!("no repository in the create's command line: nothing recorded");
        return;
    };
    let repository = absolute_location(&given, create.cwd);
    let attempt = Attempt {
        start: create.start,
        end: create.end,
        status: create.status,
        archive: archive.clone(),
    };
    let success = made_archive(create.status).then(|| {
        let mut ask = create.signals.received().is_none()
            && match settings.info {
                InfoPolicy::Always => true,
                InfoPolicy::Never => false,
                InfoPolicy::Auto => !is_remote(&given),
            };
        let from_json = create.stdout.and_then(|out| match parse_create_json(out) {
            Ok(figures) => Some(figures),
            Err(e) => {
                tracing::warn!("borg create --json printed no figures zfs-snap can read: {e}");
                None
            }
        });
        if ask && passphrase_through_a_pipe() {
            // borgmatic passes the passphrase through a pipe the create
            // read to its end: a second borg would read nothing and fail.
            if from_json.is_some() {
                tracing::warn!(
                    repository,
                    "borg's passphrase came through BORG_PASSPHRASE_FD (as borgmatic passes it), \
                     which only one borg can read: no borg list for the archive count"
                );
            } else {
                tracing::warn!(
                    repository,
                    "borg's passphrase came through BORG_PASSPHRASE_FD (as borgmatic passes it), \
                     which only one borg can read: no borg info for the archive's figures; give \
                     the create --json (`borgmatic create --json`) to record them"
                );
            }
            ask = false;
        }
        let (figures, from) = match from_json {
            Some(f) => (Some(f), "create --json"),
            None if ask => match info(create, &given, &archive) {
                Ok(f) => (Some(f), "borg info"),
                Err(e) => {
                    tracing::warn!(repository, "no figures for the new archive: {e}");
                    (None, "none")
                }
            },
            None => (None, "none"),
        };
        let archives = if ask {
            count_archives(create, &given)
                .map_err(|e| tracing::warn!(repository, "no archive count: {e}"))
                .ok()
        } else {
            None
        };
        let (archive_figures, totals) = figures.unzip();
        Success {
            attempt: attempt.clone(),
            figures_end: archive_figures.as_ref().map(|_| attempt.end),
            archive_figures,
            totals,
            archives,
            figures_from: from.to_owned(),
        }
    });
    let result = with_dir(settings, |dir| {
        let path = repository_file(dir, &repository);
        let old = match read_json::<RepositoryState>(&path) {
            Ok(state) => state.filter(|s| s.repository == repository),
            Err(e) => {
                tracing::warn!("{}: {e}; starting the record afresh", path.display());
                None
            }
        };
        let state = updated(old, repository.clone(), attempt, success);
        write_json(&path, &state)
    });
    if let Err(e) = result {
        tracing::warn!(repository, "monitoring: {e}");
    }
}

fn updated(
    old: Option<RepositoryState>,
    repository: String,
    attempt: Attempt,
    success: Option<Success>,
) -> RepositoryState {
    let mut state = old.unwrap_or(RepositoryState {
        format: FORMAT,
        repository,
        creates: 0,
        failures: 0,
        last_attempt: attempt.clone(),
        last_success: None,
        last_failure: None,
    });
    state.creates += 1;
    state.last_attempt = attempt.clone();
    match success {
        Some(mut s) => {
            // A create without figures (a remote repository, a borg info
            // that failed) keeps the last ones known, with their time.
            if s.archive_figures.is_none() {
                if let Some(old) = state.last_success.take() {
                    if old.archive_figures.is_some() {
                        s.archive_figures = old.archive_figures;
                        s.totals = old.totals;
                        s.archives = s.archives.or(old.archives);
                        s.figures_from = old.figures_from;
                        s.figures_end = old.figures_end;
                    }
                }
            }
            state.last_success = Some(s);
        }
        None => {
            state.failures += 1;
            state.last_failure = Some(attempt);
        }
    }
    state
}

/// A run that took snapshots: what [`record_run`] needs.
pub struct Run<'a> {
    pub kind: &'a str,
    pub start: f64,
    pub status: i32,
    pub timings: &'a Timings,
    pub creates: u64,
    /// Recovery at the run's start.
    pub recovered: &'a Report,
    /// Teardown's report, or what it could not remove.
    pub teardown: std::result::Result<&'a Report, usize>,
}

/// A run that stopped before borg ended (an error, the lock held, a
/// signal): counted as failed; the last run's figures stay, so what an
/// earlier run left behind is still shown.
pub fn record_failed_run(settings: &Settings, kind: &str, start: f64, status: i32) {
    let result = with_dir(settings, |dir| {
        let path = dir.join(RUN_FILE);
        let state = match read_json::<RunState>(&path).ok().flatten() {
            // What it left behind, its phases and leftovers stay on
            // record; when, how and that it failed are this run's.
            Some(mut old) => {
                old.kind = kind.to_owned();
                old.start = start;
                old.end = now();
                old.status = status;
                old.success = false;
                old.runs_total += 1;
                old.failed_runs_total += 1;
                old
            }
            None => RunState {
                format: FORMAT,
                kind: kind.to_owned(),
                start,
                end: now(),
                status,
                runs_total: 1,
                failed_runs_total: 1,
                ..RunState::default()
            },
        };
        write_json(&path, &state)
    });
    if let Err(e) = result {
        tracing::warn!("monitoring: {e}");
    }
}

/// Records zfs-snap's own figures of a run in `run.json`.
pub fn record_run(settings: &Settings, run: &Run<'_>) {
    let result = with_dir(settings, |dir| {
        let path = dir.join(RUN_FILE);
        let old = read_json::<RunState>(&path).ok().flatten();
        let state = run_state(old.unwrap_or_default(), run, now());
        write_json(&path, &state)
    });
    if let Err(e) = result {
        tracing::warn!("monitoring: {e}");
    }
}

fn run_state(old: RunState, run: &Run<'_>, end: f64) -> RunState {
    let t = run.timings;
    let found = run.recovered.unmounted.len()
        + run.recovered.destroyed.len()
        + run.recovered.deferred.len();
    let removed = run.recovered.unmounted.len() + run.recovered.destroyed.len();
    let (teardown_deferred, left_behind) = match run.teardown {
        Ok(report) => (report.deferred.len(), 0),
        Err(problems) => (0, problems),
    };
    let success = run.status == 0 && left_behind == 0;
    let phases = [
        ("discovery", t.discovery_ms),
        ("snapshot", t.snapshot_ms),
        ("hold", t.hold_ms),
        ("mount", t.mount_ms),
        ("borg", t.borg_ms),
        ("teardown", t.teardown_ms),
    ]
    .into_iter()
    .map(|(k, ms)| (k.to_owned(), ms / 1000.0))
    .collect();
    RunState {
        format: FORMAT,
        kind: run.kind.to_owned(),
        start: run.start,
        end,
        status: run.status,
        success,
        backend: t.backend.clone(),
        datasets: t.datasets as u64,
        pools: t.pools as u64,
        processes: t.processes as u64,
        creates: run.creates,
        phases,
        leftovers_found: found as u64,
        leftovers_removed: removed as u64,
        deferred_destroys: (run.recovered.deferred.len() + teardown_deferred) as u64,
        left_behind: left_behind as u64,
        runs_total: old.runs_total + 1,
        failed_runs_total: old.failed_runs_total + u64::from(!success),
        leftovers_removed_total: old.leftovers_removed_total + removed as u64,
    }
}

/// Runs `f` on the state directory (made if missing, refused unless it is
/// ours) under its lock, then rewrites the textfile if one is configured.
fn with_dir(
    settings: &Settings,
    f: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::result::Result<(), String> {
    let dir = &settings.dir;
    prepare(dir)?;
    prepare(&dir.join(REPOSITORIES_DIR))?;
    let lock_path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{}: {e}", lock_path.display()))?;
    // Under the lock, a temporary file of ours is a dead writer's.
    for d in [dir.to_path_buf(), dir.join(REPOSITORIES_DIR)] {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if is_our_temporary(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    f(dir).map_err(|e| format!("not recorded in {}: {e}", dir.display()))?;
    if let Some(textfile) = &settings.textfile {
        let text = crate::metrics::render(&read(dir));
        write_atomic(textfile, text.as_bytes(), 0o644).map_err(|e| {
            format!(
                "recorded, but the textfile {} was not written: {e}",
                textfile.display()
            )
        })?;
    }
    Ok(())
}

/// Whether `name` is a temporary file [`write_atomic`] makes for a record:
/// `.run.json.<16 hex>.tmp`, `.<16 hex>.json.<16 hex>.tmp`.
fn is_our_temporary(name: &str) -> bool {
    let hex16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((target, random)) = inner.rsplit_once('.') else {
        return false;
    };
    hex16(random) && (target == RUN_FILE || target.strip_suffix(".json").is_some_and(hex16))
}

/// Creates `dir` (0755: the exporter may run as another user) if missing;
/// refuses it unless it is a real directory of ours that no one else may
/// write to.
fn prepare(dir: &Path) -> std::result::Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!(
            "state directory {} must be an absolute path",
            dir.display()
        ));
    }
    // Each directory made here 0755 whatever the umask: the exporter
    // reads as another user, through every one of them.
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| std::fs::symlink_metadata(d).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        DirBuilder::new()
            .mode(0o755)
            .create(d)
            .and_then(|_| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if !meta.is_dir() {
        Some("it is not a directory (a symlink is not followed)".to_owned())
    } else if meta.uid() != me {
        Some(format!(
            "it is owned by uid {}, not by us ({me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(format!(
            "state directory {} refused: {why}; fix it, or set ZFS_SNAP_STATE_DIR / --state-dir",
            dir.display()
        )),
        None => Ok(()),
    }
}

/// The file of `repository`: named by a hash of its location, which may
/// hold any character.
pub fn repository_file(dir: &Path, repository: &str) -> PathBuf {
    let hash = Sha256::digest(repository.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(REPOSITORIES_DIR).join(format!("{hex}.json"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::result::Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => parse_record(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A record of ours: JSON of the right shape, with our [`FORMAT`].
fn parse_record<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::result::Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("empty".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) => return Err(format!("format {f}, this zfs-snap reads {FORMAT}")),
        None => return Err("JSON, but not a zfs-snap record (no \"format\")".into()),
    }
    serde_json::from_value(value).map_err(|e| format!("a zfs-snap record with {e}"))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write_atomic(path, &text, 0o644)
}

/// Writes `bytes` to a new file beside `path`, flushes it, and renames it
/// over `path`: a reader sees the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let random = crate::session::random_hex()?;
    let tmp = dir.join(format!(".{name}.{random}.tmp"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The mode whatever the umask (the exporter reads as another user).
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself, on disk (best effort: it has happened).
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads every record in `dir`. Missing files are no records; a file that
/// is not a record of ours is named in `unreadable`, and the rest is read.
pub fn read(dir: &Path) -> Recorded {
    let mut recorded = Recorded::default();
    let run = dir.join(RUN_FILE);
    match read_json::<RunState>(&run) {
        Ok(state) => recorded.run = state,
        Err(e) => recorded.unreadable.push((run, e)),
    }
    let repos = dir.join(REPOSITORIES_DIR);
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&repos) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            recorded.unreadable.push((repos, e.to_string()));
            Vec::new()
        }
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for path in names {
        match read_json::<RepositoryState>(&path) {
            Ok(Some(state)) => recorded.repositories.push(state),
            Ok(None) => {}
            Err(e) => recorded.unreadable.push((path, e)),
        }
    }
    recorded
        .repositories
        .sort_by(|a, b| a.repository.cmp(&b.repository));
    recorded
}

/// The repository and archive of `REPO::NAME` (or `::NAME` with
/// `BORG_REPO`).
pub fn repository_of(args: &CreateArgs) -> Option<(String, String)> {
    let given = args.argv[args.archive_index].to_string_lossy().into_owned();
    let (repo, name) = given.split_once("::")?;
    let repo = if repo.is_empty() {
        std::env::var("BORG_REPO").ok().filter(|r| !r.is_empty())?
    } else {
        repo.to_owned()
    };
    Some((repo, name.to_owned()))
}

/// Whether borg reaches `location` over SSH (`ssh://...`, `host:path`).
pub fn is_remote(location: &str) -> bool {
    if location.starts_with("ssh://") {
        return true;
    }
    if location.starts_with('/') || location.starts_with("file://") {
        return false;
    }
    match location.split_once(':') {
        Some((host, _)) => !host.contains('/'),
        None => false,
    }
}

/// A relative local path made absolute against `cwd`, without a trailing
/// `/`; anything else as is.
pub fn absolute_location(location: &str, cwd: &Path) -> String {
    let trimmed = match location.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let location = trimmed;
    if is_remote(location) || location.starts_with('/') || location.contains("://") {
        return location.to_owned();
    }
    let mut path = cwd.to_path_buf();
    for part in Path::new(location).components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                path.pop();
            }
            other => path.push(other),
        }
    }
    path.display().to_string()
}

/// Figures of `borg create --json` output.
pub fn parse_create_json(
    stdout: &[u8],
) -> std::result::Result<(ArchiveFigures, RepositoryTotals), String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("not JSON: {e}"))?;
    Ok((archive_figures(&v["archive"])?, totals(&v)?))
}

/// Figures of `borg info --json REPO::ARCHIVE` output.
pub fn parse_info_json(
    stdout: &[u8],
) -> std::result::Result<(ArchiveFigures, RepositoryTotals), String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("not JSON: {e}"))?;
    let last = v["archives"]
        .as_array()
        .and_then(|a| a.last())
        .ok_or("no archive in it")?;
    Ok((archive_figures(last)?, totals(&v)?))
}

fn archive_figures(a: &serde_json::Value) -> std::result::Result<ArchiveFigures, String> {
    let stat = |key: &str| {
        a["stats"][key]
            .as_u64()
            .ok_or_else(|| format!("no archive stats.{key}"))
    };
    Ok(ArchiveFigures {
        name: a["name"].as_str().ok_or("no archive name")?.to_owned(),
        duration: a["duration"].as_f64().ok_or("no archive duration")?,
        original_size: stat("original_size")?,
        compressed_size: stat("compressed_size")?,
        deduplicated_size: stat("deduplicated_size")?,
        nfiles: stat("nfiles")?,
    })
}

fn totals(v: &serde_json::Value) -> std::result::Result<RepositoryTotals, String> {
    let stat = |key: &str| {
        v["cache"]["stats"][key]
            .as_u64()
            .ok_or_else(|| format!("no cache.stats.{key}"))
    };
    Ok(RepositoryTotals {
        total_chunks: stat("total_chunks")?,
        total_csize: stat("total_csize")?,
        total_size: stat("total_size")?,
        total_unique_chunks: stat("total_unique_chunks")?,
        unique_csize: stat("unique_csize")?,
        unique_size: stat("unique_size")?,
    })
}

/// `borg info --json` of the archive just made: `REPO::NAME`; when borg
/// expanded placeholders in the name, the newest archive whose name fits
/// the template (`{now}` and the like read as `*`).
fn info(
    create: &Create<'_>,
    repository: &str,
    archive: &str,
) -> std::result::Result<(ArchiveFigures, RepositoryTotals), String> {
    let mut argv: Vec<OsString> = vec!["info".into(), "--json".into()];
    argv.extend(create.args.reach.iter().cloned());
    if archive.contains('{') {
        argv.extend([
            "--glob-archives".into(),
            template_glob(archive).into(),
            "--last".into(),
            "1".into(),
            repository.into(),
        ]);
    } else {
        argv.push(format!("{repository}::{archive}").into());
    }
    let stdout =
        crate::borg::run_captured(create.borg, &argv, create.signals).map_err(|e| e.to_string())?;
    parse_info_json(&stdout)
}

/// An archive name template as a glob: each `{...}` placeholder a `*`.
fn template_glob(template: &str) -> String {
    let mut glob = String::new();
    let mut depth = 0;
    for c in template.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    glob.push('*');
                }
                depth += 1;
            }
            '}' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '*' | '?' | '[' | ']' => {
                glob.push('[');
                glob.push(c);
                glob.push(']');
            }
            _ => glob.push(c),
        }
    }
    glob
}

/// How many archives `repository` holds (`borg list --json`).
fn count_archives(create: &Create<'_>, repository: &str) -> std::result::Result<u64, String> {
    let mut argv: Vec<OsString> = vec!["list".into(), "--json".into()];
    argv.extend(create.args.reach.iter().cloned());
    argv.push(repository.into());
    let stdout =
        crate::borg::run_captured(create.borg, &argv, create.signals).map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|e| format!("not JSON: {e}"))?;
    v["archives"]
        .as_array()
        .map(|a| a.len() as u64)
        .ok_or_else(|| "no \"archives\" in borg list --json".into())
}

/// Forgets a repository's record (one retired or renamed); whether there
/// was one.
pub fn forget(
    settings: &Settings,
    location: &str,
    cwd: &Path,
) -> std::result::Result<bool, String> {
    let repository = absolute_location(location, cwd);
    if !repository_file(&settings.dir, &repository).exists() {
        return Ok(false);
    }
    let mut found = false;
    with_dir(settings, |dir| {
        let path = repository_file(dir, &repository);
        match std::fs::remove_file(&path) {
            Ok(()) => found = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_and_local_locations() {
        for remote in [
            "ssh://u@h:22/./repo",
            "u@h:repo",
            "h:repo",
            "zh1234@zh1234.rsync.net:backups",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["/srv/repo", "repo", "./a:b", "file:///srv/repo", "a/b:c"] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn only_our_temporary_files_are_ours() {
        for ours in [
            ".run.json.0123456789abcdef.tmp",
            ".0123456789abcdef.json.fedcba9876543210.tmp",
        ] {
            assert!(is_our_temporary(ours), "{ours}");
        }
        for theirs in [
            ".node.prom.1234.tmp",
            ".run.json.tmp",
            ".x.json.0123456789abcdef.tmp",
            "run.json.0123456789abcdef.tmp",
            ".zfs-snap.prom.0123456789abcdef.tmp",
        ] {
            assert!(!is_our_temporary(theirs), "{theirs}");
        }
    }

    #[test]
    fn archive_templates_become_globs() {
        assert_eq!(template_glob("sd-{now:%Y%m%dT%H%M%S.%f}"), "sd-*");
        assert_eq!(template_glob("{hostname}-{now}"), "*-*");
        assert_eq!(template_glob("a[1]*{x}"), "a[[]1[]][*]*");
    }

    #[test]
    fn exit_codes_that_made_an_archive() {
        for made in [0, 1, 100, 107, 127] {
            assert!(made_archive(made), "{made}");
        }
        for failed in [2, 3, 75, 99, 128, 130, 143] {
            assert!(!made_archive(failed), "{failed}");
        }
    }

    #[test]
    fn relative_locations_become_absolute() {
        let cwd = Path::new("/home/u/x");
        assert_eq!(absolute_location("/srv/r/", cwd), "/srv/r");
        assert_eq!(absolute_location("repo//", cwd), "/home/u/x/repo");
        assert_eq!(absolute_location("repo", cwd), "/home/u/x/repo");
        assert_eq!(absolute_location("../r", cwd), "/home/u/r");
        assert_eq!(absolute_location("/srv/r", cwd), "/srv/r");
        assert_eq!(absolute_location("u@h:r", cwd), "u@h:r");
    }

    fn attempt(status: i32) -> Attempt {
        Attempt {
            start: 1.0,
            end: 2.0,
            status,
            archive: "a".into(),
        }
    }

    fn success() -> Success {
        Success {
            attempt: attempt(0),
            archive_figures: None,
            totals: None,
            archives: Some(3),
            figures_from: "none".into(),
            figures_end: None,
        }
    }

    #[test]
    fn a_success_without_figures_keeps_the_last_ones() {
        let mut with = success();
        with.archive_figures = Some(ArchiveFigures {
            name: "a".into(),
            duration: 1.0,
            original_size: 10,
            compressed_size: 5,
            deduplicated_size: 5,
            nfiles: 2,
        });
        with.figures_end = Some(2.0);
        let s = updated(None, "/r".into(), attempt(0), Some(with.clone()));
        let mut later = success();
        later.attempt.end = 9.0;
        let s = updated(Some(s), "/r".into(), later.attempt.clone(), Some(later));
        let last = s.last_success.unwrap();
        assert_eq!(last.attempt.end, 9.0);
        assert_eq!(last.archive_figures, with.archive_figures);
        assert_eq!(last.figures_end, Some(2.0));
    }

    #[test]
    fn a_failure_keeps_the_last_success() {
        let s = updated(None, "/r".into(), attempt(0), Some(success()));
        let s = updated(Some(s), "/r".into(), attempt(2), None);
        assert_eq!((s.creates, s.failures), (2, 1));
        assert_eq!(s.last_success, Some(success()));
        assert_eq!(s.last_failure, Some(attempt(2)));
        assert_eq!(s.last_attempt.status, 2);
    }

    #[test]
    fn records_are_told_from_other_json() {
        assert!(parse_record::<RunState>(b"").unwrap_err().contains("empty"));
        assert!(parse_record::<RunState>(b"{\"form")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_record::<RunState>(b"{\"a\": 1}")
            .unwrap_err()
            .contains("not a zfs-snap record"));
        assert!(parse_record::<RepositoryState>(b"{\"format\": 1}")
            .unwrap_err()
            .contains("missing field"));
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.prom");
        write_atomic(&path, b"a\n", 0o644).unwrap();
        write_atomic(&path, b"b\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
