//! Issue 9's cases on real ZFS: each command line archived by plain borg
//! over the live tree and through zfs-snap from snapshots, from the same
//! working directory; the path lists must be equal.

use std::path::Path;

use integration::*;

/// `<pool>/data` with `dir/{a,b}`, `dir/sub/c`, `child/{d,e}` and a nested
/// dataset `data/kid` with `k`: 12 paths below `data` in all.
fn tree(fx: &Fixture) -> String {
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.dataset("data/kid", &[]);
    for f in [
        "dir/a",
        "dir/b",
        "dir/sub/c",
        "child/d",
        "child/e",
        "kid/k",
        "top",
    ] {
        p.write(&format!("data/{f}"), &format!("{f}\n"));
    }
    p.path("data").display().to_string()
}

/// Runs `borg create ARGS` plainly and through zfs-snap in `cwd` (into
/// archives `plain-<name>` and `wrapped-<name>`); returns both path lists.
#[track_caller]
fn both(fx: &Fixture, name: &str, cwd: &Path, args: &[&str]) -> (Vec<String>, Vec<String>) {
    let plain_at = fx.repo.at(&format!("plain-{name}"));
    let wrapped_at = fx.repo.at(&format!("wrapped-{name}"));
    let with_archive = |at: &str| -> Vec<String> {
        args.iter()
            .map(|a| {
                if *a == "ARCHIVE" {
                    at.to_owned()
                } else {
                    (*a).to_owned()
                }
            })
            .collect()
    };
    let mut plain = fx.repo.borg();
    plain
        .current_dir(cwd)
        .arg("create")
        .args(with_archive(&plain_at));
    run(&mut plain).success();
    let mut wrapped = fx.zfs_snap();
    wrapped
        .current_dir(cwd)
        .args(["wrap", "--", "borg", "create"])
        .args(with_archive(&wrapped_at));
    let out = run(&mut wrapped).success();
    fx.assert_clean();
    let want = fx.repo.list(&format!("plain-{name}"));
    let got = fx.repo.list(&format!("wrapped-{name}"));
    assert!(!want.is_empty(), "{name}: plain borg archived nothing");
    assert_same_paths(&got, &want, &format!("{name}\n{}", out.dump()));
    (want, got)
}

/// Case 1: empty patterns (`-e ''`, an empty `$VAR`, `- fm:`, `- pp:`,
/// `- sh:`) match only the path `.` in borg; through zfs-snap they used to
/// exclude the whole mirror, and borg made an empty archive with exit 0.
#[test]
fn empty_patterns_exclude_nothing() {
    let fx = require_zfs!();
    let data = tree(&fx);
    let work = fx.work.clone();
    let (want, _) = both(&fx, "e", &work, &["-e", "", "ARCHIVE", &data]);
    assert_eq!(want.len(), 12, "{want:#?}");
    let var = std::env::var("ZFS_SNAP_UNSET_VARIABLE").unwrap_or_default();
    both(&fx, "var", &work, &["--exclude", &var, "ARCHIVE", &data]);
    for (i, pattern) in ["- fm:", "- pp:", "- sh:", "! pf:"].iter().enumerate() {
        both(
            &fx,
            &format!("p{i}"),
            &work,
            &["--pattern", pattern, "ARCHIVE", &data],
        );
    }
    let file = write_file(&fx.work.join("ex.lst"), "\n  \nfm:\n# comment\npp:\n");
    both(
        &fx,
        "file",
        &work,
        &[
            "--exclude-from",
            &file.display().to_string(),
            "ARCHIVE",
            &data,
        ],
    );
}

/// Case 2: a relative root with `..` stores what plain borg stores
/// (`child/...`), not the runtime path.
#[test]
fn relative_root_with_dotdot_stores_the_same_paths() {
    let fx = require_zfs!();
    tree(&fx);
    let dir = fx.pool.path("data/dir");
    let (want, _) = both(&fx, "up", &dir, &["ARCHIVE", "../child"]);
    assert!(want.contains(&"child/d".to_owned()), "{want:#?}");
    both(
        &fx,
        "up-kid",
        &dir,
        &["ARCHIVE", "../kid", "sub", "../dir/./sub"],
    );
    let deep = fx.pool.path("data/dir/sub");
    both(&fx, "up2", &deep, &["ARCHIVE", "../../child", "../../kid/"]);
}

