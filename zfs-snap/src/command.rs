//! The one place external commands are run: argument vectors, never a shell;
//! every call logged at debug level with its duration and status; stderr
//! captured for the error.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// How many processes this process has spawned through [`CommandLine`].
pub fn spawned() -> usize {
    SPAWNED.load(Ordering::Relaxed)
}

/// A configured command such as `zfs` or `sudo zfs`: a program and the
/// arguments that always precede the call's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    what: &'static str,
    program: OsString,
    leading: Vec<OsString>,
    /// Set in every call's environment, on top of ours.
    env: Vec<(OsString, OsString)>,
}

impl CommandLine {
    /// Splits `text` on whitespace: `"sudo zfs"` runs `sudo` with `zfs` first.
    /// `what` names the command's role in messages ("zfs", "mount").
    pub fn parse(what: &'static str, text: &str) -> Result<Self> {
        let mut words = text.split_whitespace().map(OsString::from);
        let program = words.next().ok_or_else(|| Error::CommandNotFound {
            what,
            command: text.to_owned(),
            hint: "the configured command is empty",
        })?;
        Ok(Self {
            what,
            program,
            leading: words.collect(),
            env: Vec::new(),
        })
    }

    /// The same command, with `key=value` in every call's environment.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The words that always follow the program (`zfs` in `sudo zfs`).
    pub fn leading(&self) -> &[OsString] {
        &self.leading
    }

    /// The command ready to spawn, with a clean signal mask (see
    /// [`unblock_signals_in_child`]).
    pub fn command(&self, args: &[OsString]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.leading)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        unblock_signals_in_child(&mut command);
        command
    }

    /// A shell-like rendering for logs and messages.
    pub fn display_with(&self, args: &[OsString]) -> String {
        std::iter::once(&self.program)
            .chain(&self.leading)
            .chain(args)
            .map(|word| quote(&word.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs to completion with stdout and stderr captured; non-zero exit is
    /// an error carrying stderr.
    pub fn run(&self, args: &[OsString]) -> Result<Output> {
        let output = self.output(args)?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(self.failure(args, &output))
        }
    }

    /// Runs to completion and returns whatever happened, for callers that
    /// interpret a failure themselves.
    pub fn output(&self, args: &[OsString]) -> Result<Output> {
        let started = Instant::now();
        let result = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        SPAWNED.fetch_add(1, Ordering::Relaxed);
        let output = result.map_err(|source| self.spawn_error(args, source))?;
        tracing::debug!(
            command = %self.display_with(args),
            status = %output.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ran"
        );
        Ok(output)
    }

    pub fn failure(&self, args: &[OsString], output: &Output) -> Error {
        Error::CommandFailed {
            command: self.display_with(args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn spawn_error(&self, args: &[OsString], source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::NotFound {
            Error::CommandNotFound {
                what: self.what,
                command: self.program.to_string_lossy().into_owned(),
                hint: hint_for(self.what),
            }
        } else {
            Error::Spawn {
                command: self.display_with(args),
                source,
            }
        }
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_with(&[]))
    }
}

fn hint_for(what: &str) -> &'static str {
    match what {
        "zfs" => "install zfsutils-linux, or set --zfs-command / ZFS_SNAP_ZFS_COMMAND",
        "mount" => {
            "set --mount-command / ZFS_SNAP_MOUNT_COMMAND, or leave it unset to use mount(2)"
        }
        "umount" => {
            "set --umount-command / ZFS_SNAP_UMOUNT_COMMAND, or leave it unset to use umount2(2)"
        }
        "borg" => "install borgbackup >= 1.4, or set --borg / ZFS_SNAP_BORG",
        _ => "check the configured command",
    }
}

/// Children inherit the signal mask, and ours blocks SIGINT/SIGTERM/SIGHUP
/// (see [`crate::signals`]); a child must start with none blocked, or borg
/// could not be stopped.
pub fn unblock_signals_in_child(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: pthread_sigmask is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
}

/// Quotes a word for display only; nothing here is ever given to a shell.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Converts string-ish arguments into the owned vector the runner takes.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_with_leading_arguments() {
        let cmd = CommandLine::parse("zfs", "  sudo   zfs ").unwrap();
        assert_eq!(cmd.program(), "sudo");
        assert_eq!(
            cmd.display_with(&args(["list", "a b"])),
            "sudo zfs list 'a b'"
        );
    }

    #[test]
    fn empty_command_is_an_error() {
        assert!(CommandLine::parse("zfs", "   ").is_err());
    }

    #[test]
    fn missing_program_names_the_command_and_the_fix() {
        let cmd = CommandLine::parse("zfs", "/nonexistent/zfs").unwrap();
        let err = cmd.run(&[]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/zfs"), "{err}");
        assert!(err.contains("--zfs-command"), "{err}");
    }

    #[test]
    fn failure_carries_stderr() {
        let cmd = CommandLine::parse("sh", "sh -c").unwrap();
        let err = cmd.run(&args(["echo boom >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }
}
