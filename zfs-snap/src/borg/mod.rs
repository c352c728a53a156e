//! Everything about borg: reading and rewriting its command line, checking
//! its version, and running it (through [`crate::command`]).

pub mod args;
pub mod patterns;
pub mod rewrite;
pub mod stats;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Instant;

use crate::command::{CommandLine, Finished, Stdout};
use crate::error::{Error, Result};
use crate::signals::Signals;

pub use args::{parse, CreateArgs, Invocation};
pub use rewrite::{rewrite, rewrite_numbered, Rewritten, Sources};

/// [`check_version`], remembering a good answer in `cache_dir` keyed on the
/// borg program's identity (path, inode, size, times), so a nightly run does
/// not pay a Python start-up just to learn the version again.
pub fn check_version_cached(borg: &CommandLine, cache_dir: &Path) -> Result<(u32, u32, u32)> {
    let cache = cache_dir.join(crate::runtime::BORG_VERSION_FILE);
    let key = program_identity(borg);
    if let (Some(key), Ok(text)) = (&key, std::fs::read_to_string(&cache)) {
        if let Some((cached_key, version)) = text.split_once('\n') {
            if cached_key == key {
                if let Some(v) = args::parse_version(version) {
                    return Ok(v);
                }
            }
        }
    }
    let (version, text) = check_version_text(borg)?;
    if let Some(key) = key {
        let _ = crate::private::write_own_file(&cache, format!("{key}\n{text}\n").as_bytes());
    }
    Ok(version)
}

fn program_identity(borg: &CommandLine) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = crate::command::find_program(Path::new(borg.program()), |_| true)?;
    let real = path.canonicalize().ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    Some(format!(
        "{} {} {} {} {}.{} {}.{}",
        borg,
        real.display(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// Checks that `borg` is 1.4 or newer (the `/./` marker needs it).
pub fn check_version(borg: &CommandLine) -> Result<(u32, u32, u32)> {
    check_version_text(borg).map(|(v, _)| v)
}

fn check_version_text(borg: &CommandLine) -> Result<((u32, u32, u32), String)> {
    let argv = vec![OsString::from("--version")];
    let output = borg.run(&argv)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = args::parse_version(&text).ok_or_else(|| Error::MalformedOutput {
        command: borg.display_with(&argv),
        line: text.trim().to_owned(),
        reason: "expected `borg X.Y.Z`".into(),
    })?;
    if version < (1, 4, 0) {
        return Err(Error::BorgTooOld {
            found: text.trim().to_owned(),
        });
    }
    Ok((version, text.trim().to_owned()))
}

/// Set, to our pid, in the environment of every borg call we make (see
/// [`for_borg`]): a `borg` link of ours started under it is a loop (a
/// `borg` script on PATH calling `borg`, which finds the link again), and
/// refuses to go on.
pub const RUNNING_ENV: &str = "ZFS_SNAP_RUNNING";

/// The borg command as zfs-snap runs it: marked with [`RUNNING_ENV`].
pub fn for_borg(borg: CommandLine) -> CommandLine {
    borg.with_env(RUNNING_ENV, std::process::id().to_string())
}

/// borg's exit code of `status`, `128 + N` for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs borg with our stdio and environment, passing signals on; its
/// stdout as `stdout` says (`create --json` prints the archive's figures
/// there).
pub fn run(
    borg: &CommandLine,
    argv: &[OsString],
    signals: &Signals,
    stdout: Stdout,
) -> Result<Finished> {
    tracing::info!(command = %borg.display_with(argv), "running borg");
    let started = Instant::now();
    let finished = borg.run_forwarding(argv, signals, stdout)?;
    tracing::info!(status = %finished.status, elapsed_s = started.elapsed().as_secs_f64(), "borg finished");
    Ok(finished)
}
