//! The three things zfs-snap does, as library calls: back up through borg
//! from snapshots ([`wrap`]), show what would happen ([`plan`]), and remove
//! what dead runs left ([`cleanup`]).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Instant;

use crate::borg::{self, CreateArgs, Invocation, Sources};
use crate::command::CommandLine;
use crate::discovery::{discover, SourceRoot, World};
use crate::error::{Error, Result};
use crate::mount::Mounter;
use crate::mountinfo;
use crate::plan::Plan;
use crate::session::{self, Options, Report, Session, Timings};
use crate::signals::Signals;
use crate::state;
use crate::zfs::{Search, Zfs};

/// What a run works with.
pub struct Context<'a> {
    pub zfs: &'a dyn Zfs,
    pub mounter: &'a dyn Mounter,
    pub options: Options,
    pub cwd: PathBuf,
    /// Where runs are recorded for monitoring; `None`: not recorded.
    pub state: Option<crate::state::Settings>,
}

/// How a wrapped borg call ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Teardown's report, or what it left behind.
    pub teardown: Result<Report>,
    /// Phase timings, when snapshots were taken.
    pub timings: Option<Timings>,
    /// For a create: when borg ran, and its stdout when it had `--json`.
    pub create: Option<CreateRun>,
}

/// When a `borg create` ran (Unix seconds) and what it printed on stdout
/// (only kept with `--json`).
#[derive(Debug)]
pub struct CreateRun {
    pub start: f64,
    pub end: f64,
    pub stdout: Option<Vec<u8>>,
}

impl CreateRun {
    /// Runs borg as [`borg::run`] does, keeping stdout with `--json`.
    pub(crate) fn run(
        borg: &CommandLine,
        args: &CreateArgs,
        argv: &[OsString],
        signals: &Signals,
    ) -> Result<(ExitStatus, CreateRun)> {
        let start = state::now();
        let (status, stdout) = borg::run_teeing(borg, argv, signals, args.json)?;
        let end = state::now();
        Ok((status, CreateRun { start, end, stdout }))
    }
}

/// Runs `borg ARGV`: `create` from snapshots, anything else untouched.
pub fn wrap(
    ctx: &Context<'_>,
    borg: &CommandLine,
    argv: &[OsString],
    signals: &Signals,
) -> Result<Outcome> {
    let Some(args) = needs_snapshots(argv)? else {
        return match recordable(argv) {
            // --content-from-command (or a create borg refuses itself): no
            // snapshot, but an archive, or a failure, to record.
            Some(args) => {
                let (status, run) = CreateRun::run(borg, &args, argv, signals)?;
                if let Some(settings) = &ctx.state {
                    record_create(settings, borg, &args, &ctx.cwd, status, &run, signals);
                }
                Ok(Outcome {
                    status,
                    teardown: Ok(Report::default()),
                    timings: None,
                    create: Some(run),
                })
            }
            None => pass_through(borg, argv, signals),
        };
    };
    let start = state::now();
    let joined = crate::shared::joined();
    let result = match &joined {
        Some(id) => crate::shared::join(ctx, id, borg, &args, signals),
        None => wrap_here(ctx, borg, &args, signals, start),
    };
    if let Some(settings) = &ctx.state {
        let (status, run) = match &result {
            Ok(outcome) => (borg::exit_code(outcome.status), outcome.create.as_ref()),
            Err(e) => (i32::from(e.exit_code()), None),
        };
        if let (Err(_), None) = (&result, &joined) {
            // Stopped before borg ended: the run failed too.
            state::record_failed_run(settings, "wrap", start, status);
        }
        state::record_create(
            settings,
            &state::Create {
                borg,
                args: &args,
                cwd: &ctx.cwd,
                start: run.map_or(start, |r| r.start),
                end: run.map_or_else(state::now, |r| r.end),
                status,
                stdout: run.and_then(|r| r.stdout.as_deref()),
                signals,
            },
        );
    }
    result
}

/// A create that takes no snapshot but makes an archive (or fails to):
/// everything but `--dry-run`.
fn recordable(argv: &[OsString]) -> Option<CreateArgs> {
    match borg::parse(argv) {
        Ok(Invocation::Create(args)) if !args.dry_run => Some(args),
        _ => None,
    }
}

fn record_create(
    settings: &state::Settings,
    borg: &CommandLine,
    args: &CreateArgs,
    cwd: &Path,
    status: ExitStatus,
    run: &CreateRun,
    signals: &Signals,
) {
    state::record_create(
        settings,
        &state::Create {
            borg,
            args,
            cwd,
            start: run.start,
            end: run.end,
            status: borg::exit_code(status),
            stdout: run.stdout.as_deref(),
            signals,
        },
    );
}

