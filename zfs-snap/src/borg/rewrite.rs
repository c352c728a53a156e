//! Rewriting a `borg create` command line for a [`Plan`]: roots become
//! mirror paths with the `/./` marker, extra roots are added, and a
//! patterns file of our own goes first so every user pattern acts on the
//! mirror as it would on the live tree.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::args::{CreateArgs, PatternOption, ValueAt};
use super::patterns::{self, Line, Pattern, Style};
use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::plan::Plan;

/// Where a source root was written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    Positional(usize),
    PatternOption(ValueAt),
    PatternsFile { option: usize, line: usize },
}

/// A `--patterns-from` file as read.
#[derive(Clone, Debug)]
struct PatternsFile {
    option: usize,
    at: ValueAt,
    lines: Vec<String>,
    has_roots: bool,
}

/// Everything the command line says about roots and patterns, files read.
#[derive(Clone, Debug)]
pub struct Sources {
    roots: Vec<(PathBuf, Origin)>,
    rules: Vec<Pattern>,
    files: Vec<PatternsFile>,
}

impl Sources {
    /// Reads the roots (PATH positionals and `R` lines, in command-line
    /// order) and every pattern, opening pattern files relative to `cwd`.
    pub fn read(args: &CreateArgs, cwd: &Path) -> Result<Sources> {
        Sources::read_with(args, cwd, &read)
    }

    /// The pattern files `args` names, relative to `cwd`: what
    /// [`Sources::read`] opens.
    pub fn files_named(args: &CreateArgs, cwd: &Path) -> Vec<PathBuf> {
        args.patterns
            .iter()
            .filter_map(|pattern| match *pattern {
                PatternOption::ExcludeFrom(at) | PatternOption::PatternsFrom(at) => {
                    Some(cwd.join(args.value(at)))
                }
                _ => None,
            })
            .collect()
    }

    /// [`Sources::read`], with pattern files read by `read` (a session
    /// reads the text its client read: `/dev/stdin` or `/dev/fd/63` are the
    /// client's, not the server's).
    pub fn read_with(
        args: &CreateArgs,
        cwd: &Path,
        read: &dyn Fn(&Path) -> Result<String>,
    ) -> Result<Sources> {
        // `-` is borg's stdin, not a path: it passes through as it is.
        let mut roots: Vec<(usize, PathBuf, Origin)> = args
            .path_indices
            .iter()
            .filter(|&&i| args.argv[i] != "-")
            .map(|&i| (i, PathBuf::from(&args.argv[i]), Origin::Positional(i)))
            .collect();
        let mut rules = Vec::new();
        let mut files = Vec::new();
        let bad = |what: &str, reason: String| Error::BorgArgs(format!("{what}: {reason}"));
        for (option, pattern) in args.patterns.iter().enumerate() {
            match *pattern {
                PatternOption::Exclude(at) => {
                    let text = args.value(at).to_string_lossy();
                    rules.push(patterns::parse_exclude(&text).map_err(|e| bad("--exclude", e))?);
                }
                PatternOption::Pattern(at) => {
                    let text = args.value(at).to_string_lossy();
                    match patterns::parse_line(&text, Style::Sh).map_err(|e| bad("--pattern", e))? {
                        Line::Root(root) => {
                            roots.push((at.index, root.into(), Origin::PatternOption(at)))
                        }
                        Line::Rule(rule) => rules.push(rule),
                        // borg ignores a style line given with --pattern.
                        Line::Style(_) => {}
                    }
                }
                PatternOption::ExcludeFrom(at) => {
                    let path = cwd.join(args.value(at));
                    for line in patterns::clean_lines(&read(&path)?) {
                        rules.push(
                            patterns::parse_exclude(line)
                                .map_err(|e| bad(&path.display().to_string(), e))?,
                        );
                    }
                }
                PatternOption::PatternsFrom(at) => {
                    let path = cwd.join(args.value(at));
                    let text = read(&path)?;
                    let mut style = Style::Sh;
                    let mut file = PatternsFile {
                        option,
                        at,
                        lines: Vec::new(),
                        has_roots: false,
                    };
                    for (line_number, line) in patterns::clean_lines(&text).enumerate() {
                        file.lines.push(line.to_owned());
                        match patterns::parse_line(line, style)
                            .map_err(|e| bad(&path.display().to_string(), e))?
                        {
                            Line::Root(root) => {
                                file.has_roots = true;
                                roots.push((
                                    at.index,
                                    root.into(),
                                    Origin::PatternsFile {
                                        option,
                                        line: line_number,
                                    },
                                ));
                            }
                            Line::Style(s) => style = s,
                            Line::Rule(rule) => rules.push(rule),
                        }
                    }
                    files.push(file);
                }
            }
        }
        roots.sort_by_key(|(index, _, _)| *index);
        Ok(Sources {
            roots: roots
                .into_iter()
                .map(|(_, path, origin)| (path, origin))
                .collect(),
            rules,
            files,
        })
    }

