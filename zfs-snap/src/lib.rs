//! zfs-snap: consistent borg backups of ZFS hosts.
//!
//! Before borg reads a byte, every dataset the backup touches is frozen in
//! one atomic snapshot per pool; the snapshots are mounted read-only in a
//! mirror of the live tree under the runtime root; borg reads the mirror
//! and, through its `/./` marker, stores the original paths; afterwards
//! everything is unmounted and destroyed, and what a crashed run left is
//! removed by the next one.
//!
//! Modules, one responsibility each: [`zfs`] (talking to ZFS),
//! [`mountinfo`] (the mount table), [`discovery`] (which datasets),
//! [`plan`] (the result), [`mapping`] (live <-> mirror paths), [`mount`],
//! [`session`] (lifecycle, teardown, recovery), [`shared`] (one snapshot
//! set for a whole command: `zfs-snap session`), [`borg`] (its command line
//! and patterns), [`runtime`] (runtime root and lock), [`signals`],
//! [`command`] (the one runner of external commands), [`backup`] (the
//! operations the binary offers), [`state`] (what runs recorded, for
//! monitoring) and [`metrics`] (its Prometheus exposition).

pub mod backup;
pub mod borg;
pub mod command;
pub mod discovery;
pub mod error;
#[cfg(feature = "libzetta")]
pub mod lzc;
pub mod mapping;
pub mod metrics;
pub mod mount;
pub mod mountinfo;
pub mod plan;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod signals;
pub mod state;
pub mod zfs;

pub use error::{Error, Result};
