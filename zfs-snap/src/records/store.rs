//! The state directory: one JSON file per repository
//! (`repositories/<hash>.json`) and one for the runs (`run.json`), each
//! replaced atomically under the directory's lock. Readers (`zfs-snap
//! metrics`, the exporter) take no lock: a file is the old one or the new.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::private::{self, LockFile};
use crate::records::error::RecordError;
use crate::records::record::{Recorded, RepositoryState, RunState, FORMAT};

type Result<T> = std::result::Result<T, RecordError>;

pub const REPOSITORIES_DIR: &str = "repositories";
pub const RUN_FILE: &str = "run.json";
const LOCK_FILE: &str = "lock";

/// Runs `f` on the state directory `dir` (made if missing, refused unless
/// it is ours) under its lock.
pub fn locked<T>(dir: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    prepare(dir)?;
    prepare(&dir.join(REPOSITORIES_DIR))?;
    let lock_path = dir.join(LOCK_FILE);
    let _lock = LockFile::take(&lock_path, true).map_err(RecordError::io(&lock_path))?;
    // Under the lock, a temporary file of ours is a dead writer's.
    for d in [dir.to_path_buf(), dir.join(REPOSITORIES_DIR)] {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if is_our_temporary(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    f(dir)
}

/// Replaces the record of `repository` with what `update` makes of the
/// one on file (`None`: none, or one that was not readable, said in a
/// warning).
pub fn update_repository(
    dir: &Path,
    repository: &str,
    update: impl FnOnce(Option<RepositoryState>) -> RepositoryState,
) -> Result<()> {
    locked(dir, |dir| {
        let path = repository_file(dir, repository);
        let old = match read_json::<RepositoryState>(&path) {
            Ok(state) => state.filter(|s| s.repository == repository),
            Err(e) => {
                tracing::warn!("{}: {e}; starting the record afresh", path.display());
                None
            }
        };
        write_json(&path, &update(old))
    })
}

/// Replaces the record of `repository` with what `update` makes of it, if
/// it has one and `update` makes something; whether it did.
pub fn update_existing_repository(
    dir: &Path,
    repository: &str,
    update: impl FnOnce(RepositoryState) -> Option<RepositoryState>,
) -> Result<bool> {
    locked(dir, |dir| {
        let path = repository_file(dir, repository);
        let old = read_json::<RepositoryState>(&path)?.filter(|s| s.repository == repository);
        match old.and_then(update) {
            Some(new) => write_json(&path, &new).map(|()| true),
            None => Ok(false),
        }
    })
}

/// Moves the record of repository `from` to `to` (the same repository,
/// spelled another way), unless `to` has one already; then `from`'s is
/// dropped. A file at `from`'s name that is not its record (unreadable,
/// another repository's) stays.
pub fn rename_repository(dir: &Path, from: &str, to: &str) -> Result<()> {
    if !repository_file(dir, from).exists() {
        return Ok(());
    }
    locked(dir, |dir| {
        let old_path = repository_file(dir, from);
        let new_path = repository_file(dir, to);
        let old = read_json::<RepositoryState>(&old_path)
            .ok()
            .flatten()
            .filter(|s| s.repository == from);
        // A file that is not that repository's record is not ours to move.
        let Some(mut state) = old else {
            return Ok(());
        };
        if !new_path.exists() {
            state.repository = to.to_owned();
            write_json(&new_path, &state)?;
        }
        match std::fs::remove_file(&old_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RecordError::Io {
                path: old_path,
                source: e,
            }),
        }
    })
}

/// Replaces the runs' record with what `update` makes of the one on file.
pub fn update_run(dir: &Path, update: impl FnOnce(Option<RunState>) -> RunState) -> Result<()> {
    locked(dir, |dir| {
        let path = dir.join(RUN_FILE);
        let old = read_json::<RunState>(&path).ok().flatten();
        write_json(&path, &update(old))
    })
}

/// Removes the record of `repository`; whether there was one.
pub fn remove_repository(dir: &Path, repository: &str) -> Result<bool> {
    if !repository_file(dir, repository).exists() {
        return Ok(false);
    }
    locked(dir, |dir| {
        let path = repository_file(dir, repository);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RecordError::Io { path, source: e }),
        }
    })
}

