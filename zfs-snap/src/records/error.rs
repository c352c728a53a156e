//! Why something was not recorded or read. Recording never fails a
//! backup: these become warnings, each naming the file or call and what to do.

use std::path::PathBuf;

use crate::private::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state directory {dir} must be an absolute path")]
    Relative { dir: PathBuf },

    #[error(
        "state directory {dir} refused: {why}; fix it, or set ZFS_SNAP_STATE_DIR / --state-dir"
    )]
    Refused { dir: PathBuf, why: Refusal },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("recorded, but the textfile {path} was not written: {source}")]
    Textfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file in the state directory that is not a record of ours.
    #[error("{0}")]
    NotARecord(String),

    /// borg's JSON lacks what zfs-snap reads from it.
    #[error("{0}")]
    Figures(String),

    /// A borg call for figures failed.
    #[error("{0}")]
    Borg(#[from] crate::error::Error),
}

impl RecordError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecordError {
        let path = path.into();
        move |source| RecordError::Io { path, source }
    }
}
