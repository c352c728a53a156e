//! What zfs-snap may touch (README, Design), against the fake zfs: only
//! snapshots with a locally set ownership value naming this runtime root,
//! only zfs mounts of those in the mirror, only its own files. The same
//! cases run on real ZFS in integration/tests/ownership.rs.

mod support;

use serde_json::json;
use support::*;

#[test]
fn inherited_and_received_values_do_not_make_a_snapshot_ours() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let value = format!("20260101T000000Z-1:{}", w.runtime_root.display());
    w.dataset_with("tank/t1", "tank/t1", json!({"props": {OWNER: value}}));
    w.foreign_snapshot("tank/t1@keepme");
    w.foreign_snapshot("tank/t1@zfs-snap-20260101T000000Z-1");
    w.dataset("tank/recv", "tank/recv");
    w.foreign_snapshot("tank/recv@zfs-snap-20260101T000000Z-2");
    w.edit(|s| {
        s["snapshots"]["tank/recv@zfs-snap-20260101T000000Z-2"]["received"] = json!({OWNER: value})
    });
    let theirs = [
        "tank/t1@keepme",
        "tank/t1@zfs-snap-20260101T000000Z-1",
        "tank/recv@zfs-snap-20260101T000000Z-2",
    ];

    let out = run(w.cmd().arg("cleanup"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Nothing left behind"),
        "{}",
        stdout(&out)
    );
    let left = w.snapshot_names();
    for s in theirs {
        assert!(left.contains(&s.to_owned()), "cleanup destroyed {s}");
    }

    // The rest needs borg: without it the part above has run, then a loud skip.
    need!(Need::Borg);
    let out = w.create("a", &[&data]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = w.snapshot_names();
    for s in theirs {
        assert!(
            left.contains(&s.to_owned()),
            "a run's recovery destroyed {s}"
        );
    }
    w.assert_clean();
}

#[test]
fn foreign_mounts_and_files_in_the_runtime_root_stay() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let rt = &w.runtime_root;
    let nas = rt.join("nas");
    std::fs::create_dir_all(&nas).unwrap();
    w.write(&nas.join("keep.txt"), "theirs");
    w.write(&rt.join("mine.txt"), "theirs");
    w.write(&rt.join("work/notes.txt"), "theirs");
    w.write(&rt.join("work/zfs-snap-patterns.lst"), "- stale\n");
    w.foreign_snapshot("tank/data@mine");
    let in_mirror = rt.join("snap/foreign");
    let ours = "tank/data@zfs-snap-20260101T000000Z-1";
    w.leftover_snapshot(ours, true);
    let mirror = rt.join("snap").join(data.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&in_mirror).unwrap();
    std::fs::create_dir_all(&mirror).unwrap();
    w.edit(|s| {
        s["base_mountinfo"]
            .as_array_mut()
            .unwrap()
            .push(json!(format!(
                "77 1 0:99 / {} rw - tmpfs nas rw",
                nas.display()
            )));
        s["mounts"] = json!([
            {"source": "tank/data@mine", "target": in_mirror},
            {"source": ours, "target": mirror},
        ]);
    });

    let dry = run(w.cmd().args(["cleanup", "--dry-run"]));
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(stdout(&dry).contains(&format!("would unmount {}", mirror.display())));
    assert!(stdout(&dry).contains("left alone"), "{}", stdout(&dry));

    let out = run(w.cmd().arg("cleanup"));
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = w.calls();
    let unmounts: Vec<&str> = calls.lines().filter(|l| l.starts_with("umount")).collect();
    assert_eq!(
        unmounts,
        vec![format!("umount {}", mirror.display())],
        "{calls}"
    );
    assert!(stderr(&out).contains(&format!(
        "{} (tmpfs nas) is not a mount of zfs-snap's",
        nas.display()
    )));
    assert!(stderr(&out).contains("holds files zfs-snap did not write (notes.txt)"));
    assert!(!w.snapshot_names().contains(&ours.to_owned()));
    assert!(w.snapshot_names().contains(&"tank/data@mine".to_owned()));
    assert_eq!(w.state()["mounts"][0]["target"], json!(in_mirror));
    for file in [
        nas.join("keep.txt"),
        rt.join("mine.txt"),
        rt.join("work/notes.txt"),
    ] {
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "theirs",
            "{}",
            file.display()
        );
    }
    assert!(
        !rt.join("work/zfs-snap-patterns.lst").exists(),
        "our own stale file stays"
    );
    assert!(!mirror.exists(), "the leftover's mirror directory stays");
}