/// Case 3: the user's own `/./` (borg strips at the first marker).
#[test]
fn the_users_own_slashdot_is_kept() {
    let fx = require_zfs!();
    let data = tree(&fx);
    let work = fx.work.clone();
    let (want, _) = both(&fx, "dot", &work, &["ARCHIVE", &format!("{data}/./dir")]);
    assert!(want.contains(&"dir/sub/c".to_owned()), "{want:#?}");
    both(
        &fx,
        "dot2",
        &work,
        &[
            "ARCHIVE",
            &format!("{data}/./dir/./sub"),
            &format!("{data}/./kid"),
        ],
    );
    both(
        &fx,
        "dot-rel",
        &fx.pool.mountpoint(),
        &["ARCHIVE", "data/./child"],
    );
}

/// From reading the code: `-` (stdin) next to other roots, and
/// `--content-from-command`, pass through with the other roots handled as
/// usual; an empty PATH is refused by borg, so zfs-snap makes no archive.
#[test]
fn stdin_content_from_command_and_an_empty_path() {
    let fx = require_zfs!();
    let data = tree(&fx);
    let work = fx.work.clone();
    let stdin = write_file(&fx.work.join("stdin.txt"), "from stdin\n");
    let mut plain = fx.repo.borg();
    plain
        .current_dir(&work)
        .args([
            "create",
            "--stdin-name",
            "piped",
            &fx.repo.at("plain-stdin"),
            "-",
            &data,
        ])
        .stdin(std::fs::File::open(&stdin).unwrap());
    run(&mut plain).success();
    let mut wrapped = fx.zfs_snap();
    wrapped
        .current_dir(&work)
        .args(["wrap", "--", "borg", "create", "--stdin-name", "piped"])
        .args([&fx.repo.at("wrapped-stdin"), "-", &data])
        .stdin(std::fs::File::open(&stdin).unwrap());
    let out = run(&mut wrapped).success();
    let want = fx.repo.list("plain-stdin");
    assert!(want.contains(&"piped".to_owned()), "{want:#?}");
    assert_same_paths(&fx.repo.list("wrapped-stdin"), &want, &out.dump());
    fx.assert_clean();

    let out = fx
        .wrap(
            &[],
            &[
                "create",
                "--content-from-command",
                "--stdin-name",
                "cmd",
                &fx.repo.at("cmd"),
                "--",
                "echo",
                "hi",
            ],
        )
        .success();
    assert_eq!(
        fx.repo.list("cmd"),
        vec!["cmd".to_owned()],
        "{}",
        out.dump()
    );
    assert!(fx.owned_snapshots().is_empty());

    let plain = run(fx
        .repo
        .borg()
        .args(["create", &fx.repo.at("plain-empty"), ""]));
    assert_eq!(plain.code(), 2, "{}", plain.dump());
    let out = fx.wrap(&[], &["create", &fx.repo.at("wrapped-empty"), ""]);
    assert_eq!(out.code(), 2, "{}", out.dump());
    assert!(!fx.repo.archives().contains(&"wrapped-empty".to_owned()));
    fx.assert_clean();
}

/// Case 4: a live root that contains the runtime root (here a tmpfs holding
/// it) does not archive zfs-snap's own state: not the mirror again under
/// its runtime path, not the lock or the work files; the archive is what
/// plain borg stored before zfs-snap ever ran there.
#[test]
fn a_live_root_containing_the_runtime_root_does_not_archive_it() {
    let fx = require_zfs!();
    let data = tree(&fx);
    let live = fx.work.join("live");
    std::fs::create_dir_all(&live).unwrap();
    must(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "live",
            &live.display().to_string(),
        ],
    );
    write_file(
        &live.join("etc/conf"),
        "conf
",
    );
    write_file(
        &live.join("keep/x"),
        "x
",
    );
    let root = live.join("rt");
    let live_s = live.display().to_string();
    let exclude = format!("{live_s}/keep");
    let args = ["-e", &exclude, "ARCHIVE", &live_s, &data];
    let with = |at: String| -> Vec<String> {
        args.iter()
            .map(|a| {
                if *a == "ARCHIVE" {
                    at.clone()
                } else {
                    (*a).to_owned()
                }
            })
            .collect()
    };
    let mut plain = fx.repo.borg();
    plain.arg("create").args(with(fx.repo.at("plain")));
    run(&mut plain).success();
    // Twice: the second run finds the lock, the mark and the cached borg
    // version of the first in the runtime root.
    for archive in ["wrapped", "again"] {
        let mut wrapped = fx.zfs_snap_at(&root);
        wrapped
            .args(["wrap", "--", "borg", "create"])
            .args(with(fx.repo.at(archive)));
        let out = run(&mut wrapped).success();
        out.expect_stderr("is inside the live path");
        assert_same_paths(&fx.repo.list(archive), &fx.repo.list("plain"), &out.dump());
        assert!(mounts_under(&root).is_empty(), "{}", out.dump());
    }
    assert!(fx.owned_snapshots().is_empty());
    must("umount", &[&live]);
}

