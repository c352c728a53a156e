//! Differential test: generated trees and `borg create` command lines,
//! archived once by plain borg over the live tree and once through
//! `zfs-snap wrap` (fake zfs: each dataset's snapshot is a faithful copy,
//! mounted at its mirror path), compared by the archives' path lists
//! (`borg list`). Real borg is the oracle.
//!
//! Fixed seed; `ZFS_SNAP_DIFF_CASES=N` runs N cases per test (default a
//! few dozen, under 3 minutes in all), `ZFS_SNAP_DIFF_SEED=S` another seed.
//! A failing case is shrunk (options and roots dropped while the archives
//! still differ) and printed as a command line.
//!
//! Inputs zfs-snap is known to archive differently are not generated yet:
//! they are the open cases of issue 9, listed in `KNOWN`.

mod support;

#[path = "support/generate.rs"]
mod generate;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use generate::{show, words, Case, Rng, KNOWN};
use support::*;

/// One generated tree in a fresh world (fake datasets), for several cases.
struct Tree {
    world: World,
    dirs: Vec<PathBuf>,
}

fn tree(rng: &mut Rng) -> Tree {
    let world = World::new();
    let spec = generate::tree(rng);
    generate::materialize(&spec, &world.live);
    for name in &spec.datasets {
        world.dataset(name, name);
    }
    Tree {
        world,
        dirs: spec.dirs,
    }
}

fn case(rng: &mut Rng, t: &Tree, n: usize) -> Case {
    generate::case(rng, &t.dirs, &t.world.live, t.world.dir.path(), n)
}

fn borg_cmd(w: &World, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("BORG_PASSPHRASE", "")
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_BASE_DIR", w.dir.path().join("borg-home"));
    cmd
}

/// The archive's paths, or why there is no archive.
fn archive(w: &World, name: &str) -> Result<Vec<String>, String> {
    let out = borg_cmd(w, Path::new("borg"))
        .args([
            "list",
            "--format",
            "{path}{NL}",
            &format!("{}::{name}", w.repo()),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    paths.sort();
    Ok(paths)
}

/// Runs `c` both ways; `None` when the archives agree (or borg itself
/// refuses the command line), else a description of the difference.
fn differs(w: &World, c: &Case, id: &str) -> Option<String> {
    differs_with(w, c, id, &[])
}

/// [`differs`], with `sabotage` added to zfs-snap's borg options only.
fn differs_with(w: &World, c: &Case, id: &str, sabotage: &[&str]) -> Option<String> {
    oracles().iter().enumerate().find_map(|(n, borg)| {
        differs_by(w, c, &format!("{id}-b{n}"), sabotage, borg)
            .map(|why| format!("with {}:\n{why}", borg.display()))
    })
}

/// The borgs to compare with: `ZFS_SNAP_DIFF_BORGS` (paths separated by
/// `:`; CI gives Debian's 1.4.0 and PyPI's current 1.4.x), else `borg`.
fn oracles() -> &'static [PathBuf] {
    static ORACLES: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    ORACLES.get_or_init(|| match std::env::var_os("ZFS_SNAP_DIFF_BORGS") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => vec![PathBuf::from("borg")],
    })
}

