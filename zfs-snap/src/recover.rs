//! Recovery: removing what dead runs of a runtime root left behind (their
//! mounts, snapshots, directories, pattern files, socket), and only what is
//! provably theirs; `zfs-snap cleanup` ([`cleanup`]) runs it on request.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mount::{unmount_patiently, Mounter};
use crate::mountinfo::{self, MountEntry};
use crate::release::{destroy_each, release_ours};
use crate::report::Report;
use crate::runtime::{self, Options, MIRROR_DIR, SOCKET, WORK_DIR};
use crate::zfs::{Search, Snapshot, Zfs};

/// Whether `entry` is a ZFS snapshot mounted below one of the mirrors of
/// `root` ([`runtime::is_mirror_dir`]): the only kind of mount zfs-snap
/// makes, and so the only kind it may remove. A bind of a directory of a
/// snapshot (mountinfo root other than `/`) counts: it shows as a `zfs`
/// mount with the snapshot's name as its source, and zfs-snap makes those
/// for bind mounts of datasets. Whose snapshot it is, ZFS says.
pub(crate) fn is_snapshot_mount_in(entry: &MountEntry, root: &Path) -> bool {
    let in_mirror = entry.mount_point.strip_prefix(root).is_ok_and(|rest| {
        let mut parts = rest.components();
        let first = parts.next().and_then(|c| c.as_os_str().to_str());
        first.is_some_and(runtime::is_mirror_dir) && parts.next().is_some()
    });
    entry.fstype == "zfs" && entry.source.contains('@') && in_mirror
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
    let mut report = Report::default();
    let below: Vec<&MountEntry> = mounts
        .iter()
        .filter(|m| is_below(&m.mount_point, root))
        .collect();
    let ours = ours_among(zfs, root, snapshots, &below, &mut report);
    let still_mounted = unmount_ours(
        mounter,
        root,
        &below,
        &ours,
        mountinfo_path,
        dry_run,
        &mut report,
    );
    if !dry_run {
        clear_mirrors(root, &still_mounted, &mut report);
    }
    remove_work_files(&root.join(WORK_DIR), dry_run, &mut report);
    remove_dead_socket(&root.join(SOCKET), dry_run);
    if ours.is_empty() || dry_run {
        report.destroyed.extend(ours);
        return report;
    }
    release_ours(zfs, &ours, &mut report);
    destroy_each(zfs, &ours, &mut report);
    report
}

/// The snapshots of `root`'s dead runs: those listed whose ownership names
/// this root, and those mounted in its mirror that ZFS says are ours
/// (asked by name, so this holds with the clean mark, whatever the name).
fn ours_among(
    zfs: &dyn Zfs,
    root: &Path,
    snapshots: &[Snapshot],
    below: &[&MountEntry],
    report: &mut Report,
) -> Vec<String> {
    let root_text = root.display().to_string();
    // Earlier versions wrote the root as given (`/var/run/zfs-snap`, a
    // trailing `/`): those spellings of this root count too.
    let is_ours = |s: &Snapshot| {
        s.owner.as_ref().is_some_and(|o| {
            o.runtime_root == root_text
                || runtime::canonical(Path::new(&o.runtime_root)).is_ok_and(|c| c == root)
        })
    };
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
                root.join(MIRROR_DIR).display()
            )),
        }
    }
    ours.sort();
    ours.dedup();
    ours
}

/// Unmounts, deepest first, the mounts below `root` of snapshots in
/// `ours`; names every other mount there as left alone. Returns the mount
/// points still mounted below `root`.
fn unmount_ours(
    mounter: &dyn Mounter,
    root: &Path,
    below: &[&MountEntry],
    ours: &[String],
    mountinfo_path: &Path,
    dry_run: bool,
    report: &mut Report,
) -> Vec<PathBuf> {
    let mut stale: Vec<&MountEntry> = Vec::new();
    for &entry in below {
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
    let mut still_mounted: Vec<PathBuf> = below.iter().map(|m| m.mount_point.clone()).collect();
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
    still_mounted
}

/// Removes the mirrors' empty directories; names what else is there.
fn clear_mirrors(root: &Path, still_mounted: &[PathBuf], report: &mut Report) {
    for mirror in mirrors_of(root) {
        remove_empty_dirs(&mirror, still_mounted);
        if mirror.exists() {
            report.left_alone.push(format!(
                "{} holds what zfs-snap did not make ({}): left alone",
                mirror.display(),
                sample_entries(&mirror)
            ));
        }
    }
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

/// `zfs-snap cleanup`: removes what dead runs of this runtime root left
/// behind (with `dry_run`, only says what it would remove).
pub fn cleanup(
    zfs: &dyn Zfs,
    mounter: &dyn Mounter,
    options: &Options,
    dry_run: bool,
) -> Result<Report> {
    let root = runtime::prepare(&options.runtime_root)?;
    let _lock = runtime::lock(&root, options.wait)?;
    // Always a full look, whatever the names: cleanup is what a user runs
    // when something is off. The next run looks again too.
    if !dry_run {
        runtime::forget_clean_mark(&root);
    }
    let snapshots = zfs.our_snapshots(Search::Everywhere)?;
    let report = recover(zfs, mounter, &root, &snapshots, &options.mountinfo, dry_run);
    for thing in &report.left_alone {
        tracing::warn!("{thing}");
    }
    if report.problems.is_empty() {
        Ok(report)
    } else {
        Err(Error::Teardown {
            problems: report.problems,
        })
    }
}
