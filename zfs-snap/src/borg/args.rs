//! Reading a borg command line the way borg's argparse does, far enough to
//! find `create`, its ARCHIVE and PATH positionals, and every option that
//! carries patterns or roots.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// How many values an option takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arity {
    Flag,
    One,
    /// argparse `nargs='?'` (borg 2 `--socket`).
    Optional,
    /// argparse `nargs='+'` (borg 2 `--tags`).
    OneOrMore,
}

/// Long options of `borg create` and the common options, borg 1.2/1.4 and
/// borg 2 together. Unknown values would shift the positionals, so every
/// option that takes a value must be here. Sources: borg 1.4 archiver.py
/// (common options, patterns, create) and borg 2's archiver/_common.py and
/// create_cmd.py.
const LONG: &[(&str, Arity)] = &[
    // common options
    ("--help", Arity::Flag),
    ("--critical", Arity::Flag),
    ("--error", Arity::Flag),
    ("--warning", Arity::Flag),
    ("--info", Arity::Flag),
    ("--verbose", Arity::Flag),
    ("--debug", Arity::Flag),
    ("--debug-topic", Arity::One),
    ("--progress", Arity::Flag),
    ("--iec", Arity::Flag),
    ("--log-json", Arity::Flag),
    ("--lock-wait", Arity::One),
    ("--bypass-lock", Arity::Flag),
    ("--show-version", Arity::Flag),
    ("--show-rc", Arity::Flag),
    ("--umask", Arity::One),
    ("--remote-path", Arity::One),
    ("--remote-ratelimit", Arity::One),
    ("--upload-ratelimit", Arity::One),
    ("--remote-buffer", Arity::One),
    ("--upload-buffer", Arity::One),
    ("--consider-part-files", Arity::Flag),
    ("--debug-profile", Arity::One),
    ("--rsh", Arity::One),
    ("--repo", Arity::One),
    ("--socket", Arity::Optional),
    // create
    ("--dry-run", Arity::Flag),
    ("--stats", Arity::Flag),
    ("--list", Arity::Flag),
    ("--filter", Arity::One),
    ("--json", Arity::Flag),
    ("--no-cache-sync", Arity::Flag),
    ("--stdin-name", Arity::One),
    ("--stdin-user", Arity::One),
    ("--stdin-group", Arity::One),
    ("--stdin-mode", Arity::One),
    ("--content-from-command", Arity::Flag),
    ("--paths-from-stdin", Arity::Flag),
    ("--paths-from-command", Arity::Flag),
    ("--paths-from-shell-command", Arity::Flag),
    ("--paths-delimiter", Arity::One),
    ("--exclude", Arity::One),
    ("--exclude-from", Arity::One),
    ("--pattern", Arity::One),
    ("--patterns-from", Arity::One),
    ("--exclude-caches", Arity::Flag),
    ("--exclude-if-present", Arity::One),
    ("--keep-exclude-tags", Arity::Flag),
    ("--exclude-nodump", Arity::Flag),
    ("--exclude-dataless", Arity::Flag),
    ("--one-file-system", Arity::Flag),
    ("--numeric-owner", Arity::Flag),
    ("--numeric-ids", Arity::Flag),
    ("--noatime", Arity::Flag),
    ("--atime", Arity::Flag),
    ("--noctime", Arity::Flag),
    ("--nobirthtime", Arity::Flag),
    ("--nobsdflags", Arity::Flag),
    ("--noflags", Arity::Flag),
    ("--noacls", Arity::Flag),
    ("--noxattrs", Arity::Flag),
    ("--sparse", Arity::Flag),
    ("--files-cache", Arity::One),
    ("--files-changed", Arity::One),
    ("--read-special", Arity::Flag),
    ("--read-special-timeout", Arity::One),
    ("--comment", Arity::One),
    ("--timestamp", Arity::One),
    ("--checkpoint-interval", Arity::One),
    ("--checkpoint-volume", Arity::One),
    ("--chunker-params", Arity::One),
    ("--compression", Arity::One),
    ("--tags", Arity::OneOrMore),
    ("--hostname", Arity::One),
    ("--username", Arity::One),
    ("--map", Arity::One),
    ("--reuse-from", Arity::One),
    ("--reuse-path", Arity::One),
];

