//! The runtime root: the directory a run mounts under, and its lock.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub const DEFAULT_ROOT: &str = "/run/zfs-snap";

/// Characters that would turn the mirror prefix into a pattern in borg's
/// pattern styles, or break a patterns file line.
const FORBIDDEN: &[char] = &['*', '?', '[', ']', '\\', '\n', '\r', '\t'];

/// Creates `path` (0700) if missing, then refuses it unless it is a real
/// directory, owned by us, and not writable by group or others.
pub fn prepare(path: &Path) -> Result<PathBuf> {
    let refuse = |reason: String| Error::RuntimeRoot {
        path: path.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse("it must be an absolute path".into()));
    }
    if let Some(c) = path
        .to_string_lossy()
        .chars()
        .find(|c| FORBIDDEN.contains(c))
    {
        return Err(refuse(format!(
            "it contains {c:?}, which borg patterns would misread"
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| refuse(format!("cannot create it: {e}")))?,
        Err(e) => return Err(refuse(e.to_string())),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| refuse(e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symlink; give the real directory".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(refuse(format!(
            "it is owned by uid {}, not by uid {euid} running zfs-snap",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "it is writable by group or others (mode {:o}); chmod 700 it",
            meta.mode() & 0o7777
        )));
    }
    Ok(path.to_owned())
}

/// An exclusive lock on `<root>/lock`, holding our pid; released on drop.
pub struct Lock {
    _file: Flock<File>,
}

/// Takes the lock; without `wait`, fails at once naming the holder's pid.
pub fn lock(root: &Path, wait: Option<Duration>) -> Result<Lock> {
    let path = root.join("lock");
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let started = Instant::now();
    let mut logged = false;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                locked.set_len(0).map_err(io)?;
                locked.rewind().map_err(io)?;
                writeln!(locked, "{}", std::process::id()).map_err(io)?;
                return Ok(Lock { _file: locked });
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim().parse().ok();
                match wait {
                    Some(limit) if started.elapsed() < limit => {
                        if !logged {
                            tracing::info!(pid, "waiting for another zfs-snap run to finish");
                            logged = true;
                        }
                        sleep(Duration::from_millis(200));
                    }
                    _ => return Err(Error::LockHeld { path, pid }),
                }
            }
            Err((_, errno)) => return Err(io(errno.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        prepare(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn refuses_symlinks_and_writable_directories() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        prepare(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = prepare(&link).unwrap_err().to_string();
        assert!(err.contains("symlink") && err.contains("link"), "{err}");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&real).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        assert!(prepare(Path::new("relative")).is_err());
        assert!(prepare(&dir.path().join("glob*")).is_err());
    }

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path(), None).unwrap();
        let err = lock(dir.path(), None).err().unwrap();
        match err {
            Error::LockHeld { pid, .. } => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other}"),
        }
        let started = Instant::now();
        assert!(lock(dir.path(), Some(Duration::from_millis(300))).is_err());
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn lock_is_free_again_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(lock(dir.path(), None).unwrap());
        lock(dir.path(), None).unwrap();
    }
}
