//! Files and directories zfs-snap owns (the runtime root and what it holds,
//! the state directory and its records): one way to check that a directory
//! is ours, to lock it, and to write a file in it, never through a symlink
//! someone left at a name of ours.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why a directory is not one zfs-snap may keep its files in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is a symlink (not followed); give the real directory")]
    Symlink,
    #[error("it is not a directory")]
    NotADirectory,
    #[error("it is owned by uid {owner}, not by uid {me} running zfs-snap")]
    Owner { owner: u32, me: u32 },
    #[error("it is writable by group or others (mode {mode:o}); chmod go-w it")]
    Writable { mode: u32 },
    #[error("{0}")]
    Unreadable(String),
    #[error("it is owned by uid {owner}, neither root nor uid {me} running zfs-snap: that user could replace what is below it")]
    ParentOwner { owner: u32, me: u32 },
    #[error("it is writable by group or others (mode {mode:o}) and not sticky: they could replace what is below it; chmod go-w it")]
    ParentWritable { mode: u32 },
}

/// Whether `dir` is ours: a real directory, owned by our effective uid, that
/// no one else may write to.
pub fn check_dir(dir: &Path) -> Result<(), Refusal> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Refusal::Unreadable(e.to_string()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        Err(Refusal::Symlink)
    } else if !meta.is_dir() {
        Err(Refusal::NotADirectory)
    } else if meta.uid() != me {
        Err(Refusal::Owner {
            owner: meta.uid(),
            me,
        })
    } else if meta.mode() & 0o022 != 0 {
        Err(Refusal::Writable {
            mode: meta.mode() & 0o7777,
        })
    } else {
        Ok(())
    }
}

/// Whether `dir` is ours ([`check_dir`]) and no one else can replace it:
/// every directory above it is owned by root or by us, and writable by no
/// one else unless it is sticky (as `/tmp`, where others may not rename or
/// remove what is not theirs). A parent another user could write to, or
/// owns (and so may chmod), would let them move `dir` aside and put their
/// own in its place. `dir`'s parents are taken as they stand (give it
/// canonical, as [`crate::runtime::canonical`] makes it). On refusal: the
/// directory refused, and why.
pub fn check_path(dir: &Path) -> Result<(), (PathBuf, Refusal)> {
    check_dir(dir).map_err(|why| (dir.to_owned(), why))?;
    let me = nix::unistd::geteuid().as_raw();
    for parent in dir.ancestors().skip(1) {
        let refused = |why| (parent.to_owned(), why);
        let meta = std::fs::symlink_metadata(parent)
            .map_err(|e| refused(Refusal::Unreadable(e.to_string())))?;
        if meta.file_type().is_symlink() {
            return Err(refused(Refusal::Symlink));
        }
        judge_parent(meta.uid(), meta.mode(), me).map_err(refused)?;
    }
    Ok(())
}

/// Whether a directory of `owner` and `mode` may stand above one of ours.
fn judge_parent(owner: u32, mode: u32, me: u32) -> Result<(), Refusal> {
    let sticky = mode & 0o1000 != 0;
    if owner != 0 && owner != me {
        Err(Refusal::ParentOwner { owner, me })
    } else if mode & 0o022 != 0 && !sticky {
        Err(Refusal::ParentWritable {
            mode: mode & 0o7777,
        })
    } else {
        Ok(())
    }
}

/// Creates `dir` and its missing parents, each with exactly `mode`
/// whatever the umask (a reader running as another user must get through
/// every one of them).
pub fn create_dirs(dir: &Path, mode: u32) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| std::fs::symlink_metadata(d).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?,
            // Made meanwhile by someone else: check_dir judges it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", d.display()))),
        }
    }
    Ok(())
}

/// An exclusive lock on a file of ours, released on drop.
pub struct LockFile {
    file: Flock<File>,
}

impl LockFile {
    /// Opens `path` (made 0600 if missing, never through a symlink) and
    /// locks it: waits for the lock with `wait`, else `Ok(None)` when
    /// another process holds it.
    pub fn take(path: &Path, wait: bool) -> io::Result<Option<LockFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        let how = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match Flock::lock(file, how) {
            Ok(file) => Ok(Some(LockFile { file })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno.into()),
        }
    }

    /// Replaces the lock file's content (the holder's pid, say).
    pub fn write(&mut self, text: &str) -> io::Result<()> {
        use std::io::Seek;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())
    }
}

