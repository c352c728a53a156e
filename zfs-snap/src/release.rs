//! Giving our snapshots back: releasing the holds zfs-snap placed and
//! destroying the snapshots it made. The one place snapshots are destroyed,
//! by teardown and by recovery alike, and only by exact names known to be
//! ours.

use std::collections::BTreeMap;

use crate::report::Report;
use crate::zfs::{pool_of, Zfs, HOLD_TAG};

/// Destroys, in one call, the snapshots one point of a run made in `pool`
/// (all called `name`); if that call fails, each one on its own.
pub fn destroy_point(
    zfs: &dyn Zfs,
    pool: &str,
    name: &str,
    names: Vec<String>,
    report: &mut Report,
) {
    match zfs.destroy_run(pool, name, &names) {
        Ok(()) => report.destroyed.extend(names),
        Err(e) => {
            tracing::debug!(error = %e, "batched destroy failed; destroying one by one");
            destroy_each(zfs, &names, report);
        }
    }
}

/// Destroys each snapshot; a busy one is marked for deferred destroy. One
/// that does not exist is gone already (its deferred destroy fired when the
/// last hold was released), which is what was wanted.
pub fn destroy_each(zfs: &dyn Zfs, names: &[String], report: &mut Report) {
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
pub fn release_ours(zfs: &dyn Zfs, snapshots: &[String], report: &mut Report) {
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
