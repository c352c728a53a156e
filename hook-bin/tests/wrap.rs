//! `zfs-snap wrap` end to end with real borg 1.4 against the fake zfs.

mod support;

use std::fs;
use std::os::unix::process::CommandExt;

use support::*;

#[test]
fn archive_has_original_paths_and_the_snapshots_content() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("file.txt"), "before\n");
    w.write(&data.join("sub/deep.txt"), "deep\n");
    // Written right after the snapshot, before borg reads: must not show.
    w.edit(|s| {
        s["after_snapshot"] = serde_json::json!([
            [data.join("file.txt"), "after\n"],
            [data.join("new.txt"), "new\n"]
        ])
    });
    let out = w.create("a1", &[&data]);
    assert!(out.status.success());
    let paths = w.archive_paths("a1");
    let base = archived(&data);
    assert_eq!(
        paths,
        [
            base.clone(),
            format!("{base}/file.txt"),
            format!("{base}/sub"),
            format!("{base}/sub/deep.txt")
        ]
    );
    let extracted = w.extract("a1");
    assert_eq!(
        fs::read_to_string(extracted.join(&base).join("file.txt")).unwrap(),
        "before\n"
    );
    assert_eq!(
        fs::read_to_string(data.join("file.txt")).unwrap(),
        "after\n"
    );
    w.assert_clean();
    // One atomic snapshot call carrying our ownership property, one hold.
    let calls = w.calls();
    let snapshots: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("zfs snapshot"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{calls}");
    assert!(snapshots[0].contains(&format!("-o {OWNER}=")), "{calls}");
    assert!(
        calls.contains("zfs hold -r zfs-snap tank@zfs-snap-"),
        "{calls}"
    );
}

#[test]
fn nested_children_non_zfs_paths_and_tags_together() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let child = w.dataset("tank/data/child", "tank/data/child");
    let tagged = w.dataset("tank/tagged", "elsewhere/tagged");
    w.tag("tank/tagged");
    w.write(&data.join("a"), "a");
    w.write(&child.join("b"), "b");
    w.write(&tagged.join("c"), "c");
    let plain = w.dir.path().join("plain");
    w.write(&plain.join("d"), "d");
    let out = w.create("a", &[&data, &plain]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("is not on ZFS"),
        "the live path is noted"
    );
    let paths = w.archive_paths("a");
    for expected in [
        data.join("a"),
        child.join("b"),
        tagged.join("c"),
        plain.join("d"),
    ] {
        assert!(
            paths.contains(&archived(&expected)),
            "{} missing from {paths:?}",
            expected.display()
        );
    }
    assert_eq!(w.snapshot_calls(), 1, "one pool, one call");
    w.assert_clean();
}

/// The archive made through the wrapper lists exactly the paths plain
/// borg stores over the live tree, for every pattern style, with -x too.
#[test]
fn patterns_of_every_style_act_as_on_the_live_tree() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let child = w.dataset("tank/data/child", "tank/data/child");
    for f in [
        "keep.txt",
        "x.pyc",
        "cache/c1",
        "cache/sub/c2",
        "logs/a.log",
        "logs/keep/b.log",
        "deep/node_modules/m",
    ] {
        w.write(&data.join(f), f);
    }
    w.write(&child.join("child.txt"), "c");
    w.write(&child.join("tmp/t"), "t");
    let d = archived(&data);
    let patterns_file = w.dir.path().join("patterns.lst");
    w.write(
        &patterns_file,
        &format!(
            "# test\nP fm\n+ {d}/logs/keep\n- {d}/logs\nP sh\n! **/node_modules\n- re:child/tmp$\n"
        ),
    );
    let exclude_file = w.dir.path().join("excludes.txt");
    w.write(&exclude_file, "*.pyc\n# comment\n\n");
    let repo = w.repo();
    let common = [
        "--exclude-from".to_owned(),
        exclude_file.display().to_string(),
        "-e".to_owned(),
        format!("pp:/{d}/cache/sub"),
        format!("--exclude=re:^{}/cache/c1$", regex_escape(&d)),
        "--patterns-from".to_owned(),
        patterns_file.display().to_string(),
        // A user pattern that would swallow the mirror if applied to it.
        format!("--exclude=sh:{}/**", archived(&w.runtime_root)),
    ];
    // (-x needs real mounts, which the fake does not make: the VM suite
    // compares it on real ZFS.)
    let mut plain = vec!["create".to_owned()];
    plain.extend(common.iter().cloned());
    plain.push(format!("{repo}::plain1"));
    plain.push(data.display().to_string());
    let plain_refs: Vec<&str> = plain.iter().map(String::as_str).collect();
    w.borg(&plain_refs);
    let mut wrapped = vec!["wrap".to_owned(), "--".to_owned(), "borg".to_owned()];
    wrapped.extend(plain.iter().map(|a| a.replace("::plain", "::wrapped")));
    let out = run(w.cmd().args(&wrapped));
    assert!(out.status.success());
    assert_eq!(w.archive_paths("plain1"), w.archive_paths("wrapped1"));
    w.assert_clean();
    // The patterns did something.
    let paths = w.archive_paths("plain1");
    assert!(paths.contains(&format!("{d}/logs/keep/b.log")));
    assert!(!paths.iter().any(|p| p.ends_with(".pyc")
        || p.contains("cache/")
        || p.contains("node_modules")
        || p.ends_with("child/tmp")));
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

