//! The library's one error type. Every variant names the thing that failed
//! (dataset, path, command) and, where an external tool spoke, what it said,
//! so the binary can print it as is and the user knows what to do next.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} command `{command}` was not found; install it or point zfs-snap at it ({hint})"
    )]
    CommandNotFound {
        what: &'static str,
        command: String,
        hint: &'static str,
    },

    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr))]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("unexpected output from `{command}`: {reason}: {line:?}")]
    MalformedOutput {
        command: String,
        line: String,
        reason: String,
    },

    #[error("malformed line {line_number} of {path}: {reason}: {line:?}")]
    MalformedMountinfo {
        path: PathBuf,
        line_number: usize,
        line: String,
        reason: &'static str,
    },

    #[error("cannot use source path {path}: {source}")]
    SourceUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("refusing runtime root {path}: {reason}")]
    RuntimeRoot { path: PathBuf, reason: String },

    #[error("another zfs-snap run holds {path}{}; wait for it to finish or pass --wait", holder_suffix(*.pid))]
    LockHeld { path: PathBuf, pid: Option<u32> },

    #[error("dataset {dataset} does not exist{}", stderr_suffix(.stderr))]
    DatasetNotFound { dataset: String, stderr: String },

    #[error("cannot mount snapshot {snapshot} at {target}: {reason}")]
    Mount {
        snapshot: String,
        target: PathBuf,
        reason: String,
    },

    #[error("cannot unmount {target}: {reason}")]
    Unmount { target: PathBuf, reason: String },

    #[error("cannot understand the borg command line: {0}")]
    BorgArgs(String),

    #[error("{path}: cannot read borg patterns: {source}")]
    PatternFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("borg {found} is too old: zfs-snap needs borg 1.4 or newer (its `/./` path marker keeps original paths in the archive); install borgbackup >= 1.4 or pass --borg")]
    BorgTooOld { found: String },

    #[error("interrupted by signal {signal} before borg started; nothing was backed up")]
    Interrupted { signal: i32 },

    #[error("ZFS backend: {0}")]
    Backend(String),

    #[error("libzfs_core {operation} failed for {snapshots}: {reason}")]
    Libzfs {
        operation: &'static str,
        snapshots: String,
        reason: String,
    },

    /// A shared session refused a create, or cannot be reached.
    #[error("zfs-snap session: {0}")]
    Session(String),

    #[error("teardown left things behind; run `zfs-snap cleanup` to remove them:\n  {}", .problems.join("\n  "))]
    Teardown { problems: Vec<String> },
}

impl Error {
    /// The exit code for a run this error stopped: 75 (EX_TEMPFAIL) when
    /// another run holds the lock, 128+N after signal N, else 2 (an error,
    /// as borg and borgmatic read it).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::LockHeld { .. } => 75,
            Error::Interrupted { signal } => 128u8.saturating_add(*signal as u8),
            _ => 2,
        }
    }

    /// True when ZFS said the snapshot or dataset does not exist: after a
    /// release, that is a snapshot whose deferred destroy has fired.
    pub fn says_missing(&self) -> bool {
        match self {
            Error::CommandFailed { stderr, .. } | Error::DatasetNotFound { stderr, .. } => {
                stderr.contains("does not exist") || stderr.contains("could not find any snapshots")
            }
            Error::Libzfs { reason, .. } => reason.contains("No such file or directory"),
            _ => false,
        }
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(": {trimmed}")
    }
}

fn holder_suffix(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}
