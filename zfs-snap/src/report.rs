//! What a run did: what recovery and teardown removed, deferred, could not
//! remove or left alone ([`Report`]), and how long each phase took
//! ([`Timings`]).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// What a recovery pass or teardown removed, what it could not, and what
/// it found but left alone because it cannot prove it is ours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub unmounted: Vec<PathBuf>,
    pub destroyed: Vec<String>,
    pub deferred: Vec<String>,
    pub problems: Vec<String>,
    /// Mounts and files under the runtime root that are not ours: never
    /// unmounted or removed, named in a warning.
    pub left_alone: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.unmounted.is_empty() && self.destroyed.is_empty() && self.deferred.is_empty()
    }

    /// The report, or an error listing what was left behind.
    pub fn into_result(self) -> Result<Report> {
        if self.problems.is_empty() {
            Ok(self)
        } else {
            Err(Error::Teardown {
                problems: self.problems,
            })
        }
    }
}

/// How long each phase of a run took, in milliseconds, and how many
/// processes zfs-snap spawned (borg's own run not counted).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    pub backend: String,
    pub pools: usize,
    pub datasets: usize,
    /// Lock, recovery, `zfs list`, mount table, discovery.
    pub discovery_ms: f64,
    pub snapshot_ms: f64,
    pub hold_ms: f64,
    pub mount_ms: f64,
    pub borg_ms: f64,
    pub teardown_ms: f64,
    pub processes: usize,
}
