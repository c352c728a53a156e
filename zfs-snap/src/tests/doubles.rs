//! In-memory doubles of [`Zfs`] and [`Mounter`] for unit tests of the
//! lifecycle: ZFS's rules as zfs-snap relies on them (a held snapshot
//! cannot be destroyed; a deferred destroy fires at the last release; user
//! properties set locally or not), with failures injected per operation.
//! Every behaviour shown here is also tested on real OpenZFS in the VM
//! suite (`integration/tests/lifecycle.rs`, `faults.rs`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mount::Mounter;
use crate::zfs::{
    pool_of, Filesystem, Owner, Search, Snapshot, TagInfo, Zfs, HOLD_TAG, SNAPSHOT_PREFIX,
};

/// How an injected failure of an operation behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// The call fails and changes nothing.
    Before,
    /// The call does its work, then fails (zfs killed after the ioctl).
    After,
    /// The call changes nothing and fails saying "does not exist" (a
    /// wrapper's message, a renamed dataset).
    SaysMissing,
}

#[derive(Clone, Debug, Default)]
pub struct SnapshotState {
    /// The ownership value, when set locally on this snapshot.
    pub owner: Option<String>,
    pub holds: BTreeSet<String>,
    pub defer_destroy: bool,
}

#[derive(Default)]
struct State {
    filesystems: Vec<Filesystem>,
    snapshots: BTreeMap<String, SnapshotState>,
    /// Each call, as `op args`.
    calls: Vec<String>,
    /// Failures to inject: (operation, how), used once each, in order.
    failures: Vec<(&'static str, Fail)>,
}

/// ZFS in memory.
#[derive(Default)]
pub struct MemoryZfs {
    state: RefCell<State>,
}

fn failed(op: &str, stderr: &str) -> Error {
    Error::CommandFailed {
        command: format!("zfs {op}"),
        status: "exit status: 1".into(),
        stderr: stderr.into(),
    }
}

impl MemoryZfs {
    /// Pools and datasets by name: `["tank", "tank/data", "rpool"]`.
    pub fn with(datasets: &[&str]) -> MemoryZfs {
        let zfs = MemoryZfs::default();
        zfs.state.borrow_mut().filesystems = datasets
            .iter()
            .enumerate()
            .map(|(i, name)| Filesystem {
                name: (*name).to_owned(),
                mountpoint: format!("/{name}"),
                canmount: "on".into(),
                mounted: true,
                keystatus: None,
                tag: None,
                guid: format!("{}", 1000 + i),
            })
            .collect();
        zfs
    }

    /// The next call of `op` fails as `how`.
    pub fn fail(&self, op: &'static str, how: Fail) {
        self.state.borrow_mut().failures.push((op, how));
    }

    /// Someone else's snapshot: `owner` is the local ownership value, if
    /// any.
    pub fn add_snapshot(&self, name: &str, owner: Option<&str>) {
        self.state.borrow_mut().snapshots.insert(
            name.to_owned(),
            SnapshotState {
                owner: owner.map(str::to_owned),
                ..SnapshotState::default()
            },
        );
    }

    /// A hold of someone else's on `snapshot`.
    pub fn hold(&self, snapshot: &str, tag: &str) {
        let mut state = self.state.borrow_mut();
        let s = state.snapshots.get_mut(snapshot).expect("no such snapshot");
        s.holds.insert(tag.to_owned());
    }

    /// Someone else releases their hold (a deferred destroy may fire).
    pub fn release_theirs(&self, snapshot: &str, tag: &str) {
        let mut state = self.state.borrow_mut();
        release_one(&mut state.snapshots, snapshot, tag);
    }

    pub fn snapshots(&self) -> BTreeMap<String, SnapshotState> {
        self.state.borrow().snapshots.clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.state.borrow().snapshots.keys().cloned().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.borrow().calls.clone()
    }

    /// Logs the call; returns the failure injected for it, if any.
    fn call(&self, op: &'static str, args: &[String]) -> Option<Fail> {
        let mut state = self.state.borrow_mut();
        state.calls.push(format!("{op} {}", args.join(" ")));
        let at = state.failures.iter().position(|(o, _)| *o == op)?;
        Some(state.failures.remove(at).1)
    }

