//! Generated trees and `borg create` command lines for the differential
//! tests: hermetic (hook-bin/tests/differential.rs, fake zfs) and on real
//! ZFS (integration/tests/same_archive.rs). Pure: a tree is a list of
//! entries to make and the directories that become datasets.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Inputs not generated, each a difference zfs-snap cannot avoid (README,
/// "Where the archive differs from plain borg's"): none at present.
pub const KNOWN: &[&str] = &[];

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
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

pub const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n";

#[derive(Clone, Debug)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CacheTag,
    Marker,
    /// A named pipe: with `--read-special` borg reads it (a writer is
    /// started for each one, see [`fifos`]).
    Fifo,
}

/// A tree below `tank`: entries (relative paths, parents first), every
/// directory, and the directories that become datasets (parents first;
/// `tank` itself is always one).
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub entries: Vec<(PathBuf, Kind)>,
    pub dirs: Vec<PathBuf>,
    pub datasets: Vec<String>,
}

pub fn tree(rng: &mut Rng) -> TreeSpec {
    fn grow(
        rng: &mut Rng,
        rel: PathBuf,
        depth: usize,
        spec: &mut TreeSpec,
        seen: &mut BTreeSet<PathBuf>,
    ) {
        spec.dirs.push(rel.clone());
        for _ in 0..1 + rng.below(4) {
            let path = rel.join(name(rng));
            let kind = match rng.below(10) {
                0..=4 => Kind::File,
                5 | 6 if depth < 3 => Kind::Dir,
                7 if rng.chance(30) => Kind::Fifo,
                7 => Kind::Symlink,
                8 => Kind::CacheTag,
                _ => Kind::Marker,
            };
            let path = match kind {
                Kind::CacheTag => rel.join("CACHEDIR.TAG"),
                Kind::Marker => rel.join(".nobackup"),
                _ => path,
            };
            if !seen.insert(path.clone()) {
                continue;
            }
            spec.entries.push((path.clone(), kind.clone()));
            if matches!(kind, Kind::Dir) {
                grow(rng, path, depth + 1, spec, seen);
            }
        }
    }
    let mut spec = TreeSpec {
        entries: Vec::new(),
        dirs: Vec::new(),
        datasets: vec!["tank".to_owned()],
    };
    grow(
        rng,
        PathBuf::from("tank"),
        0,
        &mut spec,
        &mut BTreeSet::new(),
    );
    for d in spec.dirs.clone().iter().skip(1) {
        // ZFS names: ASCII letters, digits and `_-:. /`.
        let zfs_name = d.to_str().filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:. /".contains(&b))
        });
        if let Some(name) = zfs_name.filter(|_| spec.datasets.len() < 4 && rng.chance(35)) {
            spec.datasets.push(name.to_owned());
        }
    }
    spec
}

/// Makes the entries below `base` (datasets' directories exist already).
pub fn materialize(spec: &TreeSpec, base: &Path) {
    materialize_at(spec, base, "tank");
}

/// [`materialize`] for a tree whose top is called `top`.
pub fn materialize_at(spec: &TreeSpec, base: &Path, top: &str) {
    std::fs::create_dir_all(base.join(top)).unwrap();
    for (rel, kind) in &spec.entries {
        let path = base.join(rel);
        match kind {
            Kind::Dir => std::fs::create_dir_all(&path).unwrap(),
            Kind::File => std::fs::write(&path, "content\n").unwrap(),
            Kind::Symlink => std::os::unix::fs::symlink("a", &path).unwrap(),
            Kind::CacheTag => std::fs::write(&path, CACHEDIR_TAG).unwrap(),
            Kind::Marker => std::fs::write(&path, "").unwrap(),
            Kind::Fifo => {
                let status = std::process::Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(status.success(), "mkfifo {}", path.display());
            }
        }
    }
}

