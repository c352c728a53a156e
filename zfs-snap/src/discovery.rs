//! Discovery: from source roots, the datasets ZFS knows and the mount table,
//! decide which datasets to snapshot and how each root reaches borg.
//! Pure: takes data, returns a [`Plan`]; the only outside questions,
//! `st_dev` of a root and whether a mountpoint is a directory, are asked
//! through closures.
//!
//! A bind mount of a dataset counts as that dataset (DESIGN Discovery 7): a
//! mount of dataset D whose mountinfo root is R is read from D's snapshot
//! at R. Where the mirror shows that already (a bind at the path where D's
//! own mount shows R: systemd's self-binds of `/etc` and `/usr`), the bind
//! is left out of the mount table; elsewhere (NixOS impermanence's `/persist/var/lib/x` on
//! `/var/lib/x`) the mirror gets a read-only bind of that directory of D's
//! snapshot mount.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::mapping::{is_within, Mapping};
use crate::mountinfo::{self, MountEntry};
use crate::plan::{Plan, PlannedBind, PlannedMount, PlannedRoot, RootSource};
use crate::zfs::{pool_of, Filesystem};

pub use crate::source_root::SourceRoot;

/// What discovery looks at.
pub struct World<'a> {
    pub filesystems: &'a [Filesystem],
    /// `/proc/self/mountinfo` as read, in order.
    pub mounts: &'a [MountEntry],
    pub runtime_root: &'a Path,
    pub cwd: &'a Path,
    /// `st_dev` of a path, to confirm a root lives on the mount we think.
    pub dev_of: &'a dyn Fn(&Path) -> Option<u64>,
    /// Whether a path is a directory (not through a symlink): a bind mount
    /// of a single file is read live.
    pub is_dir: &'a dyn Fn(&Path) -> bool,
}

/// For each visible bind mount of a dataset (by index): the index of the
/// dataset's own mount it is bound from in the mirror, or why it is read
/// live.
type Binds = BTreeMap<usize, Result<usize, String>>;

/// Builds the plan for `roots`. With `one_file_system` (borg's `-x`), mounts
/// below a root are not followed, as borg would not follow them.
pub fn discover(world: &World<'_>, roots: &[SourceRoot], one_file_system: bool) -> Plan {
    let own: Vec<MountEntry> = world
        .mounts
        .iter()
        .filter(|m| !is_within(&m.mount_point, world.runtime_root))
        .cloned()
        .collect();
    let visible = without_aligned_binds(mountinfo::visible(&own));
    let binds = bind_sources(world, &visible);
    let mut d = Discovery {
        world,
        visible: &visible,
        binds: &binds,
        one_file_system,
        selected: Vec::new(),
        source_only: BTreeSet::new(),
        tagged: BTreeSet::new(),
        notes: Vec::new(),
        warnings: Vec::new(),
    };
    let root_mounts = d.select_for_roots(roots);
    d.select_tagged();

    let mut layout = Layout::new(d);
    let planned_roots = layout.map_roots(roots, &root_mounts);
    let order = layout.selected_by_depth();
    layout.add_unreached_mounts(&order, &root_mounts);
    let boundaries = layout.boundaries();
    layout.read_unfrozen_live();
    layout.exclude_runtime_root();
    let mounts = layout.planned_mounts(&order);

    Plan {
        snapshot_root: Mapping::new(world.runtime_root).snapshot_root().to_owned(),
        one_file_system,
        mounts,
        roots: planned_roots,
        extra_roots: layout.extra_roots,
        live_exclusions: layout.live_exclusions,
        special_exclusions: Vec::new(),
        boundaries,
        notes: layout.notes,
        warnings: layout.warnings,
    }
}

struct Discovery<'w, 'a> {
    world: &'w World<'a>,
    visible: &'w [MountEntry],
    binds: &'w Binds,
    one_file_system: bool,
    /// Indices into `visible`, with the first reason each was selected.
    selected: Vec<(usize, String)>,
    /// Selected only as the source of a bind mount: mounted in the mirror,
    /// not read as a root of its own.
    source_only: BTreeSet<usize>,
    /// Indices into `visible` of tagged datasets.
    tagged: BTreeSet<usize>,
    notes: Vec<String>,
    warnings: Vec<String>,
}

impl Discovery<'_, '_> {
    /// Each root: the deepest mount containing it, then the mounts below it
    /// that borg's walk enters. Returns the mount of each root, in order.
    fn select_for_roots(&mut self, roots: &[SourceRoot]) -> Vec<Option<usize>> {
        let mut root_mounts = Vec::with_capacity(roots.len());
        for root in roots {
            if root.missing {
                // Plain borg warns, archives the rest and exits 1: so does
                // the run, with borg's own warning (DESIGN Discovery 6).
                self.warnings.push(format!(
                    "source path {} does not exist: borg is given it as it is, warns about it \
                     and exits 1; the rest is archived",
                    root.given.display()
                ));
                root_mounts.push(None);
                continue;
            }
            let mount = self.mount_for_root(root);
            if let Some(index) = mount {
                self.select(index, format!("source root {}", root.absolute.display()));
            }
            root_mounts.push(mount);
            self.select_mounts_below(root, mount);
        }
        root_mounts
    }

    /// Selects the usable ZFS mounts strictly below `root` that borg's walk
    /// enters: all of them, or with -x those on the root's own file system
    /// (bind mounts of its dataset: borg compares `st_dev` only).
    fn select_mounts_below(&mut self, root: &SourceRoot, root_mount: Option<usize>) {
        let visible = self.visible;
        for (index, entry) in visible.iter().enumerate() {
            let below =
                entry.mount_point != root.absolute && is_within(&entry.mount_point, &root.absolute);
            if !below {
                continue;
            }
            if self.one_file_system {
                let Some(at) = root_mount else { continue };
                if !enters(visible, &root.absolute, visible[at].dev, entry) {
                    continue;
                }
            }
            let reason = format!("below source root {}", root.absolute.display());
            match self.binds.get(&index) {
                Some(Ok(home)) => {
                    self.select(index, reason);
                    self.select_source(*home, index);
                }
                Some(Err(why)) => {
                    let warning = bind_read_live(entry, why);
                    self.warn_once(warning);
                }
                None if self.usable(entry).is_some() => self.select(index, reason),
                None => {}
            }
        }
    }

    fn select(&mut self, index: usize, reason: String) {
        match self.selected.iter_mut().find(|(i, _)| *i == index) {
            // A bind's source is now wanted for itself too.
            Some((_, first)) if self.source_only.remove(&index) => *first = reason,
            Some(_) => {}
            None => self.selected.push((index, reason)),
        }
    }

    /// The dataset mount `home` is the source of the selected bind mount
    /// `bind`: its snapshot is mounted in the mirror first.
    fn select_source(&mut self, home: usize, bind: usize) {
        if !self.selected.iter().any(|(i, _)| *i == home) {
            let at = self.visible[bind].mount_point.display();
            self.selected
                .push((home, format!("source of the bind mount at {at}")));
            self.source_only.insert(home);
        }
    }