/// Case 5: a dataset mounted below a file system that is not ZFS (a tmpfs)
/// below a snapshotted root: the tmpfs is read live (with a warning), the
/// dataset below it from its snapshot, in a mirror of its own (the parent's
/// read-only snapshot has no directory to mount it on).
#[test]
fn a_dataset_below_a_tmpfs_below_a_snapshot() {
    let fx = require_zfs!();
    let data = tree(&fx);
    let tmp = fx.pool.path("data/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    must(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "scratch",
            &tmp.display().to_string(),
        ],
    );
    write_file(
        &tmp.join("live.txt"),
        "live
",
    );
    let inner_at = tmp.join("inner");
    fx.pool
        .dataset("inner", &[&format!("mountpoint={}", inner_at.display())]);
    write_file(
        &inner_at.join("i.txt"),
        "inner
",
    );
    fx.pool.dataset("inner/deeper", &[]);
    write_file(
        &inner_at.join("deeper/d.txt"),
        "deeper
",
    );

    let work = fx.work.clone();
    let (want, _) = both(&fx, "tmpfs", &work, &["ARCHIVE", &data]);
    for p in ["tmp/live.txt", "tmp/inner/i.txt", "tmp/inner/deeper/d.txt"] {
        assert!(
            want.contains(&format!("{}/{p}", fx.pool.ds("data"))),
            "{p}: {want:#?}"
        );
    }
    both(
        &fx,
        "tmpfs-x",
        &work,
        &["--one-file-system", "ARCHIVE", &data],
    );
    let exclude = format!("{}/tmp/inner/deeper", data);
    both(&fx, "tmpfs-e", &work, &["-e", &exclude, "ARCHIVE", &data]);
    let out = fx
        .wrap(&[], &["create", &fx.repo.at("warned"), &data])
        .success();
    out.expect_stderr("read live, not from a snapshot");
    fx.assert_clean();

    zfs(&["unmount", &fx.pool.ds("inner/deeper")]);
    zfs(&["unmount", &fx.pool.ds("inner")]);
    must("umount", &[&tmp]);
}

#[path = "../../hook-bin/tests/support/generate.rs"]
mod generate;

/// Up to two bind mounts over a generated tree (DESIGN Discovery 7): a
/// directory bound onto another one, or onto itself as systemd's
/// `ProtectSystem=` does. From their own generator (seeded per tree), so
/// the trees and command lines stay those of the hermetic test. Returns
/// the targets, in the order mounted, and the commands for a failure's
/// report.
fn bind_some(
    tree_n: usize,
    dirs: &[std::path::PathBuf],
    live: &Path,
) -> (Vec<std::path::PathBuf>, Vec<String>) {
    let mut rng = generate::Rng(0x9e37_79b9_7f4a_7c15 ^ (tree_n as u64 + 1));
    let mut targets = Vec::new();
    let mut shown = Vec::new();
    for _ in 0..rng.below(3) {
        let from = live.join(rng.pick(dirs));
        let onto = if rng.chance(30) {
            from.clone()
        } else {
            live.join(rng.pick(dirs))
        };
        // An earlier bind may hide either.
        if !from.is_dir() || !onto.is_dir() {
            continue;
        }
        must(
            "mount",
            &[
                std::ffi::OsStr::new("--bind"),
                from.as_os_str(),
                onto.as_os_str(),
            ],
        );
        shown.push(format!(
            "mount --bind {} {}",
            generate::sh(from.as_os_str()),
            generate::sh(onto.as_os_str())
        ));
        targets.push(onto);
    }
    (targets, shown)
}