    /// The source roots as given, in the order borg sees them.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots.iter().map(|(p, _)| p.clone()).collect()
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::PatternFile {
        path: path.to_owned(),
        source,
    })
}

/// The rewritten command line and the files it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub argv: Vec<OsString>,
    /// Files to write before borg runs: (path, content).
    pub files: Vec<(PathBuf, String)>,
}

/// Rewrites `args` for `plan` (built from `sources.roots()` in order),
/// placing generated files in `work_dir`.
pub fn rewrite(
    args: &CreateArgs,
    sources: &Sources,
    plan: &Plan,
    mapping: &Mapping,
    work_dir: &Path,
    cwd: &Path,
) -> Rewritten {
    rewrite_numbered(args, sources, plan, mapping, work_dir, None, cwd)
}

/// [`rewrite`], for the `n`th create of a shared session: its files carry
/// `.n` (`zfs-snap-patterns.3.lst`), so creates that run at once do not
/// share them.
pub fn rewrite_numbered(
    args: &CreateArgs,
    sources: &Sources,
    plan: &Plan,
    mapping: &Mapping,
    work_dir: &Path,
    n: Option<usize>,
    cwd: &Path,
) -> Rewritten {
    let tag = n.map_or(String::new(), |n| format!(".{n}"));
    let ours = our_patterns(sources, plan, mapping, cwd);
    let (mut replace, file_roots) = root_replacements(args, sources, plan);
    let mut files =
        rewrite_patterns_files(args, sources, &file_roots, work_dir, &tag, &mut replace);

    let generated = work_dir.join(format!("zfs-snap-patterns{tag}.lst"));
    let argv = rebuild_argv(
        args,
        plan,
        &replace,
        (!ours.is_empty()).then_some(generated.as_path()),
    );
    if !ours.is_empty() {
        files.insert(0, (generated, generated_patterns(&ours)));
    }
    Rewritten { argv, files }
}

/// Our own patterns, first: live exclusions (pf, which
/// borg checks before anything else), the user's rules' twins for the
/// mirror, then a guard that includes the rest of the mirror so no user
/// rule meant for live paths reaches it.
fn our_patterns(sources: &Sources, plan: &Plan, mapping: &Mapping, cwd: &Path) -> Vec<String> {
    let mut ours: Vec<String> = Vec::new();
    for live in &plan.live_exclusions {
        ours.push(format!("! pf:{}", strip_slash(live)));
    }
    let groups = walked_path_groups(plan, mapping, cwd);
    if !groups.is_empty() && sources.has_rules() {
        for rule in &sources.rules {
            for (group_prefix, ups) in &groups {
                for twin in patterns::twins_after(rule, group_prefix, *ups) {
                    ours.push(twin.to_string());
                }
            }
        }
        for (group_prefix, _) in &groups {
            ours.push(format!("+ pp:{group_prefix}"));
        }
    }
    // Last: borg keeps the last `pf:` rule of a path, so no twin of a
    // user's `+ pf:` can bring back a special file's snapshot copy.
    for special in &plan.special_exclusions {
        ours.push(format!("! pf:{}", strip_slash(special)));
    }
    ours
}