    /// Runs `work` unless a failure is injected before it; fails after it
    /// when one is injected after.
    fn act(
        &self,
        op: &'static str,
        args: &[String],
        work: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        match self.call(op, args) {
            Some(Fail::Before) => Err(failed(op, "injected failure")),
            Some(Fail::SaysMissing) => Err(failed(op, "dataset does not exist")),
            Some(Fail::After) => {
                work()?;
                Err(failed(op, "killed after the work was done"))
            }
            None => work(),
        }
    }

    fn missing(&self, names: &[String]) -> Option<String> {
        let state = self.state.borrow();
        names
            .iter()
            .find(|n| !state.snapshots.contains_key(*n))
            .cloned()
    }
}

fn release_one(snapshots: &mut BTreeMap<String, SnapshotState>, name: &str, tag: &str) -> bool {
    let Some(s) = snapshots.get_mut(name) else {
        return false;
    };
    let had = s.holds.remove(tag);
    if s.holds.is_empty() && s.defer_destroy {
        snapshots.remove(name);
    }
    had
}

impl Zfs for MemoryZfs {
    fn filesystems(&self) -> Result<Vec<Filesystem>> {
        self.call("list", &[]);
        Ok(self.state.borrow().filesystems.clone())
    }

    fn our_snapshots(&self, search: Search) -> Result<Vec<Snapshot>> {
        self.call("list-snapshots", &[format!("{search:?}")]);
        let state = self.state.borrow();
        Ok(state
            .snapshots
            .iter()
            .filter(|(name, s)| match search {
                Search::Named => name
                    .split_once('@')
                    .is_some_and(|(_, n)| n.starts_with(SNAPSHOT_PREFIX)),
                Search::Everywhere => s.owner.is_some(),
            })
            .map(|(name, s)| Snapshot {
                name: name.clone(),
                owner: s.owner.as_deref().and_then(Owner::parse),
            })
            .collect())
    }

    fn owners(&self, names: &[String]) -> Result<Vec<Snapshot>> {
        if let Some(how) = self.call("get-owner", names) {
            assert_eq!(how, Fail::Before, "owners changes nothing");
            return Err(failed("get", "injected failure"));
        }
        let state = self.state.borrow();
        Ok(names
            .iter()
            .filter_map(|n| {
                state.snapshots.get(n).map(|s| Snapshot {
                    name: n.clone(),
                    owner: s.owner.as_deref().and_then(Owner::parse),
                })
            })
            .collect())
    }

    fn snapshot(&self, names: &[String], owner: &Owner) -> Result<()> {
        self.act("snapshot", names, || {
            let mut state = self.state.borrow_mut();
            let pools: BTreeSet<&str> = names.iter().map(|n| pool_of(n)).collect();
            assert_eq!(pools.len(), 1, "one atomic call per pool: {names:?}");
            for name in names {
                let (dataset, _) = name.split_once('@').expect("a snapshot name");
                if !state.filesystems.iter().any(|f| f.name == dataset) {
                    return Err(failed(
                        "snapshot",
                        &format!("dataset '{dataset}' does not exist"),
                    ));
                }
                if state.snapshots.contains_key(name) {
                    return Err(failed(
                        "snapshot",
                        &format!("'{name}': dataset already exists"),
                    ));
                }
            }
            for name in names {
                state.snapshots.insert(
                    name.clone(),
                    SnapshotState {
                        owner: Some(owner.value()),
                        ..SnapshotState::default()
                    },
                );
            }
            Ok(())
        })
    }

    fn hold_run(&self, pool: &str, name: &str, snapshots: &[String]) -> Result<()> {
        assert!(snapshots
            .iter()
            .all(|s| pool_of(s) == pool && s.ends_with(&format!("@{name}"))));
        self.act("hold", snapshots, || {
            if let Some(gone) = self.missing(snapshots) {
                return Err(failed("hold", &format!("'{gone}' does not exist")));
            }
            let mut state = self.state.borrow_mut();
            for s in snapshots {
                let holds = &mut state.snapshots.get_mut(s).expect("checked").holds;
                if !holds.insert(HOLD_TAG.to_owned()) {
                    return Err(failed("hold", "tag already exists on this dataset"));
                }
            }
            Ok(())
        })
    }

    fn release_run(&self, _pool: &str, _name: &str, snapshots: &[String]) -> Result<()> {
        self.release(snapshots)
    }

    fn release(&self, snapshots: &[String]) -> Result<()> {
        self.act("release", snapshots, || {
            let mut state = self.state.borrow_mut();
            for s in snapshots {
                if !release_one(&mut state.snapshots, s, HOLD_TAG) {
                    return Err(failed("release", &format!("'{s}' has no hold {HOLD_TAG}")));
                }
            }
            Ok(())
        })
    }

