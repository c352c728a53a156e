//! Mounting snapshots read-only and unmounting them: through mount(2) and
//! umount2(2) by default, or through configured commands. A directory of a
//! snapshot already mounted in the mirror can be bound elsewhere in it (a
//! bind mount of a dataset read from its snapshot).

use std::ffi::OsString;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use sys_mount::{Mount, MountFlags, UnmountFlags};

use crate::command::{args, CommandLine};
use crate::error::{Error, Result};

/// Options every snapshot mount carries.
pub const MOUNT_OPTIONS: &str = "ro,nosuid,nodev,noexec";

pub trait Mounter {
    fn mount(&self, snapshot: &str, target: &Path) -> Result<()>;
    /// Binds `from`, a directory inside the mirror mount of `snapshot`,
    /// onto `target`: not recursively (a mount inside `from` is not taken
    /// along: each mount the plan wants is made on its own) and read-only,
    /// `nosuid,nodev,noexec`.
    fn bind(&self, snapshot: &str, from: &Path, target: &Path) -> Result<()>;
    /// `lazy` detaches a busy mount (MNT_DETACH / `umount -l`).
    fn unmount(&self, target: &Path, lazy: bool) -> Result<()>;
}

/// mount(2)/umount2(2) unless a command is configured for either side.
pub struct SnapshotMounter {
    pub mount_command: Option<CommandLine>,
    pub umount_command: Option<CommandLine>,
}

impl Mounter for SnapshotMounter {
    fn mount(&self, snapshot: &str, target: &Path) -> Result<()> {
        let failure = |reason: String| Error::Mount {
            snapshot: snapshot.to_owned(),
            target: target.to_owned(),
            reason,
        };
        match &self.mount_command {
            Some(command) => {
                let mut argv = args(["-t", "zfs", "-o", MOUNT_OPTIONS, snapshot]);
                argv.push(OsString::from(target));
                command.run(&argv).map(drop).map_err(|e| match e {
                    Error::CommandNotFound { .. } => e,
                    other => failure(other.to_string()),
                })
            }
            None => Mount::builder()
                .fstype("zfs")
                .flags(
                    MountFlags::RDONLY
                        | MountFlags::NOSUID
                        | MountFlags::NODEV
                        | MountFlags::NOEXEC,
                )
                .mount(snapshot, target)
                .map(drop)
                .map_err(|e| failure(format!("mount(2): {e}"))),
        }
    }

    fn bind(&self, snapshot: &str, from: &Path, target: &Path) -> Result<()> {
        let failure = |reason: String| Error::Mount {
            snapshot: snapshot.to_owned(),
            target: target.to_owned(),
            reason: format!("binding {}: {reason}", from.display()),
        };
        match &self.mount_command {
            Some(command) => {
                // util-linux mount >= 2.27 binds, then remounts with the
                // options, as below.
                let mut argv = args(["--bind", "-o", MOUNT_OPTIONS]);
                argv.push(OsString::from(from));
                argv.push(OsString::from(target));
                command.run(&argv).map(drop).map_err(|e| match e {
                    Error::CommandNotFound { .. } => e,
                    other => failure(other.to_string()),
                })
            }
            None => {
                use nix::mount::{mount, MsFlags};
                mount(
                    Some(from),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| failure(format!("mount(2): {e}")))?;
                // The kernel copies the source mount's flags (ours: read-only,
                // nosuid, nodev, noexec) to the bind, and a snapshot is
                // read-only anyway; the remount says so explicitly.
                let flags = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC;
                if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                    // Not left behind: the caller records only what mounted.
                    let _ = sys_mount::unmount(target, UnmountFlags::DETACH);
                    return Err(failure(format!("remounting it read-only: {e}")));
                }
                Ok(())
            }
        }
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<()> {
        let failure = |reason: String| Error::Unmount {
            target: target.to_owned(),
            reason,
        };
        match &self.umount_command {
            Some(command) => {
                let mut argv = if lazy { args(["-l"]) } else { Vec::new() };
                argv.push(OsString::from(target));
                command.run(&argv).map(drop).map_err(|e| match e {
                    Error::CommandNotFound { .. } => e,
                    other => failure(other.to_string()),
                })
            }
            None => {
                let flags = if lazy {
                    UnmountFlags::DETACH
                } else {
                    UnmountFlags::empty()
                };
                sys_mount::unmount(target, flags).map_err(|e| failure(format!("umount2(2): {e}")))
            }
        }
    }
}

/// Unmounts `target`, retrying briefly while it is busy, then detaching it.
/// Returns whether it had to detach.
pub fn unmount_patiently(mounter: &dyn Mounter, target: &Path) -> Result<bool> {
    let mut last = None;
    for attempt in 0..5 {
        match mounter.unmount(target, false) {
            Ok(()) => return Ok(false),
            Err(e) => {
                tracing::debug!(target = %target.display(), attempt, error = %e, "unmount failed; retrying");
                last = Some(e);
                sleep(Duration::from_millis(100 << attempt));
            }
        }
    }
    match mounter.unmount(target, true) {
        Ok(()) => {
            tracing::warn!(target = %target.display(), "busy mount detached lazily");
            Ok(true)
        }
        Err(e) => Err(last.unwrap_or(e)),
    }
}