/// The common options that say how to reach a repository, for other borg
/// calls to the same one.
const REACH: &[&str] = &[
    "--remote-path",
    "--rsh",
    "--lock-wait",
    "--umask",
    "--remote-ratelimit",
    "--upload-ratelimit",
    "--remote-buffer",
    "--upload-buffer",
];

/// Short options that take a value; every other short option is a flag.
const SHORT_WITH_VALUE: &[(char, &str)] = &[
    ('e', "--exclude"),
    ('C', "--compression"),
    ('c', "--checkpoint-interval"),
    ('r', "--repo"),
];

const SHORT_FLAGS: &[(char, &str)] = &[
    ('h', "--help"),
    ('v', "--verbose"),
    ('p', "--progress"),
    ('n', "--dry-run"),
    ('s', "--stats"),
    ('x', "--one-file-system"),
];

/// Where an option's value sits: the whole of argument `index`, or the part
/// of it after byte `offset` (`--exclude=X`, `-eX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueAt {
    pub index: usize,
    pub offset: usize,
}

impl ValueAt {
    /// The whole word after the option at `i`.
    fn next_word(i: usize) -> ValueAt {
        ValueAt {
            index: i + 1,
            offset: 0,
        }
    }
}

/// An option that carries patterns, in command-line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternOption {
    /// `-e/--exclude PATTERN` (style fm, exclude without recursing).
    Exclude(ValueAt),
    /// `--exclude-from FILE`.
    ExcludeFrom(ValueAt),
    /// `--pattern LINE` (style sh; may be an `R` root).
    Pattern(ValueAt),
    /// `--patterns-from FILE`.
    PatternsFrom(ValueAt),
}

/// A parsed `borg [COMMON] create ...` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateArgs {
    /// The arguments after the borg program itself.
    pub argv: Vec<OsString>,
    pub create_index: usize,
    pub archive_index: usize,
    pub path_indices: Vec<usize>,
    pub patterns: Vec<PatternOption>,
    pub dry_run: bool,
    pub one_file_system: bool,
    /// `--read-special`: borg reads named pipes and devices as files.
    pub read_special: bool,
    /// `--stats`: borg logs the archive's figures as text.
    pub stats: bool,
    /// `--iec`: sizes in binary units.
    pub iec: bool,
    /// `--log-json`: borg's log lines are JSON.
    pub log_json: bool,
    /// `--exclude-if-present NAME`s: borg does not enter a directory
    /// holding one of them.
    pub exclude_if_present: Vec<OsString>,
    /// `--exclude-caches`: nor one holding a CACHEDIR.TAG.
    pub exclude_caches: bool,
    /// `--paths-from-stdin`, `--paths-from-command`, ...: borg learns its
    /// paths only when it runs.
    pub paths_at_run_time: Option<String>,
    /// Options we did not recognise (assumed to take no value).
    pub unknown_options: Vec<String>,
    /// `--json`: borg prints the archive's figures on stdout.
    pub json: bool,
    /// The options, wherever given, that say how to reach the repository
    /// (`--remote-path`, `--rsh`, `--lock-wait`, ...), as `--name=value`:
    /// a later `borg info` of the same repository needs them too.
    pub reach: Vec<OsString>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    Create(CreateArgs),
    /// Anything but `create`: passed to borg untouched.
    Other,
}

impl CreateArgs {
    pub fn value(&self, at: ValueAt) -> &OsStr {
        OsStr::from_bytes(&self.argv[at.index].as_bytes()[at.offset..])
    }

    pub fn paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.path_indices
            .iter()
            .map(|&i| PathBuf::from(&self.argv[i]))
    }
}

fn resolve_long(name: &str) -> Option<(&'static str, Arity)> {
    if let Some(&(n, a)) = LONG.iter().find(|(n, _)| *n == name) {
        return Some((n, a));
    }
    // argparse accepts unambiguous prefixes of long options.
    let mut matches = LONG.iter().filter(|(n, _)| n.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(&(n, a)), None) if name.len() > 2 => Some((n, a)),
        _ => None,
    }
}

fn is_option_like(arg: &[u8]) -> bool {
    arg.len() > 1 && arg[0] == b'-'
}

