//! What zfs-snap may touch, on real ZFS: only snapshots whose ownership
//! value is set locally and names this runtime root, only zfs mounts of
//! those in the mirror, only the files it writes; never a user's snapshot,
//! another tool's mount or a file it did not make (README, Design).

use std::path::{Path, PathBuf};

use integration::*;

/// `<pool>/data` with one file; returns its path, the backup's source.
fn data_dataset(fx: &Fixture) -> String {
    fx.pool.dataset("data", &[]);
    fx.pool.write("data/a.txt", "a\n");
    fx.pool.path("data").display().to_string()
}

/// `zfs get` of the ownership property of `snapshot`: (value, source).
fn owner_of(snapshot: &str) -> (String, String) {
    let out = zfs(&["get", "-H", "-o", "value,source", OWNER_PROPERTY, snapshot]);
    let (value, source) = out.trim_end().split_once('\t').expect("value<TAB>source");
    (value.to_owned(), source.to_owned())
}

#[track_caller]
fn assert_exists(snapshots: &[&str]) {
    let all = zfs(&["list", "-H", "-t", "snapshot", "-o", "name"]);
    for s in snapshots {
        assert!(
            all.lines().any(|l| l == *s),
            "{s} was destroyed; snapshots now:\n{all}"
        );
    }
}

/// Case 1: an ownership value set on a filesystem is inherited by its
/// snapshots, and one sent with `zfs send -p` arrives as `received`;
/// neither makes a snapshot ours, for `cleanup` or for a run's recovery.
#[test]
fn inherited_and_received_ownership_values_claim_nothing() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let value = format!("20260101T000000Z-1:{}", fx.root.display());
    let t1 = fx.pool.dataset("t1", &[]);
    zfs(&["set", &format!("{OWNER_PROPERTY}={value}"), &t1]);
    let keepme = format!("{t1}@keepme");
    let named_like_ours = format!("{t1}@zfs-snap-20260101T000000Z-1");
    zfs(&["snapshot", &keepme]);
    zfs(&["snapshot", &named_like_ours]);
    assert_eq!(
        owner_of(&keepme),
        (value.clone(), format!("inherited from {t1}"))
    );

    // A snapshot of ours (local value), sent with its properties: on the
    // receiving side the value is `received`.
    let src = fx.pool.dataset("src", &[]);
    let sent = format!("{src}@zfs-snap-20260101T000000Z-2");
    zfs(&[
        "snapshot",
        "-o",
        &format!("{OWNER_PROPERTY}={value}"),
        &sent,
    ]);
    let recv = fx.pool.ds("recv");
    let pipeline = format!(
        "zfs send -p {} | zfs receive -u {}",
        sh_quote(&sent),
        sh_quote(&recv)
    );
    run(std::process::Command::new("sh").args(["-c", &pipeline])).success();
    zfs(&["destroy", "-r", &src]);
    let received = format!("{recv}@zfs-snap-20260101T000000Z-2");
    assert_eq!(owner_of(&received), (value.clone(), "received".to_owned()));

    let foreign = [keepme.as_str(), named_like_ours.as_str(), received.as_str()];
    let out = run(fx.zfs_snap().arg("cleanup")).success();
    assert!(out.stdout.contains("Nothing left behind"), "{}", out.dump());
    assert_exists(&foreign);

    // A run with no clean mark lists and recovers: still nothing of theirs.
    fx.wrap(&[], &["create", &fx.repo.at("a"), &source])
        .success();
    assert_exists(&foreign);
    fx.assert_clean();
}

