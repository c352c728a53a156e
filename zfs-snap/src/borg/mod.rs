//! Everything about borg: reading and rewriting its command line, checking
//! its version, and running it.

pub mod args;
pub mod patterns;
pub mod rewrite;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Instant;

use crate::command::CommandLine;
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
        let _ = crate::runtime::write_own_file(&cache, &format!("{key}\n{text}\n"));
    }
    Ok(version)
}

fn program_identity(borg: &CommandLine) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let program = Path::new(borg.program());
    let path = if program.components().count() > 1 {
        program.to_path_buf()
    } else {
        let search = std::env::var_os("PATH")?;
        std::env::split_paths(&search)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())?
    };
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

/// Runs borg with our stdio and environment, passing signals on; returns
/// its exit status.
pub fn run(borg: &CommandLine, argv: &[OsString], signals: &Signals) -> Result<ExitStatus> {
    run_teeing(borg, argv, signals, false).map(|(status, _)| status)
}

/// Runs a borg call of zfs-snap's own (`borg info`, `borg list`) to
/// completion: no stdin, output captured, signals passed on as to any
/// borg. Returns stdout; a non-zero exit is an error with borg's stderr.
pub fn run_captured(borg: &CommandLine, argv: &[OsString], signals: &Signals) -> Result<Vec<u8>> {
    use std::process::Stdio;
    let shown = borg.display_with(argv);
    tracing::debug!(command = %shown, "running borg");
    let child = borg
        .command(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| borg.spawn_error(argv, source))?;
    signals.set_child(Some(child.id()));
    let output = child.wait_with_output();
    signals.set_child(None);
    let output = output.map_err(|source| Error::Spawn {
        command: shown.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(Error::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// At most this much of borg's stdout is kept by [`run_teeing`] (its
/// `--json` document is a few KiB); all of it is passed on.
const KEEP_STDOUT: usize = 16 << 20;

/// [`run`]; with `keep_stdout`, borg's stdout goes through a pipe, on to
/// ours unchanged, and its first [`KEEP_STDOUT`] bytes are returned too
/// (`create --json` prints the archive's figures there).
pub fn run_teeing(
    borg: &CommandLine,
    argv: &[OsString],
    signals: &Signals,
    keep_stdout: bool,
) -> Result<(ExitStatus, Option<Vec<u8>>)> {
    let shown = borg.display_with(argv);
    tracing::info!(command = %shown, "running borg");
    let started = Instant::now();
    let mut command = borg.command(argv);
    if keep_stdout {
        command.stdout(std::process::Stdio::piped());
    }
    let mut child = command
        .spawn()
        .map_err(|source| borg.spawn_error(argv, source))?;
    signals.set_child(Some(child.id()));
    let tee = child
        .stdout
        .take()
        .map(|out| std::thread::spawn(move || tee(out)));
    let status = child.wait();
    signals.set_child(None);
    let kept = tee.and_then(|t| t.join().ok());
    let status = status.map_err(|source| Error::Spawn {
        command: shown,
        source,
    })?;
    tracing::info!(%status, elapsed_s = started.elapsed().as_secs_f64(), "borg finished");
    Ok((status, kept))
}

/// `write_all` and flush, waiting out a non-blocking stdout's `WouldBlock`
/// (borg itself would have blocked).
fn write_all_patiently(out: &mut impl std::io::Write, mut bytes: &[u8]) -> std::io::Result<()> {
    use std::io::ErrorKind;
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    loop {
        match out.flush() {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            other => return other,
        }
    }
}

/// Copies `from` to our stdout until EOF, keeping the first
/// [`KEEP_STDOUT`] bytes (all of it is passed on). When our stdout fails,
/// the pipe is closed, so borg sees what it would have seen writing there.
fn tee(mut from: impl std::io::Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut out = std::io::stdout();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = KEEP_STDOUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        if write_all_patiently(&mut out, &buf[..n]).is_err() {
            // Our stdout is gone: close the pipe too, so borg's next write
            // fails as it would have on our stdout.
            break;
        }
    }
    kept
}