/// borg matches the path as walked: from an absolute root, the mirror
/// path; from a relative one, a relative path (see Mapping::borg_root).
/// Each kind of walked path gets its own twins, and its own guard: one
/// (prefix, leading `..` count) per kind, in order of first use.
fn walked_path_groups(plan: &Plan, mapping: &Mapping, cwd: &Path) -> Vec<(String, usize)> {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for root in plan.borg_roots().filter(|r| r.dataset.is_some()) {
        let mirror = mapping.at(root.level);
        let group = if root.path_given_relative() {
            let (ups, _) = crate::mapping::python_normpath(&root.given_head());
            (mirror.relative_prefix(cwd, ups), ups)
        } else {
            (mirror.pattern_prefix(), 0)
        };
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// An argument to replace: its index in argv, and the new argument.
type Replacement = (usize, OsString);
/// A root in a patterns file: the option naming the file, the line, and
/// the root's new borg path.
type FileRoot = (usize, usize, String);

/// Each source root's new borg path: argv replacements (index, new
/// argument) for roots on the command line, and (option, line, root) for
/// roots in pattern files.
fn root_replacements(
    args: &CreateArgs,
    sources: &Sources,
    plan: &Plan,
) -> (Vec<Replacement>, Vec<FileRoot>) {
    let borg_path = |k: usize| plan.roots[k].borg_path.clone();
    let mut replace: Vec<Replacement> = Vec::new();
    let mut file_roots: Vec<FileRoot> = Vec::new();
    for (k, (_, origin)) in sources.roots.iter().enumerate() {
        match origin {
            Origin::Positional(index) => replace.push((*index, borg_path(k).into())),
            Origin::PatternOption(at) => replace.push((
                at.index,
                with_value(&args.argv[at.index], *at, &format!("R {}", borg_path(k))),
            )),
            Origin::PatternsFile { option, line } => {
                file_roots.push((*option, *line, borg_path(k)))
            }
        }
    }
    (replace, file_roots)
}

/// Copies of the pattern files that hold roots, with those roots rewritten,
/// written to `work_dir`; the options naming them are pointed at the copies.
fn rewrite_patterns_files(
    args: &CreateArgs,
    sources: &Sources,
    file_roots: &[FileRoot],
    work_dir: &Path,
    tag: &str,
    replace: &mut Vec<Replacement>,
) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for (n, file) in sources
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.has_roots)
    {
        let mut lines = file.lines.clone();
        for (option, line, root) in file_roots {
            if *option == file.option {
                lines[*line] = format!("R {root}");
            }
        }
        let path = work_dir.join(format!("zfs-snap-patterns-from-{n}{tag}.lst"));
        replace.push((
            file.at.index,
            with_value(
                &args.argv[file.at.index],
                file.at,
                &path.display().to_string(),
            ),
        ));
        files.push((path, lines.join("\n") + "\n"));
    }
    files
}

/// `args` with `replace` applied, our patterns file (if any) first after
/// `create`, and the extra roots after the last root.
fn rebuild_argv(
    args: &CreateArgs,
    plan: &Plan,
    replace: &[Replacement],
    generated: Option<&Path>,
) -> Vec<OsString> {
    let insert_roots_after = args
        .path_indices
        .last()
        .copied()
        .unwrap_or(args.archive_index);
    let mut argv = Vec::with_capacity(args.argv.len() + plan.extra_roots.len() + 2);
    for (i, arg) in args.argv.iter().enumerate() {
        match replace.iter().find(|(index, _)| *index == i) {
            Some((_, new)) => argv.push(new.clone()),
            None => argv.push(arg.clone()),
        }
        if i == args.create_index {
            if let Some(generated) = generated {
                argv.push("--patterns-from".into());
                argv.push(generated.into());
            }
        }
        if i == insert_roots_after {
            argv.extend(
                plan.extra_roots
                    .iter()
                    .map(|r| OsString::from(&r.borg_path)),
            );
        }
    }
    argv
}

/// The content of our own patterns file.
fn generated_patterns(ours: &[String]) -> String {
    let mut content = String::from(
        "# written by zfs-snap: makes the patterns below act on the snapshot mirror\n",
    );
    for line in ours {
        content.push_str(line);
        content.push('\n');
    }
    content
}

fn strip_slash(path: &Path) -> String {
    path.display()
        .to_string()
        .trim_start_matches('/')
        .to_owned()
}

