//! A run's lifecycle: lock, recover what dead runs left, snapshot, hold,
//! mount; and teardown, which runs whatever happens (success, error,
//! signal, panic) because [`Run`] owns everything it created and releases
//! it on drop. [`Run::finish`] does the same and reports.

use std::collections::BTreeMap;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::mount::{unmount_patiently, Mounter};
use crate::mountinfo::{self, MountEntry};
use crate::plan::Plan;
use crate::private::{self, RANDOM_SOURCE};
use crate::recover::{is_snapshot_mount_in, recover};
use crate::release::{destroy_point, release_ours};
use crate::report::{Report, Timings};
use crate::runtime::{self, Lock, Options, WORK_DIR};
use crate::zfs::{Filesystem, Owner, Search, Zfs, SNAPSHOT_PREFIX};

/// A run holding the lock on its runtime root.
pub struct Run<'a> {
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
    /// What this run mounted, in the order mounted.
    mounted: Vec<Mounted>,
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
    /// Why a freeze failed, if one did.
    broken: Option<String>,
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

/// A mount made in the mirror: `snapshot` at `target`, or, for a bind
/// mount, the directory `from` of its mirror mount.
#[derive(Clone)]
struct Mounted {
    target: PathBuf,
    snapshot: String,
    from: Option<PathBuf>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl<'a> Run<'a> {
    /// Prepares the runtime root, takes its lock and removes what dead runs
    /// left behind. Returns the run with a fresh look at ZFS's
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
    ) -> Result<(Run<'a>, Vec<Filesystem>, Vec<MountEntry>, Report)> {
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
        let run = Run {
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
            broken: None,
            timings: Timings {
                backend: zfs.backend().to_owned(),
                ..Timings::default()
            },
            _lock: lock,
        };
        Ok((run, filesystems, mounts, recovered))
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
    /// A freeze that failed leaves the run broken ([`Run::freeze_failure`]):
    /// a snapshot may be made but not held or mounted, so none of its
    /// snapshots is to be read.
    pub fn freeze(&mut self, plan: &Plan, interrupted: &dyn Fn() -> Option<i32>) -> Result<()> {
        let result = self.freeze_points(plan, interrupted);
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }

    /// Why this run's snapshots are not to be read: an earlier freeze failed.
    pub fn freeze_failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn freeze_points(&mut self, plan: &Plan, interrupted: &dyn Fn() -> Option<i32>) -> Result<()> {
        let check = || match interrupted() {
            Some(signal) => Err(Error::Interrupted { signal }),
            None => Ok(()),
        };
        let name = self.next_point_name()?;
        let by_pool = self.not_frozen_yet(plan, &name);
        if !by_pool.is_empty() {
            self.points.push(Point {
                name: name.clone(),
                ..Point::default()
            });
        }
        let started = Instant::now();
        self.snapshot_pools(&by_pool, &name, &check)?;
        self.timings.snapshot_ms += ms(started);
        let started = Instant::now();
        self.hold_pools(&by_pool, &name, &check)?;
        self.timings.hold_ms += ms(started);
        let started = Instant::now();
        self.mount_planned(plan, &check)?;
        self.timings.mount_ms += ms(started);
        check()
    }

    /// The name of the next point: the run's snapshot name for the first;
    /// a later one is as unguessable (someone who saw the first in `zfs
    /// list` must not be able to make the next).
    fn next_point_name(&self) -> Result<String> {
        Ok(match self.points.len() {
            0 => self.snapshot_name.clone(),
            n => format!(
                "{}.{}-{}",
                self.snapshot_name,
                n + 1,
                private::random_hex().map_err(|source| Error::Io {
                    path: PathBuf::from(RANDOM_SOURCE),
                    source,
                })?
            ),
        })
    }

    /// The snapshots `plan` needs that this run has not made yet, by pool,
    /// all called `name`; counted in the timings.
    fn not_frozen_yet(&mut self, plan: &Plan, name: &str) -> BTreeMap<String, Vec<String>> {
        let mut by_pool = plan.snapshots_by_pool(name);
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
        by_pool
    }

    /// One atomic snapshot call per pool.
    fn snapshot_pools(
        &mut self,
        by_pool: &BTreeMap<String, Vec<String>>,
        name: &str,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        for (pool, names) in by_pool {
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
        Ok(())
    }

    /// One hold call per pool; a snapshot counts as frozen, for later
    /// creates, once held.
    fn hold_pools(
        &mut self,
        by_pool: &BTreeMap<String, Vec<String>>,
        name: &str,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        for (pool, names) in by_pool {
            check()?;
            if let Err(e) = self.zfs.hold_run(pool, name, names) {
                self.point().maybe_held.insert(pool.clone(), names.clone());
                return Err(e);
            }
            self.point().held.insert(pool.clone(), names.clone());
            for snapshot in names {
                self.frozen
                    .insert(dataset_of(snapshot).to_owned(), snapshot.clone());
            }
        }
        Ok(())
    }

    /// Mounts each planned snapshot not mounted yet in the mirror, in the
    /// plan's order (a bind after its source).
    fn mount_planned(&mut self, plan: &Plan, check: &dyn Fn() -> Result<()>) -> Result<()> {
        let earlier = self.mounted.len();
        for planned in &plan.mounts {
            check()?;
            let target = &planned.snapshot_mountpoint;
            if self.mounted.iter().any(|m| &m.target == target) {
                continue;
            }
            self.mount_at(Mounted {
                target: target.clone(),
                snapshot: self.frozen[&planned.dataset].clone(),
                from: planned.bind.as_ref().map(|b| b.from.clone()),
            })?;
        }
        // A snapshot mounted now above an earlier mount (the parent's, in a
        // later point) hides it: mount the earlier one again on top.
        let fresh: Vec<PathBuf> = self.mounted[earlier..]
            .iter()
            .map(|m| m.target.clone())
            .collect();
        let hidden: Vec<Mounted> = self.mounted[..earlier]
            .iter()
            .filter(|m| {
                fresh
                    .iter()
                    .any(|f| m.target != *f && m.target.starts_with(f))
            })
            .cloned()
            .collect();
        for mount in hidden {
            check()?;
            self.mount_at(mount)?;
        }
        Ok(())
    }

    fn mount_at(&mut self, mount: Mounted) -> Result<()> {
        let Mounted {
            target,
            snapshot,
            from,
        } = &mount;
        self.make_dirs(target).map_err(|e| Error::Mount {
            snapshot: snapshot.clone(),
            target: target.clone(),
            reason: format!(
                "cannot create the mountpoint: {e} (is it inside a read-only snapshot \
                 whose dataset has no such directory?)"
            ),
        })?;
        match from {
            Some(from) => self.mounter.bind(snapshot, from, target)?,
            None => self.mounter.mount(snapshot, target)?,
        }
        tracing::debug!(snapshot, target = %target.display(), from = ?from, "mounted");
        self.mounted.push(mount);
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
            // Remembered once opened (the file is then ours) and before it
            // is written (a file half written is still removed); never
            // when the open failed (a symlink or a directory of someone
            // else's at the name stays).
            let mut file = private::open_own_file(path).map_err(io)?;
            if !self.work_files.contains(path) {
                self.work_files.push(path.clone());
            }
            std::io::Write::write_all(&mut file, content.as_bytes()).map_err(io)?;
        }
        Ok(())
    }

    /// Where [`Run::write_work_files`] puts its files.
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
        for Mounted { target, .. } in std::mem::take(&mut self.mounted).into_iter().rev() {
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
                destroy_point(self.zfs, &pool, &point.name, names, &mut report);
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

impl Drop for Run<'_> {
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

/// Each pool's (name, guid), from its root filesystem.
fn pools_of(filesystems: &[Filesystem]) -> Vec<(String, String)> {
    filesystems
        .iter()
        .filter(|f| !f.name.contains('/'))
        .map(|f| (f.name.clone(), f.guid.clone()))
        .collect()
}

/// `20261126T033500Z-<pid>-<16 hex digits>`: sortable and readable, and
/// unpredictable, because `zfs hold -r`/`destroy -r pool@name` act on every
/// snapshot of that name in the pool: one made beforehand under a guessed
/// name would be held and destroyed with ours.
fn new_run_id() -> std::io::Result<String> {
    let random = private::random_hex()?;
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