/// Parses the arguments that follow the borg program.
pub fn parse(argv: &[OsString]) -> Result<Invocation> {
    let mut i = 0;
    let mut reach = Vec::new();
    let (mut iec, mut log_json) = (false, false);
    // Common options may precede the subcommand.
    let create_index = loop {
        let Some(arg) = argv.get(i) else {
            return Ok(Invocation::Other);
        };
        let bytes = arg.as_bytes();
        if bytes == b"--" || !is_option_like(bytes) {
            if bytes == b"create" {
                break i;
            }
            return Ok(Invocation::Other);
        }
        i = skip_option(
            argv,
            i,
            &mut |name, value, _| {
                if let Some(at) = value.filter(|_| REACH.contains(&name)) {
                    reach.push(reach_option(argv, name, at));
                }
                iec |= name == "--iec";
                log_json |= name == "--log-json";
            },
            &mut Vec::new(),
        )?;
    };

    let mut args = CreateArgs {
        argv: argv.to_vec(),
        create_index,
        archive_index: 0,
        path_indices: Vec::new(),
        patterns: Vec::new(),
        dry_run: false,
        one_file_system: false,
        read_special: false,
        stats: false,
        iec,
        log_json,
        exclude_if_present: Vec::new(),
        exclude_caches: false,
        paths_at_run_time: None,
        unknown_options: Vec::new(),
        json: false,
        reach,
    };
    let mut positionals = Vec::new();
    let mut i = create_index + 1;
    let mut only_positionals = false;
    while i < argv.len() {
        let bytes = argv[i].as_bytes();
        if only_positionals || !is_option_like(bytes) {
            positionals.push(i);
            i += 1;
            continue;
        }
        if bytes == b"--" {
            only_positionals = true;
            i += 1;
            continue;
        }
        let mut unknown = Vec::new();
        i = skip_option(
            argv,
            i,
            &mut |name, value, _| match (name, value) {
                ("--dry-run", _) => args.dry_run = true,
                ("--json", _) => args.json = true,
                (name, Some(at)) if REACH.contains(&name) => {
                    args.reach.push(reach_option(argv, name, at))
                }
                ("--one-file-system", _) => args.one_file_system = true,
                ("--read-special", _) => args.read_special = true,
                ("--stats", _) => args.stats = true,
                ("--iec", _) => args.iec = true,
                ("--log-json", _) => args.log_json = true,
                ("--exclude-caches", _) => args.exclude_caches = true,
                ("--exclude-if-present", Some(at)) => args.exclude_if_present.push(
                    OsString::from_vec(argv[at.index].as_bytes()[at.offset..].to_vec()),
                ),
                (
                    "--paths-from-stdin"
                    | "--paths-from-command"
                    | "--paths-from-shell-command"
                    | "--content-from-command",
                    _,
                ) => args.paths_at_run_time = Some(name.to_owned()),
                ("--exclude", Some(at)) => args.patterns.push(PatternOption::Exclude(at)),
                ("--exclude-from", Some(at)) => args.patterns.push(PatternOption::ExcludeFrom(at)),
                ("--pattern", Some(at)) => args.patterns.push(PatternOption::Pattern(at)),
                ("--patterns-from", Some(at)) => {
                    args.patterns.push(PatternOption::PatternsFrom(at))
                }
                _ => {}
            },
            &mut unknown,
        )?;
        args.unknown_options.extend(unknown);
    }
    let Some((&archive, paths)) = positionals.split_first() else {
        return Err(Error::BorgArgs(
            "`borg create` needs an ARCHIVE argument (REPO::NAME, ::NAME, or NAME with --repo)"
                .into(),
        ));
    };
    args.archive_index = archive;
    args.path_indices = paths.to_vec();
    Ok(Invocation::Create(args))
}

fn reach_option(argv: &[OsString], name: &str, at: ValueAt) -> OsString {
    let mut option = OsString::from(format!("{name}="));
    option.push(OsStr::from_bytes(&argv[at.index].as_bytes()[at.offset..]));
    option
}

