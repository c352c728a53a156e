//! The runtime root: the directory a run mounts under, the names zfs-snap
//! owns in it, its lock and its clean mark.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::private::{self, LockFile};

pub const DEFAULT_ROOT: &str = "/run/zfs-snap";

/// Where a run works and how long it waits for another one.
pub struct Options {
    /// As given; [`prepare`] makes it canonical.
    pub runtime_root: PathBuf,
    pub wait: Option<Duration>,
    pub mountinfo: PathBuf,
}

// The names zfs-snap owns inside a runtime root: it creates, changes and
// removes these and nothing else there.
/// The lock file.
pub const LOCK_FILE: &str = "lock";
/// The mirror of the live tree where snapshots are mounted.
pub const MIRROR_DIR: &str = "snap";

/// The mirror for datasets mounted below a file system that is not in a
/// snapshot (a tmpfs inside a snapshotted dataset): `snap` at level 0,
/// `snap-<n>` below `n` such file systems, so every mountpoint directory
/// zfs-snap needs is one it can create.
pub fn mirror_dir(level: usize) -> String {
    if level == 0 {
        MIRROR_DIR.to_owned()
    } else {
        format!("{MIRROR_DIR}-{level}")
    }
}

/// Whether `name` (in a runtime root) is one of the mirrors.
pub fn is_mirror_dir(name: &str) -> bool {
    name == MIRROR_DIR
        || name
            .strip_prefix("snap-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
/// Files borg reads (rewritten patterns), each named by [`is_work_file`].
pub const WORK_DIR: &str = "work";
/// The cached `borg --version`.
pub const BORG_VERSION_FILE: &str = "borg-version";
/// A `zfs-snap session`'s socket.
pub const SOCKET: &str = "session.sock";

/// Whether `name` (in [`WORK_DIR`]) is a file zfs-snap writes there:
/// `zfs-snap-patterns.lst`, `zfs-snap-patterns-from-<n>.lst`, each also
/// with `.<k>` before `.lst` (the `k`th create of a shared session).
pub fn is_work_file(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(stem) = name
        .strip_prefix("zfs-snap-patterns")
        .and_then(|s| s.strip_suffix(".lst"))
    else {
        return false;
    };
    let stem = match stem.rsplit_once('.') {
        Some((head, k)) if digits(k) => head,
        _ => stem,
    };
    stem.is_empty()
        || stem
            .strip_prefix("-from-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Characters that would turn the mirror prefix into a pattern in borg's
/// pattern styles, or break a patterns file line.
const FORBIDDEN: &[char] = &['*', '?', '[', ']', '\\', '\n', '\r', '\t'];

/// The one spelling of the runtime root `path`: its parent resolved
/// (symlinks, `.`, `..`: `/var/run/zfs-snap` is `/run/zfs-snap`), its last
/// component as given (a symlink there is refused by [`prepare`], not
/// followed). The ownership value names this path, so every spelling of
/// one directory must give the same one. A parent that does not exist yet
/// stays as written.
pub fn canonical(path: &Path) -> Result<PathBuf> {
    let refuse = |reason: &str| Error::RuntimeRoot {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if !path.is_absolute() {
        return Err(refuse("it must be an absolute path"));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(refuse(
            "it must name a directory below `/`, without a trailing `..`",
        ));
    };
    let parent = match std::fs::canonicalize(parent) {
        Ok(parent) => parent,
        Err(_)
            if path
                .components()
                .any(|c| c == std::path::Component::ParentDir) =>
        {
            return Err(refuse(
                "its parent does not exist, and `..` in it cannot be resolved",
            ))
        }
        Err(_) => parent.to_owned(),
    };
    let canonical = parent.join(name);
    if canonical.to_str().is_none() {
        return Err(refuse("it is not valid UTF-8"));
    }
    Ok(canonical)
}

/// Creates `path` (0700) if missing, then refuses it unless it is a real
/// directory, owned by us, and not writable by group or others. Returns its
/// canonical spelling ([`canonical`]).
pub fn prepare(path: &Path) -> Result<PathBuf> {
    let given = path;
    let refuse = |reason: String| Error::RuntimeRoot {
        path: given.to_owned(),
        reason,
    };
    let mut path = canonical(given)?;
    if let Some(c) = path
        .to_string_lossy()
        .chars()
        .find(|c| FORBIDDEN.contains(c))
    {
        return Err(refuse(format!(
            "it contains {c:?}, which borg patterns would misread"
        )));
    }
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| refuse(format!("cannot create {}: {e}", parent.display())))?;
            path = canonical(given)?;
        }
    }
    let path = path.as_path();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| refuse(format!("cannot create it: {e}")))?,
        Err(e) => return Err(refuse(e.to_string())),
        Ok(_) => {}
    }
    private::check_dir(path).map_err(|why| refuse(why.to_string()))?;
    Ok(path.to_owned())
}

/// An exclusive lock on `<root>/lock`, holding our pid; released on drop.
pub struct Lock {
    _file: LockFile,
}