/// Case 2: a runtime root that holds other things: someone's tmpfs at
/// `<root>/nas`, files of theirs in `<root>` and `<root>/work`, a user's
/// snapshot mounted inside the mirror. Recovery removes the dead run's
/// mount and snapshot and leaves all of that, with a warning.
#[test]
fn runtime_root_with_other_things_in_it_keeps_them() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    std::fs::create_dir_all(&fx.root).unwrap();
    let nas = fx.root.join("nas");
    std::fs::create_dir_all(&nas).unwrap();
    must(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "nas",
            &nas.display().to_string(),
        ],
    );
    write_file(&nas.join("keep.txt"), "theirs\n");
    write_file(&fx.root.join("mine.txt"), "theirs\n");
    write_file(&fx.root.join("work/notes.txt"), "theirs\n");
    let users = format!("{}@mine", fx.pool.ds("data"));
    zfs(&["snapshot", &users]);
    let foreign_snap_mount = fx.root.join("snap/foreign");
    std::fs::create_dir_all(&foreign_snap_mount).unwrap();
    must(
        "mount",
        &[
            "-t",
            "zfs",
            &users,
            &foreign_snap_mount.display().to_string(),
        ],
    );

    // A dead run's snapshot, mounted in the mirror where runs mount it.
    let leftover = format!("{}@zfs-snap-20260101T000000Z-1", fx.pool.ds("data"));
    fx.plant_leftover(&leftover);
    let mirror = fx.snapshot_path(&fx.pool.path("data"));
    std::fs::create_dir_all(&mirror).unwrap();
    must(
        "mount",
        &["-t", "zfs", &leftover, &mirror.display().to_string()],
    );

    let foreign = vec![nas.clone(), foreign_snap_mount.clone()];
    let check_theirs = |out: &Out| {
        for m in &foreign {
            assert!(
                mounts().iter().any(|x| &x.mount_point == m),
                "{} was unmounted\n{}",
                m.display(),
                out.dump()
            );
        }
        assert_eq!(read_file(&nas.join("keep.txt")), "theirs\n");
        assert_eq!(read_file(&fx.root.join("mine.txt")), "theirs\n");
        assert_eq!(read_file(&fx.root.join("work/notes.txt")), "theirs\n");
        assert!(foreign_snap_mount.join("a.txt").exists(), "{}", out.dump());
        assert_exists(&[&users]);
    };

    let out = fx
        .wrap(&[], &["create", &fx.repo.at("a"), &source])
        .success();
    out.expect_stderr("removed what an earlier run left behind");
    out.expect_stderr("is not a mount of zfs-snap's: left alone");
    out.expect_stderr("holds files zfs-snap did not write (notes.txt)");
    check_theirs(&out);
    fx.assert_clean_except(&foreign);
    assert!(fx
        .repo
        .list("a")
        .contains(&format!("{}/a.txt", fx.pool.ds("data"))));

    // cleanup: the same rule, and --dry-run names them too.
    fx.plant_leftover(&leftover);
    let out = run(fx.zfs_snap().args(["cleanup", "--dry-run"])).success();
    assert!(out.stdout.contains("left alone"), "{}", out.dump());
    let out = run(fx.zfs_snap().arg("cleanup")).success();
    assert!(out.stdout.contains(&leftover), "{}", out.dump());
    check_theirs(&out);
    fx.assert_clean_except(&foreign);

    for m in foreign.iter().rev() {
        must("umount", &[m]);
    }
}

/// Case 2, nested roots: a root inside another root (inside its mirror, or
/// beside it) and the outer one never touch each other's mounts or
/// snapshots.
#[test]
fn nested_runtime_roots_do_not_see_each_other() {
    let fx = require_zfs!();
    data_dataset(&fx);
    let data = fx.pool.ds("data");
    let plant = |root: &Path, n: u32| -> (String, PathBuf) {
        let name = format!("{data}@zfs-snap-20260101T000000Z-{n}");
        let owner = format!("{OWNER_PROPERTY}=20260101T000000Z-{n}:{}", root.display());
        zfs(&["snapshot", "-o", &owner, &name]);
        let target = root
            .join("snap")
            .join(fx.pool.path("data").strip_prefix("/").unwrap());
        std::fs::create_dir_all(&target).unwrap();
        must(
            "mount",
            &["-t", "zfs", &name, &target.display().to_string()],
        );
        (name, target)
    };
    let outer = fx.root.clone();
    for inner in [outer.join("inner"), outer.join("snap/inner")] {
        let (inner_snap, inner_mount) = plant(&inner, 2);
        let (outer_snap, _) = plant(&outer, 1);
        let out = run(fx.zfs_snap().arg("cleanup")).success();
        assert!(out.stdout.contains(&outer_snap), "{}", out.dump());
        assert!(out.stderr.contains("left alone"), "{}", out.dump());
        assert!(
            mounts().iter().any(|m| m.mount_point == inner_mount),
            "the outer root's cleanup unmounted {}\n{}",
            inner_mount.display(),
            out.dump()
        );
        assert_exists(&[&inner_snap]);

        let (outer_snap, outer_mount) = plant(&outer, 1);
        let out = run(fx.zfs_snap_at(&inner).arg("cleanup")).success();
        assert!(out.stdout.contains(&inner_snap), "{}", out.dump());
        assert!(mounts().iter().any(|m| m.mount_point == outer_mount));
        assert_exists(&[&outer_snap]);
        std::fs::remove_dir_all(&inner).unwrap();
        run(fx.zfs_snap().arg("cleanup")).success();
        fx.assert_clean();
    }
}

