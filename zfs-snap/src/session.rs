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
use crate::runtime::{self, Lock};
use crate::zfs::{pool_of, Filesystem, Owner, Search, Snapshot, Zfs, HOLD_TAG, SNAPSHOT_PREFIX};

pub struct Options {
    pub runtime_root: PathBuf,
    pub wait: Option<Duration>,
    pub mountinfo: PathBuf,
}

/// What a recovery pass or teardown removed, and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub unmounted: Vec<PathBuf>,
    pub destroyed: Vec<String>,
    pub deferred: Vec<String>,
    pub problems: Vec<String>,
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
    /// Created snapshots, by pool.
    created: BTreeMap<String, Vec<String>>,
    /// Held snapshots, by pool.
    held: BTreeMap<String, Vec<String>>,
    /// Mount targets, in the order mounted.
    mounted: Vec<PathBuf>,
    /// Directories we created, in the order created.
    dirs: Vec<PathBuf>,
    work_dir: Option<PathBuf>,
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
        let run_id = new_run_id();
        let owner = Owner {
            run_id: run_id.clone(),
            runtime_root: root.display().to_string(),
        };
        let filesystems = zfs.filesystems()?;
        let pools = pools_of(&filesystems);
        let mut mounts = mountinfo::read(&options.mountinfo)?;
        let boot_id = runtime::boot_id();
        let clean = runtime::take_clean_mark(&root, boot_id.as_deref(), &pools)
            && !mounts.iter().any(|m| is_below(&m.mount_point, &root));
        let snapshots = if clean {
            tracing::debug!("the last run left nothing behind: not listing snapshots");
            Vec::new()
        } else {
            zfs.our_snapshots(Search::Named)?
        };
        let recovered = recover(zfs, mounter, &root, &snapshots, &mounts, false);
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
            created: BTreeMap::new(),
            held: BTreeMap::new(),
            mounted: Vec::new(),
            dirs: Vec::new(),
            work_dir: None,
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

    pub fn snapshot_name(&self) -> &str {
        &self.snapshot_name
    }

    pub fn mountinfo_path(&self) -> &Path {
        &self.mountinfo_path
    }

    /// Snapshots every planned dataset (one atomic call per pool), holds
    /// them and mounts them in the mirror. `interrupted` is asked between
    /// steps; a signal stops the run before borg starts.
    pub fn freeze(&mut self, plan: &Plan, interrupted: &dyn Fn() -> Option<i32>) -> Result<()> {
        let check = || match interrupted() {
            Some(signal) => Err(Error::Interrupted { signal }),
            None => Ok(()),
        };
        let by_pool = plan.snapshots_by_pool(&self.snapshot_name);
        if by_pool.len() > 1 {
            tracing::info!(
                pools = by_pool.len(),
                "datasets span several pools: each pool's snapshot is atomic, but ZFS cannot make them atomic across pools"
            );
        }
        self.timings.pools = by_pool.len();
        self.timings.datasets = plan.mounts.len();
        let started = Instant::now();
        for (pool, names) in &by_pool {
            check()?;
            // Until the call returns, it may have made the snapshots (a
            // signal can kill `zfs` after the kernel did): while in doubt,
            // teardown must not vouch for a clean state.
            let in_doubt = std::mem::replace(&mut self.uncertain, true);
            self.zfs.snapshot(names, &self.owner)?;
            self.uncertain = in_doubt;
            self.created.insert(pool.clone(), names.clone());
            tracing::info!(pool, snapshots = names.len(), name = %self.snapshot_name, "snapshot taken");
        }
        self.timings.snapshot_ms = ms(started);
        let started = Instant::now();
        for (pool, names) in &by_pool {
            check()?;
            self.zfs.hold_run(pool, &self.snapshot_name, names)?;
            self.held.insert(pool.clone(), names.clone());
        }
        self.timings.hold_ms = ms(started);
        let started = Instant::now();
        for planned in &plan.mounts {
            check()?;
            let target = &planned.snapshot_mountpoint;
            self.make_dirs(target).map_err(|e| Error::Mount {
                snapshot: format!("{}@{}", planned.dataset, self.snapshot_name),
                target: target.clone(),
                reason: format!(
                    "cannot create the mountpoint: {e} (is it inside a read-only snapshot \
                     whose dataset has no such directory?)"
                ),
            })?;
            let snapshot = format!("{}@{}", planned.dataset, self.snapshot_name);
            self.mounter.mount(&snapshot, target)?;
            self.mounted.push(target.clone());
            tracing::debug!(snapshot, target = %target.display(), "mounted");
        }
        self.timings.mount_ms = ms(started);
        check()
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

    /// A private directory for files borg reads (rewritten patterns).
    pub fn work_dir(&mut self) -> Result<PathBuf> {
        if let Some(dir) = &self.work_dir {
            return Ok(dir.clone());
        }
        let dir = self.root.join("work");
        let _ = std::fs::remove_dir_all(&dir);
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        self.work_dir = Some(dir.clone());
        Ok(dir)
    }

    /// Creates `target` and its missing parents, remembering each one.
    fn make_dirs(&mut self, target: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut cursor = target;
        while !cursor.exists() {
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
        for target in std::mem::take(&mut self.mounted).into_iter().rev() {
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
        if let Some(dir) = self.work_dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                report
                    .problems
                    .push(format!("cannot remove {}: {e}", dir.display()));
            }
        }
        for (pool, names) in std::mem::take(&mut self.held) {
            if let Err(e) = self.zfs.release_run(&pool, &self.snapshot_name, &names) {
                report.problems.push(format!("releasing holds: {e}"));
            }
        }
        for (pool, names) in std::mem::take(&mut self.created) {
            match self.zfs.destroy_run(&pool, &self.snapshot_name, &names) {
                Ok(()) => report.destroyed.extend(names),
                Err(e) => {
                    tracing::debug!(error = %e, "batched destroy failed; destroying one by one");
                    destroy_each(self.zfs, &names, &mut report);
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

/// Destroys each snapshot; a busy one is marked for deferred destroy.
fn destroy_each(zfs: &dyn Zfs, names: &[String], report: &mut Report) {
    for name in names {
        match zfs.destroy(name, false) {
            Ok(()) => report.destroyed.push(name.clone()),
            Err(first) => match zfs.destroy(name, true) {
                Ok(()) => report.deferred.push(name.clone()),
                Err(_) => report
                    .problems
                    .push(format!("cannot destroy snapshot {name}: {first}")),
            },
        }
    }
}

/// Removes what dead runs of `root` left: mounts under it, the mirror's
/// directories, and snapshots whose ownership property names this root.
/// Never touches a snapshot without our property. With `dry_run`, only
/// reports what it would remove.
pub fn recover(
    zfs: &dyn Zfs,
    mounter: &dyn Mounter,
    root: &Path,
    snapshots: &[Snapshot],
    mounts: &[MountEntry],
    dry_run: bool,
) -> Report {
    let mut report = Report::default();
    let mut stale: Vec<&MountEntry> = mounts
        .iter()
        .filter(|m| is_below(&m.mount_point, root))
        .collect();
    stale.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for entry in stale {
        if dry_run {
            report.unmounted.push(entry.mount_point.clone());
            continue;
        }
        match unmount_patiently(mounter, &entry.mount_point) {
            Ok(_) => report.unmounted.push(entry.mount_point.clone()),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    if !dry_run {
        remove_empty_dirs(&root.join("snap"));
        let _ = std::fs::remove_dir_all(root.join("work"));
    }

    let root_text = root.display().to_string();
    let ours: Vec<&String> = snapshots
        .iter()
        .filter(|s| {
            s.owner
                .as_ref()
                .is_some_and(|o| o.runtime_root == root_text)
        })
        .map(|s| &s.name)
        .collect();
    if ours.is_empty() {
        return report;
    }
    if dry_run {
        report.destroyed.extend(ours.into_iter().cloned());
        return report;
    }
    let ours: Vec<String> = ours.into_iter().cloned().collect();
    match zfs.holds(&ours) {
        Ok(holds) => {
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
        Err(e) => report.problems.push(format!("listing holds: {e}")),
    }
    destroy_each(zfs, &ours, &mut report);
    report
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

/// Removes empty directories below and including `dir`, deepest first;
/// anything not empty (a mount we could not remove, say) stays.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `20261126T033500Z-<pid>`: sortable, readable, unique on a host.
fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        std::process::id()
    )
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
    fn run_id_shape() {
        let id = new_run_id();
        assert_eq!(&id[8..9], "T");
        assert!(id.ends_with(&format!("Z-{}", std::process::id())), "{id}");
    }
}