    fn warn_once(&mut self, warning: String) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// The dataset behind a visible ZFS mount of a whole dataset, if it can
    /// be snapshotted.
    fn usable(&self, entry: &MountEntry) -> Option<&Filesystem> {
        if entry.root != Path::new("/") {
            return None;
        }
        usable_dataset(self.world, entry)
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
        if let Some(warning) = foreign_snapshot(&shown.to_string(), entry, self.world.runtime_root)
        {
            self.warnings.push(warning);
            return None;
        }
        let Some(dataset) = entry.zfs_dataset() else {
            self.notes.push(format!(
                "{shown} is not on ZFS ({} at {}); borg reads it live",
                entry.fstype,
                entry.mount_point.display()
            ));
            return None;
        };
        let home = match self.binds.get(&index) {
            Some(Ok(home)) => Some(*home),
            Some(Err(why)) => {
                self.warnings.push(format!(
                    "{shown} is on the bind mount of {dataset}'s {} at {}, so borg reads it \
                     live, not from a snapshot: {why}",
                    entry.root.display(),
                    entry.mount_point.display()
                ));
                return None;
            }
            None => None,
        };
        if home.is_none() && self.usable(entry).is_none() {
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
        if let Some(home) = home {
            self.select_source(home, index);
        }
        Some(index)
    }

    /// Tagged datasets are backed up whole; tagged ones that cannot be used
    /// are named, never silently dropped.
    fn select_tagged(&mut self) {
        for fs in self.world.filesystems.iter().filter(|f| f.is_tagged()) {
            let found = self.visible.iter().position(|e| {
                e.zfs_dataset() == Some(fs.name.as_str()) && e.root == Path::new("/")
            });
            match (found, fs.unusable_reason()) {
                (_, Some(reason)) => self
                    .warnings
                    .push(format!("tagged dataset {} is skipped: {reason}", fs.name)),
                (None, None) => self.warnings.push(format!(
                    "tagged dataset {} is skipped: it is mounted nowhere a path lookup reaches \
                     (hidden by another mount?)",
                    fs.name
                )),
                (Some(index), None) => {
                    self.tagged.insert(index);
                    self.select(index, "tagged".to_owned());
                }
            }
        }
    }
}

/// The selection made final: where each selected mount goes in the mirror,
/// and the roots and exclusions borg is given.
struct Layout<'w, 'a> {
    world: &'w World<'a>,
    visible: &'w [MountEntry],
    binds: &'w Binds,
    one_file_system: bool,
    /// Indices into `visible`, with the first reason each was selected.
    reasons: Vec<(usize, String)>,
    selected: BTreeSet<usize>,
    source_only: BTreeSet<usize>,
    /// Indices into `visible` of tagged datasets.
    tagged: BTreeSet<usize>,
    /// Paths read from a snapshot, with the index of the mount holding each.
    snapshot_roots: Vec<(PathBuf, usize)>,
    live_roots: Vec<PathBuf>,
    extra_roots: Vec<PlannedRoot>,
    live_exclusions: Vec<PathBuf>,
    notes: Vec<String>,
    warnings: Vec<String>,
}

impl<'w, 'a> Layout<'w, 'a> {
    fn new(d: Discovery<'w, 'a>) -> Self {
        let selected = d.selected.iter().map(|(i, _)| *i).collect();
        Layout {
            world: d.world,
            visible: d.visible,
            binds: d.binds,
            one_file_system: d.one_file_system,
            reasons: d.selected,
            selected,
            source_only: d.source_only,
            tagged: d.tagged,
            snapshot_roots: Vec::new(),
            live_roots: Vec::new(),
            extra_roots: Vec::new(),
            live_exclusions: Vec::new(),
            notes: d.notes,
            warnings: d.warnings,
        }
    }

    fn is_selected(&self, index: usize) -> bool {
        self.selected.contains(&index)
    }

    fn parent_selected(&self, entry: &MountEntry) -> bool {
        parent_of(self.visible, entry).is_some_and(|i| self.is_selected(i))
    }

    fn level(&self, index: usize) -> usize {
        mirror_level(self.visible, &self.selected, index)
    }

    fn mirror(&self, level: usize) -> Mapping {
        Mapping::at_level(self.world.runtime_root, level)
    }

    /// Each root as borg reads it: from the mirror when its mount was
    /// selected, live otherwise.
    fn map_roots(
        &mut self,
        roots: &[SourceRoot],
        root_mounts: &[Option<usize>],
    ) -> Vec<PlannedRoot> {
        let mut planned = Vec::new();
        for (root, mount) in roots.iter().zip(root_mounts) {
            planned.push(match mount {
                Some(index) => self.map_snapshot_root(root, *index),
                None => self.map_live_root(root),
            });
        }
        planned
    }

    fn map_snapshot_root(&mut self, root: &SourceRoot, index: usize) -> PlannedRoot {
        let given = root.given.to_string_lossy();
        if !root.given.is_absolute()
            && !given.contains("/./")
            && crate::mapping::python_normpath(&given).1.is_empty()
        {
            self.warnings.push(format!(
                "source root {given:?} is the working directory or above it: its own \
                 directory is stored as `.` by borg >= 1.4.5 and not at all before \
                 (plain borg stores {given:?}); everything below it is the same"
            ));
        }
        self.snapshot_roots.push((root.absolute.clone(), index));
        let level = self.level(index);
        PlannedRoot {
            path: root.given.clone(),
            source: RootSource::Snapshot,
            borg_path: self.mirror(level).borg_root(&root.given, self.world.cwd),
            dataset: self.visible[index].zfs_dataset().map(str::to_owned),
            level,
        }
    }

    fn map_live_root(&mut self, root: &SourceRoot) -> PlannedRoot {
        if !root.missing {
            self.live_roots.push(root.absolute.clone());
        }
        PlannedRoot {
            path: root.given.clone(),
            source: RootSource::Live,
            borg_path: root.given.display().to_string(),
            dataset: None,
            level: 0,
        }
    }

