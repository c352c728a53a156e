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

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Not generated until fixed (issue 9): empty patterns, `..` in a relative
/// root, the user's own `/./`, an empty root, `-` (stdin).
const KNOWN: &[&str] = &[
    "empty pattern",
    "dotdot root",
    "user /./",
    "empty root",
    "stdin",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Names of files and directories: spaces, glob characters, unicode and a
/// non-UTF-8 byte.
fn name(rng: &mut Rng) -> OsString {
    let plain = ["a", "b", "data", "cache", "tmp", "keep", "x.log", "y.pyc"];
    match rng.below(10) {
        0 => OsString::from("with space"),
        1 => OsString::from(*rng.pick(&["st*r", "q?m", "[br]", "a]b"])),
        2 => OsString::from("été"),
        3 => OsString::from_vec(b"raw\xffbyte".to_vec()),
        _ => OsString::from(*rng.pick(&plain)),
    }
}

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n";

/// A tree below `dir`: returns the directories made (relative to `dir`).
fn grow(rng: &mut Rng, dir: &Path, depth: usize, rel: PathBuf, dirs: &mut Vec<PathBuf>) {
    fs::create_dir_all(dir).unwrap();
    dirs.push(rel.clone());
    for _ in 0..1 + rng.below(4) {
        let n = name(rng);
        let path = dir.join(&n);
        if path.exists() {
            continue;
        }
        match rng.below(10) {
            0..=4 => fs::write(&path, "content\n").unwrap(),
            5 | 6 if depth < 3 => grow(rng, &path, depth + 1, rel.join(&n), dirs),
            7 => std::os::unix::fs::symlink("a", &path).unwrap(),
            8 => fs::write(dir.join("CACHEDIR.TAG"), CACHEDIR_TAG).unwrap(),
            _ => fs::write(dir.join(".nobackup"), "").unwrap(),
        }
    }
}

/// One generated case: a tree in a fresh world, then command lines.
struct Tree {
    world: World,
    /// `live/tank` and what is below it, relative to `live`.
    dirs: Vec<PathBuf>,
}

fn tree(rng: &mut Rng) -> Tree {
    let world = World::new();
    let top = world.dataset("tank", "tank");
    let mut dirs = Vec::new();
    grow(rng, &top, 0, PathBuf::from("tank"), &mut dirs);
    // Some directories become datasets of their own (nested either way).
    let mut made = 0;
    for d in dirs.clone().iter().skip(1) {
        // ZFS names: ASCII letters, digits and `_-:. /`.
        let zfs_name = d.to_str().filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:. /".contains(&b))
        });
        if let Some(name) = zfs_name.filter(|_| made < 3 && rng.chance(35)) {
            // The directory (its content stays) becomes a dataset.
            world.dataset(name, name);
            made += 1;
        }
    }
    Tree { world, dirs }
}

/// A command line: options (each a group of words), then roots, in `cwd`.
#[derive(Clone, Debug)]
struct Case {
    cwd: PathBuf,
    options: Vec<Vec<OsString>>,
    roots: Vec<OsString>,
    /// Pattern files to write first: (path, content).
    files: Vec<(PathBuf, String)>,
}

fn archive_path(live: &Path, rel: &Path) -> String {
    live.join(rel)
        .display()
        .to_string()
        .trim_start_matches('/')
        .to_owned()
}

