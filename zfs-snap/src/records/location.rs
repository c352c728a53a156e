//! Which repository a create wrote to, spelled one way for every create.

use std::path::Path;

use crate::borg::CreateArgs;

/// The repository and archive of `REPO::NAME` (or `::NAME` with
/// `BORG_REPO`).
pub fn repository_of(args: &CreateArgs) -> Option<(String, String)> {
    let given = args.argv[args.archive_index].to_string_lossy().into_owned();
    let (repo, name) = given.split_once("::")?;
    let repo = if repo.is_empty() {
        std::env::var("BORG_REPO").ok().filter(|r| !r.is_empty())?
    } else {
        repo.to_owned()
    };
    Some((repo, name.to_owned()))
}

/// borg's canonical spelling of a repository location, as its JSON gives
/// it (`repository.location`; borg 1.4 `Location.canonical_path()`), which
/// borgmatic-exporter labels its series with: `u@h:repo` and
/// `ssh://u@h/./repo` are both `ssh://u@h/./repo`, `u@h:~/r` is
/// `ssh://u@h/~/r`, `file:///srv/r` is `/srv/r`. A relative local path is
/// made absolute against `cwd` (borg keeps it relative: the label must
/// name the repository whatever the working directory). Anything borg would
/// not parse is kept as [`absolute_location`] spells it.
pub fn canonical(location: &str, cwd: &Path) -> String {
    match parse(location) {
        Some(Parsed::Ssh {
            user,
            host,
            port,
            path,
        }) => {
            let path = if path.starts_with('~') {
                format!("/{path}")
            } else if !path.starts_with('/') {
                format!("/./{path}")
            } else {
                path
            };
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("ssh://{user}{host}{port}{path}")
        }
        Some(Parsed::File { path }) if path.starts_with('/') => path,
        Some(Parsed::File { path }) => absolute_location(&path, cwd),
        None => absolute_location(location, cwd),
    }
}

enum Parsed {
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u64>,
        path: String,
    },
    File {
        path: String,
    },
}

/// borg 1.4's `Location._parse` (its `ssh_re`, `file_re`, `scp_re`) of a
/// location without `::archive`.
fn parse(text: &str) -> Option<Parsed> {
    if let Some(rest) = text.strip_prefix("ssh://") {
        let (user, rest) = user_part(rest);
        let (host, rest) = host_part(rest)?;
        let (port, rest) = match rest.strip_prefix(':') {
            Some(r) => {
                let digits = r.len() - r.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                if digits == 0 {
                    return None;
                }
                (Some(r[..digits].parse().ok()?), &r[digits..])
            }
            None => (None, rest),
        };
        if !rest.starts_with('/') || rest.len() < 2 || rest.contains("::") {
            return None;
        }
        return Some(Parsed::Ssh {
            user,
            host,
            port,
            path: normpath_special(rest),
        });
    }
    if let Some(rest) = text.strip_prefix("file://") {
        // `([^/]*)/` then at least one more character; else borg reads it
        // as a local path (below).
        let valid = rest
            .find('/')
            .is_some_and(|slash| rest.len() >= slash + 2 && !rest.contains("::"));
        if valid {
            return Some(Parsed::File {
                path: normpath_special(rest),
            });
        }
    }
    // scp style: an optional `user@host:`, then a path not starting with
    // `:`, `//` or `ssh://` (regex backtracking: the host part is taken
    // only if the rest is then a valid path).
    let scp_path =
        |p: &str| !p.is_empty() && !p.starts_with(':') && !p.starts_with("//") && !p.contains("::");
    let (user, rest) = user_part(text);
    if let Some((host, after)) = host_part(rest) {
        if let Some(path) = after.strip_prefix(':').filter(|p| scp_path(p)) {
            return Some(Parsed::Ssh {
                user,
                host,
                port: None,
                path: normpath_special(path),
            });
        }
    }
    if scp_path(text) && !text.starts_with("ssh://") {
        return Some(Parsed::File {
            path: normpath_special(text),
        });
    }
    None
}

