//! Freeze, teardown, recovery and release over the in-memory doubles,
//! failure paths included: whatever fails, nothing of ours is left and
//! nothing of anyone else's is touched.

use std::path::{Path, PathBuf};

use super::doubles::{Fail, MemoryMounter, MemoryZfs};
use crate::error::Error;
use crate::lifecycle::Run;
use crate::mapping::Mapping;
use crate::plan::{Plan, PlannedBind, PlannedMount};
use crate::recover::cleanup;
use crate::release::{destroy_each, release_ours};
use crate::report::Report;
use crate::runtime::{self, Options};
use crate::zfs::{pool_of, HOLD_TAG};

/// A runtime root, a mount table and the two doubles.
struct Host {
    _dir: tempfile::TempDir,
    options: Options,
    root: PathBuf,
    zfs: MemoryZfs,
    mounter: MemoryMounter,
}

const DATASETS: &[&str] = &["tank", "tank/data", "tank/data/db", "rpool", "rpool/home"];

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let mountinfo = base.join("mountinfo");
        let options = Options {
            runtime_root: base.join("run/zfs-snap"),
            wait: None,
            mountinfo: mountinfo.clone(),
        };
        let root = runtime::prepare(&options.runtime_root).unwrap();
        Host {
            _dir: dir,
            options,
            root,
            zfs: MemoryZfs::with(DATASETS),
            mounter: MemoryMounter::new(&mountinfo),
        }
    }

    fn begin(&self) -> Run<'_> {
        let (run, _, _, recovered) = Run::begin(&self.zfs, &self.mounter, &self.options).unwrap();
        assert_eq!(recovered, Report::default(), "nothing to recover");
        run
    }

    /// A plan that snapshots `datasets`, each mounted at `/<name>`.
    fn plan(&self, datasets: &[&str]) -> Plan {
        let mapping = Mapping::new(&self.root);
        Plan {
            snapshot_root: mapping.snapshot_root().to_owned(),
            one_file_system: false,
            mounts: datasets
                .iter()
                .map(|d| PlannedMount {
                    dataset: (*d).to_owned(),
                    pool: pool_of(d).to_owned(),
                    mountpoint: PathBuf::from(format!("/{d}")),
                    snapshot_mountpoint: mapping.to_snapshot(Path::new(&format!("/{d}"))),
                    reason: "test".into(),
                    bind: None,
                })
                .collect(),
            roots: Vec::new(),
            extra_roots: Vec::new(),
            live_exclusions: Vec::new(),
            special_exclusions: Vec::new(),
            boundaries: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Nothing of ours is left: no snapshot, no mount, no directory in the
    /// mirror; and what others had is as it was.
    fn assert_clean(&self, others: &[&str]) {
        assert_eq!(self.zfs.names(), others, "snapshots left");
        assert!(
            self.mounter.mounted().is_empty(),
            "{:?}",
            self.mounter.mounted()
        );
        assert!(!self.root.join("snap").exists(), "mirror left");
        assert!(!self.root.join("work").exists(), "work files left");
    }

    fn clean_mark(&self) -> bool {
        self.root.join("clean").exists()
    }
}

fn never() -> Option<i32> {
    None
}

#[test]
fn freeze_snapshots_each_pool_once_holds_and_mounts_and_finish_removes_all() {
    let host = Host::new();
    let mut run = host.begin();
    let plan = host.plan(&["tank/data", "tank/data/db", "rpool/home"]);
    run.freeze(&plan, &never).unwrap();

    let snapshots = host.zfs.snapshots();
    assert_eq!(snapshots.len(), 3);
    let name = run.snapshot_name().to_owned();
    for (snapshot, state) in &snapshots {
        assert!(snapshot.ends_with(&format!("@{name}")), "{snapshot}");
        assert!(state.holds.contains(HOLD_TAG), "{snapshot} held");
        let owner = state.owner.as_deref().unwrap();
        assert!(
            owner.ends_with(&format!(":{}", host.root.display())),
            "{owner}"
        );
    }
    let calls = host.zfs.calls();
    let snapshot_calls: Vec<_> = calls.iter().filter(|c| c.starts_with("snapshot")).collect();
    assert_eq!(
        snapshot_calls.len(),
        2,
        "one atomic call per pool: {calls:?}"
    );
    assert_eq!(host.mounter.mounted().len(), 3);
    // Parents are mounted before their children.
    assert!(host.mounter.mounted()[0].0.ends_with("tank/data"));

    let (report, timings) = run.finish();
    let report = report.unwrap();
    assert_eq!(report.destroyed.len(), 3);
    assert_eq!(report.unmounted.len(), 3);
    assert!(
        report.unmounted[0].ends_with("rpool/home"),
        "deepest last mounted, first unmounted"
    );
    assert_eq!((timings.pools, timings.datasets), (2, 3));
    assert_eq!(timings.backend, "memory");
    host.assert_clean(&[]);
    assert!(host.clean_mark(), "a clean teardown marks the root clean");
}

#[test]
fn a_run_dropped_without_finish_still_tears_down() {
    let host = Host::new();
    {
        let mut run = host.begin();
        run.freeze(&host.plan(&["tank/data", "rpool/home"]), &never)
            .unwrap();
        run.write_work_files(&[(
            run.work_dir().join("zfs-snap-patterns.lst"),
            "R /x\n".into(),
        )])
        .unwrap();
        assert!(run.work_dir().join("zfs-snap-patterns.lst").exists());
        // Dropped here, as on an error return or a panic.
    }
    host.assert_clean(&[]);
}

#[test]
fn a_failed_mount_tears_down_what_was_made_and_breaks_the_run() {
    let host = Host::new();
    host.mounter.fail_mount(1);
    let mut run = host.begin();
    let err = run
        .freeze(
            &host.plan(&["tank/data", "tank/data/db", "rpool/home"]),
            &never,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Mount { .. }), "{err}");
    assert!(run.freeze_failure().unwrap().contains("injected failure"));
    let (report, _) = run.finish();
    assert_eq!(report.unwrap().destroyed.len(), 3);
    host.assert_clean(&[]);
}