/// Whether `name` is a temporary file [`private::write_atomic`] makes for a
/// record: `.run.json.<16 hex>.tmp`, `.<16 hex>.json.<16 hex>.tmp`.
fn is_our_temporary(name: &str) -> bool {
    private::is_temporary_of(name, |target| {
        target == RUN_FILE || target.strip_suffix(".json").is_some_and(private::is_hex16)
    })
}

/// Creates `dir` (0755: the exporter may run as another user) if missing;
/// refuses it unless it is a real directory of ours that no one else may
/// write to.
fn prepare(dir: &Path) -> Result<()> {
    if !dir.is_absolute() {
        return Err(RecordError::Relative {
            dir: dir.to_owned(),
        });
    }
    private::create_dirs(dir, 0o755).map_err(RecordError::io(dir))?;
    private::check_dir(dir).map_err(|why| RecordError::Refused {
        dir: dir.to_owned(),
        why,
    })
}

/// The file of `repository`: named by a hash of its location, which may
/// hold any character.
pub fn repository_file(dir: &Path, repository: &str) -> PathBuf {
    let hash = Sha256::digest(repository.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(REPOSITORIES_DIR).join(format!("{hex}.json"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_record(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecordError::NotARecord(e.to_string())),
    }
}

/// A record of ours: JSON of the right shape, with our [`FORMAT`].
fn parse_record<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    let not = |why: String| RecordError::NotARecord(why);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(not("empty".into()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| not(format!("not JSON ({e})")))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) => return Err(not(format!("format {f}, this zfs-snap reads {FORMAT}"))),
        None => return Err(not("JSON, but not a zfs-snap record (no \"format\")".into())),
    }
    serde_json::from_value(value).map_err(|e| not(format!("a zfs-snap record with {e}")))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| RecordError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    text.push(b'\n');
    private::write_atomic(path, &text, 0o644).map_err(|source| RecordError::Io {
        path: path.to_owned(),
        source,
    })
}

/// is not a record of ours is named in `unreadable`, and the rest is read.
pub fn read(dir: &Path) -> Recorded {
    let mut recorded = Recorded::default();
    let run = dir.join(RUN_FILE);
    match read_json::<RunState>(&run) {
        Ok(state) => recorded.run = state,
        Err(e) => recorded.unreadable.push((run, e.to_string())),
    }
    let repos = dir.join(REPOSITORIES_DIR);
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&repos) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            recorded.unreadable.push((repos, e.to_string()));
            Vec::new()
        }
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for path in names {
        match read_json::<RepositoryState>(&path) {
            Ok(Some(state)) => recorded.repositories.push(state),
            Ok(None) => {}
            Err(e) => recorded.unreadable.push((path, e.to_string())),
        }
    }
    recorded
        .repositories
        .sort_by(|a, b| a.repository.cmp(&b.repository));
    recorded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_temporary_files_are_ours() {
        for ours in [
            ".run.json.0123456789abcdef.tmp",
            ".0123456789abcdef.json.fedcba9876543210.tmp",
        ] {
            assert!(is_our_temporary(ours), "{ours}");
        }
        for theirs in [
            ".node.prom.1234.tmp",
            ".run.json.tmp",
            ".x.json.0123456789abcdef.tmp",
            "run.json.0123456789abcdef.tmp",
            ".zfs-snap.prom.0123456789abcdef.tmp",
        ] {
            assert!(!is_our_temporary(theirs), "{theirs}");
        }
    }

    #[test]
    fn records_are_told_from_other_json() {
        assert!(parse_record::<RunState>(b"")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(parse_record::<RunState>(b"{\"form")
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert!(parse_record::<RunState>(b"{\"a\": 1}")
            .unwrap_err()
            .to_string()
            .contains("not a zfs-snap record"));
        assert!(parse_record::<RepositoryState>(b"{\"format\": 1}")
            .unwrap_err()
            .to_string()
            .contains("missing field"));
    }
}
