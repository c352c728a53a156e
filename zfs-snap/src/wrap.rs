//! `zfs-snap wrap -- borg ...` (and the `borg` link): a create from
//! snapshots of its own, or served by the session it belongs to; any other
//! borg call as given. And `zfs-snap plan`: what a create would do.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use crate::borg::{self, CreateArgs};
use crate::command::{CommandLine, Stdout};
use crate::create::{
    self, discover_here, needs_snapshots, recordable, resolve_roots, Context, CreateRun, Outcome,
    Ran, Request,
};
use crate::error::{Error, Result};
use crate::lifecycle::Run;
use crate::mountinfo;
use crate::plan::Plan;
use crate::records::{self, RunRecord};
use crate::session;
use crate::signals::Signals;

/// Runs `borg ARGV`: `create` from snapshots, anything else untouched.
pub fn wrap(
    ctx: &Context<'_>,
    borg: &CommandLine,
    argv: &[OsString],
    signals: &Signals,
) -> Result<Outcome> {
    let Some(args) = needs_snapshots(argv)? else {
        return live(ctx, borg, argv, signals);
    };
    let start = records::now();
    let joined = session::joined();
    let result = match &joined {
        Some(id) => session::join(ctx, id, borg, &args, signals),
        None => wrap_here(ctx, borg, &args, signals, start),
    };
    if let Some(settings) = &ctx.state {
        let status = match &result {
            Ok(outcome) => borg::exit_code(outcome.status()),
            Err(e) => i32::from(e.exit_code()),
        };
        if let (Err(_), None) = (&result, &joined) {
            // Stopped before borg ended: the run failed too.
            create::record_failed_run(settings, "wrap", start, status);
        }
        let ran = match result.as_ref().ok().and_then(Outcome::create) {
            Some(run) => Ran::Borg(run),
            None => Ran::StoppedEarly { start },
        };
        create::record_create(settings, borg, &args, &ctx.cwd, status, ran, signals);
    }
    result
}

/// borg as given: not a create, or one that takes no snapshot. A
/// `--content-from-command` create still makes an archive (or fails to),
/// and is recorded.
fn live(
    ctx: &Context<'_>,
    borg: &CommandLine,
    argv: &[OsString],
    signals: &Signals,
) -> Result<Outcome> {
    let Some(args) = recordable(argv) else {
        let finished = borg::run(borg, argv, signals, Stdout::Inherit)?;
        return Ok(Outcome::Live {
            status: finished.status,
            create: None,
        });
    };
    let (status, run) = CreateRun::run(borg, &args, argv, signals, ctx.asks_for_figures())?;
    if let Some(settings) = &ctx.state {
        let code = borg::exit_code(status);
        create::record_create(
            settings,
            borg,
            &args,
            &ctx.cwd,
            code,
            Ran::Borg(&run),
            signals,
        );
    }
    Ok(Outcome::Live {
        status,
        create: Some(run),
    })
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
    let request = Request::here(args, &ctx.cwd)?;

    let started = Instant::now();
    let (mut run, filesystems, mounts, recovered) = Run::begin(ctx.zfs, ctx.mounter, &ctx.options)?;
    run.timings_mut().discovery_ms = started.elapsed().as_secs_f64() * 1000.0;
    let argv = create::freeze_for(&mut run, &request, (&filesystems, &mounts), None, signals)?;
    if let Some(signal) = signals.received() {
        return Err(Error::Interrupted { signal });
    }
    let (status, create) = CreateRun::run(borg, args, &argv, signals, ctx.asks_for_figures())?;
    let (teardown, mut timings) = run.finish();
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
        create::record_run(
            settings,
            &RunRecord {
                kind: "wrap",
                start,
                status: borg::exit_code(status),
                timings: &timings,
                creates: 1,
                recovered: &recovered,
                teardown: teardown.as_ref().map_err(create::problems),
            },
        );
    }
    Ok(Outcome::Snapshotted {
        status,
        create,
        timings,
        teardown,
    })
}

/// What a run for `roots` would do; changes nothing.
pub fn plan(ctx: &Context<'_>, roots: &[PathBuf], one_file_system: bool) -> Result<Plan> {
    let roots = resolve_roots(roots, &ctx.cwd)?;
    let filesystems = ctx.zfs.filesystems()?;
    let mounts = mountinfo::read(&ctx.options.mountinfo)?;
    let runtime_root = crate::runtime::canonical(&ctx.options.runtime_root)?;
    Ok(discover_here(
        (&filesystems, &mounts),
        &runtime_root,
        &ctx.cwd,
        &roots,
        one_file_system,
    ))
}
