//! borg's pattern language (borg 1.4 `patterns.py`), and the rewriting that
//! makes a pattern written for live paths act the same on the snapshot
//! mirror.
//!
//! borg matches patterns against the walked path *before* stripping the
//! `/./` prefix, without its leading `/`. A file `/var/lib/x` read from the
//! mirror is matched as `run/zfs-snap/snap/var/lib/x`. For every user
//! pattern we therefore emit a prefixed twin that matches the mirror path
//! exactly when the original matches the live path; the twins, followed by
//! a guard that includes the rest of the mirror, go first, so a user
//! pattern such as `- /run` can never swallow the mirror.

use std::fmt;

/// A pattern style (`fm:`, `sh:`, `re:`, `pp:`, `pf:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Fm,
    Sh,
    Re,
    Pp,
    Pf,
}

impl Style {
    fn parse(prefix: &str) -> Option<Style> {
        Some(match prefix {
            "fm" => Style::Fm,
            "sh" => Style::Sh,
            "re" => Style::Re,
            "pp" => Style::Pp,
            "pf" => Style::Pf,
            _ => return None,
        })
    }

    fn tag(self) -> &'static str {
        match self {
            Style::Fm => "fm",
            Style::Sh => "sh",
            Style::Re => "re",
            Style::Pp => "pp",
            Style::Pf => "pf",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Include,
    /// `-`: excluded, but borg still descends.
    Exclude,
    /// `!` and `--exclude`: excluded and not descended into.
    ExcludeNoRecurse,
}

impl Action {
    fn sign(self) -> char {
        match self {
            Action::Include => '+',
            Action::Exclude => '-',
            Action::ExcludeNoRecurse => '!',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub action: Action,
    pub style: Style,
    pub text: String,
}

impl fmt::Display for Pattern {
    /// As a patterns-file line with an explicit style, so the line means
    /// the same whatever style was the default where it came from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{}",
            self.action.sign(),
            self.style.tag(),
            self.text
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Root(String),
    Style(Style),
    Rule(Pattern),
}

/// Splits a `xx:` style prefix off, as borg does (`len > 2`, `p[2] == ':'`,
/// `p[:2]` alphanumeric).
fn split_style(text: &str, default: Style) -> Result<(Style, &str), String> {
    let bytes = text.as_bytes();
    if bytes.len() > 2 && bytes[2] == b':' && bytes[..2].iter().all(u8::is_ascii_alphanumeric) {
        let style = Style::parse(&text[..2])
            .ok_or_else(|| format!("unknown pattern style {:?}", &text[..2]))?;
        Ok((style, &text[3..]))
    } else {
        Ok((default, text))
    }
}

/// An `--exclude` value or `--exclude-from` line.
pub fn parse_exclude(text: &str) -> Result<Pattern, String> {
    let (style, text) = split_style(text, Style::Fm)?;
    Ok(Pattern {
        action: Action::ExcludeNoRecurse,
        style,
        text: text.to_owned(),
    })
}

/// A `--pattern` value or `--patterns-from` line, with `default` the style
/// in force (sh unless a `P` line changed it).
pub fn parse_line(line: &str, default: Style) -> Result<Line, String> {
    let mut chars = line.chars();
    let kind = chars.next().ok_or("empty pattern line")?;
    let rest = chars.as_str().trim_start();
    if rest.is_empty() {
        return Err(format!("pattern line {line:?} has nothing after {kind:?}"));
    }
    let action = match kind {
        'R' | 'r' => return Ok(Line::Root(rest.to_owned())),
        'P' | 'p' => {
            return Style::parse(rest)
                .map(Line::Style)
                .ok_or_else(|| format!("unknown pattern style {rest:?}"))
        }
        '+' => Action::Include,
        '-' => Action::Exclude,
        '!' => Action::ExcludeNoRecurse,
        other => {
            return Err(format!(
                "pattern line {line:?} starts with {other:?}, not one of R P + - !"
            ))
        }
    };
    let (style, text) = split_style(rest, default)?;
    Ok(Line::Rule(Pattern {
        action,
        style,
        text: text.to_owned(),
    }))
}

/// borg's `clean_lines`: both ends stripped, empty and `#` lines dropped.
pub fn clean_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The twin of `pattern` for the mirror: it matches `<prefix>/<path>`
/// exactly when `pattern` matches `<path>`. `prefix` has no leading or
/// trailing `/` and no glob characters.
pub fn prefixed(pattern: &Pattern, prefix: &str) -> Pattern {
    prefixed_after(pattern, prefix, 0).expect("with no `..` every pattern has a twin")
}

/// Every twin of `pattern` for paths walked from relative roots that start
/// with `ups` `..` ([`prefixed_after`]), plus, for a pattern that starts
/// with `*`, the one where that `*` stands for the `..` themselves (plain
/// borg's `*/tank` matches `../tank`; the twin must match `<prefix>/tank`).
pub fn twins_after(pattern: &Pattern, prefix: &str, ups: usize) -> Vec<Pattern> {
    let mut twins: Vec<Pattern> = prefixed_after(pattern, prefix, ups).into_iter().collect();
    if ups > 0 && matches!(pattern.style, Style::Fm | Style::Sh) {
        if let Some(rest) = pattern.text.strip_prefix('*') {
            let rest = rest.trim_start_matches('*').trim_start_matches('/');
            twins.push(Pattern {
                text: format!("{prefix}/{rest}"),
                ..pattern.clone()
            });
        }
    }
    twins
}

/// The twin of `pattern` for paths walked from relative roots that start
/// with `ups` `..`: plain borg matches `../../x` where the rewritten root
/// walks `<prefix>/x`. A path-style pattern reaches those paths only if it
/// starts with the same `..` (they are dropped) or with a glob character
/// (kept); any other has no twin (`None`): it matches none of them.
pub fn prefixed_after(pattern: &Pattern, prefix: &str, ups: usize) -> Option<Pattern> {
    if ups > 0 && pattern.style != Style::Re {
        let mut text = pattern.text.as_str();
        let mut dropped = 0;
        while dropped < ups {
            match text.strip_prefix("../") {
                Some(rest) => {
                    text = rest;
                    dropped += 1;
                }
                None => break,
            }
        }
        let globbed = text.starts_with(['*', '?', '[']);
        if dropped < ups && !(dropped == 0 && globbed) {
            return None;
        }
        let rest = Pattern {
            text: text.to_owned(),
            ..pattern.clone()
        };
        return Some(prefixed_after(&rest, prefix, 0).expect("ups is 0"));
    }
    // borg normalises path-style patterns (`os.path.normpath`): one that is
    // empty or only `.` matches the path `.` alone, never a mirror path, so
    // it is its own twin (prefixing it would match the whole mirror).
    if pattern.style != Style::Re && normalises_to_dot(&pattern.text) {
        return Some(pattern.clone());
    }
    let text = match pattern.style {
        Style::Fm | Style::Sh | Style::Pp | Style::Pf => {
            format!("{prefix}/{}", pattern.text.trim_start_matches('/'))
        }
        Style::Re => prefixed_regex(&pattern.text, prefix),
    };
    Some(Pattern {
        action: pattern.action,
        style: pattern.style,
        text,
    })
}

fn normalises_to_dot(text: &str) -> bool {
    !text.starts_with('/') && text.split('/').all(|part| part.is_empty() || part == ".")
}

/// Python `re.search(r, path)` ≡ `re.match('.*?(?:r)', path)`; so the twin
/// anchors at the prefix, lets `.*?` find the start, and turns each start
/// anchor (`^`, `\A`) of `r` into "just after the prefix".
fn prefixed_regex(regex: &str, prefix: &str) -> String {
    let escaped = escape_regex(&format!("{prefix}/"));
    let (flags, body) = split_global_flags(regex);
    let after_prefix = format!("(?<=^{escaped})");
    let mut out = String::with_capacity(body.len() + 2 * escaped.len());
    let mut chars = body.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('A') if !in_class => out.push_str(&after_prefix),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // `[]` and `[^]` start classes whose first `]` is literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '^' if !in_class => out.push_str(&after_prefix),
            other => out.push(other),
        }
    }
    format!("{flags}^{escaped}.*?(?:{out})")
}

/// Leading global inline flags such as `(?i)` must stay at the very start.
fn split_global_flags(regex: &str) -> (&str, &str) {
    let bytes = regex.as_bytes();
    if bytes.starts_with(b"(?") {
        if let Some(end) = regex.find(')') {
            let flags = &regex[2..end];
            if !flags.is_empty() && flags.chars().all(|c| "aiLmsux".contains(c)) {
                return (&regex[..=end], &regex[end + 1..]);
            }
        }
    }
    ("", regex)
}

fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '/' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_star_may_stand_for_the_dotdots() {
        let p = parse_exclude("*/tank").unwrap();
        let twins: Vec<String> = twins_after(&p, "../x/snap/a", 1)
            .iter()
            .map(|t| t.text.clone())
            .collect();
        assert_eq!(twins, ["../x/snap/a/*/tank", "../x/snap/a/tank"]);
        assert_eq!(twins_after(&p, "x/snap", 0).len(), 1);
        let anchored = parse_exclude("data/x").unwrap();
        assert!(twins_after(&anchored, "../x/snap/a", 1).is_empty());
    }

