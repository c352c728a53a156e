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