#[test]
fn second_run_finds_files_unchanged_in_borgs_cache() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    for i in 0..5 {
        let file = data.join(format!("f{i}"));
        w.write(&file, &"x".repeat(1000 + i));
        // borg does not cache files modified within the last second.
        let touched = std::process::Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(&file)
            .status();
        assert!(touched.unwrap().success());
    }
    // borg never caches the file with the newest mtime of a backup.
    w.write(&data.join("newest"), "n");
    let repo = w.repo();
    for archive in ["r1", "r2"] {
        // The fake mounts by copying, so inodes and ctimes change between
        // runs; keying the files cache on mtime and size leaves the path as
        // the thing under test. (Real snapshots keep inodes: the VM suite
        // checks borg's default mode.)
        let out = run(w
            .cmd()
            .args([
                "wrap",
                "--",
                "borg",
                "create",
                "--list",
                "--files-cache=mtime,size",
                &format!("{repo}::{archive}"),
            ])
            .arg(&data));
        assert!(out.status.success());
        if archive == "r2" {
            let listed = stderr(&out);
            let files: Vec<&str> = listed.lines().filter(|l| l.contains("/f")).collect();
            assert_eq!(files.len(), 5, "{listed}");
            assert!(
                files.iter().all(|l| l.starts_with("U ")),
                "not unchanged:\n{listed}"
            );
        }
    }
    w.assert_clean();
}

#[test]
fn borg_failure_comes_back_and_nothing_is_left() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let missing = w.dir.path().join("no-such-repo");
    let out = run(w
        .cmd()
        .args([
            "wrap",
            "--",
            "borg",
            "create",
            &format!("{}::a", missing.display()),
        ])
        .arg(&data));
    assert_eq!(out.status.code(), Some(2));
    w.assert_clean();
}

#[test]
fn other_borg_commands_and_dry_run_pass_through() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let repo = w.repo();
    let out = run(w.cmd().args(["wrap", "--", "borg", "list", &repo]));
    assert!(out.status.success());
    let out = run(w
        .cmd()
        .args([
            "wrap",
            "--",
            "borg",
            "create",
            "--dry-run",
            &format!("{repo}::dry"),
        ])
        .arg(&data));
    assert!(out.status.success());
    assert_eq!(w.snapshot_calls(), 0, "no snapshot for list or --dry-run");
}

#[test]
fn borg_link_acts_as_the_wrapper() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("f"), "f");
    let repo = w.repo();
    let links = w.dir.path().join("links");
    fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), links.join("borg")).unwrap();
    let path = format!("{}:{}", links.display(), std::env::var("PATH").unwrap());
    // Real borg found on PATH after the link, which is skipped.
    let out = run(w
        .cmd()
        .env("PATH", &path)
        .arg0("borg")
        .args(["create", &format!("{repo}::l1")])
        .arg(&data));
    assert!(out.status.success());
    let mut link = std::process::Command::new(links.join("borg"));
    for (k, v) in w.cmd().get_envs() {
        match v {
            Some(v) => link.env(k, v),
            None => link.env_remove(k),
        };
    }
    let out = run(link
        .env("PATH", &path)
        .current_dir(w.dir.path())
        .args(["create", &format!("{repo}::l2")])
        .arg(&data));
    assert!(out.status.success());
    assert!(w.archive_paths("l2").contains(&archived(&data.join("f"))));
    assert_eq!(w.snapshot_calls(), 2);
    w.assert_clean();
}

/// A `borg` script on PATH that calls `borg` finds our link again: the
/// loop is refused with a message, not run until the machine gives out.
#[test]
fn borg_script_calling_borg_through_the_link_is_refused() {
    need!(Need::Borg);
    let w = World::new();
    let links = w.dir.path().join("links");
    let shims = w.dir.path().join("shims");
    fs::create_dir_all(&links).unwrap();
    fs::create_dir_all(&shims).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), links.join("borg")).unwrap();
    let shim = shims.join("borg");
    fs::write(&shim, "#!/bin/sh\nexec borg \"$@\"\n").unwrap();
    fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}:{}",
        links.display(),
        shims.display(),
        std::env::var("PATH").unwrap()
    );
    let out = run(w
        .cmd()
        .env("PATH", &path)
        .env_remove("ZFS_SNAP_BORG")
        .arg0("borg")
        .arg("--version"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a `borg` script on PATH calls `borg`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn relative_paths_are_stored_relative_like_plain_borg() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("sub/f"), "f");
    let repo = w.repo();
    let out = run(w.cmd().current_dir(&data).args([
        "wrap",
        "--",
        "borg",
        "create",
        &format!("{repo}::rel"),
        "sub",
    ]));
    assert!(out.status.success());
    assert_eq!(w.archive_paths("rel"), ["sub", "sub/f"]);
    w.assert_clean();
}

