//! What the snapshots cannot give borg, settled once they are mounted:
//!
//! - a source root that is not in the snapshot but is in the live tree
//!   (made after the snapshot was taken: in a session, borgmatic's runtime
//!   directory of a later repository's create) is read live, with a
//!   warning naming it;
//! - with `--read-special`, what borg reads as a special file (a named pipe
//!   or a device, or a symlink to one) is read live: a pipe in a snapshot
//!   has no writer (borgmatic streams its database dumps through pipes in
//!   its runtime directory, which may be on ZFS), and a device in a
//!   `nodev` snapshot mount cannot be opened. Each one found in the mirror
//!   is excluded there and given to borg as a root of its own, spelled so
//!   that borg stores it under the same path.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::mapping::Mapping;
use crate::plan::{Plan, PlannedRoot, RootSource};

/// Settles `plan` after its snapshots are mounted (see the module);
/// relative roots are relative to `cwd`.
pub fn after_freeze(plan: &mut Plan, mapping: &Mapping, cwd: &Path, read_special: bool) {
    for i in 0..plan.roots.len() {
        let root = &plan.roots[i];
        if root.source != RootSource::Snapshot {
            continue;
        }
        let original = crate::mapping::normalize(&cwd.join(original_of(root)));
        let in_mirror = mapping.at(root.level).to_snapshot(&original);
        let said = format!("source root {}", root.path.display());
        match std::fs::symlink_metadata(&in_mirror) {
            Err(_) if std::fs::symlink_metadata(&original).is_ok() => plan.warnings.push(format!(
                "{said} is not in the snapshot (made after it was taken); borg reads it live"
            )),
            Ok(_) if read_special && read_as_special(&in_mirror) => plan.notes.push(format!(
                "{said} is read as a special file (--read-special); borg reads it live"
            )),
            // borg walks a relative root as a relative path: no exclusion
            // of ours could name its special files in the mirror.
            Ok(_) if read_special && !root.path.is_absolute() && holds_special(&in_mirror) => {
                plan.warnings.push(format!(
                    "{said} holds special files borg reads (--read-special) and is given \
                     relative; borg reads all of it live (give it as an absolute path to \
                     read the rest from the snapshot)"
                ))
            }
            _ => continue,
        }
        let root = &mut plan.roots[i];
        root.source = RootSource::Live;
        root.borg_path = root.path.display().to_string();
        root.dataset = None;
        root.level = 0;
    }
    if read_special {
        live_special_files(plan, mapping);
    }
}

fn holds_special(dir: &Path) -> bool {
    let mut any = false;
    walk(dir, None, &mut |_| any = true);
    any
}

