//! One `borg create`, the same way wherever it runs (`zfs-snap wrap`, the
//! `borg` link, a `zfs-snap session`'s server): which creates take
//! snapshots ([`needs_snapshots`]); the pipeline up to borg (sources ->
//! discovery -> plan logged -> freeze -> rewritten command line,
//! [`freeze_for`]); borg itself ([`CreateRun`]); and what is recorded for
//! monitoring afterwards. How a run ended is an [`Outcome`].

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::borg::{self, CreateArgs, Invocation, Sources};
use crate::command::{CommandLine, Stdout};
use crate::discovery::{discover, SourceRoot, World};
use crate::error::{Error, Result};
use crate::lifecycle::Run;
use crate::metrics;
use crate::mount::Mounter;
use crate::mountinfo::MountEntry;
use crate::plan::Plan;
use crate::records::{self, RunRecord, Settings};
use crate::report::{Report, Timings};
use crate::runtime::Options;
use crate::settle;
use crate::signals::Signals;
use crate::zfs::{Filesystem, Zfs};

/// What a run works with.
pub struct Context<'a> {
    pub zfs: &'a dyn Zfs,
    pub mounter: &'a dyn Mounter,
    pub options: Options,
    pub cwd: PathBuf,
    /// Where runs are recorded for monitoring; `None`: not recorded.
    pub state: Option<Settings>,
}

impl Context<'_> {
    /// Whether creates of this run are recorded with borg's figures, which
    /// zfs-snap asks for ([`records::Settings::asks_for_figures`]).
    pub fn asks_for_figures(&self) -> bool {
        self.state.as_ref().is_some_and(Settings::asks_for_figures)
    }
}

/// How a run through zfs-snap ended.
#[derive(Debug)]
pub enum Outcome {
    /// borg ran as given: not a create, or a create that reads no files
    /// (`--dry-run`; `create` holds the run of a `--content-from-command`).
    Live {
        status: ExitStatus,
        create: Option<CreateRun>,
    },
    /// A create from snapshots of its own, torn down since.
    Snapshotted {
        status: ExitStatus,
        create: CreateRun,
        timings: Timings,
        /// Teardown's report, or what it left behind.
        teardown: Result<Report>,
    },
    /// A create served by a `zfs-snap session`, which tears down.
    Served {
        status: ExitStatus,
        create: CreateRun,
    },
    /// A whole `zfs-snap session`.
    Session {
        /// The session's: its command's, raised when its creates did not
        /// read its snapshots (`session::server::session_status`).
        status: ExitStatus,
        /// Its command's own.
        command: ExitStatus,
        /// Creates it served.
        creates: usize,
        /// Creates of its command it refused (they made no archive).
        refused: usize,
        timings: Timings,
        teardown: Result<Report>,
    },
}

impl Outcome {
    /// borg's status (a session's: its command's, raised when its creates
    /// did not read its snapshots).
    pub fn status(&self) -> ExitStatus {
        match self {
            Outcome::Live { status, .. }
            | Outcome::Snapshotted { status, .. }
            | Outcome::Served { status, .. }
            | Outcome::Session { status, .. } => *status,
        }
    }

    /// What teardown left behind, if this run tore down and it did.
    pub fn teardown_error(&self) -> Option<&Error> {
        match self {
            Outcome::Snapshotted { teardown, .. } | Outcome::Session { teardown, .. } => {
                teardown.as_ref().err()
            }
            _ => None,
        }
    }

    /// Phase timings, when this run took snapshots.
    pub fn timings(&self) -> Option<&Timings> {
        match self {
            Outcome::Snapshotted { timings, .. } | Outcome::Session { timings, .. } => {
                Some(timings)
            }
            _ => None,
        }
    }

    /// The `borg create` this run made, if it made one.
    pub fn create(&self) -> Option<&CreateRun> {
        match self {
            Outcome::Live { create, .. } => create.as_ref(),
            Outcome::Snapshotted { create, .. } | Outcome::Served { create, .. } => Some(create),
            Outcome::Session { .. } => None,
        }
    }
}

/// When a `borg create` ran (Unix seconds) and what it printed on stdout
/// (kept with `--json`, the caller's or the one zfs-snap added).
#[derive(Debug)]
pub struct CreateRun {
    pub start: f64,
    pub end: f64,
    pub stdout: Option<Vec<u8>>,
}

