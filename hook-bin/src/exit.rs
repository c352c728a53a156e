//! Exit codes: borg's own when borg ran (0 ok, 1 warning, 2 error, 128+N
//! signal); for our own failures before borg ran, 2 (an error, as borg and
//! borgmatic read it), 75 when another run holds the lock, 128+N when a
//! signal stopped us.

use std::os::unix::process::ExitStatusExt;

use zfs_snap::create::Outcome;
use zfs_snap::Error;

pub const OK: u8 = 0;
pub const WARNING: u8 = 1;
pub const ERROR: u8 = 2;

/// Why zfs-snap stopped without borg's status to report.
#[derive(Debug)]
pub enum Failure {
    Library(Error),
    Usage(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Library(e) => write!(f, "{e}"),
            Failure::Usage(text) => f.write_str(text),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Library(e)
    }
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Library(e) => e.exit_code(),
            Failure::Usage(_) => ERROR,
        }
    }
}

/// Borg's status; if teardown left something behind, at least a warning.
pub fn from_outcome(outcome: &Outcome) -> u8 {
    let status = outcome.status();
    let borg = match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => ERROR,
    };
    match outcome.teardown_error() {
        None => borg,
        Some(e) => {
            tracing::error!("{e}");
            borg.max(WARNING)
        }
    }
}