#[test]
fn a_named_borg_is_not_replaced_by_zfs_snap_borg() {
    let real = need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let log = w.dir.path().join("wrapper.log");
    let wrapper = w.bin.join("borg-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let repo = w.repo();
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_BORG", &real)
        .arg("wrap")
        .arg("--")
        .arg(&wrapper)
        .args(["create", &format!("{repo}::a")])
        .arg(&data));
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l == "create"),
        "the named wrapper did not run: {log:?}"
    );
}

#[test]
fn a_hold_call_that_fails_after_acting_is_undone_by_the_same_run() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    w.edit(|s| s["fail_after"] = json!({"hold": "zfs: killed"}));
    let out = w.create("a", &[&data]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let calls = w.calls();
    assert!(calls.contains("zfs holds "), "{calls}");
    assert!(
        calls.contains("zfs release zfs-snap tank/data@zfs-snap-"),
        "{calls}"
    );
    w.assert_clean();
    assert!(w.snapshot_names().is_empty(), "{:?}", w.snapshot_names());
}

#[test]
fn an_owner_lookup_that_fails_otherwise_than_missing_fails_the_run() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let ours = "tank/data@zfs-snap-20260101T000000Z-1";
    w.leftover_snapshot(ours, true);
    w.edit(|s| s["fail"] = json!({"get": "SIGKILL"}));
    let out = w.create("a", &[&data]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("signal: 9"), "{}", stderr(&out));
    assert!(!w.calls().contains("zfs snapshot"), "{}", w.calls());
    assert!(!w.runtime_root.join("clean").exists());
    assert!(w.snapshot_names().contains(&ours.to_owned()));

    w.edit(|s| s["fail"] = json!({}));
    let out = w.create("b", &[&data]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.assert_clean();
}

#[test]
fn a_leftover_gone_after_its_release_counts_as_destroyed() {
    let w = World::new();
    w.dataset("tank/data", "tank/data");
    let ours = "tank/data@zfs-snap-20260101T000000Z-1";
    w.leftover_snapshot(ours, true);
    w.edit(|s| s["snapshots"][ours]["deferred"] = json!(true));
    let out = run(w.cmd().arg("cleanup"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("destroyed {ours}")),
        "{}",
        stdout(&out)
    );
    w.assert_clean();
}

#[test]
fn run_names_have_an_unpredictable_part() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    for archive in ["a", "b"] {
        assert!(w.create(archive, &[&data]).status.success());
    }
    let calls = w.calls();
    let names: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("zfs snapshot"))
        .map(|l| l.rsplit_once('@').unwrap().1)
        .collect();
    assert_eq!(names.len(), 2, "{calls}");
    assert_ne!(names[0], names[1]);
    for name in names {
        let random = name.rsplit('-').next().unwrap();
        assert!(
            random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }
}

/// umount2 takes the topmost mount at a path: with someone's mount stacked
/// on a dead run's mount, or mounted inside it, recovery unmounts nothing
/// there (it would take theirs, or detach theirs with ours) and says so.
#[test]
fn a_mount_stacked_on_ours_or_inside_it_is_never_unmounted() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let ours = "tank/data@zfs-snap-20260101T000000Z-1";
    w.leftover_snapshot(ours, true);
    let mirror = w
        .runtime_root
        .join("snap")
        .join(data.strip_prefix("/").unwrap());
    std::fs::create_dir_all(mirror.join("inner")).unwrap();
    for foreign in [mirror.clone(), mirror.join("inner")] {
        w.edit(|s| {
            s["mounts"] = json!([{"source": ours, "target": mirror}]);
            let line = format!("78 1 0:98 / {} rw - tmpfs theirs rw", foreign.display());
            let base = s["base_mountinfo"].as_array_mut().unwrap();
            base.retain(|l| !l.as_str().unwrap().contains("tmpfs theirs"));
            base.push(json!(line));
        });
        // The fake lists its own mounts after the base ones: put ours first.
        let info = w.dir.path().join("mountinfo");
        let text = std::fs::read_to_string(&info).unwrap();
        let (theirs, rest): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.contains("tmpfs theirs"));
        std::fs::write(&info, [rest, theirs].concat().join("\n") + "\n").unwrap();

        let out = run(w.cmd().arg("cleanup"));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("left mounted, unmount it by hand"),
            "{}",
            stderr(&out)
        );
        assert!(!w.calls().contains("umount "), "{}", w.calls());
    }
}
