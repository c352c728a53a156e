//! zfs-snap: consistent borg backups of ZFS hosts.
//!
//! Before borg reads a byte, every dataset the backup touches is frozen in
//! one atomic snapshot per pool; the snapshots are mounted read-only in a
//! mirror of the live tree under the runtime root; borg reads the mirror
//! and, through its `/./` marker, stores the original paths; afterwards
//! everything is unmounted and destroyed, and what a crashed run left is
//! removed by the next one.
//!
//! Modules, one responsibility each, from the ground up:
//! - [`error`], [`signals`], [`command`] (the one runner of child
//!   processes), [`private`] (files and directories zfs-snap owns);
//! - [`zfs`] (talking to ZFS, its backends), [`mountinfo`] (the mount
//!   table), [`mount`] (mounting snapshots), [`runtime`] (the runtime root,
//!   its lock and names);
//! - [`plan`] (what a run does), [`mapping`] (live <-> mirror paths),
//!   [`source_root`] (a root as given), [`discovery`] (which datasets: data
//!   in, plan out), [`borg`] (its command line and patterns);
//! - [`report`] (what a run did), [`release`] (the one place snapshots are
//!   released and destroyed), [`recover`] (what dead runs left,
//!   `cleanup`), [`lifecycle`] (a run: lock, freeze, teardown);
//! - [`records`] (what runs recorded, for monitoring), [`metrics`] (its
//!   Prometheus exposition and textfile);
//! - [`create`] (one `borg create`, the same pipeline everywhere),
//!   [`session`] (`zfs-snap session`: server, client, protocol), [`wrap`]
//!   (`zfs-snap wrap` and `plan`).

pub mod borg;
pub mod command;
pub mod create;
pub mod discovery;
pub mod error;
pub mod lifecycle;
pub mod mapping;
pub mod metrics;
pub mod mount;
pub mod mountinfo;
pub mod plan;
pub mod private;
pub mod records;
pub mod recover;
pub mod release;
pub mod report;
pub mod runtime;
pub mod session;
pub mod settle;
pub mod signals;
pub mod source_root;
pub mod wrap;
pub mod zfs;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
