//! The `zfs-snap` command: a thin layer over the `zfs-snap` library that
//! reads the command line (or, invoked through a link named `borg`, the
//! environment), sets up logging, and maps outcomes to exit codes.

mod cli;
mod exit;
mod exporter;
mod logging;
mod output;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use zfs_snap::command::CommandLine;
use zfs_snap::create::Context;
use zfs_snap::mount::SnapshotMounter;
use zfs_snap::runtime::Options;
use zfs_snap::signals::Signals;
use zfs_snap::wrap;
use zfs_snap::zfs::Zfs;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

fn main() -> ExitCode {
    // First, before any thread exists: every thread inherits the mask.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zfs-snap: cannot set up signal handling: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cli = if invoked_as == "borg" {
        if let Some(pid) = std::env::var_os(zfs_snap::borg::RUNNING_ENV) {
            eprintln!(
                "zfs-snap: error: zfs-snap's `borg` link was started by the borg that zfs-snap \
                 (pid {}) runs: a `borg` script on PATH calls `borg`, which finds this link \
                 again. Make that script call the real borg by its full path, or set \
                 ZFS_SNAP_BORG to the real borg.",
                pid.to_string_lossy()
            );
            return ExitCode::from(exit::ERROR);
        }
        Cli::as_borg_link(args.into_iter().skip(1).collect())
    } else {
        Cli::parse_from(args)
    };
    // Standing in for a borg asked for JSON logs, ours are JSON too.
    let style = match &cli.command {
        Command::Wrap { command, .. } if command.iter().any(|a| a == "--log-json") => {
            logging::Style::BorgJson
        }
        _ => logging::Style::Text,
    };
    logging::init(cli.global.verbosity(), style);
    match run(cli, &signals) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            tracing::error!("{failure}");
            ExitCode::from(failure.code())
        }
    }
}

fn run(cli: Cli, signals: &Signals) -> Result<u8, Failure> {
    let global = &cli.global;
    // These read the state directory only: no zfs, no borg.
    match &cli.command {
        Command::Metrics {
            forget: Some(repository),
        } => {
            let settings = global.state().ok_or_else(|| {
                Failure::Usage("--state-dir is `none`: there is no recorded state".into())
            })?;
            let cwd = std::env::current_dir()
                .map_err(|e| Failure::Usage(format!("cannot read the current directory: {e}")))?;
            return match zfs_snap::records::forget(&settings, repository, &cwd) {
                Ok(true) => {
                    tracing::info!(repository, "forgotten");
                    if let Err(e) = zfs_snap::metrics::write_textfile(&settings) {
                        tracing::warn!("monitoring: {e}");
                    }
                    Ok(exit::OK)
                }
                Ok(false) => Err(Failure::Usage(format!(
                    "no record of {repository} in {} (name it as its creates did)",
                    settings.dir.display()
                ))),
                Err(e) => Err(Failure::Usage(e.to_string())),
            };
        }
        Command::Metrics { forget: None } => {
            let dir = state_dir(global)?;
            let recorded = zfs_snap::records::read(&dir);
            for (path, why) in &recorded.unreadable {
                tracing::warn!("{}: {why}; left out of the metrics", path.display());
            }
            print!("{}", zfs_snap::metrics::render(&recorded));
            return Ok(exit::OK);
        }
        Command::Exporter { listen } => {
            exporter::serve(listen, &state_dir(global)?, signals)?;
            return Ok(exit::OK);
        }
        _ => {}
    }
    let zfs = zfs_snap::zfs::open(
        global.backend,
        CommandLine::parse("zfs", &global.zfs_command)?,
    )?;
    tracing::debug!(backend = zfs.backend(), "zfs backend");
    let zfs: &dyn Zfs = &*zfs;
    let mounter = SnapshotMounter {
        mount_command: optional_command("mount", global.mount_command.as_deref())?,
        umount_command: optional_command("umount", global.umount_command.as_deref())?,
    };
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::Usage(format!("cannot read the current directory: {e}")))?;
    let ctx = Context {
        zfs,
        mounter: &mounter,
        options: Options {
            runtime_root: global.runtime_root.clone(),
            wait: global.wait(),
            mountinfo: global.mountinfo.clone(),
        },
        cwd,
        state: global.state(),
    };
    match cli.command {
        Command::Wrap {
            borg: configured,
            command,
        } => {
            let (borg, argv) = borg_program(configured.as_deref(), command)?;
            let outcome = wrap::wrap(&ctx, &borg, &argv, signals)?;
            write_timings(global.timings_json.as_deref(), outcome.timings());
            Ok(exit::from_outcome(&outcome))
        }
        Command::Session {
            stop_timeout,
            command,
        } => {
            let stop_timeout = std::time::Duration::from_secs(stop_timeout);
            let outcome = zfs_snap::session::serve(&ctx, &command, signals, stop_timeout)?;
            write_timings(global.timings_json.as_deref(), outcome.timings());
            Ok(exit::from_outcome(&outcome))
        }
        Command::Plan {
            json,
            one_file_system,
            paths,
        } => {
            let plan = wrap::plan(&ctx, &paths, one_file_system)?;
            output::plan(&plan, json);
            Ok(exit::OK)
        }
        Command::Tag { datasets } => {
            zfs.set_tag(&datasets)?;
            for d in &datasets {
                tracing::info!(dataset = %d, "tagged {}={}", zfs_snap::zfs::TAG_PROPERTY, zfs_snap::zfs::TAG_VALUE);
            }
            Ok(exit::OK)
        }
        Command::Untag { datasets } => {
            zfs.clear_tag(&datasets)?;
            for d in &datasets {
                tracing::info!(dataset = %d, "local tag removed (an inherited one still applies)");
            }
            Ok(exit::OK)
        }
        Command::Tags { json } => {
            output::tags(&zfs.tags()?, json);
            Ok(exit::OK)
        }
        Command::Cleanup { dry_run } => {
            let report = zfs_snap::recover::cleanup(ctx.zfs, ctx.mounter, &ctx.options, dry_run)?;
            output::cleanup(&report, dry_run);
            Ok(exit::OK)
        }
        Command::Metrics { .. } | Command::Exporter { .. } => unreachable!("handled above"),
    }
}