/// Case 2: `/run/zfs-snap/`, `/run/./zfs-snap` and a path through a
/// symlinked parent are one runtime root: the ownership value a run writes
/// names its canonical path, so a run under any spelling recovers another's.
#[test]
fn every_spelling_of_the_runtime_root_is_one_root() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let log = fx.work.join("zfs.log");
    let zfs_cmd = fx.script(
        "zfs-logged",
        &format!(
            "printf '%s\\n' \"$*\" >> {}\nexec zfs \"$@\"",
            sh_quote(&log)
        ),
    );
    let link = fx.work.join("run-link");
    std::os::unix::fs::symlink(fx.root.parent().unwrap(), &link).unwrap();
    let name = fx.root.file_name().unwrap().to_str().unwrap().to_owned();
    let parent = fx.root.parent().unwrap().display().to_string();
    let spellings = [
        format!("{}/", fx.root.display()),
        format!("{parent}/./{name}"),
        format!("{}/{name}", link.display()),
    ];
    for (i, spelling) in spellings.iter().enumerate() {
        let mut cmd = fx.zfs_snap_at(spelling);
        cmd.args(["--zfs-command", &zfs_cmd.display().to_string()])
            .args([
                "wrap",
                "--",
                "borg",
                "create",
                &fx.repo.at(&format!("s{i}")),
                &source,
            ]);
        run(&mut cmd).success();
        let calls = read_log(&log);
        let snapshot_call = calls
            .lines()
            .rfind(|l| l.starts_with("snapshot "))
            .expect("a snapshot call");
        assert!(
            snapshot_call.contains(&format!(":{} ", fx.root.display())),
            "{spelling}: the ownership value does not name {}: {snapshot_call}",
            fx.root.display()
        );
        fx.assert_clean();
    }
}

/// Case 3: `ZFS_SNAP_BORG` (and `--borg`) choose the real borg only behind
/// zfs-snap's own `borg` link; a borg program the user names after `--`
/// (a wrapper adding nice, ionice, credentials) is the one that runs.
#[test]
fn zfs_snap_borg_never_replaces_the_borg_the_user_named() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let log = fx.work.join("wrapper.log");
    let real = which("borg").expect("borg on PATH");
    let wrapper = fx.script(
        "borg-wrapper",
        &format!(
            "printf '%s\\n' \"$1\" >> {}\nexec {} \"$@\"",
            sh_quote(&log),
            sh_quote(&real)
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.env("ZFS_SNAP_BORG", &real)
        .arg("wrap")
        .arg("--")
        .arg(&wrapper)
        .args(["create", &fx.repo.at("env"), &source]);
    run(&mut cmd).success();
    assert!(
        read_log(&log).lines().any(|l| l == "create"),
        "the wrapper did not run"
    );

    let mut cmd = fx.zfs_snap();
    cmd.args(["wrap", "--borg", &real.display().to_string(), "--"])
        .arg(&wrapper)
        .args(["create", &fx.repo.at("flag"), &source]);
    run(&mut cmd).success();
    let creates = read_log(&log).lines().filter(|l| *l == "create").count();
    assert_eq!(creates, 2, "--borg replaced the named wrapper");

    // Behind the link, the variable is what chooses: here the wrapper.
    let link_dir = fx.work.join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(zfs_snap_bin(), link_dir.join("borg")).unwrap();
    let mut link = fx.with_borg_env(std::process::Command::new(link_dir.join("borg")));
    link.env("ZFS_SNAP_RUNTIME_ROOT", &fx.root)
        .env("ZFS_SNAP_BORG", &wrapper)
        .args(["create", &fx.repo.at("link"), &source]);
    run(&mut link).success();
    let creates = read_log(&log).lines().filter(|l| *l == "create").count();
    assert_eq!(
        creates, 3,
        "behind the link, ZFS_SNAP_BORG chooses the borg"
    );
    fx.assert_clean();
}

/// Case 4: a run's snapshot name has an unpredictable part (a `-r` hold,
/// release or destroy on `<pool>@<name>` acts on every snapshot of that
/// name), and two runs in one second differ.
#[test]
fn snapshot_names_are_unpredictable() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let log = fx.work.join("zfs.log");
    let zfs_cmd = fx.script(
        "zfs-logged",
        &format!(
            "printf '%s\\n' \"$*\" >> {}\nexec zfs \"$@\"",
            sh_quote(&log)
        ),
    );
    for archive in ["a", "b"] {
        fx.wrap(
            &["--zfs-command", &zfs_cmd.display().to_string()],
            &["create", &fx.repo.at(archive), &source],
        )
        .success();
    }
    let names: Vec<String> = read_log(&log)
        .lines()
        .filter(|l| l.starts_with("snapshot "))
        .map(|l| l.rsplit_once('@').expect("dataset@name").1.to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_ne!(names[0], names[1]);
    for name in &names {
        // zfs-snap-<UTC>-<pid>-<16 hex digits>
        let random = name.rsplit('-').next().unwrap();
        assert!(
            random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "no unpredictable part in {name}"
        );
    }
    fx.assert_clean();
}

/// Case 5: a `zfs hold` killed after the kernel placed the holds: the run
/// fails, and releases and destroys its snapshots itself.
#[test]
fn killed_hold_call_is_torn_down_by_the_same_run() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let zfs_cmd = fx.script(
        "zfs-hold-killed",
        "zfs \"$@\"; rc=$?\nif [ \"$1\" = hold ]; then kill -KILL $$; fi\nexit $rc",
    );
    let out = fx
        .wrap(
            &["--zfs-command", &zfs_cmd.display().to_string()],
            &["create", &fx.repo.at("a"), &source],
        )
        .expect_code(2);
    assert!(fx.repo.archives().is_empty(), "{}", out.dump());
    fx.assert_clean();
}

