//! The libzetta backend: snapshots are created (one atomic call per pool,
//! with our ownership property) and destroyed (batched) through
//! libzfs_core, without a process each; everything else goes through the
//! `zfs` command. libzetta's property reader panics on values it does not
//! know (e.g. `compression=zstd`), so it is never used.

use std::collections::HashMap;
use std::path::PathBuf;

use libzetta::zfs::{DestroyTiming, ZfsEngine, ZfsLzc};

use crate::error::{Error, Result};
use crate::zfs::{Inventory, Owner, TagInfo, Zfs, ZfsCommand, OWNER_PROPERTY};

pub struct LzcZfs {
    lzc: ZfsLzc,
    command: ZfsCommand,
}

impl LzcZfs {
    /// Opens libzfs_core; on failure hands the command backend back.
    pub fn open(command: ZfsCommand) -> std::result::Result<LzcZfs, (ZfsCommand, String)> {
        match ZfsLzc::new() {
            Ok(lzc) => Ok(LzcZfs { lzc, command }),
            Err(e) => Err((command, e.to_string())),
        }
    }
}

fn paths(names: &[String]) -> Vec<PathBuf> {
    names.iter().map(PathBuf::from).collect()
}

fn failure(operation: &'static str, names: &[String], e: libzetta::zfs::Error) -> Error {
    Error::Libzfs {
        operation,
        snapshots: names.join(" "),
        reason: format!("{e:?}"),
    }
}

impl Zfs for LzcZfs {
    fn inventory(&self) -> Result<Inventory> {
        self.command.inventory()
    }

    fn snapshot(&self, names: &[String], owner: &Owner) -> Result<()> {
        let props = HashMap::from([(OWNER_PROPERTY.to_owned(), owner.value())]);
        self.lzc
            .snapshot(&paths(names), Some(props))
            .map_err(|e| failure("snapshot", names, e))
    }

    fn hold_run(&self, pool: &str, snapshot_name: &str) -> Result<()> {
        self.command.hold_run(pool, snapshot_name)
    }

    fn release_run(&self, pool: &str, snapshot_name: &str) -> Result<()> {
        self.command.release_run(pool, snapshot_name)
    }

    fn release(&self, snapshots: &[String]) -> Result<()> {
        self.command.release(snapshots)
    }

    fn holds(&self, snapshots: &[String]) -> Result<Vec<(String, String)>> {
        self.command.holds(snapshots)
    }

    fn destroy_run(&self, _pool: &str, _snapshot_name: &str, snapshots: &[String]) -> Result<()> {
        self.lzc
            .destroy_snapshots(&paths(snapshots), DestroyTiming::RightNow)
            .map_err(|e| failure("destroy", snapshots, e))
    }

    fn destroy(&self, snapshot: &str, defer: bool) -> Result<()> {
        let timing = if defer {
            DestroyTiming::Defer
        } else {
            DestroyTiming::RightNow
        };
        let names = [snapshot.to_owned()];
        self.lzc
            .destroy_snapshots(&paths(&names), timing)
            .map_err(|e| failure("destroy", &names, e))
    }

    fn backend(&self) -> &'static str {
        "libzetta"
    }

    fn set_tag(&self, datasets: &[String]) -> Result<()> {
        self.command.set_tag(datasets)
    }

    fn clear_tag(&self, datasets: &[String]) -> Result<()> {
        self.command.clear_tag(datasets)
    }

    fn tags(&self) -> Result<Vec<TagInfo>> {
        self.command.tags()
    }
}