#[test]
fn a_signal_between_steps_stops_the_freeze_and_nothing_is_left() {
    for after_calls in 0..4 {
        let host = Host::new();
        let mut run = host.begin();
        let asked = std::cell::Cell::new(0);
        let interrupted = || {
            asked.set(asked.get() + 1);
            (asked.get() > after_calls).then_some(15)
        };
        let err = run
            .freeze(&host.plan(&["tank/data", "rpool/home"]), &interrupted)
            .unwrap_err();
        assert!(matches!(err, Error::Interrupted { signal: 15 }), "{err}");
        drop(run);
        host.assert_clean(&[]);
    }
}

#[test]
fn snapshots_made_by_a_failed_snapshot_call_are_adopted_and_removed() {
    let host = Host::new();
    host.zfs.fail("snapshot", Fail::After);
    let mut run = host.begin();
    assert!(run.freeze(&host.plan(&["tank/data"]), &never).is_err());
    assert_eq!(host.zfs.names().len(), 1, "the call made it");
    let (report, _) = run.finish();
    assert_eq!(report.unwrap().destroyed.len(), 1);
    host.assert_clean(&[]);
    assert!(host.clean_mark(), "adopted: the run knows its snapshots");
}

#[test]
fn when_zfs_cannot_say_what_a_failed_call_made_the_next_run_finds_it() {
    let host = Host::new();
    host.zfs.fail("snapshot", Fail::After);
    host.zfs.fail("get-owner", Fail::Before);
    {
        let mut run = host.begin();
        assert!(run.freeze(&host.plan(&["tank/data"]), &never).is_err());
        let (report, _) = run.finish();
        report.unwrap();
    }
    assert_eq!(host.zfs.names().len(), 1, "left for the next run");
    assert!(!host.clean_mark(), "in doubt: no clean mark");
    let (run, _, _, recovered) = Run::begin(&host.zfs, &host.mounter, &host.options).unwrap();
    assert_eq!(recovered.destroyed.len(), 1);
    drop(run);
    host.assert_clean(&[]);
}