fn differs_by(w: &World, c: &Case, id: &str, sabotage: &[&str], borg: &Path) -> Option<String> {
    for (path, content) in &c.files {
        fs::write(path, content).unwrap();
    }
    let repo = w.repo();
    let stdin = w.dir.path().join("stdin-content");
    fs::write(&stdin, "from stdin\n").unwrap();
    // With --read-special borg reads each named pipe: a writer for each,
    // for both runs, as a database dump streams into borgmatic's pipe.
    let _writers =
        generate::reads_special(c).then(|| generate::Writers::start(&generate::fifos(&w.live)));
    let plain = borg_cmd(w, borg)
        .current_dir(&c.cwd)
        .args(words(c, &format!("plain-{id}"), &repo))
        .stdin(fs::File::open(&stdin).unwrap())
        .output()
        .unwrap();
    let wrapped = w
        .cmd()
        .current_dir(&c.cwd)
        .args(["wrap", "--"])
        .arg(borg)
        .arg("create")
        .args(sabotage)
        .args(&words(c, &format!("wrapped-{id}"), &repo)[1..])
        .stdin(fs::File::open(&stdin).unwrap())
        .output()
        .unwrap();
    if plain.status.code() == Some(2) {
        // borg refuses the command line: so must the run through zfs-snap.
        return archive(w, &format!("wrapped-{id}")).ok().map(|got| {
            format!(
                "plain borg refused ({}), zfs-snap made an archive: {got:?}",
                String::from_utf8_lossy(&plain.stderr).trim()
            )
        });
    }
    // A root that does not exist is borg's warning either way (exit 1).
    let missing_root = c
        .roots
        .iter()
        .any(|r| !r.is_empty() && r != "-" && fs::symlink_metadata(c.cwd.join(r)).is_err())
        || c.files.iter().any(|(_, text)| text.contains("zz-gone"));
    if missing_root && plain.status.code() != wrapped.status.code() {
        return Some(format!(
            "a root does not exist: plain borg exited {}, zfs-snap {}\n{}",
            plain.status,
            wrapped.status,
            String::from_utf8_lossy(&wrapped.stderr)
        ));
    }
    let want = archive(w, &format!("plain-{id}"));
    let got = archive(w, &format!("wrapped-{id}"));
    match (want, got) {
        (Ok(want), Ok(got)) if want == got => None,
        (Ok(want), Ok(got)) => {
            let missing: Vec<&String> = want.iter().filter(|p| !got.contains(p)).collect();
            let extra: Vec<&String> = got.iter().filter(|p| !want.contains(p)).collect();
            Some(format!("missing {missing:?}\nextra {extra:?}"))
        }
        (Ok(_), Err(e)) => Some(format!(
            "plain borg made an archive, zfs-snap did not ({}): {e}\n{}",
            wrapped.status,
            String::from_utf8_lossy(&wrapped.stderr)
        )),
        (Err(e), _) => {
            eprintln!(
                "no plain archive ({}): {e}\n{}",
                plain.status,
                String::from_utf8_lossy(&plain.stderr)
            );
            None
        }
    }
}

/// Drops options and roots while the archives still differ.
fn shrink(w: &World, c: Case, n: usize) -> (Case, String) {
    shrink_with(w, c, n, &[])
}

fn shrink_with(w: &World, mut c: Case, mut n: usize, sabotage: &[&str]) -> (Case, String) {
    let mut why = differs_with(w, &c, &format!("s{n}"), sabotage).unwrap_or_default();
    loop {
        let mut smaller = None;
        for i in 0..c.options.len() + c.roots.len() {
            let mut t = c.clone();
            if i < c.options.len() {
                t.options.remove(i);
            } else if c.roots.len() > 1 {
                t.roots.remove(i - c.options.len());
            } else {
                continue;
            }
            n += 1;
            if let Some(w2) = differs_with(w, &t, &format!("s{n}"), sabotage) {
                smaller = Some((t, w2));
                break;
            }
        }
        match smaller {
            Some((t, w2)) => {
                c = t;
                why = w2;
            }
            None => return (c, why),
        }
    }
}