/// A sample of the hermetic differential test's generated trees and
/// command lines, on real datasets and snapshots (`ZFS_SNAP_DIFF_CASES`
/// runs more than the default 6), with bind mounts over the trees (which
/// the hermetic test cannot make).
#[test]
fn generated_command_lines_on_real_snapshots() {
    let fx = require_zfs!();
    let cases: usize = std::env::var("ZFS_SNAP_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut rng = generate::Rng(0x5eed_f00d);
    let live = fx.pool.mountpoint();
    let mut failures = Vec::new();
    let mut done = 0;
    let mut tree_n = 0;
    while done < cases {
        // Each tree in its own top dataset: `<pool>/tank<n>` stands for `tank`.
        let spec = generate::tree(&mut rng);
        let top = format!("tank{tree_n}");
        let rename = |p: &Path| -> std::path::PathBuf {
            let rest = p.strip_prefix("tank").expect("below tank");
            if rest.as_os_str().is_empty() {
                std::path::PathBuf::from(&top)
            } else {
                Path::new(&top).join(rest)
            }
        };
        for name in &spec.datasets {
            let rel = rename(Path::new(name));
            fx.pool
                .dataset(rel.to_str().expect("ZFS names are UTF-8"), &[]);
        }
        let mut moved = spec.clone();
        moved.entries = spec
            .entries
            .iter()
            .map(|(p, k)| (rename(p), k.clone()))
            .collect();
        moved.dirs = spec.dirs.iter().map(|d| rename(d)).collect();
        generate::materialize_at(&moved, &live, &top);
        let (binds, shown_binds) = bind_some(tree_n, &moved.dirs, &live);
        for _ in 0..3.min(cases - done) {
            let mut c = generate::case(&mut rng, &moved.dirs, &live, &fx.work, done);
            // Every other case with --one-file-system: only here are the
            // datasets real file systems, whose boundaries borg stops at
            // (the hermetic trees are one file system).
            if done % 2 == 1 {
                c.options.push(vec!["--one-file-system".into()]);
            }
            for (path, content) in &c.files {
                std::fs::write(path, content).unwrap();
            }
            let stdin = write_file(&fx.work.join("stdin.txt"), "from stdin\n");
            // With --read-special borg reads each named pipe: a writer for
            // each, for both runs.
            let writers = generate::reads_special(&c)
                .then(|| generate::Writers::start(&generate::fifos(&live)));
            let archive = |kind: &str| format!("{kind}-{done}");
            let mut plain = fx.repo.borg();
            plain
                .current_dir(&c.cwd)
                .args(generate::words(
                    &c,
                    &archive("plain"),
                    &fx.repo.path.display().to_string(),
                ))
                .stdin(std::fs::File::open(&stdin).unwrap());
            let plain = run(&mut plain);
            let mut wrapped = fx.zfs_snap();
            wrapped
                .current_dir(&c.cwd)
                .args(["wrap", "--", "borg"])
                .args(generate::words(
                    &c,
                    &archive("wrapped"),
                    &fx.repo.path.display().to_string(),
                ))
                .stdin(std::fs::File::open(&stdin).unwrap());
            let wrapped = run(&mut wrapped);
            drop(writers);
            let made = fx.repo.archives();
            let verdict = if plain.code() == 2 {
                made.contains(&archive("wrapped"))
                    .then(|| "plain borg refused, zfs-snap made an archive".to_owned())
            } else if !made.contains(&archive("wrapped")) {
                Some(format!("no archive through zfs-snap\n{}", wrapped.dump()))
            } else {
                let want = fx.repo.list(&archive("plain"));
                let got = fx.repo.list(&archive("wrapped"));
                (want != got).then(|| {
                    let missing: Vec<&String> = want.iter().filter(|p| !got.contains(p)).collect();
                    let extra: Vec<&String> = got.iter().filter(|p| !want.contains(p)).collect();
                    format!("missing {missing:?}\nextra {extra:?}")
                })
            };
            if let Some(why) = verdict {
                failures.push(format!(
                    "{}{}\n{why}",
                    shown_binds
                        .iter()
                        .map(|b| format!("{b} && "))
                        .collect::<String>(),
                    generate::show(&c)
                ));
            }
            fx.assert_clean();
            done += 1;
        }
        for target in binds.iter().rev() {
            must("umount", &[target]);
        }
        tree_n += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {done} generated cases archive differently through zfs-snap (not generated: {:?}):\n\n{}",
        failures.len(),
        generate::KNOWN,
        failures.join("\n\n")
    );
}
