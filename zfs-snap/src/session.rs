//! A run's lifecycle: lock, recover what dead runs left, snapshot, hold,
//! mount; and teardown, which runs whatever happens (success, error,
//! signal, panic) because [`Session`] owns everything it created and
//! releases it on drop. [`Session::finish`] does the same and reports.

use std::collections::BTreeMap;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::mount::{unmount_patiently, Mounter};
use crate::mountinfo::{self, MountEntry};
use crate::plan::Plan;
use crate::runtime::{self, Lock, MIRROR_DIR, WORK_DIR};
use crate::zfs::{pool_of, Filesystem, Owner, Search, Snapshot, Zfs, HOLD_TAG, SNAPSHOT_PREFIX};

pub struct Options {
    pub runtime_root: PathBuf,
    pub wait: Option<Duration>,
    pub mountinfo: PathBuf,
}

/// What a recovery pass or teardown removed, what it could not, and what
/// it found but left alone because it cannot prove it is ours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub unmounted: Vec<PathBuf>,
    pub destroyed: Vec<String>,
    pub deferred: Vec<String>,
    pub problems: Vec<String>,
    /// Mounts and files under the runtime root that are not ours: never
    /// unmounted or removed, named in a warning.
    pub left_alone: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.unmounted.is_empty() && self.destroyed.is_empty() && self.deferred.is_empty()
    }

    fn into_result(self) -> Result<Report> {
        if self.problems.is_empty() {
            Ok(self)
        } else {
            Err(Error::Teardown {
                problems: self.problems,
            })
        }
    }
}

/// A run holding the lock on its runtime root.
pub struct Session<'a> {
    zfs: &'a dyn Zfs,
    mounter: &'a dyn Mounter,
    root: PathBuf,
    mapping: Mapping,
    mountinfo_path: PathBuf,
    owner: Owner,
    snapshot_name: String,
    /// The points in time frozen so far: one for a plain run; a shared
    /// session adds one each time a create needs datasets not frozen yet.
    points: Vec<Point>,
    /// Each frozen dataset's snapshot (`dataset@name`).
    frozen: BTreeMap<String, String>,
    /// Mount targets, in the order mounted, with the snapshot mounted there.
    mounted: Vec<(PathBuf, String)>,
    /// Directories we created, in the order created.
    dirs: Vec<PathBuf>,
    /// Files we wrote in the work directory.
    work_files: Vec<PathBuf>,
    /// This boot and the pools (name, guid) seen at the start, for the
    /// clean mark.
    boot_id: Option<String>,
    pools: Vec<(String, String)>,
    /// Something may exist that teardown does not know of: recovery left
    /// busy snapshots to a deferred destroy, or a snapshot call failed
    /// (killed by a signal after the kernel made them, say). No clean mark.
    uncertain: bool,
    finished: bool,
    timings: Timings,
    _lock: Lock,
}

/// One point in time: the snapshots made by one atomic call per pool, all
/// called `name` (a name unique to the run and the point).
#[derive(Default)]
struct Point {
    name: String,
    /// Created snapshots, by pool.
    created: BTreeMap<String, Vec<String>>,
    /// Held snapshots, by pool.
    held: BTreeMap<String, Vec<String>>,
    /// Snapshots whose hold call failed, by pool: the hold may or may not
    /// have been placed (zfs killed after the ioctl), so teardown asks.
    maybe_held: BTreeMap<String, Vec<String>>,
}

