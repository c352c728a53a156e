//! Path mapping between the live tree and the snapshot mirror.
//!
//! Snapshots are mounted under `<runtime root>/snap` as a mirror of the live
//! tree: the snapshot of the dataset mounted at `/var/lib` is mounted at
//! `<runtime root>/snap/var/lib`. The mapping is therefore a pure function
//! both ways, distinct mountpoints never share a snapshot path, and the
//! paths are the same on every run (borg's files cache keys on them).

use std::path::{Component, Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    snapshot_root: PathBuf,
}

impl Mapping {
    pub fn new(runtime_root: &Path) -> Self {
        Self::at_level(runtime_root, 0)
    }

    /// The mirror at `level` ([`crate::runtime::mirror_dir`]).
    pub fn at_level(runtime_root: &Path, level: usize) -> Self {
        Self {
            snapshot_root: runtime_root.join(crate::runtime::mirror_dir(level)),
        }
    }

    /// The mirror at `level` of the same runtime root.
    pub fn at(&self, level: usize) -> Mapping {
        let runtime_root = self
            .snapshot_root
            .parent()
            .expect("the mirror is inside the runtime root");
        Mapping::at_level(runtime_root, level)
    }

    /// The directory the mirror hangs from.
    pub fn snapshot_root(&self) -> &Path {
        &self.snapshot_root
    }

    /// Where the live absolute `path` appears in the mirror.
    pub fn to_snapshot(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        if relative.as_os_str().is_empty() {
            self.snapshot_root.clone()
        } else {
            self.snapshot_root.join(relative)
        }
    }

    /// The live path a mirror path stands for, `None` outside the mirror.
    pub fn to_original(&self, path: &Path) -> Option<PathBuf> {
        let relative = path.strip_prefix(&self.snapshot_root).ok()?;
        Some(Path::new("/").join(relative))
    }

    /// The path to give borg for a source root, with borg's `/./` marker
    /// placed so the archive stores what plain borg would have stored.
    ///
    /// borg 1.4 stores a walked path minus the part before the *first*
    /// `/./` of the argument as given (none at position 0), then drops
    /// leading `/` and `../`. So: `/var/lib/x` is stored as `var/lib/x`;
    /// `data` (relative to `cwd`) as `data`; `../child` as `child`; and a
    /// root carrying the user's own marker, `/tank/data/./dir`, as `dir`.
    ///
    /// A relative root stays relative (through `..` up to `/` and down into
    /// the mirror), because borg matches patterns against the path as
    /// walked: relative for a relative root ([`Mapping::relative_prefix`]).
    pub fn borg_root(&self, given: &Path, cwd: &Path) -> String {
        let text = given.to_string_lossy();
        let (head, tail) = match text.find("/./") {
            Some(pos) if pos > 0 => (&text[..pos], Some(&text[pos + 3..])),
            _ => (&*text, None),
        };
        if given.is_absolute() {
            return match tail {
                Some(tail) => format!(
                    "{}/./{tail}",
                    self.to_snapshot(&normalize(Path::new(head))).display()
                ),
                None => format!(
                    "{}/./{}",
                    self.snapshot_root.display(),
                    strip_root(&normalize(given)).display()
                ),
            };
        }
        let (ups, parts) = python_normpath(head);
        let base = self.relative_prefix(cwd, ups);
        match tail {
            Some(tail) if parts.is_empty() => format!("{base}/./{tail}"),
            Some(tail) => format!("{base}/{parts}/./{tail}"),
            None => format!("{base}/./{parts}"),
        }
    }

    /// The prefix borg sees, in the rewritten form, in front of what it
    /// walks from a relative root given in `cwd` that starts with `ups`
    /// `..`: `..` up to `/` from `cwd`, then the mirror of `cwd` minus `ups`
    /// levels (`../run/zfs-snap/snap/tank` from `/tank/data` with one `..`).
    pub fn relative_prefix(&self, cwd: &Path, ups: usize) -> String {
        let cwd = normalize(cwd);
        let depth = cwd.components().count() - 1;
        let mut base = cwd.clone();
        for _ in 0..ups {
            base.pop();
        }
        let down = strip_root(&self.to_snapshot(&base));
        let mut out = "../".repeat(depth);
        out.push_str(&down.display().to_string());
        out
    }

    /// The prefix borg sees in front of original paths when it matches
    /// patterns (borg matches the unstripped path, without its leading `/`).
    pub fn pattern_prefix(&self) -> String {
        strip_root(&self.snapshot_root).display().to_string()
    }
}

fn strip_root(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect()
}

/// Python's `os.path.normpath` of a relative path, as borg applies it: the
/// number of leading `..` and the rest (`""` for none).
pub fn python_normpath(relative: &str) -> (usize, String) {
    let mut parts: Vec<&str> = Vec::new();
    let mut ups = 0;
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.is_empty() => ups += 1,
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    (ups, parts.join("/"))
}