/// Takes the lock; without `wait`, fails at once naming the holder's pid.
pub fn lock(root: &Path, wait: Option<Duration>) -> Result<Lock> {
    let path = root.join(LOCK_FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let started = Instant::now();
    let mut logged = false;
    loop {
        if let Some(mut locked) = LockFile::take(&path, false).map_err(io)? {
            locked
                .write(&format!("{}\n", std::process::id()))
                .map_err(io)?;
            return Ok(Lock { _file: locked });
        }
        let pid = private::lock_holder(&path).and_then(|t| t.trim().parse().ok());
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
}

/// `<root>/clean`: written by a run whose teardown left nothing behind,
/// holding the boot it ran in and the pools (name, guid) it saw. A run that
/// finds a mark for this boot and no pool it has not seen knows no snapshot
/// of ours is left, and need not list every snapshot on the host.
const CLEAN_MARK: &str = "clean";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id; `None` where the kernel does not say.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn mark_text(boot_id: &str, pools: &[(String, String)]) -> String {
    let mut text = format!("{boot_id}\n");
    for (name, guid) in pools {
        text.push_str(&format!("{name}\t{guid}\n"));
    }
    text
}

/// Reads and removes the clean mark (a crash from here on must find it
/// gone). True only if it was written in boot `boot_id` over a set of pools
/// that includes every one of `pools`, and removing it worked.
pub fn take_clean_mark(root: &Path, boot_id: Option<&str>, pools: &[(String, String)]) -> bool {
    let path = root.join(CLEAN_MARK);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the clean mark");
        return false;
    }
    let mut lines = text.lines();
    let (Some(boot_id), Some(marked)) = (boot_id, lines.next()) else {
        return false;
    };
    let seen: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once('\t')).collect();
    marked == boot_id
        && pools
            .iter()
            .all(|(name, guid)| seen.contains(&(name.as_str(), guid.as_str())))
}

/// Removes the clean mark, if any: the next run looks for leftovers.
pub fn forget_clean_mark(root: &Path) {
    let _ = std::fs::remove_file(root.join(CLEAN_MARK));
}

/// Writes the clean mark (atomically: a torn one would read as not clean).
pub fn write_clean_mark(
    root: &Path,
    boot_id: &str,
    pools: &[(String, String)],
) -> std::io::Result<()> {
    let tmp = root.join(format!("{CLEAN_MARK}.tmp"));
    private::write_own_file(&tmp, mark_text(boot_id, pools).as_bytes())?;
    std::fs::rename(&tmp, root.join(CLEAN_MARK))
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
    fn every_spelling_of_a_root_is_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let real = base.join("run");
        std::fs::create_dir_all(real.join("x")).unwrap();
        std::os::unix::fs::symlink(&real, base.join("var-run")).unwrap();
        let want = prepare(&real.join("zfs-snap")).unwrap();
        assert_eq!(want, real.join("zfs-snap"));
        for spelling in [
            format!("{}/run/zfs-snap/", base.display()),
            format!("{}/run/./zfs-snap", base.display()),
            format!("{}/run/x/../zfs-snap", base.display()),
            format!("{}/var-run/zfs-snap", base.display()),
            format!("{}//run//zfs-snap", base.display()),
        ] {
            assert_eq!(prepare(Path::new(&spelling)).unwrap(), want, "{spelling}");
        }
        assert!(prepare(Path::new("/")).is_err());
        assert!(prepare(&real.join("zfs-snap/..")).is_err());
        assert!(prepare(&real.join("missing/../zfs-snap")).is_err());
        let fresh = prepare(&base.join("new/deeper/root")).unwrap();
        assert_eq!(fresh, base.join("new/deeper/root"));
    }

    #[test]
    fn work_file_names_are_exactly_ours() {
        for ours in [
            "zfs-snap-patterns.lst",
            "zfs-snap-patterns-from-0.lst",
            "zfs-snap-patterns-from-12.lst",
            "zfs-snap-patterns.3.lst",
            "zfs-snap-patterns-from-0.12.lst",
        ] {
            assert!(is_work_file(ours), "{ours}");
        }
        for theirs in [
            "notes.txt",
            "zfs-snap-patterns.lst~",
            "zfs-snap-patterns-from-.lst",
            "zfs-snap-patterns-from-1a.lst",
            "patterns-from-0.lst",
            "zfs-snap-patterns",
            "zfs-snap-patterns..lst",
            "zfs-snap-patterns.x.lst",
            "zfs-snap-patterns-from-.2.lst",
        ] {
            assert!(!is_work_file(theirs), "{theirs}");
        }
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
    fn clean_mark_holds_for_this_boot_and_known_pools_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let pools = vec![
            ("tank".to_owned(), "11".to_owned()),
            ("rpool".to_owned(), "22".to_owned()),
        ];
        assert!(
            !take_clean_mark(root, Some("boot-a"), &pools),
            "no mark yet"
        );

        write_clean_mark(root, "boot-a", &pools).unwrap();
        assert!(take_clean_mark(root, Some("boot-a"), &pools));
        assert!(
            !take_clean_mark(root, Some("boot-a"), &pools),
            "taking removes it"
        );

        type Case<'a> = (Option<&'a str>, &'a [(String, String)], bool);
        let cases: [Case; 5] = [
            (Some("boot-a"), &pools[..1], true),
            (Some("boot-b"), &pools, false),
            (None, &pools, false),
            (
                Some("boot-a"),
                &[("tank".to_owned(), "99".to_owned())],
                false,
            ),
            (
                Some("boot-a"),
                &[("usb".to_owned(), "33".to_owned())],
                false,
            ),
        ];
        for (boot, now, expected) in cases {
            write_clean_mark(root, "boot-a", &pools).unwrap();
            assert_eq!(
                take_clean_mark(root, boot, now),
                expected,
                "{boot:?} {now:?}"
            );
            assert!(!root.join(CLEAN_MARK).exists());
        }
    }

    #[test]
    fn lock_is_free_again_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(lock(dir.path(), None).unwrap());
        lock(dir.path(), None).unwrap();
    }
}