    fn holds(&self, snapshots: &[String]) -> Result<Vec<(String, String)>> {
        if let Some(how) = self.call("holds", snapshots) {
            assert_eq!(how, Fail::Before, "holds changes nothing");
            return Err(failed("holds", "injected failure"));
        }
        if let Some(gone) = self.missing(snapshots) {
            return Err(failed(
                "holds",
                &format!("cannot open '{gone}': dataset does not exist"),
            ));
        }
        let state = self.state.borrow();
        Ok(snapshots
            .iter()
            .flat_map(|s| {
                state.snapshots[s]
                    .holds
                    .iter()
                    .map(move |t| (s.clone(), t.clone()))
            })
            .collect())
    }

    fn destroy_run(&self, pool: &str, name: &str, snapshots: &[String]) -> Result<()> {
        // `zfs destroy -r pool@name`: every snapshot of that name in the
        // pool, all or nothing.
        let all: Vec<String> = self
            .names()
            .into_iter()
            .filter(|s| pool_of(s) == pool && s.ends_with(&format!("@{name}")))
            .collect();
        assert_eq!(
            all.len(),
            snapshots.len(),
            "only our own snapshots carry our name"
        );
        self.act("destroy-run", snapshots, || {
            let mut state = self.state.borrow_mut();
            if let Some(busy) = all.iter().find(|s| !state.snapshots[*s].holds.is_empty()) {
                return Err(failed(
                    "destroy",
                    &format!("cannot destroy snapshot {busy}: dataset is busy"),
                ));
            }
            for s in &all {
                state.snapshots.remove(s);
            }
            Ok(())
        })
    }

    fn destroy(&self, snapshot: &str, defer: bool) -> Result<()> {
        let args = [snapshot.to_owned(), format!("defer={defer}")];
        self.act("destroy", &args, || {
            let mut state = self.state.borrow_mut();
            let Some(s) = state.snapshots.get_mut(snapshot) else {
                return Err(failed(
                    "destroy",
                    "could not find any snapshots to destroy; check snapshot names.",
                ));
            };
            if s.holds.is_empty() {
                state.snapshots.remove(snapshot);
                Ok(())
            } else if defer {
                s.defer_destroy = true;
                Ok(())
            } else {
                Err(failed(
                    "destroy",
                    &format!("cannot destroy snapshot {snapshot}: dataset is busy"),
                ))
            }
        })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn set_tag(&self, _: &[String]) -> Result<()> {
        unimplemented!("not used by the lifecycle")
    }

    fn clear_tag(&self, _: &[String]) -> Result<()> {
        unimplemented!("not used by the lifecycle")
    }

    fn tags(&self) -> Result<Vec<TagInfo>> {
        unimplemented!("not used by the lifecycle")
    }
}

/// Mounts in memory, written out as a mount table file the lifecycle reads
/// (`mountinfo`), with failures injected per call.
pub struct MemoryMounter {
    mountinfo: PathBuf,
    /// (target, source, fstype, root), in the order mounted.
    mounts: RefCell<Vec<(PathBuf, String, String, PathBuf)>>,
    /// Mount calls that fail, by their number (0 is the first).
    fail_mounts: RefCell<BTreeSet<usize>>,
    mount_calls: RefCell<usize>,
    /// Targets that stay busy for this many more plain unmounts.
    busy: RefCell<BTreeMap<PathBuf, usize>>,
    pub unmount_calls: RefCell<Vec<(PathBuf, bool)>>,
}

impl MemoryMounter {
    pub fn new(mountinfo: &Path) -> MemoryMounter {
        let mounter = MemoryMounter {
            mountinfo: mountinfo.to_owned(),
            mounts: RefCell::default(),
            fail_mounts: RefCell::default(),
            mount_calls: RefCell::default(),
            busy: RefCell::default(),
            unmount_calls: RefCell::default(),
        };
        mounter.write();
        mounter
    }

    /// The `n`th mount call (0 is the first) fails.
    pub fn fail_mount(&self, n: usize) {
        self.fail_mounts.borrow_mut().insert(n);
    }

    /// `target` refuses `times` plain unmounts (busy).
    pub fn busy(&self, target: &Path, times: usize) {
        self.busy.borrow_mut().insert(target.to_owned(), times);
    }

