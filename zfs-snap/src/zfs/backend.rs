//! The one place a ZFS backend is chosen: libzetta (libzfs_core) when it
//! is built in and opens, else the `zfs` command.

use crate::command::CommandLine;
use crate::error::{Error, Result};
use crate::zfs::api::Zfs;
use crate::zfs::cli::ZfsCommand;

/// Which implementation of [`Zfs`] creates and destroys snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// libzetta when built in and libzfs_core opens, else the command.
    Auto,
    Command,
    Libzetta,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "command" => Ok(Backend::Command),
            "libzetta" => Ok(Backend::Libzetta),
            other => Err(format!(
                "unknown backend {other:?}: use auto, command or libzetta"
            )),
        }
    }
}

/// Opens the chosen backend over `command` (used for everything libzetta
/// does not do, and as the fallback).
pub fn open(backend: Backend, command: CommandLine) -> Result<Box<dyn Zfs>> {
    // A configured command (`sudo zfs`, a wrapper) is the user's choice of
    // how to reach ZFS: `auto` then keeps to it.
    let custom = command.program() != "zfs" || !command.leading().is_empty();
    let backend = if backend == Backend::Auto && custom {
        Backend::Command
    } else {
        backend
    };
    let command = ZfsCommand::new(command);
    match backend {
        Backend::Command => Ok(Box::new(command)),
        #[cfg(feature = "libzetta")]
        Backend::Auto | Backend::Libzetta => match crate::zfs::lzc::LzcZfs::open(command) {
            Ok(lzc) => Ok(Box::new(lzc)),
            Err((command, reason)) if backend == Backend::Auto => {
                tracing::warn!(
                    "libzfs_core cannot be opened ({reason}); using the zfs command instead"
                );
                Ok(Box::new(command))
            }
            Err((_, reason)) => Err(Error::Backend(format!(
                "libzfs_core cannot be opened: {reason}"
            ))),
        },
        #[cfg(not(feature = "libzetta"))]
        Backend::Auto => Ok(Box::new(command)),
        #[cfg(not(feature = "libzetta"))]
        Backend::Libzetta => Err(Error::Backend(
            "this zfs-snap was built without libzetta; rebuild with `--features libzetta` \
             (needs libzfslinux-dev and pkg-config) or use --backend command"
                .into(),
        )),
    }
}