    const PREFIX: &str = "run/zfs-snap/snap";

    #[test]
    fn parses_lines_like_borg() {
        assert_eq!(
            parse_line("R /var/lib", Style::Sh).unwrap(),
            Line::Root("/var/lib".into())
        );
        assert_eq!(
            parse_line("P fm", Style::Sh).unwrap(),
            Line::Style(Style::Fm)
        );
        assert_eq!(
            parse_line("-/var/tmp", Style::Sh).unwrap(),
            Line::Rule(Pattern {
                action: Action::Exclude,
                style: Style::Sh,
                text: "/var/tmp".into()
            })
        );
        assert_eq!(
            parse_line("! re:^var/cache", Style::Sh).unwrap(),
            Line::Rule(Pattern {
                action: Action::ExcludeNoRecurse,
                style: Style::Re,
                text: "^var/cache".into()
            })
        );
        assert!(parse_line("x foo", Style::Sh).unwrap_err().contains("'x'"));
        assert!(parse_line("+ zz:foo", Style::Sh)
            .unwrap_err()
            .contains("zz"));
        assert!(parse_line("-", Style::Sh).is_err());
    }

    #[test]
    fn excludes_default_to_fm() {
        let p = parse_exclude("*.pyc").unwrap();
        assert_eq!((p.action, p.style), (Action::ExcludeNoRecurse, Style::Fm));
        assert_eq!(parse_exclude("pp:/var/cache").unwrap().style, Style::Pp);
    }