/// `(?:(?P<user>[^@:/]+)@)?`
fn user_part(text: &str) -> (Option<String>, &str) {
    match text.find('@') {
        Some(at) if at > 0 && !text[..at].contains([':', '/']) => {
            (Some(text[..at].to_owned()), &text[at + 1..])
        }
        _ => (None, text),
    }
}

/// `(?!\[)[^:/]+(?<!\])` or `\[[0-9a-fA-F:.]+\]`: the host and the rest.
fn host_part(text: &str) -> Option<(String, &str)> {
    if let Some(inner) = text.strip_prefix('[') {
        let end = inner.find(']')?;
        let addr = &inner[..end];
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        return Some((text[..end + 2].to_owned(), &inner[end + 1..]));
    }
    let end = text.find([':', '/']).unwrap_or(text.len());
    let host = &text[..end];
    if host.is_empty() || host.ends_with(']') {
        return None;
    }
    Some((host.to_owned(), &text[end..]))
}

/// borg's `normpath_special`: Python's `os.path.normpath`, keeping a
/// leading `/./` (a path relative to the remote home).
fn normpath_special(path: &str) -> String {
    let normal = normpath(path);
    if path.starts_with("/./") {
        format!("/.{normal}")
    } else {
        normal
    }
}

/// Python's `posixpath.normpath`.
fn normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let slashes = if path.starts_with("//") && !path.starts_with("///") {
        2
    } else {
        usize::from(path.starts_with('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if slashes == 0 && (parts.is_empty() || parts.last() == Some(&"..")) => {
                parts.push(part)
            }
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let joined = "/".repeat(slashes) + &parts.join("/");
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// Whether borg reaches `location` over SSH (`ssh://...`, `host:path`).
pub fn is_remote(location: &str) -> bool {
    if location.starts_with("ssh://") {
        return true;
    }
    if location.starts_with('/') || location.starts_with("file://") {
        return false;
    }
    match location.split_once(':') {
        Some((host, _)) => !host.contains('/'),
        None => false,
    }
}

/// A relative local path made absolute against `cwd`, without a trailing
/// `/`; anything else as is.
pub fn absolute_location(location: &str, cwd: &Path) -> String {
    let trimmed = match location.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let location = trimmed;
    if is_remote(location) || location.starts_with('/') || location.contains("://") {
        return location.to_owned();
    }
    let mut path = cwd.to_path_buf();
    for part in Path::new(location).components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                path.pop();
            }
            other => path.push(other),
        }
    }
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_and_local_locations() {
        for remote in [
            "ssh://u@h:22/./repo",
            "u@h:repo",
            "h:repo",
            "zh1234@zh1234.rsync.net:backups",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["/srv/repo", "repo", "./a:b", "file:///srv/repo", "a/b:c"] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn canonical_locations_as_borg_spells_them() {
        let cwd = Path::new("/home/u");
        for (given, want) in [
            ("u@h:repo", "ssh://u@h/./repo"),
            ("ssh://u@h/./repo", "ssh://u@h/./repo"),
            ("ssh://u@h:2222/srv//r/", "ssh://u@h:2222/srv/r"),
            ("u@h:~/r", "ssh://u@h/~/r"),
            ("h:/abs", "ssh://h/abs"),
            ("u@[::1]:r", "ssh://u@[::1]/./r"),
            ("file:///srv/r", "/srv/r"),
            ("/srv/r/", "/srv/r"),
            ("repo", "/home/u/repo"),
            (
                "zh1234@zh1234.rsync.net:backups",
                "ssh://zh1234@zh1234.rsync.net/./backups",
            ),
        ] {
            assert_eq!(canonical(given, cwd), want, "{given}");
        }
    }

    #[test]
    fn relative_locations_become_absolute() {
        let cwd = Path::new("/home/u/x");
        assert_eq!(absolute_location("/srv/r/", cwd), "/srv/r");
        assert_eq!(absolute_location("repo//", cwd), "/home/u/x/repo");
        assert_eq!(absolute_location("repo", cwd), "/home/u/x/repo");
        assert_eq!(absolute_location("../r", cwd), "/home/u/r");
        assert_eq!(absolute_location("/srv/r", cwd), "/srv/r");
        assert_eq!(absolute_location("u@h:r", cwd), "u@h:r");
    }
}