/// Consumes the option at `argv[i]` (and its values); calls `seen` with the
/// option's canonical long name and where its value is. Returns the index
/// of the next argument.
fn skip_option(
    argv: &[OsString],
    i: usize,
    seen: &mut dyn FnMut(&str, Option<ValueAt>, usize),
    unknown: &mut Vec<String>,
) -> Result<usize> {
    let bytes = argv[i].as_bytes();
    let missing = |name: &str| {
        Error::BorgArgs(format!(
            "option {name} needs a value, but the command line ends after it"
        ))
    };
    if bytes.starts_with(b"--") {
        let (name, attached) = match bytes.iter().position(|&b| b == b'=') {
            Some(eq) => (&bytes[..eq], Some(eq + 1)),
            None => (bytes, None),
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let Some((canonical, arity)) = resolve_long(&name) else {
            unknown.push(name);
            return Ok(i + 1);
        };
        return Ok(match (arity, attached) {
            (Arity::Flag, _) => {
                seen(canonical, None, i);
                i + 1
            }
            (_, Some(offset)) => {
                seen(canonical, Some(ValueAt { index: i, offset }), i);
                i + 1
            }
            (Arity::One, None) => {
                if i + 1 >= argv.len() {
                    return Err(missing(canonical));
                }
                seen(canonical, Some(ValueAt::next_word(i)), i);
                i + 2
            }
            (Arity::Optional, None) => match argv.get(i + 1) {
                Some(next) if !is_option_like(next.as_bytes()) => {
                    seen(canonical, Some(ValueAt::next_word(i)), i);
                    i + 2
                }
                _ => {
                    seen(canonical, None, i);
                    i + 1
                }
            },
            (Arity::OneOrMore, None) => {
                let mut next = i + 1;
                while argv
                    .get(next)
                    .is_some_and(|a| !is_option_like(a.as_bytes()) && a != "--")
                {
                    next += 1;
                }
                if next == i + 1 {
                    return Err(missing(canonical));
                }
                seen(canonical, None, i);
                next
            }
        });
    }
    // A cluster of short options: flags, possibly ending in one that takes
    // the rest of the argument (or the next argument) as its value.
    for (pos, c) in bytes.iter().enumerate().skip(1) {
        let c = char::from(*c);
        if let Some(&(_, long)) = SHORT_WITH_VALUE.iter().find(|(s, _)| *s == c) {
            let mut offset = pos + 1;
            if bytes.get(offset) == Some(&b'=') && pos == 1 {
                offset += 1;
            }
            if offset < bytes.len() {
                seen(long, Some(ValueAt { index: i, offset }), i);
                return Ok(i + 1);
            }
            if i + 1 >= argv.len() {
                return Err(missing(long));
            }
            seen(long, Some(ValueAt::next_word(i)), i);
            return Ok(i + 2);
        }
        match SHORT_FLAGS.iter().find(|(s, _)| *s == c) {
            Some(&(_, long)) => seen(long, None, i),
            None => unknown.push(format!("-{c}")),
        }
    }
    Ok(i + 1)
}

/// `borg --version` output: `borg 1.4.0`, `borg2 2.0.0b14`.
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let version = output.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn create(words: &[&str]) -> CreateArgs {
        match parse(&argv(words)).unwrap() {
            Invocation::Create(c) => c,
            Invocation::Other => panic!("not create: {words:?}"),
        }
    }

    fn paths(c: &CreateArgs) -> Vec<String> {
        c.paths().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn borg1_archive_and_paths() {
        let c = create(&[
            "create",
            "--stats",
            "-C",
            "zstd",
            "/repo::a-{now}",
            "/var/lib",
            "/home",
        ]);
        assert_eq!(c.argv[c.archive_index], "/repo::a-{now}");
        assert_eq!(paths(&c), ["/var/lib", "/home"]);
    }

    #[test]
    fn borg2_repo_option_and_name() {
        let c = create(&[
            "--repo",
            "/repo",
            "create",
            "-r",
            "/r2",
            "--comment",
            "x y",
            "name",
            "/data",
        ]);
        assert_eq!(c.argv[c.archive_index], "name");
        assert_eq!(paths(&c), ["/data"]);
    }

    #[test]
    fn common_options_before_create_with_values() {
        let c = create(&[
            "--remote-path",
            "borg1",
            "--lock-wait=5",
            "-v",
            "create",
            "::a",
            "/x",
        ]);
        assert_eq!(c.create_index, 4);
        assert_eq!(paths(&c), ["/x"]);
    }

    #[test]
    fn json_and_the_options_that_reach_the_repository() {
        let c = create(&[
            "--remote-path",
            "borg1",
            "create",
            "--json",
            "--rsh=ssh -p 2",
            "--lock-wait",
            "5",
            "--stats",
            "r::a",
            "/x",
        ]);
        assert!(c.json);
        assert_eq!(
            c.reach,
            ["--remote-path=borg1", "--rsh=ssh -p 2", "--lock-wait=5"]
        );
        assert!(!create(&["create", "r::a", "/x"]).json);
    }

    #[test]
    fn other_subcommands_pass_through() {
        for words in [
            &["list", "/repo"][..],
            &["--version"],
            &[],
            &["prune", "--keep-daily", "7"],
        ] {
            assert_eq!(parse(&argv(words)).unwrap(), Invocation::Other, "{words:?}");
        }
    }

    #[test]
    fn every_value_option_form_is_found() {
        let c = create(&[
            "create",
            "-e",
            "*.pyc",
            "--exclude=/var/cache",
            "-e/tmp",
            "-xe",
            "sh:**/.cache",
            "--exclude-from",
            "ex.txt",
            "--pattern=- /var/tmp",
            "--patterns-from",
            "p.lst",
            "--compression",
            "lz4",
            "-C",
            "zstd,3",
            "--files-cache=ctime,size",
            "::a",
            "/srv",
        ]);
        let values: Vec<String> = c
            .patterns
            .iter()
            .map(|p| match p {
                PatternOption::Exclude(at)
                | PatternOption::ExcludeFrom(at)
                | PatternOption::Pattern(at)
                | PatternOption::PatternsFrom(at) => c.value(*at).to_string_lossy().into_owned(),
            })
            .collect();
        assert_eq!(
            values,
            [
                "*.pyc",
                "/var/cache",
                "/tmp",
                "sh:**/.cache",
                "ex.txt",
                "- /var/tmp",
                "p.lst"
            ]
        );
        assert!(c.one_file_system);
        assert_eq!(paths(&c), ["/srv"]);
    }

    #[test]
    fn abbreviated_long_options_resolve() {
        let c = create(&[
            "create",
            "--one-file",
            "--exclude-fr",
            "ex",
            "--comm",
            "c",
            "::a",
            "/p",
        ]);
        assert!(c.one_file_system);
        assert!(matches!(c.patterns[0], PatternOption::ExcludeFrom(_)));
        assert_eq!(paths(&c), ["/p"]);
    }

    #[test]
    fn double_dash_ends_options() {
        let c = create(&["create", "::a", "--", "-weird", "/x"]);
        assert_eq!(paths(&c), ["-weird", "/x"]);
    }

    #[test]
    fn dry_run_and_run_time_paths_are_flagged() {
        assert!(create(&["create", "-n", "::a", "/x"]).dry_run);
        assert!(create(&["create", "--dry-run", "::a", "/x"]).dry_run);
        let c = create(&["create", "--paths-from-stdin", "::a"]);
        assert_eq!(c.paths_at_run_time.as_deref(), Some("--paths-from-stdin"));
    }

    #[test]
    fn borg2_tags_and_socket() {
        let c = create(&[
            "create", "--tags", "a", "b", "--socket", "--stats", "name", "/x",
        ]);
        assert_eq!(c.argv[c.archive_index], "name");
        assert_eq!(paths(&c), ["/x"]);
    }

    #[test]
    fn missing_archive_and_missing_value_are_clear_errors() {
        let err = parse(&argv(&["create", "--stats"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ARCHIVE"), "{err}");
        let err = parse(&argv(&["create", "::a", "/x", "--exclude"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--exclude needs a value"), "{err}");
    }

    #[test]
    fn unknown_options_are_reported() {
        let c = create(&["create", "--frobnicate", "::a", "/x"]);
        assert_eq!(c.unknown_options, ["--frobnicate"]);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("borg 1.4.0\n"), Some((1, 4, 0)));
        assert_eq!(parse_version("borg2 2.0.0b14"), Some((2, 0, 0)));
        assert_eq!(parse_version("borg 1.2.4"), Some((1, 2, 4)));
        assert_eq!(parse_version("nonsense"), None);
    }
}