    /// Someone else's mount (`fstype`, `source`) at `target`.
    pub fn add_foreign(&self, target: &Path, fstype: &str, source: &str) {
        self.mounts.borrow_mut().push((
            target.to_owned(),
            source.to_owned(),
            fstype.to_owned(),
            "/".into(),
        ));
        self.write();
    }

    /// A bind mount of `snapshot`'s directory `root` at `target`, left by
    /// a dead run.
    pub fn add_snapshot_bind(&self, target: &Path, snapshot: &str, root: &str) {
        self.mounts.borrow_mut().push((
            target.to_owned(),
            snapshot.to_owned(),
            "zfs".into(),
            root.into(),
        ));
        self.write();
    }

    /// What is mounted, in order, with each mount's root (`/` unless a
    /// bind of a directory).
    pub fn mounted_with_roots(&self) -> Vec<(PathBuf, String, PathBuf)> {
        self.mounts
            .borrow()
            .iter()
            .map(|(t, s, _, r)| (t.clone(), s.clone(), r.clone()))
            .collect()
    }

    /// A mount of a snapshot left by a dead run.
    pub fn add_snapshot_mount(&self, target: &Path, snapshot: &str) {
        self.add_foreign(target, "zfs", snapshot);
    }

    pub fn mounted(&self) -> Vec<(PathBuf, String)> {
        self.mounts
            .borrow()
            .iter()
            .map(|(t, s, _, _)| (t.clone(), s.clone()))
            .collect()
    }

    fn write(&self) {
        let mut text = String::from("1 0 0:1 / / rw - ext4 /dev/root rw\n");
        for (i, (target, source, fstype, root)) in self.mounts.borrow().iter().enumerate() {
            let id = i + 2;
            text.push_str(&format!(
                "{id} 1 0:{id} {} {} ro - {fstype} {source} ro\n",
                root.display(),
                target.display()
            ));
        }
        std::fs::write(&self.mountinfo, text).expect("the test's mount table");
    }
}

impl Mounter for MemoryMounter {
    fn mount(&self, snapshot: &str, target: &Path) -> Result<()> {
        let n = {
            let mut calls = self.mount_calls.borrow_mut();
            *calls += 1;
            *calls - 1
        };
        if self.fail_mounts.borrow().contains(&n) {
            return Err(Error::Mount {
                snapshot: snapshot.to_owned(),
                target: target.to_owned(),
                reason: "injected failure".into(),
            });
        }
        assert!(
            target.is_dir(),
            "mountpoint {} must exist",
            target.display()
        );
        self.mounts.borrow_mut().push((
            target.to_owned(),
            snapshot.to_owned(),
            "zfs".into(),
            "/".into(),
        ));
        self.write();
        Ok(())
    }

    fn bind(&self, snapshot: &str, from: &Path, target: &Path) -> Result<()> {
        self.mount(snapshot, target)?;
        // The source must be in the mirror mount of that very snapshot,
        // the deepest mount on its way: a bind before its source, or
        // through another mount, would show something else.
        let mut mounts = self.mounts.borrow_mut();
        let (made, earlier) = mounts.split_last_mut().expect("just mounted");
        let holder = earlier
            .iter()
            .filter(|(t, _, _, _)| from.starts_with(t))
            .max_by_key(|(t, _, _, _)| t.components().count())
            .unwrap_or_else(|| panic!("nothing is mounted at {} yet", from.display()));
        assert_eq!(
            holder.1,
            snapshot,
            "{} is not in {snapshot}",
            from.display()
        );
        let within = from.strip_prefix(&holder.0).expect("filtered by prefix");
        made.3 = holder.3.join(within);
        drop(mounts);
        self.write();
        Ok(())
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<()> {
        self.unmount_calls
            .borrow_mut()
            .push((target.to_owned(), lazy));
        if !lazy {
            if let Some(left) = self.busy.borrow_mut().get_mut(target) {
                if *left > 0 {
                    *left -= 1;
                    return Err(Error::Unmount {
                        target: target.to_owned(),
                        reason: "target is busy".into(),
                    });
                }
            }
        }
        let mut mounts = self.mounts.borrow_mut();
        let Some(top) = mounts.iter().rposition(|(t, _, _, _)| t == target) else {
            return Err(Error::Unmount {
                target: target.to_owned(),
                reason: "not mounted".into(),
            });
        };
        mounts.remove(top);
        drop(mounts);
        self.write();
        Ok(())
    }
}
