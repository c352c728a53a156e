//! What zfs-snap needs from ZFS: the [`Zfs`] trait, the values it speaks
//! in (filesystems, snapshots and their owner, tags), and the names
//! zfs-snap owns in ZFS (its ownership property, hold tag, snapshot prefix).

use serde::Serialize;

use crate::error::Result;

/// The tag property, shared with borgmatic so existing tags keep working.
pub const TAG_PROPERTY: &str = "org.torsion.borgmatic:backup";
/// The value of [`TAG_PROPERTY`] that selects a dataset.
pub const TAG_VALUE: &str = "auto";
/// Set on every snapshot we create, at creation: `<run id>:<runtime root>`.
/// A snapshot is ours only when this value is set *locally* on it: user
/// properties are inherited by snapshots (and arrive with `zfs receive`), so
/// an inherited or received value proves nothing.
pub const OWNER_PROPERTY: &str = "org.torsion.zfs-snap:run";
/// The user hold that keeps other tools' pruning off our snapshots.
pub const HOLD_TAG: &str = "zfs-snap";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub name: String,
    /// The `mountpoint` property (`legacy`, `none` or a path).
    pub mountpoint: String,
    pub canmount: String,
    pub mounted: bool,
    /// `available`, `unavailable`, or `None` when not encrypted.
    pub keystatus: Option<String>,
    /// Value of [`TAG_PROPERTY`], local or inherited.
    pub tag: Option<String>,
    /// The `guid` property: tells a pool from another of the same name.
    pub guid: String,
}

impl Filesystem {
    pub fn pool(&self) -> &str {
        pool_of(&self.name)
    }

    pub fn is_tagged(&self) -> bool {
        self.tag.as_deref() == Some(TAG_VALUE)
    }

    /// Why this dataset cannot be snapshotted and mounted, if it cannot.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.keystatus.as_deref() == Some("unavailable") {
            Some("its encryption key is not loaded (zfs load-key)".into())
        } else if self.canmount == "off" {
            Some("canmount=off".into())
        } else if self.mountpoint == "none" {
            Some("mountpoint=none".into())
        } else if !self.mounted {
            Some("it is not mounted".into())
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    /// Value of [`OWNER_PROPERTY`] when set locally on this very snapshot;
    /// `None` for everyone else's (unset, inherited or received).
    pub owner: Option<Owner>,
}

/// Who created a snapshot of ours: the run and its runtime root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub run_id: String,
    pub runtime_root: String,
}

impl Owner {
    pub fn value(&self) -> String {
        format!("{}:{}", self.run_id, self.runtime_root)
    }

    pub fn parse(value: &str) -> Option<Owner> {
        let (run_id, runtime_root) = value.split_once(':')?;
        (!run_id.is_empty() && runtime_root.starts_with('/')).then(|| Owner {
            run_id: run_id.to_owned(),
            runtime_root: runtime_root.to_owned(),
        })
    }
}

/// The part after `@` every snapshot of ours starts with.
pub const SNAPSHOT_PREFIX: &str = "zfs-snap-";

/// How hard [`Zfs::our_snapshots`] looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Snapshots named `*@zfs-snap-*`: what every run of ours creates.
    Named,
    /// Every snapshot, whatever its name.
    Everywhere,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TagInfo {
    pub dataset: String,
    pub value: String,
    /// `local`, `inherited from <dataset>`, `received`.
    pub source: String,
}

pub fn pool_of(name: &str) -> &str {
    name.split(['/', '@']).next().unwrap_or(name)
}

/// What zfs-snap needs from ZFS. One real implementation over the `zfs`
/// command; tests use a fake `zfs` program, and the VM suite real OpenZFS.
pub trait Zfs {
    /// Every filesystem, with what discovery needs, from one `zfs list`.
    fn filesystems(&self) -> Result<Vec<Filesystem>>;
    /// Snapshots that may be ours, with their [`OWNER_PROPERTY`]: with
    /// `Search::Named`, those named like ours ([`SNAPSHOT_PREFIX`]) from a
    /// listing of names only; with `Search::Everywhere`, every snapshot
    /// (also one of ours renamed since), from one listing with the property,
    /// which on hosts with thousands of other tools' snapshots costs seconds.
    fn our_snapshots(&self, search: Search) -> Result<Vec<Snapshot>>;
    /// The snapshots among `names` that exist, with their local
    /// [`OWNER_PROPERTY`]; a name that does not exist is left out, any other
    /// failure (zfs killed, crashed) is an error.
    fn owners(&self, names: &[String]) -> Result<Vec<Snapshot>>;
    /// Creates `names` (all in one pool) in one atomic call, each carrying
    /// [`OWNER_PROPERTY`]` = owner`.
    fn snapshot(&self, names: &[String], owner: &Owner) -> Result<()>;
    /// Holds, in one call, the snapshots one run created in `pool`
    /// (`snapshots`, all called `snapshot_name`).
    fn hold_run(&self, pool: &str, snapshot_name: &str, snapshots: &[String]) -> Result<()>;
    /// Releases what [`Zfs::hold_run`] held, in one call.
    fn release_run(&self, pool: &str, snapshot_name: &str, snapshots: &[String]) -> Result<()>;
    fn release(&self, snapshots: &[String]) -> Result<()>;
    /// `(snapshot, tag)` for every hold on `snapshots`.
    fn holds(&self, snapshots: &[String]) -> Result<Vec<(String, String)>>;
    /// Destroys, in one call, the snapshots one run created in `pool`, all
    /// called `snapshot_name` (a name unique to that run).
    fn destroy_run(&self, pool: &str, snapshot_name: &str, snapshots: &[String]) -> Result<()>;
    /// Destroys one snapshot; `defer` marks a busy one for destruction later.
    fn destroy(&self, snapshot: &str, defer: bool) -> Result<()>;
    /// `command` or `libzetta`, for logs.
    fn backend(&self) -> &'static str;
    fn set_tag(&self, datasets: &[String]) -> Result<()>;
    fn clear_tag(&self, datasets: &[String]) -> Result<()>;
    fn tags(&self) -> Result<Vec<TagInfo>>;
}