#[test]
fn holds_placed_by_a_failed_hold_call_are_released() {
    let host = Host::new();
    host.zfs.fail("hold", Fail::After);
    let mut run = host.begin();
    assert!(run
        .freeze(&host.plan(&["tank/data", "tank/data/db"]), &never)
        .is_err());
    let (report, _) = run.finish();
    assert_eq!(report.unwrap().destroyed.len(), 2);
    host.assert_clean(&[]);
}

#[test]
fn a_snapshot_someone_else_holds_gets_a_deferred_destroy() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&host.plan(&["tank/data", "tank/data/db"]), &never)
        .unwrap();
    let held = format!("tank/data@{}", run.snapshot_name());
    host.zfs.hold(&held, "sanoid");
    let (report, _) = run.finish();
    let report = report.unwrap();
    assert_eq!(report.deferred, vec![held.clone()]);
    assert_eq!(report.destroyed.len(), 1);
    assert!(!host.clean_mark(), "a deferred destroy is not clean");
    assert!(host.zfs.snapshots()[&held].defer_destroy);
    host.zfs.release_theirs(&held, "sanoid");
    host.assert_clean(&[]);
}

#[test]
fn a_busy_mount_is_retried_then_unmounted() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&host.plan(&["tank/data"]), &never).unwrap();
    let target = host.mounter.mounted()[0].0.clone();
    host.mounter.busy(&target, 2);
    let (report, _) = run.finish();
    report.unwrap();
    let tries: Vec<_> = host.mounter.unmount_calls.borrow().clone();
    assert_eq!(tries.len(), 3, "{tries:?}");
    assert!(tries.iter().all(|(_, lazy)| !lazy));
    host.assert_clean(&[]);
}

#[test]
fn a_failed_teardown_step_is_reported_and_the_rest_still_happens() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&host.plan(&["tank/data", "rpool/home"]), &never)
        .unwrap();
    host.zfs.fail("release", Fail::Before);
    let (report, _) = run.finish();
    let Err(Error::Teardown { problems }) = report else {
        panic!("a release that failed is a problem");
    };
    assert!(
        problems.iter().any(|p| p.contains("releasing holds")),
        "{problems:?}"
    );
    assert!(
        host.mounter.mounted().is_empty(),
        "every mount still removed"
    );
    assert!(!host.clean_mark());
    // The next run finds the held snapshot and removes it.
    let (_run, _, _, recovered) = Run::begin(&host.zfs, &host.mounter, &host.options).unwrap();
    assert_eq!(recovered.destroyed.len(), 1, "{recovered:?}");
    assert_eq!(host.zfs.names(), Vec::<String>::new());
}

#[test]
fn a_later_point_freezes_only_new_datasets_and_remounts_hidden_mounts() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&host.plan(&["tank/data/db"]), &never).unwrap();
    // A later create needs the parent: it is frozen now, under a name of
    // its own, and mounted over the child's mirror directory, so the
    // child's snapshot is mounted again on top.
    run.freeze(&host.plan(&["tank/data", "tank/data/db"]), &never)
        .unwrap();
    let names = host.zfs.names();
    assert_eq!(names.len(), 2);
    let first = run.snapshot_name().to_owned();
    let later: Vec<_> = names.iter().filter(|n| !n.ends_with(&first)).collect();
    assert_eq!(later.len(), 1);
    assert!(later[0].starts_with("tank/data@") && later[0].contains(&format!("{first}.2-")));
    let mounted = host.mounter.mounted();
    assert_eq!(mounted.len(), 3, "{mounted:?}");
    assert_eq!(
        mounted[2].1,
        format!("tank/data/db@{first}"),
        "remounted on top"
    );
    let (report, _) = run.finish();
    assert_eq!(report.unwrap().destroyed.len(), 2);
    host.assert_clean(&[]);
}

