//! The one place child processes are run: argument vectors, never a shell;
//! every call logged at debug level with its duration and status; stderr
//! captured for the error. Three ways to run one: captured to completion
//! ([`CommandLine::output`], for zfs and mount), with signals passed on and
//! our stdio inherited or its stdout teed ([`CommandLine::run_forwarding`],
//! for borg), captured with signals passed on
//! ([`CommandLine::capture_forwarding`], zfs-snap's own borg calls), or
//! started and left to the caller to wait for
//! ([`CommandLine::spawn_forwarding`], a session's command). Calls into
//! libraries (libzfs_core) are timed and logged the same way ([`timed`]).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::signals::Signals;

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// How many processes of its own this process has run through
/// [`CommandLine`] (zfs, mount, borg's version and figures); borg's create
/// and a session's command, which zfs-snap runs for the user, not counted.
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

    /// A program named by its path or name alone, with no leading words
    /// (it may contain spaces).
    pub fn program_only(what: &'static str, program: impl Into<OsString>) -> Self {
        Self {
            what,
            program: program.into(),
            leading: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The same command, with `key=value` in every call's environment.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// What every call gets in its environment, on top of ours.
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.env
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
        self.log_ended(args, &output.status, started);
        Ok(output)
    }

    /// Starts the command with our stdio and passes on the signals
    /// [`Signals`] takes, until the caller has waited for it and cleared it
    /// (`signals.set_child(None)`).
    /// A signal that came before the child was known is passed on at once
    /// (a session's command must not run on after the session was asked to
    /// stop; callers of [`CommandLine::run_forwarding`] check for a signal
    /// before they start borg instead).
    pub fn spawn_forwarding(&self, args: &[OsString], signals: &Signals) -> Result<Child> {
        let child = self.start(args, signals, self.command(args))?;
        if let Some(signal) = signals.received() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::try_from(signal).ok(),
            );
        }
        Ok(child)
    }

    /// Starts `command` (this command line, its stdio set up by the caller)
    /// and passes the signals that come from now on to it.
    fn start(&self, args: &[OsString], signals: &Signals, mut command: Command) -> Result<Child> {
        let child = command
            .spawn()
            .map_err(|source| self.spawn_error(args, source))?;
        signals.set_child(Some(child.id()));
        tracing::debug!(command = %self.display_with(args), pid = child.id(), "started");
        Ok(child)
    }

    /// Runs with our stdin and stderr, passing signals on, to its end. With
    /// [`Stdout::Tee`] its stdout goes through a pipe, on to ours unchanged,
    /// and its first [`KEEP_STDOUT`] bytes are returned too; with
    /// [`Stdout::Keep`] they are returned only.
    pub fn run_forwarding(
        &self,
        args: &[OsString],
        signals: &Signals,
        stdout: Stdout,
    ) -> Result<Finished> {
        let started = Instant::now();
        let mut command = self.command(args);
        if stdout != Stdout::Inherit {
            command.stdout(Stdio::piped());
        }
        let mut child = self.start(args, signals, command)?;
        let shown = stdout == Stdout::Tee;
        let tee = child
            .stdout
            .take()
            .map(|out| std::thread::spawn(move || tee(out, shown)));
        let status = child.wait();
        signals.set_child(None);
        let stdout = tee.and_then(|t| t.join().ok());
        let status = status.map_err(|source| Error::Spawn {
            command: self.display_with(args),
            source,
        })?;
        self.log_ended(args, &status, started);
        Ok(Finished { status, stdout })
    }

    /// Runs to completion with no stdin, stdout and stderr captured,
    /// passing signals on. Returns stdout; a non-zero exit is an error
    /// carrying stderr.
    pub fn capture_forwarding(&self, args: &[OsString], signals: &Signals) -> Result<Vec<u8>> {
        let started = Instant::now();
        let mut command = self.command(args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = self.start(args, signals, command)?;
        SPAWNED.fetch_add(1, Ordering::Relaxed);
        let output = child.wait_with_output();
        signals.set_child(None);
        let output = output.map_err(|source| Error::Spawn {
            command: self.display_with(args),
            source,
        })?;
        self.log_ended(args, &output.status, started);
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(self.failure(args, &output))
        }
    }

    fn log_ended(&self, args: &[OsString], status: &ExitStatus, started: Instant) {
        tracing::debug!(
            command = %self.display_with(args),
            status = %status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ran"
        );
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
        "the session's" => "check the command given after `zfs-snap session --`",
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

/// Where `program` runs from: itself when it names a path (holds a `/`),
/// else the first regular file of that name in a `PATH` directory that
/// `accept` takes (as execvp(3) looks, skipping what `accept` refuses).
pub fn find_program(
    program: &std::path::Path,
    accept: impl Fn(&std::path::Path) -> bool,
) -> Option<std::path::PathBuf> {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(program.to_path_buf());
    }
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file() && accept(candidate))
}

/// Where a child's stdout goes in [`CommandLine::run_forwarding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    Inherit,
    /// On to ours, and kept (`create --json` prints its figures there).
    Tee,
    /// Kept, not shown (the `--json` zfs-snap added to a create).
    Keep,
}

/// How a child run by [`CommandLine::run_forwarding`] ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// With [`Stdout::Tee`] or [`Stdout::Keep`], its first [`KEEP_STDOUT`] bytes.
    pub stdout: Option<Vec<u8>>,
}

/// Times a call into a library (libzfs_core) and logs it as a command's
/// run is logged: what, on which names, how long, how it ended.
pub fn timed<T>(call: &str, names: &[String], f: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let result = f();
    tracing::debug!(
        call,
        names = %names.join(" "),
        ok = result.is_ok(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "called"
    );
    result
}

/// At most this much of a teed stdout is kept (borg's `--json` document is
/// a few KiB); all of it is passed on.
pub const KEEP_STDOUT: usize = 16 << 20;

/// `write_all` and flush, waiting out a non-blocking stdout's `WouldBlock`
/// (the child itself would have blocked).
fn write_all_patiently(out: &mut impl std::io::Write, mut bytes: &[u8]) -> io::Result<()> {
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
/// the pipe is closed, so the child sees what it would have seen writing
/// there.
fn tee(mut from: impl std::io::Read, shown: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut out = std::io::stdout();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = KEEP_STDOUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        if shown && write_all_patiently(&mut out, &buf[..n]).is_err() {
            break;
        }
    }
    kept
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
