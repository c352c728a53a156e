//! Discovery: from source roots, the datasets ZFS knows and the mount table,
//! decide which datasets to snapshot and how each root reaches borg.
//! Pure: takes data, returns a [`Plan`]; the only outside question,
//! `st_dev` of a root, is asked through a closure.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mapping::{is_within, normalize, Mapping};
use crate::mountinfo::{self, MountEntry};
use crate::plan::{Plan, PlannedMount, PlannedRoot, RootSource};
use crate::zfs::{pool_of, Filesystem};

/// A source root as the user gave it and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRoot {
    pub given: PathBuf,
    /// Absolute and lexically normalised.
    pub absolute: PathBuf,
    /// Set when a directory above the root is a symlink: borg follows it,
    /// the mirror cannot, so such a root is read live.
    pub through_symlink: Option<PathBuf>,
}

impl SourceRoot {
    /// Checks that `given` exists (without following a final symlink, as
    /// borg does not) and notes whether a parent directory is a symlink.
    pub fn resolve(given: &Path, cwd: &Path) -> Result<SourceRoot> {
        let absolute = normalize(&cwd.join(given));
        match std::fs::symlink_metadata(&absolute) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::SourceMissing {
                    path: given.to_owned(),
                })
            }
            Err(source) => {
                return Err(Error::SourceUnreadable {
                    path: given.to_owned(),
                    source,
                })
            }
        }
        let through_symlink = match absolute.parent() {
            Some(parent) => {
                let real = parent
                    .canonicalize()
                    .map_err(|source| Error::SourceUnreadable {
                        path: given.to_owned(),
                        source,
                    })?;
                (real != parent).then_some(real)
            }
            None => None,
        };
        Ok(SourceRoot {
            given: given.to_owned(),
            absolute,
            through_symlink,
        })
    }
}

/// What discovery looks at.
pub struct World<'a> {
    pub filesystems: &'a [Filesystem],
    /// `/proc/self/mountinfo` as read, in order.
    pub mounts: &'a [MountEntry],
    pub runtime_root: &'a Path,
    pub cwd: &'a Path,
    /// `st_dev` of a path, to confirm a root lives on the mount we think.
    pub dev_of: &'a dyn Fn(&Path) -> Option<u64>,
}