/// Each special file below a root read from the mirror: excluded there,
/// and a live root of its own.
fn live_special_files(plan: &mut Plan, mapping: &Mapping) {
    let mut found = Vec::new();
    for root in plan.borg_roots() {
        if root.source != RootSource::Snapshot || !root.path.is_absolute() {
            continue;
        }
        let original = original_of(root);
        let mirror = mapping.at(root.level);
        let start = mirror.to_snapshot(&original);
        let dev = plan.one_file_system.then(|| dev_of(&start)).flatten();
        walk(&start, dev, &mut |entry| {
            let Some(live) = mirror.to_original(entry) else {
                return;
            };
            found.push((entry.to_owned(), live_root(root, &original, &live)));
        });
    }
    if found.is_empty() {
        return;
    }
    plan.notes.push(format!(
        "{} special file(s) below snapshotted roots read live (--read-special): {}",
        found.len(),
        found
            .iter()
            .map(|(_, live)| live.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (in_mirror, live) in found {
        plan.live_exclusions.push(in_mirror);
        plan.extra_roots.push(PlannedRoot {
            path: PathBuf::from(&live),
            source: RootSource::Live,
            borg_path: live,
            dataset: None,
            level: 0,
        });
    }
}

/// The live absolute path a root stands for, without the user's `/./`.
fn original_of(root: &PlannedRoot) -> PathBuf {
    let text = root.path.to_string_lossy();
    let joined = match text.find("/./") {
        Some(pos) if pos > 0 => format!("{}/{}", &text[..pos], &text[pos + 3..]),
        _ => text.into_owned(),
    };
    crate::mapping::normalize(Path::new(&joined))
}

/// How to give borg the live `path` below `root` (whose live path is
/// `original`) so that it stores it where it stores it through the root:
/// the root's own spelling, `/./` marker included, then the rest.
fn live_root(root: &PlannedRoot, original: &Path, path: &Path) -> String {
    let rest = path.strip_prefix(original).unwrap_or(path);
    let given = root.path.to_string_lossy();
    let given = given.trim_end_matches('/');
    if rest.as_os_str().is_empty() {
        given.to_owned()
    } else if given.is_empty() {
        format!("/{}", rest.display())
    } else {
        format!("{given}/{}", rest.display())
    }
}

fn dev_of(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.dev())
}

/// Whether borg with `--read-special` reads `path` as a special file: a
/// named pipe or a device, or a symlink to one.
fn read_as_special(path: &Path) -> bool {
    let special = |t: std::fs::FileType| t.is_fifo() || t.is_char_device() || t.is_block_device();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::metadata(path).is_ok_and(|m| special(m.file_type()))
        }
        Ok(m) => special(m.file_type()),
        Err(_) => false,
    }
}

/// Every entry below `dir` that borg would read as special, depth first;
/// with `dev`, not leaving that file system (borg's `-x`). Unreadable
/// directories are skipped (borg reports them itself); `.zfs` directories
/// are not entered (their snapshots mount when visited).
fn walk(dir: &Path, dev: Option<u64>, found: &mut dyn FnMut(&Path)) {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if entry.file_name() != ".zfs" && dev.is_none_or(|d| d == meta.dev()) {
                    stack.push(path);
                }
            } else if read_as_special(&path) {
                found(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(path: &str, source: RootSource) -> PlannedRoot {
        PlannedRoot {
            path: PathBuf::from(path),
            source,
            borg_path: String::new(),
            dataset: None,
            level: 0,
        }
    }

    #[test]
    fn a_live_root_is_spelled_as_its_root_so_borg_stores_the_same_path() {
        let r = root("/tmp/borgmatic-x/./borgmatic", RootSource::Snapshot);
        let original = original_of(&r);
        assert_eq!(original, Path::new("/tmp/borgmatic-x/borgmatic"));
        assert_eq!(
            live_root(&r, &original, Path::new("/tmp/borgmatic-x/borgmatic/pg/db")),
            "/tmp/borgmatic-x/./borgmatic/pg/db"
        );
        let r = root("/var/lib/", RootSource::Snapshot);
        assert_eq!(
            live_root(&r, &original_of(&r), Path::new("/var/lib/x/fifo")),
            "/var/lib/x/fifo"
        );
        let r = root("/", RootSource::Snapshot);
        assert_eq!(
            live_root(&r, &original_of(&r), Path::new("/dev/sda")),
            "/dev/sda"
        );
    }

    #[test]
    fn special_files_are_found_symlinks_to_them_too_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/file"), "x").unwrap();
        nix::unistd::mkfifo(
            &d.join("a/b/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("b/pipe", d.join("a/to-pipe")).unwrap();
        std::os::unix::fs::symlink("file", d.join("a/to-file")).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join("a/to-null")).unwrap();
        std::os::unix::fs::symlink("missing", d.join("a/dangling")).unwrap();
        let mut found = Vec::new();
        walk(d, None, &mut |p| {
            found.push(p.strip_prefix(d).unwrap().to_owned())
        });
        found.sort();
        let want: Vec<PathBuf> = ["a/b/pipe", "a/to-null", "a/to-pipe"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(found, want);
    }
}