/// Lexically normalises an absolute path: drops `.`, resolves `..` against
/// the preceding component (never above `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// True when `path` is `ancestor` or lies below it, by whole components.
pub fn is_within(path: &Path, ancestor: &Path) -> bool {
    path.starts_with(ancestor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mapping() -> Mapping {
        Mapping::new(Path::new("/run/zfs-snap"))
    }

    #[test]
    fn borg_roots_store_what_plain_borg_stores() {
        let m = mapping();
        let cwd = Path::new("/tank/data/dir");
        for (given, want) in [
            ("/var/lib", "/run/zfs-snap/snap/./var/lib"),
            ("/var/lib/", "/run/zfs-snap/snap/./var/lib"),
            ("/var/x/../lib", "/run/zfs-snap/snap/./var/lib"),
            ("sub", "../../../run/zfs-snap/snap/tank/data/dir/./sub"),
            ("sub/", "../../../run/zfs-snap/snap/tank/data/dir/./sub"),
            ("../child", "../../../run/zfs-snap/snap/tank/data/./child"),
            ("../../a/b", "../../../run/zfs-snap/snap/tank/./a/b"),
            ("/tank/data/./dir", "/run/zfs-snap/snap/tank/data/./dir"),
            (
                "/tank/data/./dir/./x",
                "/run/zfs-snap/snap/tank/data/./dir/./x",
            ),
            ("/./tank", "/run/zfs-snap/snap/./tank"),
            ("a/./b", "../../../run/zfs-snap/snap/tank/data/dir/a/./b"),
            ("../x/./y", "../../../run/zfs-snap/snap/tank/data/x/./y"),
            ("./sub", "../../../run/zfs-snap/snap/tank/data/dir/./sub"),
        ] {
            assert_eq!(m.borg_root(Path::new(given), cwd), want, "{given}");
        }
    }

    #[test]
    fn mirrors_the_live_tree() {
        let m = mapping();
        assert_eq!(
            m.to_snapshot(Path::new("/var/lib")),
            Path::new("/run/zfs-snap/snap/var/lib")
        );
        assert_eq!(
            m.to_snapshot(Path::new("/")),
            Path::new("/run/zfs-snap/snap")
        );
        assert_eq!(
            m.to_original(Path::new("/run/zfs-snap/snap")).unwrap(),
            Path::new("/")
        );
        assert_eq!(m.to_original(Path::new("/run/other")), None);
    }

    #[test]
    fn borg_root_keeps_what_plain_borg_stores() {
        let m = mapping();
        let cwd = Path::new("/home/u");
        assert_eq!(
            m.borg_root(Path::new("/var/lib"), cwd),
            "/run/zfs-snap/snap/./var/lib"
        );
        assert_eq!(
            m.borg_root(Path::new("data"), cwd),
            "../../run/zfs-snap/snap/home/u/./data"
        );
        assert_eq!(
            m.borg_root(Path::new("data"), Path::new("/")),
            "run/zfs-snap/snap/./data"
        );
        assert_eq!(
            m.relative_prefix(Path::new("/tank/data"), 1),
            "../../run/zfs-snap/snap/tank"
        );
        assert_eq!(m.borg_root(Path::new("/"), cwd), "/run/zfs-snap/snap/./");
        assert_eq!(m.pattern_prefix(), "run/zfs-snap/snap");
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c/")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
    }

    fn live_path() -> impl Strategy<Value = PathBuf> {
        prop::collection::vec("[a-z0-9 ._-]{1,8}", 0..6).prop_map(|parts| {
            let mut p = PathBuf::from("/");
            for part in parts {
                if part != "." && part != ".." {
                    p.push(part);
                }
            }
            p
        })
    }

    proptest! {
        #[test]
        fn mapping_round_trips(path in live_path()) {
            let m = mapping();
            let snap = m.to_snapshot(&path);
            prop_assert!(snap.starts_with(m.snapshot_root()));
            prop_assert_eq!(m.to_original(&snap).unwrap(), path);
        }

        #[test]
        fn distinct_paths_never_share_a_snapshot_path(a in live_path(), b in live_path()) {
            let m = mapping();
            prop_assert_eq!(a == b, m.to_snapshot(&a) == m.to_snapshot(&b));
        }

        #[test]
        fn nesting_is_preserved(a in live_path(), b in live_path()) {
            let m = mapping();
            prop_assert_eq!(b.starts_with(&a), m.to_snapshot(&b).starts_with(m.to_snapshot(&a)));
        }

        #[test]
        fn borg_root_strips_to_the_original(path in live_path()) {
            let m = mapping();
            let root = m.borg_root(&path, Path::new("/"));
            let (before, after) = root.split_once("/./").unwrap();
            prop_assert_eq!(Path::new(before), m.snapshot_root());
            prop_assert_eq!(Path::new("/").join(after), path);
        }
    }
}