/// Case 6: a `zfs get` of the candidates that is killed is an error, not
/// "none of them is ours": the run stops before snapshotting, writes no
/// clean mark, and the next run removes the leftover.
#[test]
fn killed_owner_lookup_fails_the_run() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let leftover = format!("{}@zfs-snap-20260101T000000Z-1", fx.pool.ds("data"));
    fx.plant_leftover(&leftover);
    let zfs_cmd = fx.script(
        "zfs-get-killed",
        "if [ \"$1\" = get ]; then kill -KILL $$; fi\nexec zfs \"$@\"",
    );
    let out = fx
        .wrap(
            &["--zfs-command", &zfs_cmd.display().to_string()],
            &["create", &fx.repo.at("a"), &source],
        )
        .expect_code(2);
    assert!(
        out.stderr.contains("zfs get") || out.stderr.contains("get -H"),
        "{}",
        out.dump()
    );
    assert!(!fx.root.join("clean").exists(), "{}", out.dump());
    assert_eq!(fx.owned_snapshots(), vec![leftover.clone()]);

    let out = fx
        .wrap(&[], &["create", &fx.repo.at("b"), &source])
        .success();
    out.expect_stderr("removed what an earlier run left behind");
    fx.assert_clean();
}

/// Case 7: a leftover marked for deferred destroy disappears when its hold
/// is released; recovery counts that as destroyed, not as a failure.
#[test]
fn leftover_gone_after_its_release_is_destroyed_not_an_error() {
    let fx = require_zfs!();
    let source = data_dataset(&fx);
    let leftover = format!("{}@zfs-snap-20260101T000000Z-1", fx.pool.ds("data"));
    fx.plant_leftover(&leftover);
    zfs(&["destroy", "-d", &leftover]);
    assert_eq!(
        fx.owned_snapshots(),
        vec![leftover.clone()],
        "held: still there"
    );
    let out = run(fx.zfs_snap().args(["--backend", "libzetta", "cleanup"])).success();
    assert!(out.stdout.contains(&leftover), "{}", out.dump());
    fx.assert_clean();

    fx.plant_leftover(&leftover);
    zfs(&["destroy", "-d", &leftover]);
    fx.wrap(
        &["--backend", "command"],
        &["create", &fx.repo.at("a"), &source],
    )
    .success();
    fx.assert_clean();
}
