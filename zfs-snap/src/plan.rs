//! The plan of a run: what is snapshotted, where each snapshot is mounted,
//! and how every source root reaches borg. Built by [`crate::discovery`]
//! from data alone; printed by `zfs-snap plan --json` (see docs/plan-json.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The directory the snapshot mirror hangs from.
    pub snapshot_root: PathBuf,
    /// Whether borg runs with `--one-file-system`.
    pub one_file_system: bool,
    /// One entry per mount of a snapshot, in the order they are mounted:
    /// shallowest first, bind mounts and what lies inside them after the
    /// rest (a bind's source, its dataset's own mount, comes first).
    pub mounts: Vec<PlannedMount>,
    /// The source roots as given, in order, each with how borg will read it.
    pub roots: Vec<PlannedRoot>,
    /// Roots added for snapshotted datasets no source root reaches (tagged
    /// datasets, or children of a live root), as mirror paths.
    pub extra_roots: Vec<PlannedRoot>,
    /// Live mountpoints borg must not read because their snapshot is added
    /// as an extra root instead.
    pub live_exclusions: Vec<PathBuf>,
    /// Mirror paths of special files borg reads (`--read-special`) that it
    /// reads live instead, each given as a root of its own: excluded with
    /// `! pf:` after every other pattern of ours (borg keeps the last `pf:`
    /// of a path), so no rule of the user's brings them back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub special_exclusions: Vec<PathBuf>,
    /// With `--one-file-system`: mirror paths of other file systems'
    /// mountpoints below snapshotted roots. borg 1.4 stores such a
    /// mountpoint as a directory without descending, and so it does from
    /// the snapshot, where it is the (empty) directory underneath.
    pub boundaries: Vec<PathBuf>,
    /// Things the user should know that do not stop the run.
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedMount {
    pub dataset: String,
    pub pool: String,
    /// Where the dataset is mounted now.
    pub mountpoint: PathBuf,
    /// Where its snapshot will be mounted.
    pub snapshot_mountpoint: PathBuf,
    /// Why it is included: `source root /x`, `below source root /x`,
    /// `tagged`, `source of the bind mount at /x`.
    pub reason: String,
    /// For a bind mount of a directory of the dataset: what is bound.
    /// `None`: the whole snapshot is mounted.
    pub bind: Option<PlannedBind>,
}

/// A bind mount read from the snapshot: the directory `root` of the
/// dataset (mountinfo's root field), bound from `from`, that directory in
/// the mirror mount of the dataset's own snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedBind {
    pub root: PathBuf,
    pub from: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedRoot {
    /// The path as the user gave it (for extra roots: the live mountpoint).
    pub path: PathBuf,
    /// `snapshot` or `live`.
    pub source: RootSource,
    /// The argument borg receives: the path itself when live, the mirror
    /// path with borg's `/./` marker when from a snapshot.
    pub borg_path: String,
    /// The dataset whose snapshot holds this root, if any.
    pub dataset: Option<String>,
    /// Which mirror the root is read from ([`crate::runtime::mirror_dir`]).
    pub level: usize,
}

impl PlannedRoot {
    /// Whether the user gave this root relative to the working directory.
    pub fn path_given_relative(&self) -> bool {
        !self.path.is_absolute()
    }

    /// The root as given, up to the user's own `/./` marker, if any.
    pub fn given_head(&self) -> String {
        let text = self.path.to_string_lossy();
        match text.find("/./") {
            Some(pos) if pos > 0 => text[..pos].to_owned(),
            _ => text.into_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootSource {
    Snapshot,
    Live,
}

impl Plan {
    /// Snapshot names to create, grouped by pool (one atomic call each),
    /// for a run whose snapshots are called `snapshot_name`.
    pub fn snapshots_by_pool(&self, snapshot_name: &str) -> BTreeMap<String, Vec<String>> {
        let mut by_pool: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for mount in &self.mounts {
            let name = format!("{}@{snapshot_name}", mount.dataset);
            let names = by_pool.entry(mount.pool.clone()).or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        by_pool
    }

    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// Every root borg gets, in order: the given ones, then the extra ones.
    pub fn borg_roots(&self) -> impl Iterator<Item = &PlannedRoot> {
        self.roots.iter().chain(&self.extra_roots)
    }
}