/// A create outside a session: snapshots of its own, borg, teardown.
fn wrap_here(
    ctx: &Context<'_>,
    borg: &CommandLine,
    args: &CreateArgs,
    signals: &Signals,
    start: f64,
) -> Result<Outcome> {
    let runtime_root = crate::runtime::prepare(&ctx.options.runtime_root)?;
    borg::check_version_cached(borg, &runtime_root)?;
    let sources = Sources::read(args, &ctx.cwd)?;
    let roots = resolve_roots(&sources.roots(), &ctx.cwd)?;

    let started = Instant::now();
    let (mut session, filesystems, mounts, recovered) =
        Session::begin(ctx.zfs, ctx.mounter, &ctx.options)?;
    let plan = discover_here(
        &filesystems,
        &mounts,
        session.runtime_root(),
        &ctx.cwd,
        &roots,
        args.one_file_system,
    );
    log_plan(&plan);
    session.timings_mut().discovery_ms = started.elapsed().as_secs_f64() * 1000.0;
    session.freeze(&plan, &|| signals.received())?;
    let argv = write_rewrite(&mut session, args, &sources, &plan, None, &ctx.cwd)?;
    if let Some(signal) = signals.received() {
        return Err(Error::Interrupted { signal });
    }
    let (status, create) = CreateRun::run(borg, args, &argv, signals)?;
    let (teardown, mut timings) = session.finish();
    timings.borg_ms = (create.end - create.start) * 1000.0;
    tracing::info!(
        backend = %timings.backend,
        datasets = timings.datasets,
        pools = timings.pools,
        discovery_ms = timings.discovery_ms.round(),
        snapshot_ms = timings.snapshot_ms.round(),
        hold_ms = timings.hold_ms.round(),
        mount_ms = timings.mount_ms.round(),
        borg_ms = timings.borg_ms.round(),
        teardown_ms = timings.teardown_ms.round(),
        processes = timings.processes,
        "done"
    );
    if let Some(settings) = &ctx.state {
        state::record_run(
            settings,
            &state::Run {
                kind: "wrap",
                start,
                status: borg::exit_code(status),
                timings: &timings,
                creates: 1,
                recovered: &recovered,
                teardown: teardown.as_ref().map_err(problems),
            },
        );
    }
    Ok(Outcome {
        status,
        teardown,
        timings: Some(timings),
        create: Some(create),
    })
}

/// How many things a failed teardown left.
pub(crate) fn problems(e: &Error) -> usize {
    match e {
        Error::Teardown { problems } => problems.len(),
        _ => 1,
    }
}

/// The create arguments, when `argv` is a `borg create` that reads files
/// zfs-snap must snapshot first; `None` when borg is to run as given (not a
/// create, `--dry-run`, `--content-from-command`, an empty PATH borg
/// refuses itself).
pub(crate) fn needs_snapshots(argv: &[OsString]) -> Result<Option<CreateArgs>> {
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

fn pass_through(borg: &CommandLine, argv: &[OsString], signals: &Signals) -> Result<Outcome> {
    let status = borg::run(borg, argv, signals)?;
    Ok(Outcome {
        status,
        teardown: Ok(Report::default()),
        timings: None,
        create: None,
    })
}

/// Rewrites `args` for `plan` and writes the files it needs; `n`: the
/// create's number in a shared session ([`borg::rewrite_numbered`]).
pub(crate) fn write_rewrite(
    session: &mut Session<'_>,
    args: &CreateArgs,
    sources: &Sources,
    plan: &Plan,
    n: Option<usize>,
    cwd: &Path,
) -> Result<Vec<OsString>> {
    let work_dir = session.work_dir();
    let rewritten =
        borg::rewrite_numbered(args, sources, plan, session.mapping(), &work_dir, n, cwd);
    session.write_work_files(&rewritten.files)?;
    Ok(rewritten.argv)
}

/// The plan for `roots` on this host (its own device numbers).
pub(crate) fn discover_here(
    filesystems: &[crate::zfs::Filesystem],
    mounts: &[crate::mountinfo::MountEntry],
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
        },
        roots,
        one_file_system,
    )
}

pub(crate) fn resolve_roots(roots: &[PathBuf], cwd: &Path) -> Result<Vec<SourceRoot>> {
    roots.iter().map(|r| SourceRoot::resolve(r, cwd)).collect()
}

fn dev_of(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.dev())
}

pub(crate) fn log_plan(plan: &Plan) {
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

/// What a run for `roots` would do; changes nothing.
pub fn plan(ctx: &Context<'_>, roots: &[PathBuf], one_file_system: bool) -> Result<Plan> {
    let roots = resolve_roots(roots, &ctx.cwd)?;
    let filesystems = ctx.zfs.filesystems()?;
    let mounts = mountinfo::read(&ctx.options.mountinfo)?;
    let runtime_root = crate::runtime::canonical(&ctx.options.runtime_root)?;
    Ok(discover_here(
        &filesystems,
        &mounts,
        &runtime_root,
        &ctx.cwd,
        &roots,
        one_file_system,
    ))
}

/// Removes what dead runs of this runtime root left behind (with
/// `dry_run`, only says what it would remove).
pub fn cleanup(ctx: &Context<'_>, dry_run: bool) -> Result<Report> {
    let root = crate::runtime::prepare(&ctx.options.runtime_root)?;
    let _lock = crate::runtime::lock(&root, ctx.options.wait)?;
    // Always a full look, whatever the names: cleanup is what a user runs
    // when something is off. The next run looks again too.
    if !dry_run {
        crate::runtime::forget_clean_mark(&root);
    }
    let snapshots = ctx.zfs.our_snapshots(Search::Everywhere)?;
    let report = session::recover(
        ctx.zfs,
        ctx.mounter,
        &root,
        &snapshots,
        &ctx.options.mountinfo,
        dry_run,
    );
    for thing in &report.left_alone {
        tracing::warn!("{thing}");
    }
    if report.problems.is_empty() {
        Ok(report)
    } else {
        Err(Error::Teardown {
            problems: report.problems,
        })
    }
}