/// How long each phase of a run took, in milliseconds, and how many
/// processes zfs-snap spawned (borg's own run not counted).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    pub backend: String,
    pub pools: usize,
    pub datasets: usize,
    /// Lock, recovery, `zfs list`, mount table, discovery.
    pub discovery_ms: f64,
    pub snapshot_ms: f64,
    pub hold_ms: f64,
    pub mount_ms: f64,
    pub borg_ms: f64,
    pub teardown_ms: f64,
    pub processes: usize,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl<'a> Session<'a> {
    /// Prepares the runtime root, takes its lock and removes what dead runs
    /// left behind. Returns the session with a fresh look at ZFS's
    /// filesystems and the mount table, taken after that recovery.
    ///
    /// Finding leftovers means listing every snapshot on the host, which
    /// costs seconds where other tools keep thousands; it is skipped when
    /// the last run of this runtime root, in this boot, left nothing behind
    /// (its clean mark) and no pool it did not see has appeared.
    pub fn begin(
        zfs: &'a dyn Zfs,
        mounter: &'a dyn Mounter,
        options: &Options,
    ) -> Result<(Session<'a>, Vec<Filesystem>, Vec<MountEntry>, Report)> {
        let root = runtime::prepare(&options.runtime_root)?;
        let lock = runtime::lock(&root, options.wait)?;
        let run_id = new_run_id().map_err(|source| Error::Io {
            path: PathBuf::from(RANDOM_SOURCE),
            source,
        })?;
        let owner = Owner {
            run_id: run_id.clone(),
            runtime_root: root.display().to_string(),
        };
        let filesystems = zfs.filesystems()?;
        let pools = pools_of(&filesystems);
        let mut mounts = mountinfo::read(&options.mountinfo)?;
        let boot_id = runtime::boot_id();
        let clean = runtime::take_clean_mark(&root, boot_id.as_deref(), &pools)
            && !mounts.iter().any(|m| is_snapshot_mount_in(m, &root));
        let snapshots = if clean {
            tracing::debug!("the last run left nothing behind: not listing snapshots");
            Vec::new()
        } else {
            zfs.our_snapshots(Search::Named)?
        };
        let recovered = recover(zfs, mounter, &root, &snapshots, &options.mountinfo, false);
        for thing in &recovered.left_alone {
            tracing::warn!("{thing}");
        }
        if !recovered.is_empty() {
            tracing::warn!(
                unmounted = recovered.unmounted.len(),
                destroyed = recovered.destroyed.len(),
                "removed what an earlier run left behind"
            );
            mounts = mountinfo::read(&options.mountinfo)?;
        }
        let recovered = recovered.into_result()?;
        let session = Session {
            zfs,
            mounter,
            mapping: Mapping::new(&root),
            root,
            mountinfo_path: options.mountinfo.clone(),
            snapshot_name: format!("{SNAPSHOT_PREFIX}{run_id}"),
            owner,
            points: Vec::new(),
            frozen: BTreeMap::new(),
            mounted: Vec::new(),
            dirs: Vec::new(),
            work_files: Vec::new(),
            boot_id,
            pools,
            uncertain: !recovered.deferred.is_empty(),
            finished: false,
            timings: Timings {
                backend: zfs.backend().to_owned(),
                ..Timings::default()
            },
            _lock: lock,
        };
        Ok((session, filesystems, mounts, recovered))
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    pub fn runtime_root(&self) -> &Path {
        &self.root
    }

    /// The run's id: in its snapshots' names and ownership value, and a
    /// shared session's id.
    pub fn run_id(&self) -> &str {
        &self.owner.run_id
    }

    pub fn snapshot_name(&self) -> &str {
        &self.snapshot_name
    }

    pub fn mountinfo_path(&self) -> &Path {
        &self.mountinfo_path
    }

    /// Snapshots every planned dataset not frozen yet (one atomic call per
    /// pool), holds them and mounts each planned snapshot in the mirror.
    /// The first call of a run is its point in time; a later one (a shared
    /// session's next create, needing more datasets) adds another point.
    /// `interrupted` is asked between steps; a signal stops the run before
    /// borg starts.
    pub fn freeze(&mut self, plan: &Plan, interrupted: &dyn Fn() -> Option<i32>) -> Result<()> {
        let check = || match interrupted() {
            Some(signal) => Err(Error::Interrupted { signal }),
            None => Ok(()),
        };
        // A later point's name is as unguessable as the first: someone who
        // saw the first in `zfs list` must not be able to make the next.
        let name = match self.points.len() {
            0 => self.snapshot_name.clone(),
            n => format!(
                "{}.{}-{}",
                self.snapshot_name,
                n + 1,
                random_hex().map_err(|source| Error::Io {
                    path: PathBuf::from(RANDOM_SOURCE),
                    source,
                })?
            ),
        };
        let mut by_pool = plan.snapshots_by_pool(&name);
        for names in by_pool.values_mut() {
            names.retain(|n| !self.frozen.contains_key(dataset_of(n)));
        }
        by_pool.retain(|_, names| !names.is_empty());
        if by_pool.len() > 1 {
            tracing::info!(
                pools = by_pool.len(),
                "datasets span several pools: each pool's snapshot is atomic, but ZFS cannot make them atomic across pools"
            );
        }
        if !by_pool.is_empty() && !self.points.is_empty() {
            tracing::warn!(
                datasets = by_pool.values().map(Vec::len).sum::<usize>(),
                name = %name,
                "this create needs datasets the session has not frozen yet: they are snapshotted now, a later point in time than the session's first snapshot"
            );
        }
        self.timings.pools = self.timings.pools.max(by_pool.len());
        self.timings.datasets += by_pool.values().map(Vec::len).sum::<usize>();
        if !by_pool.is_empty() {
            self.points.push(Point {
                name: name.clone(),
                ..Point::default()
            });
        }
        let started = Instant::now();
        for (pool, names) in &by_pool {
            check()?;
            // Until the call returns, it may have made the snapshots (a
            // signal can kill `zfs` after the kernel did): while in doubt,
            // teardown must not vouch for a clean state.
            let in_doubt = std::mem::replace(&mut self.uncertain, true);
            if let Err(e) = self.zfs.snapshot(names, &self.owner) {
                self.adopt_after_failed_snapshot(pool, names, in_doubt);
                return Err(e);
            }
            self.uncertain = in_doubt;
            self.point().created.insert(pool.clone(), names.clone());
            tracing::info!(pool, snapshots = names.len(), name = %name, "snapshot taken");
        }
        self.timings.snapshot_ms += ms(started);
        let started = Instant::now();
        for (pool, names) in &by_pool {
            check()?;
            if let Err(e) = self.zfs.hold_run(pool, &name, names) {
                self.point().maybe_held.insert(pool.clone(), names.clone());
                return Err(e);
            }
            self.point().held.insert(pool.clone(), names.clone());
            // Frozen, for later creates, once held.
            for snapshot in names {
                self.frozen
                    .insert(dataset_of(snapshot).to_owned(), snapshot.clone());
            }
        }
        self.timings.hold_ms += ms(started);
        let started = Instant::now();
        let earlier = self.mounted.len();
        for planned in &plan.mounts {
            check()?;
            let target = &planned.snapshot_mountpoint;
            if self.mounted.iter().any(|(t, _)| t == target) {
                continue;
            }
            let snapshot = self.frozen[&planned.dataset].clone();
            self.mount_at(&snapshot, target)?;
        }
        // A snapshot mounted now above an earlier mount (the parent's, in a
        // later point) hides it: mount the earlier one again on top.
        let fresh: Vec<PathBuf> = self.mounted[earlier..]
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        let hidden: Vec<(PathBuf, String)> = self.mounted[..earlier]
            .iter()
            .filter(|(t, _)| fresh.iter().any(|f| t != f && t.starts_with(f)))
            .cloned()
            .collect();
        for (target, snapshot) in hidden {
            check()?;
            self.mount_at(&snapshot, &target)?;
        }
        self.timings.mount_ms += ms(started);
        check()
    }

    fn mount_at(&mut self, snapshot: &str, target: &Path) -> Result<()> {
        self.make_dirs(target).map_err(|e| Error::Mount {
            snapshot: snapshot.to_owned(),
            target: target.to_owned(),
            reason: format!(
                "cannot create the mountpoint: {e} (is it inside a read-only snapshot \
                 whose dataset has no such directory?)"
            ),
        })?;
        self.mounter.mount(snapshot, target)?;
        self.mounted.push((target.to_owned(), snapshot.to_owned()));
        tracing::debug!(snapshot, target = %target.display(), "mounted");
        Ok(())
    }

    /// The point being frozen.
    fn point(&mut self) -> &mut Point {
        self.points.last_mut().expect("freeze pushes a point first")
    }

    /// Phase timings so far; the caller adds discovery and borg.
    pub fn timings_mut(&mut self) -> &mut Timings {
        &mut self.timings
    }

    /// Tears down and reports (an error lists what was left behind), with
    /// the finished timings.
    pub fn finish(mut self) -> (Result<Report>, Timings) {
        let started = Instant::now();
        self.finished = true;
        let report = self.teardown().into_result();
        let mut timings = std::mem::take(&mut self.timings);
        timings.teardown_ms = ms(started);
        timings.processes = crate::command::spawned();
        (report, timings)
    }

    /// The snapshot call for `pool` failed, but it may have made the
    /// snapshots first (zfs killed by a signal after the ioctl): whichever
    /// of `names` exist carrying this run's exact ownership value are this
    /// run's, and teardown removes them. Knowing that, the run is no longer
    /// in doubt; if ZFS cannot say, it stays in doubt (no clean mark) and
    /// the next run recovers them.
    fn adopt_after_failed_snapshot(&mut self, pool: &str, names: &[String], in_doubt: bool) {
        match self.zfs.owners(names) {
            Ok(found) => {
                let made: Vec<String> = found
                    .into_iter()
                    .filter(|s| s.owner.as_ref() == Some(&self.owner))
                    .map(|s| s.name)
                    .collect();
                if !made.is_empty() {
                    tracing::warn!(
                        pool,
                        snapshots = made.len(),
                        "the snapshot call failed after ZFS made the snapshots; removing them"
                    );
                    self.point().created.insert(pool.to_owned(), made);
                }
                self.uncertain = in_doubt;
            }
            Err(e) => {
                tracing::warn!(pool, error = %e, "cannot tell whether the failed snapshot call made snapshots; the next run looks for them");
            }
        }
    }

    /// Writes the files borg reads (rewritten patterns) into the work
    /// directory, under names zfs-snap owns ([`runtime::is_work_file`]).
    pub fn write_work_files(&mut self, files: &[(PathBuf, String)]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if files.is_empty() {
            return Ok(());
        }
        let dir = self.work_dir();
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::Io {
                    path: dir,
                    source: std::io::Error::other(
                        "not a directory; zfs-snap keeps its pattern files there",
                    ),
                })
            }
            Err(_) => DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?,
        }
        for (path, content) in files {
            debug_assert!(path.starts_with(&dir));
            let io = |source| Error::Io {
                path: path.clone(),
                source,
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path)
                .map_err(io)?;
            self.work_files.push(path.clone());
            file.write_all(content.as_bytes()).map_err(io)?;
        }
        Ok(())
    }

    /// Where [`Session::write_work_files`] puts its files.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join(WORK_DIR)
    }

    /// Creates `target` and its missing parents, remembering each one.
    fn make_dirs(&mut self, target: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut cursor = target;
        loop {
            match std::fs::symlink_metadata(cursor) {
                Ok(meta) if meta.is_dir() => break,
                // A symlink in the mirror would send the mount elsewhere.
                Ok(_) => {
                    return Err(std::io::Error::other(format!(
                        "{} is not a directory",
                        cursor.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            missing.push(cursor.to_owned());
            match cursor.parent() {
                Some(parent) => cursor = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            DirBuilder::new().mode(0o700).create(&dir)?;
            self.dirs.push(dir);
        }
        Ok(())
    }

    fn teardown(&mut self) -> Report {
        let mut report = Report::default();
        for (target, _) in std::mem::take(&mut self.mounted).into_iter().rev() {
            match unmount_patiently(self.mounter, &target) {
                Ok(_) => report.unmounted.push(target),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
        for dir in std::mem::take(&mut self.dirs).into_iter().rev() {
            if let Err(e) = std::fs::remove_dir(&dir) {
                report
                    .problems
                    .push(format!("cannot remove directory {}: {e}", dir.display()));
            }
        }
        let work_files = std::mem::take(&mut self.work_files);
        for file in &work_files {
            if let Err(e) = std::fs::remove_file(file) {
                report
                    .problems
                    .push(format!("cannot remove {}: {e}", file.display()));
            }
        }
        if !work_files.is_empty() {
            // Not empty: someone else's files are there; they stay.
            let _ = std::fs::remove_dir(self.work_dir());
        }
        for point in std::mem::take(&mut self.points).into_iter().rev() {
            for (pool, names) in &point.held {
                if let Err(e) = self.zfs.release_run(pool, &point.name, names) {
                    report.problems.push(format!("releasing holds: {e}"));
                }
            }
            for names in point.maybe_held.values() {
                release_ours(self.zfs, names, &mut report);
            }
            for (pool, names) in point.created {
                match self.zfs.destroy_run(&pool, &point.name, &names) {
                    Ok(()) => report.destroyed.extend(names),
                    Err(e) => {
                        tracing::debug!(error = %e, "batched destroy failed; destroying one by one");
                        destroy_each(self.zfs, &names, &mut report);
                    }
                }
            }
        }
        if !report.deferred.is_empty() {
            tracing::warn!(snapshots = ?report.deferred, "busy snapshots marked for deferred destroy");
        }
        let clean = report.problems.is_empty() && report.deferred.is_empty();
        if clean && !self.uncertain {
            if let Some(boot_id) = &self.boot_id {
                if let Err(e) = runtime::write_clean_mark(&self.root, boot_id, &self.pools) {
                    tracing::debug!(error = %e, "cannot write the clean mark; the next run lists snapshots");
                }
            }
        }
        report
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let report = self.teardown();
        for problem in &report.problems {
            tracing::error!("{problem}");
        }
    }
}

fn dataset_of(snapshot: &str) -> &str {
    snapshot
        .split_once('@')
        .map_or(snapshot, |(dataset, _)| dataset)
}

/// Destroys each snapshot; a busy one is marked for deferred destroy. One
/// that does not exist is gone already (its deferred destroy fired when the
/// last hold was released), which is what was wanted.
fn destroy_each(zfs: &dyn Zfs, names: &[String], report: &mut Report) {
    // "Does not exist" is taken on ZFS's word only: asked again by exact
    // name (a wrapper's own message, or a renamed dataset, is not "gone").
    let gone = |name: &String| {
        zfs.owners(std::slice::from_ref(name))
            .is_ok_and(|found| found.is_empty())
    };
    for name in names {
        match zfs.destroy(name, false) {
            Ok(()) => report.destroyed.push(name.clone()),
            Err(e) if e.says_missing() && gone(name) => {
                tracing::debug!(snapshot = name, "already gone");
                report.destroyed.push(name.clone());
            }
            Err(first) => match zfs.destroy(name, true) {
                Ok(()) => report.deferred.push(name.clone()),
                Err(e) if e.says_missing() && gone(name) => report.destroyed.push(name.clone()),
                Err(_) => report
                    .problems
                    .push(format!("cannot destroy snapshot {name}: {first}")),
            },
        }
    }
}

/// Releases our hold ([`HOLD_TAG`]) on those of `snapshots` (all ours)
/// that carry it, one call per pool; a snapshot gone meanwhile is skipped.
fn release_ours(zfs: &dyn Zfs, snapshots: &[String], report: &mut Report) {
    let holds = match zfs.holds(snapshots) {
        Ok(holds) => holds,
        Err(e) if e.says_missing() => {
            // `zfs holds` fails as a whole when one name is gone: ask again
            // for those that still exist.
            let existing: Vec<String> = match zfs.owners(snapshots) {
                Ok(found) => found.into_iter().map(|s| s.name).collect(),
                Err(e) => {
                    report.problems.push(format!("listing holds: {e}"));
                    return;
                }
            };
            if existing.is_empty() {
                return;
            }
            match zfs.holds(&existing) {
                Ok(holds) => holds,
                Err(e) => {
                    report.problems.push(format!("listing holds: {e}"));
                    return;
                }
            }
        }
        Err(e) => {
            report.problems.push(format!("listing holds: {e}"));
            return;
        }
    };
    let mut held: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (snapshot, tag) in &holds {
        if tag == HOLD_TAG {
            held.entry(pool_of(snapshot))
                .or_default()
                .push(snapshot.clone());
        }
    }
    for names in held.values() {
        if let Err(e) = zfs.release(names) {
            report.problems.push(format!("releasing holds: {e}"));
        }
    }
}

/// Whether `entry` is a ZFS snapshot mounted below one of the mirrors of
/// `root` ([`runtime::is_mirror_dir`]): the only kind of mount zfs-snap
/// makes, and so the only kind it may remove.
fn is_snapshot_mount_in(entry: &MountEntry, root: &Path) -> bool {
    let in_mirror = entry.mount_point.strip_prefix(root).is_ok_and(|rest| {
        let mut parts = rest.components();
        let first = parts.next().and_then(|c| c.as_os_str().to_str());
        first.is_some_and(runtime::is_mirror_dir) && parts.next().is_some()
    });
    entry.fstype == "zfs" && entry.source.contains('@') && entry.root == Path::new("/") && in_mirror
}

/// The mirror directories present in `root`, not through symlinks.
fn mirrors_of(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().is_some_and(runtime::is_mirror_dir))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Removes what dead runs of `root` left, and only what is provably theirs:
/// mounts of snapshots that are ours, below the mirror directory; snapshots
/// whose ownership property is set locally and names this root; the
/// mirror's empty directories and our own files in the work directory.
/// Everything else found under the root is left alone and named in
/// `left_alone`. With `dry_run`, only reports what it would remove.
pub fn recover(
    zfs: &dyn Zfs,
    mounter: &dyn Mounter,
    root: &Path,
    snapshots: &[Snapshot],
    mountinfo_path: &Path,
    dry_run: bool,
) -> Report {
    let mounts = match mountinfo::read(mountinfo_path) {
        Ok(mounts) => mounts,
        Err(e) => {
            return Report {
                problems: vec![e.to_string()],
                ..Report::default()
            }
        }
    };
    let mounts = &mounts[..];
    let mut report = Report::default();
    let mirror = root.join(MIRROR_DIR);
    let root_text = root.display().to_string();
    // Earlier versions wrote the root as given (`/var/run/zfs-snap`, a
    // trailing `/`): those spellings of this root count too.
    let is_ours = |s: &Snapshot| {
        s.owner.as_ref().is_some_and(|o| {
            o.runtime_root == root_text
                || runtime::canonical(Path::new(&o.runtime_root)).is_ok_and(|c| c == root)
        })
    };

    // Mounts: a snapshot mounted in the mirror is ours if the snapshot is,
    // whatever its name (asked of ZFS, so this holds with the clean mark).
    let below: Vec<&MountEntry> = mounts
        .iter()
        .filter(|m| is_below(&m.mount_point, root))
        .collect();
    let mut sources: Vec<String> = below
        .iter()
        .filter(|m| is_snapshot_mount_in(m, root))
        .map(|m| m.source.clone())
        .collect();
    sources.sort();
    sources.dedup();
    let mut ours: Vec<String> = snapshots
        .iter()
        .filter(|s| is_ours(s))
        .map(|s| s.name.clone())
        .collect();
    if !sources.is_empty() {
        match zfs.owners(&sources) {
            Ok(found) => ours.extend(found.into_iter().filter(is_ours).map(|s| s.name)),
            Err(e) => report.problems.push(format!(
                "cannot tell whose snapshots are mounted under {}: {e}",
                mirror.display()
            )),
        }
    }
    ours.sort();
    ours.dedup();
    let mut stale: Vec<&MountEntry> = Vec::new();
    for entry in below {
        if is_snapshot_mount_in(entry, root) && ours.contains(&entry.source) {
            stale.push(entry);
        } else {
            report.left_alone.push(format!(
                "{} ({} {}) is not a mount of zfs-snap's: left alone",
                entry.mount_point.display(),
                entry.fstype,
                entry.source
            ));
        }
    }
    stale.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    let mut still_mounted: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| is_below(&m.mount_point, root))
        .map(|m| m.mount_point.clone())
        .collect();
    for entry in stale {
        if dry_run {
            report.unmounted.push(entry.mount_point.clone());
            continue;
        }
        // umount2 takes the topmost mount at a path, and a busy one is
        // detached with whatever is mounted inside it: go on only when
        // ours is on top and nothing else is inside it, as mounted now.
        if let Some(reason) = not_safe_to_unmount(entry, mountinfo_path) {
            report.left_alone.push(format!(
                "{} ({}) is ours but {reason}: left mounted, unmount it by hand",
                entry.mount_point.display(),
                entry.source
            ));
            report.problems.push(format!(
                "cannot unmount {}: {reason}",
                entry.mount_point.display()
            ));
            continue;
        }
        match unmount_patiently(mounter, &entry.mount_point) {
            Ok(_) => {
                report.unmounted.push(entry.mount_point.clone());
                if let Some(i) = still_mounted.iter().position(|p| p == &entry.mount_point) {
                    still_mounted.remove(i);
                }
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    if !dry_run {
        for mirror in mirrors_of(root) {
            remove_empty_dirs(&mirror, &still_mounted);
            if mirror.exists() {
                report.left_alone.push(format!(
                    "{} holds what zfs-snap did not make ({}): left alone",
                    mirror.display(),
                    sample_entries(&mirror)
                ));
            }
        }
    }
    remove_work_files(&root.join(WORK_DIR), dry_run, &mut report);
    remove_dead_socket(&root.join(crate::shared::SOCKET), dry_run);

    if ours.is_empty() || dry_run {
        report.destroyed.extend(ours);
        return report;
    }
    release_ours(zfs, &ours, &mut report);
    destroy_each(zfs, &ours, &mut report);
    report
}

/// Why unmounting `entry` now could touch someone else's mount, if it could.
fn not_safe_to_unmount(entry: &MountEntry, mountinfo_path: &Path) -> Option<String> {
    let now = match mountinfo::read(mountinfo_path) {
        Ok(now) => now,
        Err(e) => return Some(format!("the mount table cannot be read ({e})")),
    };
    let at: Vec<&MountEntry> = now
        .iter()
        .filter(|m| m.mount_point == entry.mount_point)
        .collect();
    match at.last() {
        Some(top) if top.source == entry.source && top.fstype == "zfs" => {}
        Some(top) => {
            return Some(format!(
                "{} {} is mounted on top of it",
                top.fstype, top.source
            ))
        }
        None => return Some("it is no longer mounted".into()),
    }
    now.iter()
        .find(|m| is_below(&m.mount_point, &entry.mount_point))
        .map(|m| {
            format!(
                "{} ({} {}) is mounted inside it",
                m.mount_point.display(),
                m.fstype,
                m.source
            )
        })
}

/// Removes a dead session's socket (the caller holds the lock, so no
/// session serves on it); anything else of that name is not ours and stays.
fn remove_dead_socket(path: &Path, dry_run: bool) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && !dry_run {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a dead session's socket"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a dead session's socket")
            }
        }
    }
}

/// Removes the files zfs-snap writes in `work` (by name), then `work` if
/// empty; anything else there is someone else's and stays.
fn remove_work_files(work: &Path, dry_run: bool, report: &mut Report) {
    if !std::fs::symlink_metadata(work).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    let mut foreign = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = entry.file_type().is_ok_and(|t| t.is_file())
            && name.to_str().is_some_and(runtime::is_work_file);
        if !ours {
            foreign.push(name.to_string_lossy().into_owned());
        } else if !dry_run {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                report
                    .problems
                    .push(format!("cannot remove {}: {e}", entry.path().display()));
            }
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        report.left_alone.push(format!(
            "{} holds files zfs-snap did not write ({}): left alone",
            work.display(),
            foreign.join(", ")
        ));
    } else if !dry_run {
        let _ = std::fs::remove_dir(work);
    }
}

/// A few paths below `dir`, for a message.
fn sample_entries(dir: &Path) -> String {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            found.push(d.display().to_string());
            continue;
        };
        let mut empty = true;
        for entry in entries.flatten() {
            empty = false;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else {
                found.push(entry.path().display().to_string());
            }
        }
        if empty && d != dir {
            found.push(d.display().to_string());
        }
        if found.len() >= 5 {
            break;
        }
    }
    found.sort();
    found.join(", ")
}

fn is_below(path: &Path, root: &Path) -> bool {
    path != root && path.starts_with(root)
}

/// Each pool's (name, guid), from its root filesystem.
fn pools_of(filesystems: &[Filesystem]) -> Vec<(String, String)> {
    filesystems
        .iter()
        .filter(|f| !f.name.contains('/'))
        .map(|f| (f.name.clone(), f.guid.clone()))
        .collect()
}

/// Removes empty directories below and including `dir`, deepest first,
/// never entering a mount point (another file system is not ours to
/// clear); anything not empty stays.
fn remove_empty_dirs(dir: &Path, mount_points: &[PathBuf]) {
    use std::os::unix::fs::MetadataExt;
    // Never through a symlink, never into another file system or another
    // runtime root (its `lock`).
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !top.is_dir() {
        return;
    }
    fn walk(dir: &Path, dev: u64, mount_points: &[PathBuf]) {
        if mount_points.iter().any(|m| m == dir) || dir.join(runtime::LOCK_FILE).exists() {
            return;
        }
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() && meta.dev() == dev => {}
            _ => return,
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), dev, mount_points);
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    walk(dir, top.dev(), mount_points);
}

const RANDOM_SOURCE: &str = "/dev/urandom";

/// `20261126T033500Z-<pid>-<16 hex digits>`: sortable and readable, and
/// unpredictable, because `zfs hold -r`/`destroy -r pool@name` act on every
/// snapshot of that name in the pool: one made beforehand under a guessed
/// name would be held and destroyed with ours.
/// 64 random bits, as 16 hex digits.
pub(crate) fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut random = [0u8; 8];
    std::fs::File::open(RANDOM_SOURCE)?.read_exact(&mut random)?;
    Ok(format!("{:016x}", u64::from_le_bytes(random)))
}

fn new_run_id() -> std::io::Result<String> {
    let random = random_hex()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    Ok(format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z-{}-{random}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        std::process::id(),
    ))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn run_id_shape_and_unpredictable_part() {
        let id = new_run_id().unwrap();
        assert_eq!(&id[8..9], "T");
        let (stamp, random) = id.rsplit_once('-').unwrap();
        assert!(
            stamp.ends_with(&format!("Z-{}", std::process::id())),
            "{id}"
        );
        assert_eq!(random.len(), 16, "{id}");
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_ne!(new_run_id().unwrap(), id, "two runs in one second differ");
    }
}