#[test]
fn recovery_removes_only_what_is_provably_ours() {
    let host = Host::new();
    let root = host.root.display().to_string();
    let ours = "tank/data@zfs-snap-20260101T000000Z-1-0123456789abcdef";
    let renamed = "tank@renamed-by-someone";
    let foreign = [
        "tank/data@borgmatic-1234",
        "tank/data@autosnap_2026-01-01_00:00:00_daily",
        // Named like ours, but another root's, or not set locally.
        "rpool/home@zfs-snap-20260101T000000Z-2-fedcba9876543210",
        "rpool@zfs-snap-inherited",
    ];
    host.zfs.add_snapshot(
        ours,
        Some(&format!("20260101T000000Z-1-0123456789abcdef:{root}")),
    );
    host.zfs.hold(ours, HOLD_TAG);
    host.zfs.add_snapshot(renamed, Some(&format!("x:{root}")));
    host.zfs.add_snapshot(foreign[0], None);
    host.zfs.add_snapshot(foreign[1], None);
    host.zfs.add_snapshot(foreign[2], Some("y:/run/other-root"));
    host.zfs.add_snapshot(foreign[3], None);
    host.zfs.hold(foreign[1], "sanoid");
    let mirror = Mapping::new(&host.root).to_snapshot(Path::new("/tank/data"));
    std::fs::create_dir_all(&mirror).unwrap();
    host.mounter.add_snapshot_mount(&mirror, ours);
    let theirs = host.root.join("snap/elsewhere");
    std::fs::create_dir_all(&theirs).unwrap();
    host.mounter.add_foreign(&theirs, "tmpfs", "tmpfs");
    // A renamed snapshot of ours, mounted in the mirror, is found by asking
    // ZFS whose it is.
    let renamed_at = Mapping::new(&host.root).to_snapshot(Path::new("/tank"));
    host.mounter.add_snapshot_mount(&renamed_at, renamed);

    let (run, _, _, recovered) = Run::begin(&host.zfs, &host.mounter, &host.options).unwrap();
    drop(run);
    let mut destroyed = recovered.destroyed.clone();
    destroyed.sort();
    assert_eq!(destroyed, vec![ours.to_owned(), renamed.to_owned()]);
    assert_eq!(recovered.unmounted.len(), 2);
    let mut left = foreign.map(str::to_owned).to_vec();
    left.sort();
    assert_eq!(host.zfs.names(), left, "others' snapshots untouched");
    assert!(host.zfs.snapshots()[foreign[1]].holds.contains("sanoid"));
    assert_eq!(
        host.mounter.mounted(),
        vec![(theirs.clone(), "tmpfs".to_owned())],
        "a foreign mount stays"
    );
    assert!(
        recovered.left_alone.iter().any(|l| l.contains("tmpfs")),
        "{:?}",
        recovered.left_alone
    );
}

/// A plan reading `/srv/x`, a bind mount of tank/data's `/sub`: tank/data's
/// snapshot at `/tank/data` in the mirror, then its `sub` bound on the
/// mirror's `/srv/x` (the plan lists the bind after its source).
fn bind_plan(host: &Host) -> Plan {
    let mut plan = host.plan(&["tank/data"]);
    let mapping = Mapping::new(&host.root);
    plan.mounts.push(PlannedMount {
        dataset: "tank/data".into(),
        pool: "tank".into(),
        mountpoint: "/srv/x".into(),
        snapshot_mountpoint: mapping.to_snapshot(Path::new("/srv/x")),
        reason: "test".into(),
        bind: Some(PlannedBind {
            root: "/sub".into(),
            from: mapping.to_snapshot(Path::new("/tank/data/sub")),
        }),
    });
    plan
}