/// `arg` with the value at `at` replaced by `value` (keeping `--opt=`).
fn with_value(arg: &OsString, at: ValueAt, value: &str) -> OsString {
    let mut bytes = arg.as_bytes()[..at.offset].to_vec();
    bytes.extend_from_slice(value.as_bytes());
    OsString::from_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::borg::args::{parse, Invocation};
    use crate::plan::{PlannedRoot, RootSource};

    fn create(words: &[&str]) -> CreateArgs {
        match parse(&words.iter().map(OsString::from).collect::<Vec<_>>()).unwrap() {
            Invocation::Create(c) => c,
            Invocation::Other => panic!("not create"),
        }
    }

    fn plan_for(roots: &[PathBuf], snap: &[bool], mapping: &Mapping) -> Plan {
        Plan {
            snapshot_root: mapping.snapshot_root().to_owned(),
            one_file_system: false,
            mounts: Vec::new(),
            roots: roots
                .iter()
                .zip(snap)
                .map(|(r, &s)| PlannedRoot {
                    path: r.clone(),
                    source: if s {
                        RootSource::Snapshot
                    } else {
                        RootSource::Live
                    },
                    borg_path: if s {
                        mapping.borg_root(r, Path::new("/"))
                    } else {
                        r.display().to_string()
                    },
                    dataset: s.then(|| "tank/x".to_owned()),
                    level: 0,
                })
                .collect(),
            extra_roots: Vec::new(),
            live_exclusions: Vec::new(),
            special_exclusions: Vec::new(),
            boundaries: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn roots_are_rewritten_and_patterns_get_twins_first() {
        let args = create(&[
            "create",
            "--stats",
            "-e",
            "/var/lib/cache",
            "/repo::a",
            "/var/lib",
            "/etc",
            "--list",
        ]);
        let sources = Sources::read(&args, Path::new("/")).unwrap();
        assert_eq!(
            sources.roots(),
            [PathBuf::from("/var/lib"), PathBuf::from("/etc")]
        );
        let mapping = Mapping::new(Path::new("/run/zfs-snap"));
        let mut plan = plan_for(&sources.roots(), &[true, false], &mapping);
        plan.extra_roots.push(PlannedRoot {
            path: "/srv".into(),
            source: RootSource::Snapshot,
            borg_path: mapping.borg_root(Path::new("/srv"), Path::new("/")),
            dataset: Some("tank/srv".into()),
            level: 0,
        });
        let out = rewrite(
            &args,
            &sources,
            &plan,
            &mapping,
            Path::new("/run/zfs-snap/work"),
            Path::new("/"),
        );
        assert_eq!(
            strings(&out.argv),
            [
                "create",
                "--patterns-from",
                "/run/zfs-snap/work/zfs-snap-patterns.lst",
                "--stats",
                "-e",
                "/var/lib/cache",
                "/repo::a",
                "/run/zfs-snap/snap/./var/lib",
                "/etc",
                "/run/zfs-snap/snap/./srv",
                "--list"
            ]
        );
        assert_eq!(out.files.len(), 1);
        assert_eq!(
            out.files[0].1.lines().skip(1).collect::<Vec<_>>(),
            [
                "! fm:run/zfs-snap/snap/var/lib/cache",
                "+ pp:run/zfs-snap/snap"
            ]
        );
    }

    #[test]
    fn nothing_added_without_patterns_or_snapshots() {
        let args = create(&["create", "::a", "/etc"]);
        let sources = Sources::read(&args, Path::new("/")).unwrap();
        let mapping = Mapping::new(Path::new("/run/zfs-snap"));
        let plan = plan_for(&sources.roots(), &[false], &mapping);
        let out = rewrite(
            &args,
            &sources,
            &plan,
            &mapping,
            Path::new("/w"),
            Path::new("/"),
        );
        assert_eq!(strings(&out.argv), ["create", "::a", "/etc"]);
        assert!(out.files.is_empty());
    }

    #[test]
    fn root_lines_in_options_and_files_are_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.lst");
        std::fs::write(
            &file,
            "# comment\nP fm\nR /srv\n- /srv/tmp\n+ re:^srv/keep\n",
        )
        .unwrap();
        let file_arg = format!("--patterns-from={}", file.display());
        let args = create(&["create", "--pattern=R /var/lib", &file_arg, "::a"]);
        let sources = Sources::read(&args, dir.path()).unwrap();
        assert_eq!(
            sources.roots(),
            [PathBuf::from("/var/lib"), PathBuf::from("/srv")]
        );
        let mapping = Mapping::new(Path::new("/run/zfs-snap"));
        let plan = plan_for(&sources.roots(), &[true, true], &mapping);
        let out = rewrite(
            &args,
            &sources,
            &plan,
            &mapping,
            Path::new("/w"),
            Path::new("/"),
        );
        let argv = strings(&out.argv);
        assert_eq!(argv[3], "--pattern=R /run/zfs-snap/snap/./var/lib");
        assert_eq!(argv[4], "--patterns-from=/w/zfs-snap-patterns-from-0.lst");
        let copy = &out
            .files
            .iter()
            .find(|(p, _)| p.ends_with("zfs-snap-patterns-from-0.lst"))
            .unwrap()
            .1;
        assert_eq!(
            copy,
            "P fm\nR /run/zfs-snap/snap/./srv\n- /srv/tmp\n+ re:^srv/keep\n"
        );
        let ours = &out.files[0].1;
        assert!(ours.contains("- fm:run/zfs-snap/snap/srv/tmp\n"), "{ours}");
        assert!(
            ours.contains("+ re:^run/zfs\\-snap/snap/.*?(?:(?<=^run/zfs\\-snap/snap/)srv/keep)\n"),
            "{ours}"
        );
    }

    #[test]
    fn unreadable_pattern_file_names_the_file() {
        let args = create(&[
            "create",
            "--exclude-from",
            "/nonexistent/ex.txt",
            "::a",
            "/x",
        ]);
        let err = Sources::read(&args, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ex.txt"), "{err}");
    }
}