/// No value a user can set is read as a field separator, and a dataset zfs
/// cannot print is a warning naming it (issue 19, item 8): a mountpoint
/// holding a tab and a tag holding a line break (forging a line that tags
/// another dataset) stop nothing, and forge nothing.
#[test]
fn free_text_in_another_datasets_values_does_not_stop_the_backup() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("a.txt"), "a\n");
    let other = w.dataset("tank/other", "tank/other");
    w.write(&other.join("o.txt"), "o\n");
    w.dataset_with(
        "tank/odd",
        "odd",
        serde_json::json!({
            "mountpoint": "/srv/t\tab",
            "props": {TAG: "no\ntank/other\tauto\t-\n"},
        }),
    );
    let out = w.create("a", &[&data]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = w.archive_paths("a");
    assert!(
        listed.contains(&archived(&data.join("a.txt"))),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|p| p.contains("tank/other")),
        "a tag forged by a line break in another value selected tank/other: {listed:?}"
    );
    w.assert_clean();

    // A value zfs cannot encode (a byte that is not UTF-8): zfs stops its
    // JSON there. That dataset is named and left out; the rest goes on.
    w.tag("tank/other");
    let state = w.dir.path().join("state.json");
    let text = fs::read_to_string(&state).unwrap();
    let text = text.replace("\"no\\ntank/other\\tauto\\t-\\n\"", "\"bad \\udcff byte\"");
    fs::write(&state, text).unwrap();
    let out = w.create("b", &[&data]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("tank/odd") && err.contains("left out of discovery"),
        "{err}"
    );
    let listed = w.archive_paths("b");
    assert!(
        listed.contains(&archived(&data.join("a.txt"))),
        "{listed:?}"
    );
    assert!(
        listed.contains(&archived(&other.join("o.txt"))),
        "the tagged dataset after the bad one is still read: {listed:?}"
    );
    let text = fs::read_to_string(&state).unwrap().replace("\\udcff", "?");
    fs::write(&state, text).unwrap();
    w.assert_clean();
}

/// With `--read-special`, a named pipe below a root is read live, whether
/// the root is given absolute, relative or with the user's `/./`: a pipe's
/// copy in a snapshot has no writer, and borg would wait for ever.
#[test]
fn a_pipe_read_with_read_special_is_read_live_however_its_root_is_spelled() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("dumps/manifest.json"), "{}\n");
    let pipe = data.join("dumps/db");
    let status = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap();
    assert!(status.success());
    let parent = data.parent().unwrap();
    for (n, (cwd, root)) in [
        (parent, data.display().to_string()),
        (parent, "data".to_owned()),
        (data.as_path(), "./dumps".to_owned()),
        (parent, format!("{}/./dumps", data.display())),
    ]
    .into_iter()
    .enumerate()
    {
        let mut writer = std::process::Command::new("sh")
            .args([
                "-c",
                // A pause after each close, for the reader to see its end.
                "trap '' PIPE; while :; do printf 'the dump\\n' > \"$1\"; sleep 1; done",
                "sh",
            ])
            .arg(&pipe)
            .spawn()
            .unwrap();
        let archive = format!("p{n}");
        let mut cmd = w.cmd();
        cmd.current_dir(cwd)
            .args(["wrap", "--", "borg", "create", "--read-special"])
            .arg(format!("{}::{archive}", w.repo()))
            .arg(&root)
            .process_group(0);
        let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(120));
        let _ = writer.kill();
        let _ = writer.wait();
        let out =
            out.unwrap_or_else(|| panic!("{root}: borg still waits on the pipe's snapshot copy"));
        assert!(out.status.success(), "{root}: {}", stderr(&out));
        let stored = w
            .archive_paths(&archive)
            .into_iter()
            .find(|p| p.ends_with("dumps/db"))
            .unwrap_or_else(|| panic!("{root}: no dumps/db in {:?}", w.archive_paths(&archive)));
        let extracted = w.extract(&archive);
        assert_eq!(
            fs::read_to_string(extracted.join(&stored)).unwrap(),
            "the dump\n",
            "{root}"
        );
        w.assert_clean();
    }
}