/// A command line: options (each a group of words), then roots, in `cwd`.
#[derive(Clone, Debug)]
pub struct Case {
    pub cwd: PathBuf,
    pub options: Vec<Vec<OsString>>,
    pub roots: Vec<OsString>,
    /// Pattern files to write first: (path, content).
    pub files: Vec<(PathBuf, String)>,
}

fn archive_path(live: &Path, rel: &Path) -> String {
    live.join(rel)
        .display()
        .to_string()
        .trim_start_matches('/')
        .to_owned()
}

/// A command line over the tree below `live`; `scratch` holds pattern
/// files and is the cwd when roots are absolute.
pub fn case(rng: &mut Rng, dirs: &[PathBuf], live: &Path, scratch: &Path, n: usize) -> Case {
    let live = &live.to_owned();
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
        _ => (scratch.to_owned(), usize::MAX),
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
            // A root that does not exist (DESIGN Discovery 6): below a
            // directory of the tree (a dataset's or not), absolute or relative.
            7 if rng.chance(50) => {
                if ups != usize::MAX && rng.chance(50) {
                    let mut rel = OsString::new();
                    for _ in 0..ups {
                        rel.push("../");
                    }
                    rel.push(d.join("zz-missing").as_os_str());
                    rel
                } else {
                    abs.join("zz-missing/deeper").into_os_string()
                }
            }
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
        let kind = rng.below(10);
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
            8 if relative => format!("{}/*", d.display()),
            _ => format!("/{anchored}/*"),
        };
        match rng.below(4) {
            0 => options.push(vec!["--pattern".into(), format!("- {text}").into()]),
            1 => {
                let path = scratch.join(format!("p{n}-{}.lst", options.len()));
                let mut body = format!("# generated\n\nP fm\n! {text}\n+ */keep\n");
                if rng.chance(25) {
                    // A root line naming a path that does not exist.
                    let gone = live.join(rng.pick(dirs)).join("zz-gone");
                    body.push_str(&format!("R {}\n", gone.display()));
                }
                files.push((path.clone(), body));
                options.push(vec!["--patterns-from".into(), path.into()]);
            }
            2 => {
                let path = scratch.join(format!("e{n}-{}.lst", options.len()));
                files.push((path.clone(), format!("{text}\n# c\n")));
                options.push(vec!["--exclude-from".into(), path.into()]);
            }
            _ => options.push(vec!["-e".into(), text.into()]),
        }
    }
    if rng.chance(25) {
        options.push(vec!["--exclude-caches".into()]);
    }
    if rng.chance(30) {
        options.push(vec!["--read-special".into()]);
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

/// One writer per named pipe, each writing a line for every reader until
/// dropped.
pub struct Writers(Vec<std::process::Child>);

impl Writers {
    pub fn start(fifos: &[PathBuf]) -> Writers {
        Writers(
            fifos
                .iter()
                .map(|fifo| {
                    std::process::Command::new("sh")
                        // SIGPIPE ignored: a reader that closes early must
                        // not end the writer (printf is the shell's own).
                        .args([
                            "-c",
                            "trap '' PIPE; while :; do printf 'piped\\n' > \"$1\"; done",
                            "sh",
                        ])
                        .arg(fifo)
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a case reads special files (`--read-special`): then each named
/// pipe needs a writer.
pub fn reads_special(c: &Case) -> bool {
    c.options
        .iter()
        .any(|o| o.first().is_some_and(|w| w == "--read-special"))
}

/// The named pipes below `dir`, for their writers.
pub fn fifos(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_fifo() {
                found.push(entry.path());
            }
        }
    }
    found
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

pub fn words(c: &Case, archive: &str, repo: &str) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["create".into()];
    argv.extend(c.options.iter().flatten().cloned());
    argv.push(format!("{repo}::{archive}").into());
    argv.extend(c.roots.iter().cloned());
    argv
}

pub fn show(c: &Case) -> String {
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

pub fn sh(word: &std::ffi::OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', "'\\''"))
}