impl CreateRun {
    /// Runs borg with `argv` (the create's command line, rewritten or not).
    /// With `figures` (the run is recorded for monitoring) the create
    /// itself reports its figures, so no second borg call has to ask for
    /// them: `--json` is added when the caller did not give it, its stdout
    /// kept from the caller, and the `--stats` text the caller asked for
    /// made from it as borg makes it ([`borg::stats`]). Not with both
    /// `--log-json` and `--stats` (borg's text would be JSON log lines).
    pub fn run(
        borg: &CommandLine,
        args: &CreateArgs,
        argv: &[OsString],
        signals: &Signals,
        figures: bool,
    ) -> Result<(ExitStatus, CreateRun)> {
        // The create token where the command line says (a session's reply
        // is another process's word: checked, not trusted).
        let at_create = argv.get(args.create_index).is_some_and(|a| a == "create");
        // borgmatic 2 passes --log-json to every create (unless `progress`):
        // the --json goes in; only a --stats text in JSON log lines could
        // not be given back, so then borg keeps its own.
        let added_json = figures && !args.json && !(args.log_json && args.stats) && at_create;
        let (argv, stdout) = if args.json {
            (argv.to_vec(), Stdout::Tee)
        } else if added_json {
            let mut with_json = argv.to_vec();
            with_json.insert(args.create_index + 1, "--json".into());
            (with_json, Stdout::Keep)
        } else {
            (argv.to_vec(), Stdout::Inherit)
        };
        let start = records::now();
        let finished = borg::run(borg, &argv, signals, stdout)?;
        let end = records::now();
        if added_json {
            give_back(args, finished.stdout.as_deref().unwrap_or_default());
        }
        let run = CreateRun {
            start,
            end,
            stdout: finished.stdout,
        };
        Ok((finished.status, run))
    }
}

/// What the caller would have seen without the `--json` zfs-snap added:
/// the `--stats` text when it asked for it; anything borg printed that is
/// not borg's JSON document, as printed.
fn give_back(args: &CreateArgs, stdout: &[u8]) {
    use std::io::Write;
    if stdout.trim_ascii().is_empty() {
        return;
    }
    if serde_json::from_slice::<serde_json::Value>(stdout).is_err() {
        let mut out = std::io::stdout();
        let _ = out.write_all(stdout).and_then(|()| out.flush());
        return;
    }
    if args.stats {
        match borg::stats::text(stdout, args.iec) {
            Some(text) => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
            None => {
                tracing::warn!("borg's --json lacks a figure of its --stats text: no stats shown")
            }
        }
    }
}

/// The create arguments, when `argv` is a `borg create` that reads files
/// zfs-snap must snapshot first; `None` when borg is to run as given (not a
/// create, `--dry-run`, `--content-from-command`, an empty PATH borg
/// refuses itself).
pub fn needs_snapshots(argv: &[OsString]) -> Result<Option<CreateArgs>> {
    let args = match borg::parse(argv)? {
        Invocation::Other => return Ok(None),
        Invocation::Create(args) => args,
    };
    if args.dry_run {
        tracing::info!("borg --dry-run: no snapshot taken, borg reads live paths");
        return Ok(None);
    }
    if args.paths_at_run_time.as_deref() == Some("--content-from-command") {
        tracing::info!(
            "borg --content-from-command: borg stores a command's output, reads no files; no snapshot taken"
        );
        return Ok(None);
    }
    if args.path_indices.iter().any(|&i| args.argv[i].is_empty()) {
        // borg refuses an empty PATH ("Empty strings are not accepted as
        // paths"): let it say so, rather than read it as the cwd.
        return Ok(None);
    }
    // borg 1.4 keeps its command line in the archive's metadata, which must
    // be UTF-8: given a path that is not, plain borg fails (exit 2, no
    // archive). Say so before any snapshot instead of mangling it.
    if let Some(bad) = args.argv.iter().find(|a| a.to_str().is_none()) {
        return Err(Error::BorgArgs(format!(
            "{} is not valid UTF-8: borg 1.4 cannot create an archive whose command line holds it \
             (it keeps the command line in the archive's metadata); give a pattern or a parent \
             directory instead",
            bad.to_string_lossy()
        )));
    }
    if let Some(option) = &args.paths_at_run_time {
        return Err(Error::BorgArgs(format!(
            "with {option} borg learns its paths only while it runs, so zfs-snap cannot snapshot \
             them first; give the paths as arguments or `R` pattern lines"
        )));
    }
    for option in &args.unknown_options {
        tracing::warn!(option, "unknown borg option, assumed to take no value");
    }
    Ok(Some(args))
}

/// A create that takes no snapshot but makes an archive (or fails to):
/// everything but `--dry-run`.
pub fn recordable(argv: &[OsString]) -> Option<CreateArgs> {
    match borg::parse(argv) {
        Ok(Invocation::Create(args)) if !args.dry_run => Some(args),
        _ => None,
    }
}

/// A create's sources, read and resolved, before any snapshot.
pub struct Request<'r> {
    pub args: &'r CreateArgs,
    pub sources: Sources,
    pub roots: Vec<SourceRoot>,
    pub cwd: &'r Path,
}