    /// The selected mounts, shallowest first, then by path.
    fn selected_by_depth(&self) -> Vec<usize> {
        let visible = self.visible;
        let mut order: Vec<usize> = self.selected.iter().copied().collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| {
                (
                    visible[i].mount_point.components().count(),
                    &visible[i].mount_point,
                )
            };
            key(a).cmp(&key(b))
        });
        order
    }

    /// Selected mounts no snapshotted root reaches get a root of their own;
    /// if a live root would read them live, that live path is excluded.
    fn add_unreached_mounts(&mut self, order: &[usize], root_mounts: &[Option<usize>]) {
        let visible = self.visible;
        for &index in order {
            let entry = &visible[index];
            // A root's own dataset is read through that root; only a tag asks
            // for the whole of it.
            if root_mounts.contains(&Some(index)) && !self.tagged.contains(&index) {
                continue;
            }
            // A bind's source is mounted for the bind, not read for itself.
            if self.source_only.contains(&index) {
                continue;
            }
            if self.reached(index) {
                continue;
            }
            let level = self.level(index);
            let borg_path = self
                .mirror(level)
                .borg_root(&entry.mount_point, self.world.cwd);
            self.extra_roots.push(PlannedRoot {
                path: entry.mount_point.clone(),
                source: RootSource::Snapshot,
                borg_path,
                dataset: entry.zfs_dataset().map(str::to_owned),
                level,
            });
            self.snapshot_roots.push((entry.mount_point.clone(), index));
            if !self.one_file_system
                && !self.parent_selected(entry)
                && self
                    .live_roots
                    .iter()
                    .any(|r| is_within(&entry.mount_point, r))
            {
                self.live_exclusions.push(entry.mount_point.clone());
            }
        }
    }

    /// Whether a root read from a snapshot already reads the selected mount
    /// `index`.
    fn reached(&self, index: usize) -> bool {
        let entry = &self.visible[index];
        if self.one_file_system {
            self.snapshot_roots
                .iter()
                .any(|(path, mount)| *mount == index && *path == entry.mount_point)
        } else {
            // A root reaches this mount only within one mirror: one below a
            // file system no snapshot holds is mounted in a mirror of its own.
            self.snapshot_roots.iter().any(|(path, mount)| {
                is_within(&entry.mount_point, path) && self.level(*mount) == self.level(index)
            })
        }
    }

    /// Other file systems below snapshotted roots: mounts not selected that
    /// lie strictly below a path read from a snapshot, each with whether
    /// borg's walk enters it (always without -x; with -x, one on the
    /// root's own file system, a bind mount of the root's dataset).
    fn unselected_below_snapshots(&self) -> impl Iterator<Item = (&'w MountEntry, bool)> + '_ {
        let visible = self.visible;
        visible
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.is_selected(*index))
            .filter_map(move |(_, entry)| {
                let mut below = self.snapshot_roots.iter().filter(|(path, _)| {
                    entry.mount_point != *path && is_within(&entry.mount_point, path)
                });
                let first = below.next()?;
                let entered = !self.one_file_system
                    || std::iter::once(first)
                        .chain(below)
                        .any(|(path, at)| enters(visible, path, visible[*at].dev, entry));
                Some((entry, entered))
            })
    }

    /// With -x, borg stores the mountpoints of other file systems below
    /// snapshotted roots as directories and does not descend, as it does in
    /// the mirror.
    fn boundaries(&self) -> Vec<PathBuf> {
        if !self.one_file_system {
            return Vec::new();
        }
        let mapping = Mapping::new(self.world.runtime_root);
        self.unselected_below_snapshots()
            .filter(|(_, entered)| !entered)
            .map(|(entry, _)| mapping.to_snapshot(&entry.mount_point))
            .collect()
    }

    /// The content of other file systems below snapshotted roots that
    /// borg's walk enters is in no snapshot, which the user must hear
    /// about. Plain borg would read them: so do we, live.
    fn read_unfrozen_live(&mut self) {
        let entered: Vec<&MountEntry> = self
            .unselected_below_snapshots()
            .filter(|(_, entered)| *entered)
            .map(|(entry, _)| entry)
            .collect();
        let mut unfrozen = BTreeSet::new();
        let mut not_zfs = BTreeSet::new();
        for entry in entered {
            let index = self.index_of(entry);
            match self.binds.get(&index) {
                // Named with its reason.
                Some(Err(why)) => {
                    let warning = bind_read_live(entry, why);
                    if !self.warnings.contains(&warning) {
                        self.warnings.push(warning);
                    }
                }
                _ => {
                    not_zfs.insert(entry.mount_point.display().to_string());
                }
            }
            unfrozen.insert(entry.mount_point.display().to_string());
        }
        if !not_zfs.is_empty() {
            self.warnings.push(format!(
                "not on ZFS, so read live, not from a snapshot: {}",
                not_zfs.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        let unfrozen: Vec<PathBuf> = unfrozen.iter().map(PathBuf::from).collect();
        for top in unfrozen
            .iter()
            .filter(|n| !unfrozen.iter().any(|o| o != *n && is_within(n, o)))
        {
            self.add_live_walk(top);
        }
    }

    /// `top` read live, the root of its own walk (stored under its own
    /// path), with its empty stand-in in the mirror left out, and the
    /// datasets below it read from their snapshots.
    fn add_live_walk(&mut self, top: &Path) {
        self.extra_roots.push(PlannedRoot {
            path: top.to_path_buf(),
            source: RootSource::Live,
            borg_path: top.display().to_string(),
            dataset: None,
            level: 0,
        });
        let visible = self.visible;
        let holder = visible
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                self.is_selected(*i) && is_within(top, &e.mount_point) && e.mount_point != *top
            })
            .max_by_key(|(_, e)| e.mount_point.components().count())
            .map(|(i, _)| i);
        if let Some(holder) = holder {
            let stand_in = self.mirror(self.level(holder)).to_snapshot(top);
            self.live_exclusions.push(stand_in);
        }
        for (_, entry) in visible
            .iter()
            .enumerate()
            .filter(|(i, e)| self.selected.contains(i) && is_within(&e.mount_point, top))
        {
            if !self.live_exclusions.contains(&entry.mount_point) {
                self.live_exclusions.push(entry.mount_point.clone());
            }
        }
    }

    /// A live root containing the runtime root would walk into zfs-snap's own
    /// state: its lock and mark, and the mirror (archived twice, under its
    /// runtime path). The mirror roots themselves start below the runtime
    /// root, so excluding exactly that directory leaves them alone.
    fn exclude_runtime_root(&mut self) {
        let runtime_root = self.world.runtime_root;
        if let Some(root) = self.live_roots.iter().find(|r| is_within(runtime_root, r)) {
            self.live_exclusions.push(runtime_root.to_owned());
            self.warnings.push(format!(
                "the runtime root {} is inside the live path {}: it is not archived (it holds zfs-snap's lock and the snapshot mirror, not data)",
                runtime_root.display(),
                root.display()
            ));
        }
    }

    fn index_of(&self, entry: &MountEntry) -> usize {
        self.visible
            .iter()
            .position(|e| std::ptr::eq(e, entry))
            .expect("entries come from `visible`")
    }

    /// The selected mounts in the order they are mounted, each with its
    /// place in the mirror and the reason it was selected. Shallowest first,
    /// except that bind mounts and what lies inside them come after the
    /// rest: a bind's source (its dataset's own mount, never inside a bind,
    /// see [`bind_sources`]) must be mounted before it, and a mount inside a
    /// bind after the bind. Teardown goes in reverse.
    fn planned_mounts(&self, order: &[usize]) -> Vec<PlannedMount> {
        let visible = self.visible;
        let binds: Vec<&Path> = order
            .iter()
            .filter(|i| matches!(self.binds.get(i), Some(Ok(_))))
            .map(|&i| visible[i].mount_point.as_path())
            .collect();
        let mut order = order.to_vec();
        order.sort_by_key(|&i| {
            let at = &visible[i].mount_point;
            (
                binds.iter().any(|b| is_within(at, b)),
                at.components().count(),
                at.clone(),
            )
        });
        order
            .iter()
            .map(|&i| {
                let entry = &visible[i];
                let dataset = entry.zfs_dataset().unwrap_or_default().to_owned();
                let bind = match self.binds.get(&i) {
                    Some(Ok(home)) => Some(PlannedBind {
                        root: entry.root.clone(),
                        from: self
                            .mirror(self.level(*home))
                            .to_snapshot(&bind_source_path(
                                &visible[*home].mount_point,
                                &entry.root,
                            )),
                    }),
                    _ => None,
                };
                PlannedMount {
                    pool: pool_of(&dataset).to_owned(),
                    dataset,
                    mountpoint: entry.mount_point.clone(),
                    snapshot_mountpoint: self.mirror(self.level(i)).to_snapshot(&entry.mount_point),
                    reason: self
                        .reasons
                        .iter()
                        .find(|(j, _)| *j == i)
                        .map(|(_, r)| r.clone())
                        .unwrap_or_default(),
                    bind,
                }
            })
            .collect()
    }
}

/// The dataset's mount at `home` shows its directory `root` at this path.
fn bind_source_path(home: &Path, root: &Path) -> PathBuf {
    home.join(root.strip_prefix("/").unwrap_or(root))
}

/// Whether `entry` is a mount of a part of a dataset (a bind mount of a
/// directory of it, or of a file).
fn is_dataset_bind(entry: &MountEntry) -> bool {
    entry.zfs_dataset().is_some() && entry.root != Path::new("/")
}

/// The visible mounts without the bind mounts the mirror shows already: a
/// bind of dataset D's directory R at the path where the mount above it,
/// of D too, shows R (a self-bind: `mount --bind /X /X`, systemd's
/// `ProtectSystem=` and `ReadOnlyPaths=` on `/etc` and `/usr`). There the
/// mirror mount above it shows D's snapshot at R already; leaving the bind
/// out reads it from there, on the same file system as plain borg sees it.
fn without_aligned_binds(mut visible: Vec<MountEntry>) -> Vec<MountEntry> {
    while let Some(aligned) = (0..visible.len()).find(|&i| {
        let entry = &visible[i];
        is_dataset_bind(entry)
            && parent_of(&visible, entry).is_some_and(|p| {
                let parent = &visible[p];
                parent.fstype == entry.fstype
                    && parent.source == entry.source
                    && entry
                        .root
                        .strip_prefix(&parent.root)
                        .is_ok_and(|rest| parent.mount_point.join(rest) == entry.mount_point)
            })
    }) {
        visible.remove(aligned);
    }
    visible
}

/// The dataset of a visible ZFS mount, if zfs lists it as one that can be
/// snapshotted.
fn usable_dataset<'a>(world: &World<'a>, entry: &MountEntry) -> Option<&'a Filesystem> {
    let name = entry.zfs_dataset()?;
    world
        .filesystems
        .iter()
        .find(|f| f.name == name && f.keystatus.as_deref() != Some("unavailable"))
}

