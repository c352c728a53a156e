//! Small helpers: running commands with a clear error, timing steps, hashing.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The context for a command that could not be started.
pub fn cannot_start(cmd: &Command, e: &std::io::Error) -> String {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        " (not installed? `sudo bash .ci/vm-image-deps.sh` installs what vm-tests needs)"
    } else {
        ""
    };
    format!("cannot start `{}`: {e}{hint}", show(cmd))
}

/// Renders a command line for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command with inherited stdout/stderr; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => bail!(cannot_start(cmd, &e)),
    };
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs a command with its output sent to `log` (appended); on failure the last
/// lines of the log are printed so the reason is visible without opening the file.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    writeln!(f, "+ {}", show(cmd))?;
    let out = f.try_clone()?;
    let status = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(f))
        .status()
    {
        Ok(s) => s,
        Err(e) => bail!(cannot_start(cmd, &e)),
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        bail!(
            "`{}` failed: {status}\n--- last lines of {} ---\n{tail}",
            show(cmd),
            log.display()
        );
    }
    Ok(())
}

/// Runs a command and returns its stdout as text; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = match cmd.stdin(Stdio::null()).stderr(Stdio::piped()).output() {
        Ok(o) => o,
        Err(e) => bail!(cannot_start(cmd, &e)),
    };
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cmd<S: AsRef<OsStr>>(program: S) -> Command {
    Command::new(program)
}

pub fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:04.1}s", (s / 60.0) as u64, s % 60.0)
    } else {
        format!("{s:.1}s")
    }
}

/// Runs `f` as a named step, printing its start and how long it took.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("vm-tests: {name} ...");
    let t = Instant::now();
    let r = f().with_context(|| format!("step failed: {name}"))?;
    eprintln!("vm-tests: {name}: done in {}", fmt_dur(t.elapsed()));
    Ok(r)
}

pub fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed so that ("ab","c") and ("a","bc") differ.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let mut s = String::new();
    for b in h.finalize() {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// The workspace's target directory: $CARGO_TARGET_DIR or <workspace>/target.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    workspace_root().join("target")
}

pub fn workspace_root() -> PathBuf {
    // vm-tests lives at <workspace>/vm-tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vm-tests has a parent directory")
        .to_path_buf()
}

/// Hard-links `from` to `to`, or copies when that is not possible; keeps the mode.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Quotes a string for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_round_trips_through_sh() {
        for s in [
            "plain",
            "with space",
            "it's",
            "",
            "$HOME",
            "a\"b",
            "--test-threads=2",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }

    #[test]
    fn hash_parts_are_length_prefixed() {
        assert_ne!(sha256_hex(&["ab", "c"]), sha256_hex(&["a", "bc"]));
        assert_eq!(sha256_hex(&["x"]).len(), 64);
    }
}