fn state_dir(global: &cli::Global) -> Result<PathBuf, Failure> {
    global.state().map(|s| s.dir).ok_or_else(|| {
        Failure::Usage("--state-dir is `none`: there is no recorded state to show".into())
    })
}

fn write_timings(path: Option<&Path>, timings: Option<&zfs_snap::report::Timings>) {
    if let (Some(path), Some(timings)) = (path, timings) {
        let json = serde_json::to_string_pretty(timings).expect("timings always serialise");
        if let Err(e) = std::fs::write(path, json + "\n") {
            tracing::warn!("cannot write timings to {}: {e}", path.display());
        }
    }
}

fn optional_command(
    what: &'static str,
    text: Option<&str>,
) -> Result<Option<CommandLine>, Failure> {
    Ok(text.map(|t| CommandLine::parse(what, t)).transpose()?)
}

/// The borg to run and its arguments: the words after `--`, their first
/// word the borg program. Only when that word is this very binary (the
/// `borg` link) does `--borg` / `ZFS_SNAP_BORG` (or else PATH) choose the
/// real borg: a program the user named (a wrapper adding nice, ionice or
/// credentials) is never replaced.
fn borg_program(
    configured: Option<&str>,
    mut command: Vec<OsString>,
) -> Result<(CommandLine, Vec<OsString>), Failure> {
    if command.is_empty() {
        return Err(Failure::Usage(
            "nothing to run: use `zfs-snap wrap -- borg create REPO::ARCHIVE PATH...`".into(),
        ));
    }
    let first = command.remove(0);
    let named = first.to_string_lossy().into_owned();
    let is_self = resolve_on_path(&named).is_some_and(|p| is_this_binary(&p));
    let program = match configured {
        Some(c) if is_self => c.to_owned(),
        None if is_self => find_real_borg()?,
        Some(c) => {
            tracing::info!(
                "running {named} as named after `--`; --borg / ZFS_SNAP_BORG ({c}) only \
                 chooses the real borg behind zfs-snap's own `borg` link"
            );
            named
        }
        None => named,
    };
    let borg = zfs_snap::borg::for_borg(CommandLine::parse("borg", &program)?);
    Ok((borg, command))
}

fn resolve_on_path(name: &str) -> Option<PathBuf> {
    zfs_snap::command::find_program(Path::new(name), |_| true)
}

fn is_this_binary(path: &Path) -> bool {
    let me = std::env::current_exe().and_then(|p| p.canonicalize());
    let it = path.canonicalize();
    matches!((me, it), (Ok(a), Ok(b)) if a == b)
}

/// The first `borg` on PATH that is not this binary.
fn find_real_borg() -> Result<String, Failure> {
    zfs_snap::command::find_program(Path::new("borg"), |candidate| !is_this_binary(candidate))
        .map(|p| p.display().to_string())
        .ok_or_else(|| {
            Failure::Usage(
                "no real borg found on PATH (only zfs-snap's own `borg` link); install borgbackup \
                 >= 1.4 or set ZFS_SNAP_BORG to its path"
                    .into(),
            )
        })
}