/// For each visible bind mount of a dataset D with root R at M: the index
/// of D's own mount (root `/`, at P), whose snapshot is mounted in the
/// mirror and R of it bound onto M's place in the mirror; or why it is
/// read live. The bind is read from the snapshot only when
/// - D can be snapshotted and is mounted itself where a path lookup
///   reaches it (the bind is made from that mount in the mirror);
/// - M is a directory (the mirror holds directories zfs-snap made and
///   mounts, never files of its own: a file cannot be a mountpoint there);
/// - P is not inside a bind mount (then D's snapshot would have to be
///   mounted after a bind it is the source of: a circle);
/// - nothing else is mounted between P and P/R (P/R in the mirror must be
///   D's snapshot; the bind itself may lie there: its source is looked up
///   before it is mounted).
fn bind_sources(world: &World<'_>, visible: &[MountEntry]) -> Binds {
    let mut binds = Binds::new();
    for (index, entry) in visible.iter().enumerate() {
        let Some(dataset) = entry.zfs_dataset() else {
            continue;
        };
        if entry.root == Path::new("/") {
            continue;
        }
        binds.insert(index, bind_source(world, visible, index, dataset));
    }
    binds
}

fn bind_source(
    world: &World<'_>,
    visible: &[MountEntry],
    index: usize,
    dataset: &str,
) -> Result<usize, String> {
    let entry = &visible[index];
    let fs = world.filesystems.iter().find(|f| f.name == dataset);
    match fs.map(|f| (f, usable_dataset(world, entry))) {
        None | Some((_, None)) => {
            return Err(match fs.and_then(Filesystem::unusable_reason) {
                Some(reason) => format!("{dataset} cannot be snapshotted: {reason}"),
                None => format!("zfs does not list {dataset} as usable"),
            })
        }
        Some(_) => {}
    }
    if !(world.is_dir)(&entry.mount_point) {
        return Err(
            "it is a single file, and zfs-snap mounts only on directories in its mirror".into(),
        );
    }
    let Some(home) = visible
        .iter()
        .position(|e| e.zfs_dataset() == Some(dataset) && e.root == Path::new("/"))
    else {
        return Err(format!(
            "{dataset} itself is mounted nowhere a path lookup reaches, and the bind is made \
             from where its snapshot is mounted"
        ));
    };
    let at = &visible[home].mount_point;
    if let Some(outer) = visible
        .iter()
        .find(|e| is_dataset_bind(e) && is_within(at, &e.mount_point))
    {
        return Err(format!(
            "{dataset} itself is mounted at {}, inside the bind mount at {}",
            at.display(),
            outer.mount_point.display()
        ));
    }
    let source = bind_source_path(at, &entry.root);
    if let Some(cover) = visible.iter().enumerate().find(|(i, e)| {
        *i != home
            && *i != index
            && e.mount_point != *at
            && is_within(&e.mount_point, at)
            && is_within(&source, &e.mount_point)
    }) {
        return Err(format!(
            "{}, where it comes from, is covered by another mount ({} {} at {})",
            source.display(),
            cover.1.fstype,
            cover.1.source,
            cover.1.mount_point.display()
        ));
    }
    Ok(home)
}

/// The warning for a bind mount of a dataset that borg reads live.
fn bind_read_live(entry: &MountEntry, why: &str) -> String {
    format!(
        "the bind mount of {}'s {} at {} is read live, not from a snapshot: {why}",
        entry.source,
        entry.root.display(),
        entry.mount_point.display()
    )
}

/// Whether borg's walk with `--one-file-system` from `root` (on the file
/// system with `st_dev` `root_dev`) enters the mount `entry` below it:
/// borg descends only into directories with the root's `st_dev`, which a
/// bind mount of the root's own dataset has, so every mount on the way
/// must have it.
fn enters(visible: &[MountEntry], root: &Path, root_dev: u64, entry: &MountEntry) -> bool {
    visible
        .iter()
        .filter(|e| {
            e.mount_point != root
                && is_within(&e.mount_point, root)
                && is_within(&entry.mount_point, &e.mount_point)
        })
        .all(|e| e.dev == root_dev)
}

/// The warning for a root inside a ZFS snapshot that someone else mounted
/// (borgmatic's own `zfs:` hook hands borg such paths): zfs-snap can only
/// read it as it is, from that snapshot, where the datasets below it are
/// not mounted; the user's fix is to leave the snapshots to zfs-snap.
fn foreign_snapshot(shown: &str, entry: &MountEntry, runtime_root: &Path) -> Option<String> {
    let snapshot = entry.fstype == "zfs" && entry.source.contains('@');
    if !snapshot || is_within(&entry.mount_point, runtime_root) {
        return None;
    }
    Some(format!(
        "{shown} is inside snapshot {} mounted at {} by someone else: zfs-snap takes no \
         snapshot for it and borg reads that snapshot as it is, without the datasets below it. \
         If borgmatic's own `zfs:` hook made it, remove `zfs:` from borgmatic's configuration \
         and give the live paths: zfs-snap snapshots every dataset they reach, in one moment",
        entry.source,
        entry.mount_point.display()
    ))
}

/// Which mirror the selected mount `index` goes in: the level of the
/// nearest selected mount above it, plus one if a file system no snapshot
/// holds (a tmpfs, an unselected dataset) lies between them: there, the
/// parent's snapshot has no directory to mount on, and a read-only one
/// cannot get one.
fn mirror_level(visible: &[MountEntry], selected: &BTreeSet<usize>, index: usize) -> usize {
    let mut crossed = false;
    let mut at = index;
    while let Some(parent) = parent_of(visible, &visible[at]) {
        if selected.contains(&parent) {
            return mirror_level(visible, selected, parent) + usize::from(crossed);
        }
        crossed = true;
        at = parent;
    }
    0
}