impl<'r> Request<'r> {
    /// Reads the create's pattern files with `read` (the client's copy, in
    /// a session) and resolves its roots against `cwd`.
    pub fn new(
        args: &'r CreateArgs,
        cwd: &'r Path,
        read: &dyn Fn(&Path) -> Result<String>,
    ) -> Result<Request<'r>> {
        Self::resolved(args, cwd, Sources::read_with(args, cwd, read)?)
    }

    /// As [`Request::new`], reading pattern files from this host.
    pub fn here(args: &'r CreateArgs, cwd: &'r Path) -> Result<Request<'r>> {
        Self::resolved(args, cwd, Sources::read(args, cwd)?)
    }

    fn resolved(args: &'r CreateArgs, cwd: &'r Path, sources: Sources) -> Result<Request<'r>> {
        let roots = resolve_roots(&sources.roots(), cwd)?;
        Ok(Request {
            args,
            sources,
            roots,
            cwd,
        })
    }
}

/// Everything up to borg, on `run`'s snapshot set: the plan for the
/// request on this host (`filesystems`, `mounts`: a fresh look), logged;
/// what it needs frozen; the command line rewritten onto the mirror, with
/// the files it reads written. `n`: the create's number in a session.
pub fn freeze_for(
    run: &mut Run<'_>,
    request: &Request<'_>,
    look: (&[Filesystem], &[MountEntry]),
    n: Option<usize>,
    signals: &Signals,
) -> Result<Vec<OsString>> {
    let started = std::time::Instant::now();
    let mut plan = discover_here(
        look,
        run.runtime_root(),
        request.cwd,
        &request.roots,
        request.args.one_file_system,
    );
    log_plan(&plan);
    run.timings_mut().discovery_ms += started.elapsed().as_secs_f64() * 1000.0;
    run.freeze(&plan, &|| signals.received())?;
    let (notes, warnings) = (plan.notes.len(), plan.warnings.len());
    settle::after_freeze(&mut plan, run.mapping(), request.cwd, request.args);
    for note in &plan.notes[notes..] {
        tracing::info!("{note}");
    }
    for warning in &plan.warnings[warnings..] {
        tracing::warn!("{warning}");
    }
    let rewritten = borg::rewrite_numbered(
        request.args,
        &request.sources,
        &plan,
        run.mapping(),
        &run.work_dir(),
        n,
        request.cwd,
    );
    run.write_work_files(&rewritten.files)?;
    Ok(rewritten.argv)
}

/// The plan for `roots` on this host (its own device numbers).
pub fn discover_here(
    (filesystems, mounts): (&[Filesystem], &[MountEntry]),
    runtime_root: &Path,
    cwd: &Path,
    roots: &[SourceRoot],
    one_file_system: bool,
) -> Plan {
    discover(
        &World {
            filesystems,
            mounts,
            runtime_root,
            cwd,
            dev_of: &dev_of,
            is_dir: &is_dir,
        },
        roots,
        one_file_system,
    )
}

pub fn resolve_roots(roots: &[PathBuf], cwd: &Path) -> Result<Vec<SourceRoot>> {
    roots.iter().map(|r| SourceRoot::resolve(r, cwd)).collect()
}

fn dev_of(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.dev())
}

fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn log_plan(plan: &Plan) {
    for note in &plan.notes {
        tracing::info!("{note}");
    }
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    for mount in &plan.mounts {
        tracing::info!(dataset = %mount.dataset, mountpoint = %mount.mountpoint.display(), reason = %mount.reason, "snapshotting");
    }
}

/// How far a create got: borg ran, or the run stopped before borg ended
/// (it started at the time given).
#[derive(Clone, Copy)]
pub enum Ran<'a> {
    Borg(&'a CreateRun),
    StoppedEarly { start: f64 },
}

/// Records a create in its repository's record.
pub fn record_create(
    settings: &Settings,
    borg: &CommandLine,
    args: &CreateArgs,
    cwd: &Path,
    status: i32,
    ran: Ran<'_>,
    signals: &Signals,
) {
    let (start, end, stdout) = match ran {
        Ran::Borg(run) => (run.start, run.end, run.stdout.as_deref()),
        Ran::StoppedEarly { start } => (start, records::now(), None),
    };
    let recorded = records::record_create(
        settings,
        &records::Create {
            borg,
            args,
            cwd,
            start,
            end,
            status,
            stdout,
            signals,
        },
    );
    refresh_textfile(settings, recorded);
}

/// Records zfs-snap's own figures of a run that took snapshots.
pub fn record_run(settings: &Settings, run: &RunRecord<'_>) {
    let recorded = records::record_run(settings, run);
    refresh_textfile(settings, recorded);
}

/// Records a run that stopped before borg ended.
pub fn record_failed_run(settings: &Settings, kind: &str, start: f64, status: i32) {
    let recorded = records::record_failed_run(settings, kind, start, status);
    refresh_textfile(settings, recorded);
}

/// Rewrites the textfile after a record was written (only then: nothing
/// new to show, or a state directory refused, which was said already).
fn refresh_textfile(settings: &Settings, recorded: bool) {
    if !recorded {
        return;
    }
    if let Err(e) = metrics::write_textfile(settings) {
        tracing::warn!("monitoring: {e}");
    }
}

/// How many things a failed teardown left.
pub fn problems(e: &Error) -> usize {
    match e {
        Error::Teardown { problems } => problems.len(),
        _ => 1,
    }
}
