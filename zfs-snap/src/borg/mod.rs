//! Everything about borg: reading and rewriting its command line, checking
//! its version, and running it.

pub mod args;
pub mod patterns;
pub mod rewrite;

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Instant;

use crate::command::CommandLine;
use crate::error::{Error, Result};
use crate::signals::Signals;

pub use args::{parse, CreateArgs, Invocation};
pub use rewrite::{rewrite, Rewritten, Sources};

/// Checks that `borg` is 1.4 or newer (the `/./` marker needs it).
pub fn check_version(borg: &CommandLine) -> Result<(u32, u32, u32)> {
    let argv = vec![OsString::from("--version")];
    let output = borg.run(&argv)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = args::parse_version(&text).ok_or_else(|| Error::MalformedOutput {
        command: borg.display_with(&argv),
        line: text.trim().to_owned(),
        reason: "expected `borg X.Y.Z`".into(),
    })?;
    if version < (1, 4, 0) {
        return Err(Error::BorgTooOld {
            found: text.trim().to_owned(),
        });
    }
    Ok(version)
}

/// Runs borg with our stdio and environment, passing signals on; returns
/// its exit status.
pub fn run(borg: &CommandLine, argv: &[OsString], signals: &Signals) -> Result<ExitStatus> {
    let shown = borg.display_with(argv);
    tracing::info!(command = %shown, "running borg");
    let started = Instant::now();
    let mut command = borg.command(argv);
    let mut child = command
        .spawn()
        .map_err(|source| borg.spawn_error(argv, source))?;
    signals.set_child(Some(child.id()));
    let status = child.wait();
    signals.set_child(None);
    let status = status.map_err(|source| Error::Spawn {
        command: shown,
        source,
    })?;
    tracing::info!(%status, elapsed_s = started.elapsed().as_secs_f64(), "borg finished");
    Ok(status)
}