/// Builds the plan for `roots`. With `one_file_system` (borg's `-x`), mounts
/// below a root are not followed, as borg would not follow them.
pub fn discover(world: &World<'_>, roots: &[SourceRoot], one_file_system: bool) -> Plan {
    let mapping = Mapping::new(world.runtime_root);
    let runtime_root = world.runtime_root;
    let own: Vec<MountEntry> = world
        .mounts
        .iter()
        .filter(|m| !is_within(&m.mount_point, runtime_root))
        .cloned()
        .collect();
    let visible = mountinfo::visible(&own);
    let mut d = Discovery {
        world,
        visible: &visible,
        mapping: &mapping,
        selected: Vec::new(),
        notes: Vec::new(),
        warnings: Vec::new(),
    };

    // Each root: the deepest mount containing it, then the mounts below it.
    let mut root_mounts: Vec<Option<usize>> = Vec::with_capacity(roots.len());
    for root in roots {
        let mount = d.mount_for_root(root);
        if let Some(index) = mount {
            d.select(index, format!("source root {}", root.absolute.display()));
        }
        root_mounts.push(mount);
        if !one_file_system {
            for (index, entry) in visible.iter().enumerate() {
                if entry.mount_point != root.absolute && is_within(&entry.mount_point, &root.absolute) {
                    if d.usable(entry).is_some() {
                        d.select(index, format!("below source root {}", root.absolute.display()));
                    }
                }
            }
        }
    }
    d.select_tagged();

    let selected: BTreeSet<usize> = d.selected.iter().map(|(i, _)| *i).collect();
    let is_selected = |i: usize| selected.contains(&i);
    let parent_selected = |entry: &MountEntry| {
        parent_of(&visible, entry).is_some_and(|p| is_selected(p))
    };

    let mut planned_roots = Vec::new();
    let mut snapshot_roots: Vec<(PathBuf, usize)> = Vec::new();
    let mut live_roots: Vec<PathBuf> = Vec::new();
    for (root, mount) in roots.iter().zip(&root_mounts) {
        match mount {
            Some(index) => {
                snapshot_roots.push((root.absolute.clone(), *index));
                planned_roots.push(PlannedRoot {
                    path: root.given.clone(),
                    source: RootSource::Snapshot,
                    borg_path: mapping.borg_root(&root.given, world.cwd),
                    dataset: visible[*index].zfs_dataset().map(str::to_owned),
                });
            }
            None => {
                live_roots.push(root.absolute.clone());
                planned_roots.push(PlannedRoot {
                    path: root.given.clone(),
                    source: RootSource::Live,
                    borg_path: root.given.display().to_string(),
                    dataset: None,
                });
            }
        }
    }

    // Selected mounts no snapshotted root reaches get a root of their own;
    // if a live root would read them live, that live path is excluded.
    let mut order: Vec<usize> = selected.iter().copied().collect();
    order.sort_by_key(|&i| visible[i].mount_point.components().count());
    let mut extra_roots = Vec::new();
    let mut live_exclusions = Vec::new();
    for &index in &order {
        let entry = &visible[index];
        let covered = if one_file_system {
            snapshot_roots
                .iter()
                .any(|(path, mount)| *mount == index && *path == entry.mount_point)
        } else {
            snapshot_roots.iter().any(|(path, _)| is_within(&entry.mount_point, path))
        };
        if covered {
            continue;
        }
        extra_roots.push(PlannedRoot {
            path: entry.mount_point.clone(),
            source: RootSource::Snapshot,
            borg_path: mapping.borg_root(&entry.mount_point, world.cwd),
            dataset: entry.zfs_dataset().map(str::to_owned),
        });
        snapshot_roots.push((entry.mount_point.clone(), index));
        if !one_file_system
            && !parent_selected(entry)
            && live_roots.iter().any(|r| is_within(&entry.mount_point, r))
        {
            live_exclusions.push(entry.mount_point.clone());
        }
    }

    // Other file systems below snapshotted roots: with -x borg does not store
    // their mountpoints, so neither may the mirror; without -x their content
    // is not in any snapshot, which the user must hear about.
    let mut boundaries = Vec::new();
    let mut unfrozen = BTreeSet::new();
    for (index, entry) in visible.iter().enumerate() {
        if is_selected(index) {
            continue;
        }
        let below_snapshot = snapshot_roots.iter().any(|(path, _)| {
            entry.mount_point != *path && is_within(&entry.mount_point, path)
        });
        if !below_snapshot {
            continue;
        }
        if one_file_system {
            boundaries.push(mapping.to_snapshot(&entry.mount_point));
        } else {
            unfrozen.insert(entry.mount_point.display().to_string());
        }
    }
    if !unfrozen.is_empty() {
        d.warnings.push(format!(
            "not on ZFS, so not in the snapshot (borg will see empty directories there): {}; \
             use --one-file-system or back them up as separate paths",
            unfrozen.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }

    let mut mounts: Vec<PlannedMount> = order
        .iter()
        .map(|&i| {
            let entry = &visible[i];
            let dataset = entry.zfs_dataset().unwrap_or_default().to_owned();
            PlannedMount {
                pool: pool_of(&dataset).to_owned(),
                dataset,
                mountpoint: entry.mount_point.clone(),
                snapshot_mountpoint: mapping.to_snapshot(&entry.mount_point),
                reason: d
                    .selected
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    mounts.sort_by(|a, b| {
        let depth = |m: &PlannedMount| m.mountpoint.components().count();
        depth(a).cmp(&depth(b)).then(a.mountpoint.cmp(&b.mountpoint))
    });

    Plan {
        snapshot_root: mapping.snapshot_root().to_owned(),
        one_file_system,
        mounts,
        roots: planned_roots,
        extra_roots,
        live_exclusions,
        boundaries,
        notes: d.notes,
        warnings: d.warnings,
    }
}

struct Discovery<'w, 'a> {
    world: &'w World<'a>,
    visible: &'w [MountEntry],
    mapping: &'w Mapping,
    /// Indices into `visible`, with the first reason each was selected.
    selected: Vec<(usize, String)>,
    notes: Vec<String>,
    warnings: Vec<String>,
}

impl Discovery<'_, '_> {
    fn select(&mut self, index: usize, reason: String) {
        if !self.selected.iter().any(|(i, _)| *i == index) {
            self.selected.push((index, reason));
        }
    }

    /// The dataset behind a visible ZFS mount, if it can be snapshotted.
    fn usable(&self, entry: &MountEntry) -> Option<&Filesystem> {
        let name = entry.zfs_dataset()?;
        if entry.root != Path::new("/") {
            return None;
        }
        self.world
            .filesystems
            .iter()
            .find(|f| f.name == name && f.keystatus.as_deref() != Some("unavailable"))
    }

    /// The index of the visible mount holding `root`, when it is a usable
    /// ZFS dataset; otherwise records why the root stays live.
    fn mount_for_root(&mut self, root: &SourceRoot) -> Option<usize> {
        let shown = root.given.display();
        if let Some(real) = &root.through_symlink {
            self.warnings.push(format!(
                "{shown}: a directory above it is a symlink (to {}), so it is read live, \
                 not from a snapshot; give the real path to snapshot it",
                real.display()
            ));
            return None;
        }
        let (index, entry) = self
            .visible
            .iter()
            .enumerate()
            .filter(|(_, e)| is_within(&root.absolute, &e.mount_point))
            .max_by_key(|(_, e)| e.mount_point.components().count())?;
        let Some(dataset) = entry.zfs_dataset() else {
            self.notes.push(format!(
                "{shown} is not on ZFS ({} at {}); borg reads it live",
                entry.fstype,
                entry.mount_point.display()
            ));
            return None;
        };
        if entry.root != Path::new("/") {
            self.warnings.push(format!(
                "{shown} is on a bind mount of {dataset}{} at {}; borg reads it live",
                entry.root.display(),
                entry.mount_point.display()
            ));
            return None;
        }
        if self.usable(entry).is_none() {
            self.warnings.push(format!(
                "{shown} is on dataset {dataset}, which zfs does not list as usable; borg reads it live"
            ));
            return None;
        }
        if let Some(dev) = (self.world.dev_of)(&root.absolute) {
            if dev != entry.dev {
                self.warnings.push(format!(
                    "{shown}: the mount table puts it on {dataset} at {}, but it is on another \
                     file system; borg reads it live",
                    entry.mount_point.display()
                ));
                return None;
            }
        }
        Some(index)
    }

    /// Tagged datasets are backed up whole; tagged ones that cannot be used
    /// are named, never silently dropped.
    fn select_tagged(&mut self) {
        for fs in self.world.filesystems.iter().filter(|f| f.is_tagged()) {
            let found = self
                .visible
                .iter()
                .position(|e| e.zfs_dataset() == Some(fs.name.as_str()) && e.root == Path::new("/"));
            match (found, fs.unusable_reason()) {
                (_, Some(reason)) => self.warnings.push(format!(
                    "tagged dataset {} is skipped: {reason}",
                    fs.name
                )),
                (None, None) => self.warnings.push(format!(
                    "tagged dataset {} is skipped: it is mounted nowhere a path lookup reaches \
                     (hidden by another mount?)",
                    fs.name
                )),
                (Some(index), None) => self.select(index, "tagged".to_owned()),
            }
        }
        let _ = self.mapping;
    }
}

/// The nearest visible mount strictly above `entry`.
fn parent_of(visible: &[MountEntry], entry: &MountEntry) -> Option<usize> {
    visible
        .iter()
        .enumerate()
        .filter(|(_, e)| e.mount_point != entry.mount_point && is_within(&entry.mount_point, &e.mount_point))
        .max_by_key(|(_, e)| e.mount_point.components().count())
        .map(|(i, _)| i)
}