    #[test]
    fn clean_lines_strips_and_drops_comments() {
        let lines: Vec<_> = clean_lines("  # c\n\n  - /a  \n+ b\n").collect();
        assert_eq!(lines, ["- /a", "+ b"]);
    }

    #[test]
    fn path_styles_get_the_prefix() {
        for style in [Style::Fm, Style::Sh, Style::Pp, Style::Pf] {
            let p = Pattern {
                action: Action::Exclude,
                style,
                text: "/var/cache".into(),
            };
            assert_eq!(prefixed(&p, PREFIX).text, "run/zfs-snap/snap/var/cache");
        }
        let p = Pattern {
            action: Action::Include,
            style: Style::Sh,
            text: "**/.cache".into(),
        };
        assert_eq!(
            prefixed(&p, PREFIX).to_string(),
            "+ sh:run/zfs-snap/snap/**/.cache"
        );
    }

    #[test]
    fn regex_twin_anchors_after_the_prefix() {
        assert_eq!(
            prefixed_regex("^var/cache", PREFIX),
            r"^run/zfs\-snap/snap/.*?(?:(?<=^run/zfs\-snap/snap/)var/cache)"
        );
        assert_eq!(
            prefixed_regex(r"\.pyc$", PREFIX),
            r"^run/zfs\-snap/snap/.*?(?:\.pyc$)"
        );
        assert_eq!(
            prefixed_regex("(?i)[^^]x", PREFIX),
            r"(?i)^run/zfs\-snap/snap/.*?(?:[^^]x)"
        );
    }
}

/// The regex twin checked against Python's `re`, the engine borg uses: for
/// every pattern and path, `re.search(twin, prefix/path)` must equal
/// `re.search(pattern, path)`.
#[cfg(test)]
mod python_equivalence {
    use super::*;
    use std::process::Command;

    const PREFIX: &str = "run/zfs-snap/snap";

    #[test]
    fn regex_twins_match_exactly_what_the_originals_match() {
        integration::need!(integration::Need::Tool("python3"));
        let patterns = [
            r"^var/cache",
            r"\.pyc$",
            r"cache",
            r"^(var|srv)/tmp/",
            r"^var/lib/[^/]+/\.cache$",
            r"(?i)^HOME/.*/Downloads",
            r"\Avar",
            r"^etc$|^srv/x",
            r"[\^]x",
            r"snap/var",
            r"^$",
        ];
        let paths = [
            "var/cache",
            "var/cache/apt/x",
            "var/lib/a/.cache",
            "var/lib/a/b/.cache",
            "srv/tmp/f",
            "srv/x",
            "etc",
            "etc/passwd",
            "home/u/downloads/f",
            "x.pyc",
            "a^x",
            "tmp/snap/var",
            "var",
        ];
        let mut script = String::from("import re, json, sys\nbad = []\n");
        for p in patterns {
            let twin = prefixed_regex(p, PREFIX);
            for path in paths {
                script.push_str(&format!(
                    "o = bool(re.search({p:?}, {path:?})); t = bool(re.search({twin:?}, {full:?}))\n\
                     if o != t: bad.append(({p:?}, {path:?}, o, t))\n",
                    full = format!("{PREFIX}/{path}"),
                ));
            }
        }
        script.push_str("print(json.dumps(bad)); sys.exit(1 if bad else 0)\n");
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "twins disagree (pattern, path, original, twin): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