#[test]
fn a_bind_mount_is_bound_from_its_snapshot_mount_and_unmounted_first() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&bind_plan(&host), &never).unwrap();
    let snapshot = format!("tank/data@{}", run.snapshot_name());
    let mapping = Mapping::new(&host.root);
    assert_eq!(
        host.zfs.names(),
        vec![snapshot.clone()],
        "one snapshot for both"
    );
    // The double checks that the source is in that snapshot's mount.
    assert_eq!(
        host.mounter.mounted_with_roots(),
        [
            (
                mapping.to_snapshot(Path::new("/tank/data")),
                snapshot.clone(),
                PathBuf::from("/")
            ),
            (
                mapping.to_snapshot(Path::new("/srv/x")),
                snapshot,
                PathBuf::from("/sub")
            ),
        ]
    );
    let (report, _) = run.finish();
    let report = report.unwrap();
    assert!(report.unmounted[0].ends_with("srv/x"), "{report:?}");
    host.assert_clean(&[]);
}

#[test]
fn a_later_point_binds_again_a_bind_its_mount_hides() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&bind_plan(&host), &never).unwrap();
    // A later create needs a dataset mounted at /srv, above the bind.
    let mut later = bind_plan(&host);
    let mapping = Mapping::new(&host.root);
    later.mounts.insert(
        0,
        PlannedMount {
            dataset: "rpool/home".into(),
            pool: "rpool".into(),
            mountpoint: "/srv".into(),
            snapshot_mountpoint: mapping.to_snapshot(Path::new("/srv")),
            reason: "test".into(),
            bind: None,
        },
    );
    run.freeze(&later, &never).unwrap();
    let mounted = host.mounter.mounted_with_roots();
    let last = mounted.last().unwrap();
    assert!(last.0.ends_with("srv/x"), "{mounted:?}");
    assert_eq!(last.2, Path::new("/sub"), "bound again on top");
    let (report, _) = run.finish();
    report.unwrap();
    host.assert_clean(&[]);
}

#[test]
fn recovery_removes_bind_mounts_of_our_snapshots_and_nothing_foreign() {
    let host = Host::new();
    let root = host.root.display().to_string();
    let ours = "tank/data@zfs-snap-20260101T000000Z-1-0123456789abcdef";
    let theirs = "tank/data@borgmatic-1234";
    host.zfs.add_snapshot(
        ours,
        Some(&format!("20260101T000000Z-1-0123456789abcdef:{root}")),
    );
    host.zfs.hold(ours, HOLD_TAG);
    host.zfs.add_snapshot(theirs, None);
    let mapping = Mapping::new(&host.root);
    let home = mapping.to_snapshot(Path::new("/tank/data"));
    let bound = mapping.to_snapshot(Path::new("/var/lib/foo"));
    let their_bind = mapping.to_snapshot(Path::new("/var/lib/bar"));
    let live_bind = mapping.to_snapshot(Path::new("/var/lib/baz"));
    for dir in [&home, &bound, &their_bind, &live_bind] {
        std::fs::create_dir_all(dir).unwrap();
    }
    host.mounter.add_snapshot_mount(&home, ours);
    host.mounter.add_snapshot_bind(&bound, ours, "/var/lib/foo");
    // Someone's snapshot bound into the mirror, and a live dataset bound
    // there: not ours.
    host.mounter
        .add_snapshot_bind(&their_bind, theirs, "/var/lib/bar");
    host.mounter.add_foreign(&live_bind, "zfs", "tank/data");

    let (run, _, _, recovered) = Run::begin(&host.zfs, &host.mounter, &host.options).unwrap();
    drop(run);
    assert_eq!(recovered.destroyed, [ours.to_owned()]);
    let mut unmounted = recovered.unmounted.clone();
    unmounted.sort();
    assert_eq!(unmounted, [home, bound]);
    assert_eq!(host.zfs.names(), [theirs.to_owned()]);
    assert_eq!(
        host.mounter.mounted(),
        [
            (their_bind, theirs.to_owned()),
            (live_bind, "tank/data".to_owned())
        ],
        "foreign mounts stay"
    );
}

