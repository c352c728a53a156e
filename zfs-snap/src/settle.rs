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

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::borg::CreateArgs;
use crate::mapping::Mapping;
use crate::plan::{Plan, PlannedRoot, RootSource};

/// What borg skips while it walks, as far as the walk for special files
/// must skip it too.
struct Skip<'a> {
    /// Paths borg is told not to enter (ours: stand-ins, boundaries).
    paths: Vec<&'a Path>,
    /// Tag files: borg enters no directory holding one.
    tags: &'a [OsString],
    exclude_caches: bool,
}

const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Settles `plan` after its snapshots are mounted (see the module);
/// relative roots are relative to `cwd`.
pub fn after_freeze(plan: &mut Plan, mapping: &Mapping, cwd: &Path, args: &CreateArgs) {
    let mut live = Vec::new();
    for (i, root) in plan.roots.iter().enumerate() {
        if root.source != RootSource::Snapshot {
            continue;
        }
        let original = original_of(root, cwd);
        let in_mirror = mapping.at(root.level).to_snapshot(&original);
        let said = format!("source root {}", root.path.display());
        match std::fs::symlink_metadata(&in_mirror) {
            Err(_) if std::fs::symlink_metadata(&original).is_ok() => live.push((
                i,
                format!(
                    "{said} is not in the snapshot (made after it was taken); borg reads it live"
                ),
            )),
            Ok(_) if args.read_special && read_as_special(&in_mirror) => live.push((
                i,
                format!("{said} is read as a special file (--read-special); borg reads it live"),
            )),
            _ => {}
        }
    }
    for (i, why) in live {
        plan.warnings.push(why);
        read_live(&mut plan.roots[i]);
    }
    if args.read_special {
        live_special_files(plan, mapping, cwd, args);
    }
}

fn read_live(root: &mut PlannedRoot) {
    root.source = RootSource::Live;
    root.borg_path = root.path.display().to_string();
    root.dataset = None;
    root.level = 0;
}

/// Each special file below a root read from the mirror: excluded there,
/// and a live root of its own. A root whose special files cannot be
/// given so (a relative root: borg walks it as a relative path, which no
/// exclusion of ours can name; a name that is not UTF-8) is read live.
fn live_special_files(plan: &mut Plan, mapping: &Mapping, cwd: &Path, args: &CreateArgs) {
    let skip = Skip {
        paths: plan
            .live_exclusions
            .iter()
            .chain(&plan.boundaries)
            .map(PathBuf::as_path)
            .collect(),
        tags: &args.exclude_if_present,
        exclude_caches: args.exclude_caches,
    };
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    let mut whole = Vec::new();
    let one_file_system = plan.one_file_system;
    for (n, root) in plan.roots.iter().chain(&plan.extra_roots).enumerate() {
        if root.source != RootSource::Snapshot {
            continue;
        }
        let original = original_of(root, cwd);
        let mirror = mapping.at(root.level);
        let start = mirror.to_snapshot(&original);
        let mut here = Vec::new();
        walk(&start, one_file_system, &skip, &mut |entry| {
            here.push(entry.to_owned())
        });
        if here.is_empty() {
            continue;
        }
        let spelled: Option<Vec<(PathBuf, String)>> = here
            .into_iter()
            .map(|entry| {
                let live = mirror.to_original(&entry)?;
                let live_root = live_root(root, &original, &live)?;
                (root.path.is_absolute() && entry.to_str().is_some()).then_some((entry, live_root))
            })
            .collect();
        match spelled {
            Some(list) => found.extend(list),
            None => whole.push(n),
        }
    }
    let given = plan.roots.len();
    for n in whole {
        let root = if n < given {
            &mut plan.roots[n]
        } else {
            &mut plan.extra_roots[n - given]
        };
        plan.warnings.push(format!(
            "source root {} holds special files borg reads (--read-special) that zfs-snap cannot \
             give it one by one (a relative root, or a name that is not UTF-8); borg reads all of \
             it live",
            root.path.display()
        ));
        read_live(root);
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
        plan.special_exclusions.push(in_mirror);
        plan.extra_roots.push(PlannedRoot {
            path: PathBuf::from(&live),
            source: RootSource::Live,
            borg_path: live,
            dataset: None,
            level: 0,
        });
    }
}

/// The live absolute path a root stands for (relative ones against
/// `cwd`), without the user's `/./`.
fn original_of(root: &PlannedRoot, cwd: &Path) -> PathBuf {
    let text = root.path.to_string_lossy();
    let joined = match text.find("/./") {
        Some(pos) if pos > 0 => format!("{}/{}", &text[..pos], &text[pos + 3..]),
        _ => text.into_owned(),
    };
    crate::mapping::normalize(&cwd.join(joined))
}

/// How to give borg the live `path` below `root` (whose live path is
/// `original`) so that it stores it where it stores it through the root:
/// the root's own spelling, `/./` marker included, then the rest; `None`
/// when a name is not UTF-8.
fn live_root(root: &PlannedRoot, original: &Path, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(original).unwrap_or(path).to_str()?;
    let given = root.path.to_str()?.trim_end_matches('/');
    Some(if rest.is_empty() {
        given.to_owned()
    } else if given.is_empty() {
        format!("/{rest}")
    } else {
        format!("{given}/{rest}")
    })
}