/// The nearest visible mount strictly above `entry`.
fn parent_of(visible: &[MountEntry], entry: &MountEntry) -> Option<usize> {
    visible
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.mount_point != entry.mount_point && is_within(&entry.mount_point, &e.mount_point)
        })
        .max_by_key(|(_, e)| e.mount_point.components().count())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RootSource;
    use proptest::prelude::*;

    const RT: &str = "/run/zfs-snap";

    fn fs(name: &str, mountpoint: &str, tag: bool) -> Filesystem {
        Filesystem {
            name: name.into(),
            mountpoint: mountpoint.into(),
            canmount: "on".into(),
            mounted: true,
            keystatus: None,
            tag: tag.then(|| "auto".to_owned()),
            guid: "1".into(),
        }
    }

    fn mount(id: u32, path: &str, fstype: &str, source: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: 1,
            dev: u64::from(id),
            root: "/".into(),
            mount_point: path.into(),
            fstype: fstype.into(),
            source: source.into(),
        }
    }

    /// A bind mount of `source`'s directory `root` at `path`: a mount of
    /// the same file system, so the same `st_dev` as `source`'s own mount
    /// (`dev`).
    fn bind(id: u32, dev: u64, root: &str, path: &str, source: &str) -> MountEntry {
        MountEntry {
            dev,
            root: root.into(),
            ..mount(id, path, "zfs", source)
        }
    }

    /// In the fixtures, a path whose last part starts with `file` is a file.
    fn is_dir(path: &Path) -> bool {
        !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("file"))
    }

    fn root(path: &str) -> SourceRoot {
        SourceRoot {
            given: path.into(),
            absolute: path.into(),
            through_symlink: None,
            missing: false,
        }
    }

    #[derive(Clone, Debug)]
    struct Fixture {
        filesystems: Vec<Filesystem>,
        mounts: Vec<MountEntry>,
    }

    impl Fixture {
        /// `/` is ext4; pool tank at /tank with data, data/child, srv at
        /// /srv (legacy), a tmpfs below data.
        fn new() -> Fixture {
            Fixture {
                filesystems: vec![
                    fs("tank", "/tank", false),
                    fs("tank/data", "/tank/data", false),
                    fs("tank/data/child", "/tank/data/child", false),
                    fs("tank/srv", "legacy", false),
                ],
                mounts: vec![
                    mount(1, "/", "ext4", "/dev/vda"),
                    mount(2, "/tank", "zfs", "tank"),
                    mount(3, "/tank/data", "zfs", "tank/data"),
                    mount(4, "/tank/data/child", "zfs", "tank/data/child"),
                    mount(5, "/srv", "zfs", "tank/srv"),
                    mount(6, "/tank/data/tmp", "tmpfs", "tmpfs"),
                ],
            }
        }

        fn plan(&self, roots: &[&str], x: bool) -> Plan {
            let mounts = self.mounts.clone();
            let dev_of = move |p: &Path| {
                mountinfo::visible(&mounts)
                    .iter()
                    .filter(|m| p.starts_with(&m.mount_point))
                    .max_by_key(|m| m.mount_point.components().count())
                    .map(|m| m.dev)
            };
            let world = World {
                filesystems: &self.filesystems,
                mounts: &self.mounts,
                runtime_root: Path::new(RT),
                cwd: Path::new("/"),
                dev_of: &dev_of,
                is_dir: &is_dir,
            };
            let roots: Vec<SourceRoot> = roots.iter().map(|r| root(r)).collect();
            discover(&world, &roots, x)
        }
    }

    fn datasets(plan: &Plan) -> Vec<&str> {
        plan.mounts.iter().map(|m| m.dataset.as_str()).collect()
    }

    #[test]
    fn deepest_parent_wins_and_children_follow() {
        let plan = Fixture::new().plan(&["/tank/data/sub"], false);
        assert_eq!(datasets(&plan), ["tank/data"]);
        let plan = Fixture::new().plan(&["/tank/data"], false);
        assert_eq!(datasets(&plan), ["tank/data", "tank/data/child"]);
        assert_eq!(plan.roots[0].borg_path, "/run/zfs-snap/snap/./tank/data");
        assert_eq!(plan.roots[0].source, RootSource::Snapshot);
        // The tmpfs below it is read live, in a walk of its own.
        let extra: Vec<_> = plan
            .extra_roots
            .iter()
            .map(|r| (r.borg_path.as_str(), r.source))
            .collect();
        assert_eq!(extra, [("/tank/data/tmp", RootSource::Live)]);
        assert_eq!(
            plan.live_exclusions,
            [PathBuf::from("/run/zfs-snap/snap/tank/data/tmp")]
        );
        assert!(
            plan.warnings[0].contains("read live, not from a snapshot: /tank/data/tmp"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn a_subdirectory_root_reads_only_itself() {
        let plan = Fixture::new().plan(&["/tank/data/sub"], false);
        assert!(plan.extra_roots.is_empty(), "{:?}", plan.extra_roots);
        let mut f = Fixture::new();
        f.filesystems[1].tag = Some("auto".into());
        let plan = f.plan(&["/tank/data/sub"], false);
        assert_eq!(
            plan.extra_roots[0].path,
            Path::new("/tank/data"),
            "tagged: whole"
        );
    }

    #[test]
    fn one_file_system_keeps_children_out_and_marks_boundaries() {
        let plan = Fixture::new().plan(&["/tank/data"], true);
        assert_eq!(datasets(&plan), ["tank/data"]);
        let boundaries: Vec<_> = plan
            .boundaries
            .iter()
            .map(|b| b.display().to_string())
            .collect();
        assert_eq!(
            boundaries,
            [
                "/run/zfs-snap/snap/tank/data/child",
                "/run/zfs-snap/snap/tank/data/tmp"
            ]
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn a_root_in_someone_elses_snapshot_mount_is_warned_about() {
        let mut fx = Fixture::new();
        let borgmatic = "/run/user/0/borgmatic/zfs_snapshots/ab12/tank/data";
        fx.mounts
            .push(mount(7, borgmatic, "zfs", "tank/data@borgmatic-1234"));
        let root = format!("{borgmatic}/./sub");
        let plan = fx.plan(&[&root], false);
        assert!(plan.mounts.is_empty(), "no snapshot taken for it");
        assert_eq!(plan.roots[0].source, RootSource::Live);
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("tank/data@borgmatic-1234") && w.contains("remove `zfs:`")),
            "{:?}",
            plan.warnings
        );
        // Our own mirror is never someone else's snapshot.
        let ours = format!("{RT}/snap/tank/data");
        fx.mounts
            .push(mount(8, &ours, "zfs", "tank/data@zfs-snap-x"));
        assert!(foreign_snapshot("x", fx.mounts.last().unwrap(), Path::new(RT)).is_none());
    }

    #[test]
    fn non_zfs_roots_stay_live_with_a_note() {
        let plan = Fixture::new().plan(&["/etc"], true);
        assert!(plan.mounts.is_empty());
        assert_eq!(plan.roots[0].source, RootSource::Live);
        assert_eq!(plan.roots[0].borg_path, "/etc");
        assert!(
            plan.notes[0].contains("/etc is not on ZFS"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn live_root_above_datasets_reads_them_from_snapshots() {
        let plan = Fixture::new().plan(&["/"], false);
        assert_eq!(
            datasets(&plan),
            ["tank/srv", "tank", "tank/data", "tank/data/child"]
        );
        let extra: Vec<_> = plan
            .extra_roots
            .iter()
            .map(|r| r.borg_path.as_str())
            .collect();
        assert_eq!(
            extra,
            [
                "/run/zfs-snap/snap/./srv",
                "/run/zfs-snap/snap/./tank",
                "/tank/data/tmp"
            ]
        );
        let excluded: Vec<_> = plan
            .live_exclusions
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            excluded,
            [
                "/srv",
                "/tank",
                "/run/zfs-snap/snap/tank/data/tmp",
                "/run/zfs-snap"
            ]
        );
        let warnings = plan.warnings.join("\n");
        assert!(
            warnings.contains("the runtime root /run/zfs-snap is inside the live path /"),
            "{warnings}"
        );
    }

    #[test]
    fn a_dataset_below_a_tmpfs_below_a_snapshot_gets_a_mirror_of_its_own() {
        let mut f = Fixture::new();
        f.filesystems
            .push(fs("tank/inner", "/tank/data/tmp/inner", false));
        f.mounts
            .push(mount(7, "/tank/data/tmp/inner", "zfs", "tank/inner"));
        f.filesystems
            .push(fs("tank/inner/deep", "/tank/data/tmp/inner/deep", false));
        f.mounts.push(mount(
            8,
            "/tank/data/tmp/inner/deep",
            "zfs",
            "tank/inner/deep",
        ));
        let plan = f.plan(&["/tank/data"], false);
        let at: Vec<(&str, String)> = plan
            .mounts
            .iter()
            .map(|m| {
                (
                    m.dataset.as_str(),
                    m.snapshot_mountpoint.display().to_string(),
                )
            })
            .collect();
        assert_eq!(
            at,
            [
                ("tank/data", "/run/zfs-snap/snap/tank/data".to_owned()),
                (
                    "tank/data/child",
                    "/run/zfs-snap/snap/tank/data/child".to_owned()
                ),
                (
                    "tank/inner",
                    "/run/zfs-snap/snap-1/tank/data/tmp/inner".to_owned()
                ),
                (
                    "tank/inner/deep",
                    "/run/zfs-snap/snap-1/tank/data/tmp/inner/deep".to_owned()
                ),
            ]
        );
        let extra: Vec<_> = plan
            .extra_roots
            .iter()
            .map(|r| (r.borg_path.as_str(), r.level))
            .collect();
        assert_eq!(
            extra,
            [
                ("/run/zfs-snap/snap-1/./tank/data/tmp/inner", 1),
                ("/tank/data/tmp", 0)
            ]
        );
        let excluded: Vec<_> = plan
            .live_exclusions
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            excluded,
            [
                "/run/zfs-snap/snap/tank/data/tmp",
                "/tank/data/tmp/inner",
                "/tank/data/tmp/inner/deep"
            ]
        );
        assert!(
            plan.warnings.join("\n").contains("/tank/data/tmp"),
            "{:?}",
            plan.warnings
        );
        // A root inside the relocated dataset reads from its mirror.
        let plan = f.plan(&["/tank/data/tmp/inner/deep"], false);
        assert_eq!(
            plan.roots[0].borg_path,
            "/run/zfs-snap/snap/./tank/data/tmp/inner/deep"
        );
    }

    #[test]
    fn a_live_root_below_the_runtime_roots_parent_only_is_untouched() {
        let plan = Fixture::new().plan(&["/etc"], false);
        assert!(plan.live_exclusions.is_empty());
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn tagged_datasets_are_added_whole() {
        let mut f = Fixture::new();
        f.filesystems[3].tag = Some("auto".into());
        let plan = f.plan(&["/tank/data"], false);
        assert!(datasets(&plan).contains(&"tank/srv"));
        assert_eq!(plan.extra_roots[0].path, Path::new("/srv"));
        assert_eq!(
            plan.live_exclusions,
            [PathBuf::from("/run/zfs-snap/snap/tank/data/tmp")]
        );
    }

    #[test]
    fn tagged_child_under_one_file_system_root_gets_its_own_root() {
        let mut f = Fixture::new();
        f.filesystems[2].tag = Some("auto".into());
        let plan = f.plan(&["/tank/data"], true);
        assert_eq!(datasets(&plan), ["tank/data", "tank/data/child"]);
        assert_eq!(
            plan.extra_roots[0].borg_path,
            "/run/zfs-snap/snap/./tank/data/child"
        );
        assert!(!plan.boundaries.iter().any(|b| b.ends_with("child")));
    }

    #[test]
    fn unusable_tagged_datasets_are_named() {
        let mut f = Fixture::new();
        f.filesystems.push(Filesystem {
            canmount: "off".into(),
            mounted: false,
            ..fs("tank/off", "/tank/off", true)
        });
        f.filesystems.push(Filesystem {
            mounted: false,
            keystatus: Some("unavailable".into()),
            ..fs("tank/secret", "/tank/secret", true)
        });
        f.filesystems.push(Filesystem {
            mounted: false,
            ..fs("tank/none", "none", true)
        });
        let plan = f.plan(&["/tank/data"], false);
        let warnings = plan.warnings.join("\n");
        assert!(
            warnings.contains("tank/off is skipped: canmount=off"),
            "{warnings}"
        );
        assert!(
            warnings.contains("tank/secret is skipped: its encryption key"),
            "{warnings}"
        );
        assert!(
            warnings.contains("tank/none is skipped: mountpoint=none"),
            "{warnings}"
        );
    }

    #[test]
    fn only_the_mounted_one_of_a_shared_mountpoint_counts() {
        let mut f = Fixture::new();
        f.filesystems.push(Filesystem {
            mounted: false,
            ..fs("tank/other", "/srv", false)
        });
        let plan = f.plan(&["/srv"], false);
        assert_eq!(datasets(&plan), ["tank/srv"]);
    }

    #[test]
    fn leftover_mounts_under_the_runtime_root_are_ignored() {
        let mut f = Fixture::new();
        f.mounts
            .push(mount(9, "/run/zfs-snap/snap/tank", "zfs", "tank"));
        let plan = f.plan(&["/tank/data/sub"], false);
        assert_eq!(datasets(&plan), ["tank/data"]);
    }

    #[test]
    fn symlinked_parents_and_foreign_devices_stay_live() {
        let f = Fixture::new();
        let mut r = root("/link/data");
        r.through_symlink = Some("/tank/data".into());
        let world_mounts = f.mounts.clone();
        let wrong_dev = |_: &Path| Some(12345);
        let world = World {
            filesystems: &f.filesystems,
            mounts: &world_mounts,
            runtime_root: Path::new(RT),
            cwd: Path::new("/"),
            dev_of: &wrong_dev,
            is_dir: &|_| true,
        };
        let plan = discover(&world, &[r, root("/tank/data")], false);
        assert!(plan.roots.iter().all(|r| r.source == RootSource::Live));
        let warnings = plan.warnings.join("\n");
        assert!(warnings.contains("symlink"), "{warnings}");
        assert!(warnings.contains("another file system"), "{warnings}");
    }

    #[test]
    fn a_missing_root_goes_to_borg_as_given_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        // Absolute, relative, and below a dataset's mountpoint: each is
        // missing, none is an error.
        for given in ["/nonexistent/zfs-snap", "no-such", "../no-such/x"] {
            let root = SourceRoot::resolve(Path::new(given), cwd).unwrap();
            assert!(root.missing, "{given}");
            assert_eq!(root.given, Path::new(given));
        }
        let mut missing = root("/tank/data/no-such");
        missing.missing = true;
        let f = Fixture::new();
        let mounts = f.mounts.clone();
        let dev_of = move |p: &Path| {
            mountinfo::visible(&mounts)
                .iter()
                .filter(|m| p.starts_with(&m.mount_point))
                .max_by_key(|m| m.mount_point.components().count())
                .map(|m| m.dev)
        };
        let world = World {
            filesystems: &f.filesystems,
            mounts: &f.mounts,
            runtime_root: Path::new(RT),
            cwd: Path::new("/"),
            dev_of: &dev_of,
            is_dir: &|_| true,
        };
        let plan = discover(&world, &[missing, root("/srv")], false);
        // Its parent dataset is not frozen for it; the other root is.
        assert_eq!(datasets(&plan), ["tank/srv"]);
        assert_eq!(plan.roots[0].source, RootSource::Live);
        assert_eq!(plan.roots[0].borg_path, "/tank/data/no-such");
        assert_eq!(plan.roots[1].source, RootSource::Snapshot);
        let warnings = plan.warnings.join("\n");
        assert!(
            warnings.contains("source path /tank/data/no-such does not exist"),
            "{warnings}"
        );
        assert_eq!(plan.warnings.len(), 1, "{warnings}");
    }

    /// Root on ZFS, as systemd's `ProtectSystem=full` shows it inside a
    /// unit: `/etc` and `/usr` bound onto themselves, and `/usr/lib/x`
    /// bound inside the `/usr` bind.
    fn self_bound() -> Fixture {
        Fixture {
            filesystems: vec![fs("rpool/root", "/", false)],
            mounts: vec![
                mount(1, "/", "zfs", "rpool/root"),
                bind(2, 1, "/etc", "/etc", "rpool/root"),
                bind(3, 1, "/usr", "/usr", "rpool/root"),
                bind(4, 1, "/usr/lib/x", "/usr/lib/x", "rpool/root"),
            ],
        }
    }

    #[test]
    fn a_self_bind_is_read_from_the_datasets_own_snapshot_with_no_mount_of_its_own() {
        let f = self_bound();
        for x in [false, true] {
            let plan = f.plan(&["/etc", "/usr/lib/x/y"], x);
            assert_eq!(datasets(&plan), ["rpool/root"], "-x {x}");
            assert!(plan.mounts[0].bind.is_none());
            let borg: Vec<_> = plan.roots.iter().map(|r| r.borg_path.as_str()).collect();
            assert_eq!(
                borg,
                [
                    "/run/zfs-snap/snap/./etc",
                    "/run/zfs-snap/snap/./usr/lib/x/y"
                ]
            );
            assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
            // Below `/`, the binds are the root's own file system: walked
            // in the mirror, not read live, not boundaries.
            let plan = f.plan(&["/"], x);
            assert_eq!(datasets(&plan), ["rpool/root"]);
            assert!(plan.extra_roots.is_empty(), "{:?}", plan.extra_roots);
            assert!(plan.boundaries.is_empty(), "{:?}", plan.boundaries);
            assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        }
    }

    /// NixOS impermanence: `/` a tmpfs, rpool/persist at `/persist`, its
    /// `/var/lib/foo` bound onto `/var/lib/foo`.
    fn impermanence() -> Fixture {
        Fixture {
            filesystems: vec![
                fs("rpool/persist", "legacy", false),
                fs("rpool/nix", "legacy", false),
            ],
            mounts: vec![
                mount(1, "/", "tmpfs", "none"),
                mount(2, "/persist", "zfs", "rpool/persist"),
                mount(3, "/nix", "zfs", "rpool/nix"),
                bind(4, 2, "/var/lib/foo", "/var/lib/foo", "rpool/persist"),
            ],
        }
    }

    /// A planned mount as (dataset, where in the mirror, (root, from) of a bind).
    type Shown = (String, String, Option<(String, String)>);

    fn mounts_of(plan: &Plan) -> Vec<Shown> {
        plan.mounts
            .iter()
            .map(|m| {
                (
                    m.dataset.clone(),
                    m.snapshot_mountpoint.display().to_string(),
                    m.bind
                        .as_ref()
                        .map(|b| (b.root.display().to_string(), b.from.display().to_string())),
                )
            })
            .collect()
    }

    #[test]
    fn a_bind_from_elsewhere_is_bound_from_its_datasets_snapshot_in_the_mirror() {
        let f = impermanence();
        let plan = f.plan(&["/var/lib/foo"], false);
        assert_eq!(
            mounts_of(&plan),
            [
                ("rpool/persist".into(), format!("{RT}/snap/persist"), None),
                (
                    "rpool/persist".into(),
                    format!("{RT}/snap/var/lib/foo"),
                    Some((
                        "/var/lib/foo".into(),
                        format!("{RT}/snap/persist/var/lib/foo")
                    ))
                ),
            ]
        );
        assert_eq!(
            plan.mounts[0].reason,
            "source of the bind mount at /var/lib/foo"
        );
        assert_eq!(plan.roots[0].borg_path, format!("{RT}/snap/./var/lib/foo"));
        assert_eq!(plan.roots[0].dataset.as_deref(), Some("rpool/persist"));
        // Mounted for the bind only: /persist is not archived for it.
        assert!(plan.extra_roots.is_empty(), "{:?}", plan.extra_roots);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(
            plan.snapshots_by_pool("s")["rpool"],
            ["rpool/persist@s"],
            "one snapshot for both"
        );

        // Below a live root, each is read from the mirror in a walk of its
        // own and left out of the live walk.
        let plan = f.plan(&["/"], false);
        let extra: Vec<_> = plan
            .extra_roots
            .iter()
            .map(|r| r.borg_path.as_str())
            .collect();
        assert_eq!(
            extra,
            [
                "/run/zfs-snap/snap/./nix",
                "/run/zfs-snap/snap/./persist",
                "/run/zfs-snap/snap/./var/lib/foo"
            ]
        );
        assert_eq!(
            plan.live_exclusions,
            [
                PathBuf::from("/nix"),
                PathBuf::from("/persist"),
                PathBuf::from("/var/lib/foo"),
                PathBuf::from(RT)
            ]
        );
        assert_eq!(
            plan.mounts.last().unwrap().mountpoint,
            Path::new("/var/lib/foo")
        );
        // With -x borg does not leave the tmpfs: nothing to freeze.
        assert!(f.plan(&["/"], true).mounts.is_empty());
    }

    #[test]
    fn a_bind_by_hand_is_mounted_after_its_source_and_before_what_is_inside_it() {
        let mut f = Fixture::new();
        f.mounts.push(bind(7, 3, "/sub", "/srv/x", "tank/data"));
        f.filesystems.push(fs("tank/inner", "/srv/x/in", false));
        f.mounts.push(mount(8, "/srv/x/in", "zfs", "tank/inner"));
        let plan = f.plan(&["/srv"], false);
        assert_eq!(
            mounts_of(&plan),
            [
                ("tank/srv".into(), format!("{RT}/snap/srv"), None),
                ("tank/data".into(), format!("{RT}/snap/tank/data"), None),
                (
                    "tank/data".into(),
                    format!("{RT}/snap/srv/x"),
                    Some(("/sub".into(), format!("{RT}/snap/tank/data/sub")))
                ),
                ("tank/inner".into(), format!("{RT}/snap/srv/x/in"), None),
            ]
        );
        assert!(plan.extra_roots.is_empty(), "{:?}", plan.extra_roots);
        // With -x the bind is another file system below /srv: a boundary.
        let plan = f.plan(&["/srv"], true);
        assert_eq!(datasets(&plan), ["tank/srv"]);
        assert_eq!(
            plan.boundaries,
            [
                PathBuf::from(format!("{RT}/snap/srv/x")),
                PathBuf::from(format!("{RT}/snap/srv/x/in"))
            ]
        );
    }

    #[test]
    fn with_one_file_system_a_bind_of_the_roots_own_dataset_is_walked() {
        let mut f = Fixture::new();
        f.mounts
            .push(bind(7, 3, "/sub", "/tank/data/other", "tank/data"));
        let plan = f.plan(&["/tank/data"], true);
        assert_eq!(
            mounts_of(&plan),
            [
                ("tank/data".into(), format!("{RT}/snap/tank/data"), None),
                (
                    "tank/data".into(),
                    format!("{RT}/snap/tank/data/other"),
                    Some(("/sub".into(), format!("{RT}/snap/tank/data/sub")))
                ),
            ]
        );
        assert!(!plan.boundaries.iter().any(|b| b.ends_with("other")));
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn a_bind_of_a_single_file_is_read_live_with_a_warning_naming_it() {
        let mut f = Fixture::new();
        f.mounts
            .push(bind(7, 3, "/file-id", "/srv/file-id", "tank/data"));
        let plan = f.plan(&["/srv"], false);
        assert_eq!(datasets(&plan), ["tank/srv"]);
        let live: Vec<_> = plan
            .extra_roots
            .iter()
            .map(|r| (r.borg_path.as_str(), r.source))
            .collect();
        assert_eq!(live, [("/srv/file-id", RootSource::Live)]);
        assert_eq!(
            plan.live_exclusions,
            [PathBuf::from(format!("{RT}/snap/srv/file-id"))]
        );
        let warnings = plan.warnings.join("\n");
        assert!(
            warnings.contains(
                "the bind mount of tank/data's /file-id at /srv/file-id is read live, not from \
                 a snapshot: it is a single file"
            ),
            "{warnings}"
        );
        assert!(!warnings.contains("not on ZFS"), "{warnings}");
        let plan = f.plan(&["/srv/file-id"], false);
        assert!(plan.mounts.is_empty());
        assert_eq!(plan.roots[0].source, RootSource::Live);
        assert!(
            plan.warnings[0].contains("/srv/file-id is on the bind mount of tank/data's /file-id"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn a_bind_whose_dataset_cannot_be_read_from_a_snapshot_stays_live_and_says_why() {
        let cases: [(&str, MountEntry, Option<Filesystem>); 4] = [
            (
                "tank/secret cannot be snapshotted: its encryption key is not loaded",
                bind(7, 70, "/x", "/srv/s", "tank/secret"),
                Some(Filesystem {
                    keystatus: Some("unavailable".into()),
                    ..fs("tank/secret", "/tank/secret", false)
                }),
            ),
            (
                "tank/gone itself is mounted nowhere a path lookup reaches",
                bind(7, 70, "/x", "/srv/s", "tank/gone"),
                Some(fs("tank/gone", "/tank/gone", false)),
            ),
            (
                "zfs does not list tank/unlisted as usable",
                bind(7, 70, "/x", "/srv/s", "tank/unlisted"),
                None,
            ),
            (
                "/tank/data/child/x, where it comes from, is covered by another mount \
                 (zfs tank/data/child at /tank/data/child)",
                bind(7, 3, "/child/x", "/srv/s", "tank/data"),
                None,
            ),
        ];
        for (why, entry, filesystem) in cases {
            let mut f = Fixture::new();
            f.mounts.push(entry);
            f.filesystems.extend(filesystem);
            for root in ["/srv", "/srv/s"] {
                let plan = f.plan(&[root], false);
                assert!(
                    !plan.mounts.iter().any(|m| m.bind.is_some()),
                    "{:?}",
                    plan.mounts
                );
                let warnings = plan.warnings.join("\n");
                assert!(warnings.contains(why), "{root}: {warnings}");
                assert!(
                    warnings.contains("live, not from a snapshot"),
                    "{root}: {warnings}"
                );
            }
        }
    }

    #[test]
    fn a_bind_whose_source_is_mounted_inside_a_bind_stays_live() {
        let mut f = Fixture::new();
        f.mounts.push(bind(7, 3, "/sub", "/srv/x", "tank/data"));
        f.filesystems.push(fs("tank/in", "legacy", false));
        f.mounts.push(mount(8, "/srv/x/in", "zfs", "tank/in"));
        f.mounts.push(bind(9, 8, "/z", "/opt/y", "tank/in"));
        let plan = f.plan(&["/opt/y"], false);
        assert!(plan.mounts.is_empty(), "{:?}", plan.mounts);
        assert!(
            plan.warnings[0].contains(
                "tank/in itself is mounted at /srv/x/in, inside the bind mount at /srv/x"
            ),
            "{:?}",
            plan.warnings
        );
    }

    #[derive(Clone, Debug)]
    enum Generated {
        Dataset,
        /// A bind of `d<k>`'s directory.
        Bind(usize, &'static str),
    }

    /// A mount table with binds: a file system that is not ZFS at `/`,
    /// datasets `pool/d<k>` at `/d<k>` (some with their key unloaded, and
    /// some with `/d<k>/a` bound onto itself), and a tree below `/p` of
    /// datasets and binds of the `d<k>`.
    fn table_with_binds() -> impl Strategy<Value = (Fixture, Vec<String>)> {
        let kinds = prop_oneof![
            Just(None),
            (0usize..3, prop::sample::select(vec!["/a", "/b", "/b/c"])).prop_map(Some)
        ];
        (
            tree(),
            prop::collection::vec(kinds, 8),
            prop::collection::vec(any::<(bool, bool)>(), 3),
        )
            .prop_map(|(paths, kinds, homes)| {
                let mut filesystems = Vec::new();
                let mut mounts = vec![mount(1000, "/", "ext4", "/dev/vda")];
                for (k, (locked, self_bound)) in homes.iter().enumerate() {
                    let name = format!("pool/d{k}");
                    filesystems.push(Filesystem {
                        keystatus: locked.then(|| "unavailable".to_owned()),
                        ..fs(&name, &format!("/d{k}"), false)
                    });
                    mounts.push(mount(100 + k as u32, &format!("/d{k}"), "zfs", &name));
                    if *self_bound {
                        let at = format!("/d{k}/a");
                        mounts.push(bind(300 + k as u32, 100 + k as u64, "/a", &at, &name));
                    }
                }
                for (j, path) in paths.iter().enumerate() {
                    let id = 200 + j as u32;
                    match kinds[j].map_or(Generated::Dataset, |(k, r)| Generated::Bind(k, r)) {
                        Generated::Dataset => {
                            let name = format!("pool/t{j}");
                            filesystems.push(fs(&name, path, false));
                            mounts.push(mount(id, path, "zfs", &name));
                        }
                        Generated::Bind(k, r) => {
                            mounts.push(bind(id, 100 + k as u64, r, path, &format!("pool/d{k}")))
                        }
                    }
                }
                (
                    Fixture {
                        filesystems,
                        mounts,
                    },
                    paths,
                )
            })
    }

    /// The live path a mirror path stands for, in whichever mirror.
    fn original(path: &Path) -> Option<PathBuf> {
        (0..8).find_map(|level| Mapping::at_level(Path::new(RT), level).to_original(path))
    }

    proptest! {
        #[test]
        fn binds_are_read_from_their_datasets_snapshots(
            (f, paths) in table_with_binds(),
            pick in 0usize..16,
            x in any::<bool>(),
        ) {
            let mut candidates = paths.clone();
            candidates.extend(["/", "/d0", "/d1/a", "/p"].map(str::to_owned));
            let chosen = &candidates[pick % candidates.len()];
            let plan = f.plan(&[chosen], x);
            let visible = mountinfo::visible(&f.mounts);
            // Every planned mount maps back to a visible mount of that
            // dataset (and part of it): nothing foreign is planned.
            for m in &plan.mounts {
                prop_assert_eq!(original(&m.snapshot_mountpoint), Some(m.mountpoint.clone()));
                let root = m.bind.as_ref().map_or(PathBuf::from("/"), |b| b.root.clone());
                prop_assert!(
                    visible.iter().any(|e| e.mount_point == m.mountpoint
                        && e.zfs_dataset() == Some(m.dataset.as_str())
                        && e.root == root),
                    "{:?} is not in the mount table", m
                );
            }
            let targets: BTreeSet<_> = plan.mounts.iter().map(|m| &m.snapshot_mountpoint).collect();
            prop_assert_eq!(targets.len(), plan.mounts.len());
            for (j, m) in plan.mounts.iter().enumerate() {
                // What a mount lies in is mounted before it.
                for (i, outer) in plan.mounts.iter().enumerate() {
                    if outer.snapshot_mountpoint != m.snapshot_mountpoint
                        && m.snapshot_mountpoint.starts_with(&outer.snapshot_mountpoint)
                    {
                        prop_assert!(i < j, "{:?} before {:?}", outer, m);
                    }
                }
                // A bind is bound from its dataset's snapshot, mounted
                // earlier, at its directory.
                if let Some(b) = &m.bind {
                    let from = plan.mounts[..j].iter().find(|h| h.dataset == m.dataset && h.bind.is_none());
                    prop_assert!(from.is_some(), "no source before {:?}", m);
                    let from = from.unwrap();
                    prop_assert_eq!(
                        &b.from,
                        &from.snapshot_mountpoint.join(b.root.strip_prefix("/").unwrap())
                    );
                    prop_assert_eq!(original(&b.from), Some(bind_source_path(&from.mountpoint, &b.root)));
                }
            }
            // Snapshot roots map back to the path given.
            for r in plan.borg_roots().filter(|r| r.source == RootSource::Snapshot) {
                let (head, tail) = r.borg_path.split_once("/./").unwrap();
                prop_assert_eq!(original(&Path::new(head).join(tail)), Some(r.path.clone()));
            }
            // Every bind of a usable dataset that borg reaches is read from
            // its snapshot; one that is not usable is named.
            let holder = visible
                .iter()
                .filter(|e| Path::new(chosen).starts_with(&e.mount_point))
                .max_by_key(|e| e.mount_point.components().count())
                .unwrap();
            for e in visible.iter().filter(|e| is_dataset_bind(e) && e.mount_point.starts_with("/p")) {
                let reached = std::ptr::eq(e, holder)
                    || (!x && e.mount_point.starts_with(chosen) && e.mount_point != Path::new(chosen));
                if !reached {
                    continue;
                }
                let usable = f.filesystems.iter().any(|fs| fs.name == e.source && fs.keystatus.is_none());
                let planned = plan.mounts.iter().any(|m| m.mountpoint == e.mount_point && m.bind.is_some());
                prop_assert_eq!(planned, usable, "{:?} in {:?}", e, plan);
                if !usable {
                    let at = e.mount_point.display().to_string();
                    prop_assert!(
                        plan.warnings.iter().any(|w| w.contains(&at) && w.contains("read")),
                        "{} not named: {:?}", at, plan.warnings
                    );
                }
            }
        }
    }

    /// A random tree of ZFS mounts: `paths[i]` mounted from `ds<i>`.
    fn tree() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set(prop::collection::vec("[ab]", 1..4), 1..8).prop_map(|set| {
            set.into_iter()
                .map(|parts| format!("/p/{}", parts.join("/")))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_dataset_under_a_root_is_snapshotted_once(paths in tree(), pick in 0usize..8, x in any::<bool>()) {
            let filesystems: Vec<Filesystem> = paths.iter().enumerate()
                .map(|(i, p)| fs(&format!("pool/ds{i}"), p, false)).collect();
            let mut mounts = vec![mount(1000, "/", "ext4", "/dev/vda")];
            mounts.extend(paths.iter().enumerate().map(|(i, p)| mount(i as u32 + 1, p, "zfs", &format!("pool/ds{i}"))));
            let f = Fixture { filesystems, mounts };
            let chosen = &paths[pick % paths.len()];
            let plan = f.plan(&[chosen], x);
            // The root's own dataset is always there, nothing twice, and
            // without -x every dataset below the root is too.
            let names = datasets(&plan);
            let unique: BTreeSet<_> = names.iter().collect();
            prop_assert_eq!(unique.len(), names.len());
            prop_assert!(plan.mounts.iter().any(|m| &m.mountpoint.display().to_string() == chosen));
            for p in &paths {
                let below = Path::new(p).starts_with(chosen);
                let included = plan.mounts.iter().any(|m| &m.mountpoint.display().to_string() == p);
                prop_assert_eq!(included, below && (!x || p == chosen), "{}", p);
            }
            // Distinct datasets never share a snapshot mountpoint.
            let targets: BTreeSet<_> = plan.mounts.iter().map(|m| &m.snapshot_mountpoint).collect();
            prop_assert_eq!(targets.len(), plan.mounts.len());
        }
    }
}
