//! The libzetta backend: snapshots are created (one atomic call per pool,
//! with our ownership property), held, released and destroyed (each one
//! call for all of a run's snapshots in a pool) through libzfs_core,
//! without a process each; everything else goes through the `zfs` command.
//! libzetta's property reader panics on values it does not know (e.g.
//! `compression=zstd`), so it is never used. libzetta wraps no hold calls:
//! those go to `lzc_hold`/`lzc_release` directly, with nvlists built by
//! libnv, the crate libzetta builds its own with.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::ptr::null_mut;

use libnv::nvpair::NvList;
use libzetta::zfs::{DestroyTiming, ZfsEngine, ZfsLzc};
use libzetta_zfs_core_sys as lzc_sys;

use crate::command::timed;
use crate::error::{Error, Result};
use crate::zfs::api::{
    Filesystem, Owner, Search, Snapshot, TagInfo, Zfs, HOLD_TAG, OWNER_PROPERTY,
};
use crate::zfs::cli::ZfsCommand;

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

fn failure(operation: &'static str, names: &[String], reason: impl Into<String>) -> Error {
    Error::Libzfs {
        operation,
        snapshots: names.join(" "),
        reason: reason.into(),
    }
}

/// Turns an lzc call's errno and error list (snapshot -> errno) into our
/// error, naming each snapshot that failed and why.
fn lzc_result(
    operation: &'static str,
    names: &[String],
    errno: c_int,
    errors: *mut lzc_sys::nvlist_t,
) -> Result<()> {
    let mut details = Vec::new();
    if !errors.is_null() {
        // SAFETY: lzc_* hand over an allocated nvlist (or leave it null);
        // NvList frees it.
        let errors = unsafe { NvList::from_ptr(errors) };
        for (name, value) in errors.into_hashmap() {
            let why = match value {
                libnv::nvpair::Value::Int32(e) => errno_text(e),
                other => format!("{other:?}"),
            };
            details.push(format!("{name}: {why}"));
        }
    }
    if errno == 0 && details.is_empty() {
        return Ok(());
    }
    details.sort();
    let reason = if errno == 0 {
        "failed for some snapshots".to_owned()
    } else {
        errno_text(errno)
    };
    if details.is_empty() {
        Err(failure(operation, names, reason))
    } else {
        Err(failure(
            operation,
            names,
            format!("{reason} ({})", details.join(", ")),
        ))
    }
}

/// The OS's text for an errno; ZFS's own codes (from 1024) by name.
fn errno_text(errno: c_int) -> String {
    match errno {
        0..=1023 => std::io::Error::from_raw_os_error(errno).to_string(),
        _ => format!("ZFS error {errno} (see zfs_errno_t in libzfs_core)"),
    }
}

/// `lzc_hold`: one user hold tagged [`HOLD_TAG`] on each snapshot, all in
/// one pool, in one ioctl (one txg sync).
fn lzc_hold(snapshots: &[String]) -> Result<()> {
    let mut holds = NvList::default();
    for name in snapshots {
        holds
            .insert_string(name.as_str(), HOLD_TAG)
            .map_err(|e| failure("hold", snapshots, format!("building the request: {e:?}")))?;
    }
    let mut errors = null_mut();
    // SAFETY: a valid nvlist; -1: no cleanup fd, the hold outlives us
    // (recovery releases what a killed run held).
    let errno = unsafe { lzc_sys::lzc_hold(holds.as_ptr(), -1, &mut errors) };
    lzc_result("hold", snapshots, errno, errors)
}

/// `lzc_release`: the [`HOLD_TAG`] hold of each snapshot, one ioctl.
fn lzc_release(snapshots: &[String]) -> Result<()> {
    let mut tags = NvList::default();
    tags.insert_boolean(HOLD_TAG)
        .map_err(|e| failure("release", snapshots, format!("building the request: {e:?}")))?;
    let releases = NvList::default();
    for name in snapshots {
        let key = CString::new(name.as_str()).map_err(|_| {
            failure(
                "release",
                std::slice::from_ref(name),
                "the name contains a NUL byte",
            )
        })?;
        // SAFETY: both lists are valid; nvlist_add_nvlist copies `tags`.
        let errno = unsafe {
            nvpair_sys::nvlist_add_nvlist(releases.as_ptr(), key.as_ptr(), tags.as_ptr())
        };
        if errno != 0 {
            return lzc_result("release", snapshots, errno, null_mut());
        }
    }
    let mut errors = null_mut();
    // SAFETY: a valid nvlist of snapshot -> {tag: boolean}.
    let errno = unsafe { lzc_sys::lzc_release(releases.as_ptr(), &mut errors) };
    lzc_result("release", snapshots, errno, errors)
}

impl Zfs for LzcZfs {
    fn filesystems(&self) -> Result<Vec<Filesystem>> {
        self.command.filesystems()
    }

    fn our_snapshots(&self, search: Search) -> Result<Vec<Snapshot>> {
        self.command.our_snapshots(search)
    }

    fn owners(&self, names: &[String]) -> Result<Vec<Snapshot>> {
        // The same rule as the command backend (local values only), from
        // the same reader: libzetta's property reader is unusable.
        self.command.owners(names)
    }

    fn snapshot(&self, names: &[String], owner: &Owner) -> Result<()> {
        let props = HashMap::from([(OWNER_PROPERTY.to_owned(), owner.value())]);
        timed("lzc_snapshot", names, || {
            self.lzc
                .snapshot(&paths(names), Some(props))
                .map_err(|e| failure("snapshot", names, format!("{e:?}")))
        })
    }

    fn hold_run(&self, _pool: &str, _snapshot_name: &str, snapshots: &[String]) -> Result<()> {
        timed("lzc_hold", snapshots, || lzc_hold(snapshots))
    }

    fn release_run(&self, _pool: &str, _snapshot_name: &str, snapshots: &[String]) -> Result<()> {
        timed("lzc_release", snapshots, || lzc_release(snapshots))
    }

    fn release(&self, snapshots: &[String]) -> Result<()> {
        // Recovery hands one pool's snapshots at a time, as lzc requires.
        timed("lzc_release", snapshots, || lzc_release(snapshots))
    }

    fn holds(&self, snapshots: &[String]) -> Result<Vec<(String, String)>> {
        self.command.holds(snapshots)
    }

    fn destroy_run(&self, _pool: &str, _snapshot_name: &str, snapshots: &[String]) -> Result<()> {
        timed("lzc_destroy", snapshots, || {
            self.lzc
                .destroy_snapshots(&paths(snapshots), DestroyTiming::RightNow)
                .map_err(|e| failure("destroy", snapshots, format!("{e:?}")))
        })
    }

    fn destroy(&self, snapshot: &str, defer: bool) -> Result<()> {
        let timing = if defer {
            DestroyTiming::Defer
        } else {
            DestroyTiming::RightNow
        };
        let names = [snapshot.to_owned()];
        timed("lzc_destroy", &names, || {
            self.lzc
                .destroy_snapshots(&paths(&names), timing)
                .map_err(|e| failure("destroy", &names, format!("{e:?}")))
        })
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