#[test]
fn cleanup_looks_everywhere_and_a_dry_run_changes_nothing() {
    let host = Host::new();
    let root = host.root.display().to_string();
    let renamed = "rpool/home@kept-by-mistake";
    host.zfs.add_snapshot(renamed, Some(&format!("x:{root}")));
    let report = cleanup(&host.zfs, &host.mounter, &host.options, true).unwrap();
    assert_eq!(report.destroyed, vec![renamed.to_owned()]);
    assert_eq!(host.zfs.names(), vec![renamed.to_owned()], "dry run");
    let report = cleanup(&host.zfs, &host.mounter, &host.options, false).unwrap();
    assert_eq!(report.destroyed, vec![renamed.to_owned()]);
    host.assert_clean(&[]);
}

#[test]
fn release_skips_snapshots_gone_meanwhile() {
    let zfs = MemoryZfs::with(DATASETS);
    let ours = ["tank@zfs-snap-a".to_owned(), "rpool@zfs-snap-a".to_owned()];
    for s in &ours {
        zfs.add_snapshot(s, Some("a:/run/zfs-snap"));
        zfs.hold(s, HOLD_TAG);
    }
    let gone = "tank@zfs-snap-gone".to_owned();
    let mut report = Report::default();
    let mut asked = ours.to_vec();
    asked.push(gone);
    release_ours(&zfs, &asked, &mut report);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for s in &ours {
        assert!(zfs.snapshots()[s].holds.is_empty(), "{s} released");
    }
    let releases: Vec<_> = zfs
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("release"))
        .collect();
    assert_eq!(releases.len(), 2, "one call per pool: {releases:?}");
}

#[test]
fn destroy_counts_a_missing_snapshot_as_gone_only_on_zfs_word() {
    let zfs = MemoryZfs::with(DATASETS);
    zfs.add_snapshot("tank@zfs-snap-a", None);
    let mut report = Report::default();
    destroy_each(
        &zfs,
        &[
            "tank@zfs-snap-a".to_owned(),
            "tank@zfs-snap-gone".to_owned(),
        ],
        &mut report,
    );
    assert_eq!(
        report.destroyed,
        vec!["tank@zfs-snap-a", "tank@zfs-snap-gone"]
    );
    assert!(report.problems.is_empty());

    // "Does not exist", but ZFS, asked again, still lists it: a problem.
    zfs.add_snapshot("tank@zfs-snap-b", None);
    zfs.fail("destroy", Fail::SaysMissing);
    zfs.fail("destroy", Fail::SaysMissing);
    let mut report = Report::default();
    destroy_each(&zfs, &["tank@zfs-snap-b".to_owned()], &mut report);
    assert!(report.destroyed.is_empty());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(zfs.names(), vec!["tank@zfs-snap-b"]);
}

#[test]
fn a_file_of_someone_elses_at_a_work_file_name_is_refused_and_stays() {
    let host = Host::new();
    let mut run = host.begin();
    run.freeze(&host.plan(&["tank/data"]), &never).unwrap();
    let work = run.work_dir();
    std::fs::create_dir(&work).unwrap();
    let victim = host.root.parent().unwrap().join("victim");
    std::fs::write(&victim, "theirs\n").unwrap();
    let at = work.join("zfs-snap-patterns.lst");
    std::os::unix::fs::symlink(&victim, &at).unwrap();
    let err = run
        .write_work_files(&[(at.clone(), "R /x\n".into())])
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let (report, _) = run.finish();
    report.unwrap();
    assert!(
        at.symlink_metadata().unwrap().file_type().is_symlink(),
        "left alone"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "theirs\n");
    assert_eq!(host.zfs.names(), Vec::<String>::new());
}