/// Whether borg with `--read-special` reads `path` as a special file: a
/// named pipe or a device, or a symlink to one.
fn read_as_special(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::metadata(path).is_ok_and(|m| is_special(m.file_type()))
        }
        Ok(m) => is_special(m.file_type()),
        Err(_) => false,
    }
}

fn is_special(t: std::fs::FileType) -> bool {
    t.is_fifo() || t.is_char_device() || t.is_block_device()
}

/// Whether borg enters directory `dir` (its tags say so).
fn enters(dir: &Path, skip: &Skip<'_>) -> bool {
    if skip.paths.contains(&dir) {
        return false;
    }
    if skip
        .tags
        .iter()
        .any(|tag| dir.join(tag).symlink_metadata().is_ok())
    {
        return false;
    }
    if skip.exclude_caches {
        let tag = std::fs::read(dir.join(CACHEDIR_TAG)).unwrap_or_default();
        if tag.starts_with(CACHEDIR_SIGNATURE) {
            return false;
        }
    }
    true
}

/// Every entry below `dir` (itself a directory, not a symlink to one)
/// that borg would read as special, depth first; with `one_file_system`,
/// not leaving `dir`'s file system (borg's `-x`). What borg does not enter
/// is skipped ([`Skip`]); unreadable directories too (borg reports them
/// itself); `.zfs` directories are not entered (their snapshots mount when
/// visited).
fn walk(dir: &Path, one_file_system: bool, skip: &Skip<'_>, found: &mut dyn FnMut(&Path)) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() || !enters(dir, skip) {
        return;
    }
    let dev = meta.dev();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                let same_fs = !one_file_system
                    || std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev);
                if entry.file_name() != ".zfs" && same_fs && enters(&path, skip) {
                    stack.push(path);
                }
            } else if is_special(kind) || (kind.is_symlink() && read_as_special(&path)) {
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

    const NO_SKIP: Skip<'static> = Skip {
        paths: Vec::new(),
        tags: &[],
        exclude_caches: false,
    };

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    fn found_below(d: &Path, one_file_system: bool, skip: &Skip<'_>) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(d, one_file_system, skip, &mut |p| {
            found.push(p.strip_prefix(d).unwrap().to_owned())
        });
        found.sort();
        found
    }

    #[test]
    fn a_live_root_is_spelled_as_its_root_so_borg_stores_the_same_path() {
        let cwd = Path::new("/elsewhere");
        let r = root("/tmp/borgmatic-x/./borgmatic", RootSource::Snapshot);
        let original = original_of(&r, cwd);
        assert_eq!(original, Path::new("/tmp/borgmatic-x/borgmatic"));
        assert_eq!(
            live_root(&r, &original, Path::new("/tmp/borgmatic-x/borgmatic/pg/db")).unwrap(),
            "/tmp/borgmatic-x/./borgmatic/pg/db"
        );
        let r = root("/var/lib/", RootSource::Snapshot);
        assert_eq!(
            live_root(&r, &original_of(&r, cwd), Path::new("/var/lib/x/fifo")).unwrap(),
            "/var/lib/x/fifo"
        );
        let r = root("/", RootSource::Snapshot);
        assert_eq!(
            live_root(&r, &original_of(&r, cwd), Path::new("/dev/sda")).unwrap(),
            "/dev/sda"
        );
    }

    #[test]
    fn a_relative_root_stands_for_its_path_below_the_working_directory() {
        let cwd = Path::new("/tank");
        assert_eq!(
            original_of(&root("data", RootSource::Snapshot), cwd),
            Path::new("/tank/data")
        );
        assert_eq!(
            original_of(&root("../x/./y", RootSource::Snapshot), cwd),
            Path::new("/x/y")
        );
    }

    #[test]
    fn special_files_are_found_symlinks_to_them_too_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/file"), "x").unwrap();
        mkfifo(&d.join("a/b/pipe"));
        std::os::unix::fs::symlink("b/pipe", d.join("a/to-pipe")).unwrap();
        std::os::unix::fs::symlink("file", d.join("a/to-file")).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join("a/to-null")).unwrap();
        std::os::unix::fs::symlink("missing", d.join("a/dangling")).unwrap();
        let want: Vec<PathBuf> = ["a/b/pipe", "a/to-null", "a/to-pipe"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(found_below(d, false, &NO_SKIP), want);
    }

    /// borg does not follow a root that is a symlink to a directory (it
    /// stores the symlink), nor enter a directory it is told not to enter
    /// or one holding a tag: nor does the walk.
    #[test]
    fn what_borg_does_not_enter_is_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["tagged", "cache", "stand-in", "plain"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
            mkfifo(&d.join(sub).join("pipe"));
        }
        std::fs::write(d.join("tagged/.nobackup"), "").unwrap();
        std::fs::write(
            d.join("cache/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n",
        )
        .unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(d.join("plain"), &link).unwrap();
        let mut found = Vec::new();
        walk(&link, false, &NO_SKIP, &mut |p| found.push(p.to_owned()));
        assert!(found.is_empty(), "a symlink root is not walked: {found:?}");

        let tags = [OsString::from(".nobackup")];
        let stand_in = d.join("stand-in");
        let skip = Skip {
            paths: vec![stand_in.as_path()],
            tags: &tags,
            exclude_caches: true,
        };
        assert_eq!(
            found_below(d, false, &skip),
            vec![PathBuf::from("plain/pipe")]
        );
        let all = found_below(d, false, &NO_SKIP);
        assert_eq!(all.len(), 4, "{all:?}");
    }
}
