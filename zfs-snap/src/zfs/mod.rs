//! Talking to ZFS: [`api`] (the [`Zfs`] trait and its values), [`cli`] (over
//! the `zfs` command), `lzc` (libzfs_core, with the `libzetta` feature),
//! [`backend`] (which one a run uses).

pub mod api;
pub mod backend;
pub mod cli;
#[cfg(feature = "libzetta")]
pub mod lzc;

pub use api::{
    pool_of, Filesystem, Owner, Search, Snapshot, TagInfo, Zfs, HOLD_TAG, OWNER_PROPERTY,
    SNAPSHOT_PREFIX, TAG_PROPERTY, TAG_VALUE,
};
pub use backend::{open, Backend};
pub use cli::{parse_filesystems, parse_holds, parse_owners, parse_tags, ZfsCommand};