fn case(rng: &mut Rng, t: &Tree, n: usize) -> Case {
    let live = &t.world.live;
    let dirs = &t.dirs;
    let mut roots: Vec<OsString> = Vec::new();
    // The cwd: outside the tree (absolute roots only), the tree's top, or
    // a directory inside it (relative roots then start with `..`).
    let (cwd, ups) = match rng.below(7) {
        0 => (live.clone(), 0),
        1 => {
            let d = rng.pick(dirs).clone();
            let depth = d.components().count();
            (live.join(d), depth)
        }
        _ => (t.world.dir.path().to_owned(), usize::MAX),
    };
    for _ in 0..1 + rng.below(3) {
        let d = rng.pick(dirs).clone();
        let abs = live.join(&d);
        let root = match rng.below(12) {
            0 | 1 if ups != usize::MAX => {
                let mut rel = OsString::new();
                for _ in 0..ups {
                    rel.push("../");
                }
                rel.push(d.as_os_str());
                rel
            }
            2 => {
                let mut s = abs.into_os_string();
                s.push("/");
                s
            }
            3 if !roots.is_empty() => roots[0].clone(),
            4 if d.components().count() >= 2 => {
                // The user's own `/./`.
                let mut parts = d.components();
                let first = parts.next().unwrap().as_os_str().to_owned();
                let mut s = live.join(first).into_os_string();
                s.push("/./");
                s.push(parts.as_path().as_os_str());
                s
            }
            5 if rng.chance(20) => "-".into(),
            6 if rng.chance(10) => "".into(),
            _ => abs.into_os_string(),
        };
        roots.push(root);
    }
    let relative = roots
        .iter()
        .any(|r| !r.is_empty() && r != "-" && !Path::new(r).is_absolute());
    let mut options: Vec<Vec<OsString>> = Vec::new();
    let mut files = Vec::new();
    for _ in 0..rng.below(4) {
        let d = rng.pick(dirs).clone();
        let leaf = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let anchored = archive_path(live, &d);
        let unanchored = [1, 2, 5, 7];
        let kind = if relative {
            *rng.pick(&unanchored)
        } else {
            rng.below(9)
        };
        let text = match kind {
            _ if rng.chance(8) => {
                (*rng.pick(&["", "fm:", "pp:", "sh:", "pf:", "re:", "."])).to_owned()
            }
            0 => format!("fm:/{anchored}"),
            1 => format!("*/{leaf}"),
            2 => format!("sh:**/{leaf}"),
            3 => format!("pp:/{anchored}"),
            4 => format!("pf:/{anchored}"),
            5 => format!("re:{}$", regex_escape(&leaf)),
            6 => format!("re:^{}", regex_escape(&anchored)),
            7 => "*.pyc".to_owned(),
            _ => format!("/{anchored}/*"),
        };
        match rng.below(4) {
            0 => options.push(vec!["--pattern".into(), format!("- {text}").into()]),
            1 => {
                let path = t
                    .world
                    .dir
                    .path()
                    .join(format!("p{n}-{}.lst", options.len()));
                let body = format!("# generated\n\nP fm\n! {text}\n+ */keep\n");
                files.push((path.clone(), body));
                options.push(vec!["--patterns-from".into(), path.into()]);
            }
            2 => {
                let path = t
                    .world
                    .dir
                    .path()
                    .join(format!("e{n}-{}.lst", options.len()));
                files.push((path.clone(), format!("{text}\n# c\n")));
                options.push(vec!["--exclude-from".into(), path.into()]);
            }
            _ => options.push(vec!["-e".into(), text.into()]),
        }
    }
    if rng.chance(25) {
        options.push(vec!["--exclude-caches".into()]);
    }
    if rng.chance(25) {
        options.push(vec!["--exclude-if-present".into(), ".nobackup".into()]);
        if rng.chance(50) {
            options.push(vec!["--keep-exclude-tags".into()]);
        }
    }
    Case {
        cwd,
        options,
        roots,
        files,
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = !c.is_alphanumeric() && c != '/' && c != '_';
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
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

fn words(c: &Case, archive: &str, repo: &str) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["create".into()];
    argv.extend(c.options.iter().flatten().cloned());
    argv.push(format!("{repo}::{archive}").into());
    argv.extend(c.roots.iter().cloned());
    argv
}

/// Runs `c` both ways; `None` when the archives agree (or borg itself
/// refuses the command line), else a description of the difference.
fn differs(w: &World, c: &Case, id: &str) -> Option<String> {
    differs_with(w, c, id, &[])
}

/// [`differs`], with `sabotage` added to zfs-snap's borg options only.
fn differs_with(w: &World, c: &Case, id: &str, sabotage: &[&str]) -> Option<String> {
    for (path, content) in &c.files {
        fs::write(path, content).unwrap();
    }
    let repo = w.repo();
    let stdin = w.dir.path().join("stdin-content");
    fs::write(&stdin, "from stdin\n").unwrap();
    let plain = borg_cmd(w, Path::new("borg"))
        .current_dir(&c.cwd)
        .args(words(c, &format!("plain-{id}"), &repo))
        .stdin(fs::File::open(&stdin).unwrap())
        .output()
        .unwrap();
    let wrapped = w
        .cmd()
        .current_dir(&c.cwd)
        .args(["wrap", "--", "borg", "create"])
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
    let want = archive(w, &format!("plain-{id}"));
    let got = archive(w, &format!("wrapped-{id}"));
    match (want, got) {
        (Ok(want), Ok(got)) if want == got => {
            if std::env::var_os("ZFS_SNAP_DIFF_DEBUG").is_some() {
                eprintln!(
                    "same: {want:?}\n{}",
                    String::from_utf8_lossy(&wrapped.stderr)
                );
            }
            None
        }
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

fn show(c: &Case) -> String {
    let mut s = format!("cd {} && zfs-snap wrap -- borg", sh(c.cwd.as_os_str()));
    for word in words(c, "ARCHIVE", "REPO") {
        s.push(' ');
        s.push_str(&sh(&word));
    }
    for (path, content) in &c.files {
        s.push_str(&format!("\n  with {}:\n{content}", path.display()));
    }
    s
}

fn sh(word: &std::ffi::OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', "'\\''"))
}

fn run_cases(test_seed: u64) {
    if borg().is_none() {
        return;
    }
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
        "differential: {done} cases (seed {seed}, test {test_seed}); not generated yet: {KNOWN:?}"
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
    if borg().is_none() {
        return;
    }
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
        !archive(&t.world, "plain-same").unwrap().is_empty(),
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
