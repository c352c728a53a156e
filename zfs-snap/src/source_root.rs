//! A source root as the user gave it: where it is, whether it exists, and
//! whether a symlinked directory above it sends borg elsewhere.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mapping::normalize;

/// A source root as the user gave it and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRoot {
    pub given: PathBuf,
    /// Absolute and lexically normalised.
    pub absolute: PathBuf,
    /// Set when a directory above the root is a symlink: borg follows it,
    /// the mirror cannot, so such a root is read live.
    pub through_symlink: Option<PathBuf>,
    /// The root does not exist: it goes to borg as given, so borg warns
    /// about it and exits 1, as plain borg does, and archives the rest.
    pub missing: bool,
}

impl SourceRoot {
    /// Notes whether `given` exists (without following a final symlink, as
    /// borg does not) and whether a parent directory is a symlink.
    pub fn resolve(given: &Path, cwd: &Path) -> Result<SourceRoot> {
        let absolute = normalize(&cwd.join(given));
        match std::fs::symlink_metadata(&absolute) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(SourceRoot {
                    given: given.to_owned(),
                    absolute,
                    through_symlink: None,
                    missing: true,
                })
            }
            Err(source) => {
                return Err(Error::SourceUnreadable {
                    path: given.to_owned(),
                    source,
                })
            }
        }
        let through_symlink = match absolute.parent() {
            Some(parent) => {
                let real = parent
                    .canonicalize()
                    .map_err(|source| Error::SourceUnreadable {
                        path: given.to_owned(),
                        source,
                    })?;
                (real != parent).then_some(real)
            }
            None => None,
        };
        Ok(SourceRoot {
            given: given.to_owned(),
            absolute,
            through_symlink,
            missing: false,
        })
    }
}