/// What the lock file at `path` says (its holder's pid), if it can be read.
pub fn lock_holder(path: &Path) -> Option<String> {
    let mut text = String::new();
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Writes one of zfs-snap's own files (0600), replacing its content, never
/// through a symlink someone left at its name.
pub fn write_own_file(path: &Path, content: &[u8]) -> io::Result<()> {
    open_own_file(path)?.write_all(content)
}

/// Opens one of zfs-snap's own files for writing (0600, made if missing,
/// emptied), never through a symlink someone left at its name: once this
/// succeeded, the file at `path` is one zfs-snap made or emptied.
pub fn open_own_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `bytes` to a new file beside `path` (exactly `mode`, whatever the
/// umask), flushes it, and renames it over `path`: a reader sees the old
/// file or the new one, never half. The temporary file is
/// `.<name>.<16 hex digits>.tmp` ([`is_temporary_of`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", random_hex()?));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself, on disk (best effort: it has happened).
        let _ = File::open(dir).and_then(|d| d.sync_all());
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a temporary file [`write_atomic`] makes for a file
/// whose name `target` accepts.
pub fn is_temporary_of(name: &str, target: impl Fn(&str) -> bool) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((file, random)) = inner.rsplit_once('.') else {
        return false;
    };
    is_hex16(random) && target(file)
}

/// 16 hex digits, as [`random_hex`] makes them.
pub fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub const RANDOM_SOURCE: &str = "/dev/urandom";

/// 64 random bits, as 16 hex digits: for names no one else can predict.
pub fn random_hex() -> io::Result<String> {
    let mut random = [0u8; 8];
    File::open(RANDOM_SOURCE)?.read_exact(&mut random)?;
    Ok(format!("{:016x}", u64::from_le_bytes(random)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_ours_only_when_real_owned_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        create_dirs(&real.join("a/b"), 0o755).unwrap();
        for d in [real.clone(), real.join("a"), real.join("a/b")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}", d.display());
        }
        assert_eq!(check_dir(&real), Ok(()));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(check_dir(&link), Err(Refusal::Symlink));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(check_dir(&file), Err(Refusal::NotADirectory));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(check_dir(&real), Err(Refusal::Writable { mode: 0o775 }));
        assert!(matches!(
            check_dir(&dir.path().join("missing")),
            Err(Refusal::Unreadable(_))
        ));
    }

    #[test]
    fn a_path_is_safe_only_when_no_one_else_can_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |d: &Path, m: u32| {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let parent = dir.path().join("parent");
        let root = parent.join("root");
        create_dirs(&root, 0o700).unwrap();
        assert_eq!(check_path(&root), Ok(()));
        mode(&root, 0o770);
        assert_eq!(
            check_path(&root),
            Err((root.clone(), Refusal::Writable { mode: 0o770 }))
        );
        mode(&root, 0o700);
        mode(&parent, 0o777);
        assert_eq!(
            check_path(&root),
            Err((parent.clone(), Refusal::ParentWritable { mode: 0o777 }))
        );
        // Sticky, as /tmp: others cannot move what is ours.
        mode(&parent, 0o1777);
        assert_eq!(check_path(&root), Ok(()));
        mode(&parent, 0o755);
    }

    #[test]
    fn a_parent_must_be_roots_or_ours() {
        let me = 1000;
        assert_eq!(judge_parent(0, 0o40755, me), Ok(()));
        assert_eq!(judge_parent(me, 0o40700, me), Ok(()));
        assert_eq!(judge_parent(0, 0o41777, me), Ok(()));
        assert_eq!(
            judge_parent(1001, 0o40755, me),
            Err(Refusal::ParentOwner { owner: 1001, me })
        );
        // A sticky directory of someone else's: its owner may remove anything.
        assert_eq!(
            judge_parent(1001, 0o41777, me),
            Err(Refusal::ParentOwner { owner: 1001, me })
        );
        assert_eq!(
            judge_parent(0, 0o40775, me),
            Err(Refusal::ParentWritable { mode: 0o775 })
        );
        assert_eq!(
            judge_parent(me, 0o40757, me),
            Err(Refusal::ParentWritable { mode: 0o757 })
        );
    }

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let mut held = LockFile::take(&path, false).unwrap().unwrap();
        held.write("42\n").unwrap();
        assert!(LockFile::take(&path, false).unwrap().is_none());
        assert_eq!(lock_holder(&path).as_deref(), Some("42\n"));
        drop(held);
        assert!(LockFile::take(&path, false).unwrap().is_some());
    }

    #[test]
    fn own_files_are_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"theirs").unwrap();
        let at = dir.path().join("ours");
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        assert!(write_own_file(&at, b"x").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"theirs");
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.prom");
        write_atomic(&path, b"a\n", 0o644).unwrap();
        write_atomic(&path, b"b\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temporary_names_are_recognised_exactly() {
        let is_run = |f: &str| f == "run.json";
        assert!(is_temporary_of(".run.json.0123456789abcdef.tmp", is_run));
        for theirs in [
            ".run.json.tmp",
            "run.json.0123456789abcdef.tmp",
            ".run.json.0123456789abcdeg.tmp",
            ".x.json.0123456789abcdef.tmp",
        ] {
            assert!(!is_temporary_of(theirs, is_run), "{theirs}");
        }
    }
}