fn run_cases(test_seed: u64) {
    need!(Need::Borg);
    let cases: usize = std::env::var("ZFS_SNAP_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("ZFS_SNAP_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = Rng(seed ^ (test_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let per_tree = 4;
    let mut done = 0;
    let mut failures = Vec::new();
    while done < cases {
        let t = tree(&mut rng);
        for _ in 0..per_tree.min(cases - done) {
            let c = case(&mut rng, &t, done);
            if differs(&t.world, &c, &done.to_string()).is_some() {
                let (small, why) = shrink(&t.world, c, done * 1000);
                failures.push(format!("{}\n{why}", show(&small)));
            }
            done += 1;
        }
    }
    eprintln!(
        "differential: {done} cases (seed {seed}, test {test_seed}) against {:?}; not generated: {KNOWN:?}",
        oracles()
    );
    assert!(
        failures.is_empty(),
        "{} of {done} cases archive differently through zfs-snap:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The oracle can fail: an exclude given to zfs-snap's borg only is seen.
#[test]
fn a_difference_is_detected_and_shrunk() {
    need!(Need::Borg);
    let mut rng = Rng(7);
    let t = tree(&mut rng);
    let c = Case {
        cwd: t.world.dir.path().to_owned(),
        options: Vec::new(),
        roots: vec![t.world.live.join("tank").into()],
        files: Vec::new(),
    };
    assert!(differs(&t.world, &c, "same").is_none());
    assert!(
        !archive(&t.world, "plain-same-b0").unwrap().is_empty(),
        "an empty archive proves nothing"
    );
    let why = differs_with(&t.world, &c, "sabotaged", &["-e", "*"]).expect("a difference");
    assert!(why.contains("missing"), "{why}");
    // And the shrinker keeps the case failing while it drops the rest.
    let mut wide = c.clone();
    wide.options.push(vec!["-e".into(), "*".into()]);
    wide.options
        .push(vec!["--exclude-if-present".into(), ".nobackup".into()]);
    let (small, _) = shrink_with(&t.world, wide, 0, &["-e", "*"]);
    assert!(small.options.len() <= 1, "{:?}", small.options);
}

#[test]
fn generated_command_lines_archive_what_plain_borg_archives_1() {
    run_cases(1);
}

#[test]
fn generated_command_lines_archive_what_plain_borg_archives_2() {
    run_cases(2);
}

/// Found by the VM sample: borg 1.4 fails (exit 2) on a PATH that is not
/// UTF-8 (it keeps its command line in the archive's metadata); zfs-snap
/// used to mangle it and archive the rest. It refuses it, naming it.
#[test]
fn a_path_that_is_not_utf8_is_refused_like_borg_refuses_it() {
    use std::os::unix::ffi::OsStringExt;
    need!(Need::Borg);
    let w = World::new();
    let top = w.dataset("tank", "tank");
    let odd = top.join(std::ffi::OsString::from_vec(b"raw\xffbyte".to_vec()));
    fs::create_dir_all(&odd).unwrap();
    fs::write(odd.join("f"), "f").unwrap();
    let c = Case {
        cwd: w.dir.path().to_owned(),
        options: Vec::new(),
        roots: vec![odd.into_os_string(), top.clone().into_os_string()],
        files: Vec::new(),
    };
    assert!(differs(&w, &c, "odd").is_none());
    let out = w.create(
        "direct",
        &[&top.join(std::ffi::OsString::from_vec(b"raw\xffbyte".to_vec()))],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not valid UTF-8"),
        "{}",
        stderr(&out)
    );
    assert!(w.snapshot_names().is_empty());
}

/// Found by the long run (3 of 2,000 cases): from a cwd inside the tree, a
/// root `../tank` and a pattern `*/tank`, whose `*` stands for the `..` in
/// plain borg's walked path `../tank`.
#[test]
fn a_leading_star_over_the_dotdots_of_a_relative_root() {
    need!(Need::Borg);
    let w = World::new();
    let top = w.dataset("tank", "tank");
    fs::write(top.join("keep"), "k").unwrap();
    fs::create_dir_all(top.join("sub/tank")).unwrap();
    fs::write(top.join("sub/tank/f"), "f").unwrap();
    for (n, option) in [
        vec!["-e", "*/tank"],
        vec!["--pattern", "- */tank"],
        vec!["-e", "*/sub"],
        vec!["-e", "sh:**/tank"],
    ]
    .into_iter()
    .enumerate()
    {
        let c = Case {
            cwd: top.clone(),
            options: vec![option.iter().map(Into::into).collect()],
            roots: vec!["../tank".into()],
            files: Vec::new(),
        };
        if let Some(why) = differs(&w, &c, &format!("star{n}")) {
            panic!("{}\n{why}", show(&c));
        }
    }
}
