//! The borg calls zfs-snap makes itself for figures a create does not
//! print: `borg list --json` for the archive count after a create, and, at
//! the end of a session, the repository's totals and archive count as the
//! session's prune and compact left them ([`repository_totals`]).
//!
//! Those calls open the repository as the create did: the same borg, the
//! same options and `BORG_*` environment ([`Access`]), and the passphrase
//! the create got. borgmatic hands it over through a pipe
//! (`BORG_PASSPHRASE_FD`) that only one reader can empty: the create's
//! client reads it first ([`take_piped_passphrase`]), keeps it in memory
//! only, and gives each borg a pipe of its own holding it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::borg::CreateArgs;
use crate::command::CommandLine;
use crate::records::error::RecordError;
use crate::records::figures::{parse_list_json, parse_repository_info_json, RepositoryTotals};
use crate::signals::Signals;

type Result<T> = std::result::Result<T, RecordError>;

/// Whether borg took its passphrase from `BORG_PASSPHRASE_FD`: only when
/// neither `BORG_PASSPHRASE` nor `BORG_PASSCOMMAND` is set (borg's order).
pub fn passphrase_through_a_pipe() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some();
    set("BORG_PASSPHRASE_FD") && !set("BORG_PASSPHRASE") && !set("BORG_PASSCOMMAND")
}

/// The most of a passphrase pipe read: what a pipe holds unread.
const PASSPHRASE_MAX: usize = 64 * 1024;

/// How long the passphrase pipe may take to give its bytes and its end of
/// file (borgmatic writes them and closes its end before borg starts).
const PASSPHRASE_WAIT: Duration = Duration::from_secs(10);

/// Reads the passphrase from the pipe `BORG_PASSPHRASE_FD` names (when
/// borg would read it, [`passphrase_through_a_pipe`]) and puts a new pipe
/// holding the same bytes at the same descriptor, for the create's borg to
/// read as it would have. `None`: no such pipe (the number names no open
/// descriptor, or one that is not a pipe: left for borg as it is). Waits
/// at most [`PASSPHRASE_WAIT`] for the pipe's end, and not past a signal.
pub fn take_piped_passphrase(signals: &Signals) -> std::io::Result<Option<Vec<u8>>> {
    if !passphrase_through_a_pipe() {
        return Ok(None);
    }
    let Some(fd) = std::env::var("BORG_PASSPHRASE_FD")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|fd| *fd > 2)
    else {
        return Ok(None);
    };
    let mut st = std::mem::MaybeUninit::<nix::libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success; it is read only then.
    if unsafe { nix::libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Ok(None);
    }
    // SAFETY: fstat succeeded.
    let kind = unsafe { st.assume_init() }.st_mode & nix::libc::S_IFMT;
    if kind != nix::libc::S_IFIFO && kind != nix::libc::S_IFREG {
        return Ok(None);
    }
    // Not owned: on an error the descriptor stays as it was, for borg.
    // SAFETY: `fd` is open (fstat above) and stays open for the borrow's
    // life (nothing here closes it).
    let theirs = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let deadline = Instant::now() + PASSPHRASE_WAIT;
    let mut passphrase = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        if let Some(signal) = signals.received() {
            break Err(std::io::Error::other(format!("stopped by {signal}")));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(std::io::Error::other(format!(
                "no end of file within {} s",
                PASSPHRASE_WAIT.as_secs()
            )));
        }
        // In slices, so a signal is seen within one.
        let mut fds = [nix::poll::PollFd::new(theirs, nix::poll::PollFlags::POLLIN)];
        let slice = u16::try_from(left.min(Duration::from_millis(200)).as_millis()).unwrap_or(200);
        match nix::poll::poll(&mut fds, slice) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
        match nix::unistd::read(theirs, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) if passphrase.len() + n < PASSPHRASE_MAX => {
                passphrase.extend_from_slice(&buf[..n])
            }
            Ok(_) => break Err(std::io::Error::other("longer than a passphrase")),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(e.into()),
        }
    };
    if passphrase.is_empty() {
        // Nothing taken: the descriptor is as borg would have found it.
        return ended.map(|()| Some(passphrase));
    }
    // From here on the bytes are read: the create's borg finds them only
    // in the new pipe, even when the read ended in an error.
    let put_back = || -> std::io::Result<()> {
        let pipe = pipe_holding(&passphrase)?;
        // dup2 onto the old number, which the environment names; dup2
        // clears close-on-exec there, so borg inherits it as it would
        // have inherited borgmatic's pipe.
        // SAFETY: dup2 onto a descriptor this process was given for this.
        if unsafe { nix::libc::dup2(pipe.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    put_back().map_err(|e| {
        std::io::Error::other(format!(
            "read, but not put back for borg ({e}): the create will not find its passphrase"
        ))
    })?;
    ended.map_err(|e| {
        std::io::Error::other(format!(
            "{e} (what was read is put back for borg, not kept for the totals)"
        ))
    })?;
    Ok(Some(passphrase))
}

/// A pipe's read end, its write end already closed after `bytes`.
fn pipe_holding(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Never blocks: a pipe may hold less than 64 KiB (a user over
    // pipe-user-pages-soft gets one page), and no one reads it yet.
    nix::fcntl::fcntl(
        &write,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    if bytes.len() >= PASSPHRASE_MAX {
        return Err(std::io::Error::other("passphrase longer than a pipe holds"));
    }
    std::fs::File::from(write).write_all(bytes)?;
    Ok(read)
}

/// How a repository was opened by a create: the borg it ran, that borg's
/// options that reach the repository, its `BORG_*` environment (and what
/// ssh and borg's directories depend on), and the passphrase taken from
/// its pipe. It holds secrets: it is passed over the session's socket
/// only, never logged or written.
#[derive(Clone, Serialize, Deserialize)]
pub struct Access {
    /// The borg program and the words that always follow it.
    pub borg: Vec<OsString>,
    /// `--remote-path`, `--rsh` and the like, as the create had them.
    pub reach: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// The piped passphrase, given to each borg through a pipe of its own.
    pub passphrase: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("borg", &self.borg)
            .field("reach", &self.reach)
            .field("env", &"(not shown)")
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "(not shown)"),
            )
            .finish()
    }
}

/// Besides every `BORG_*` variable, what borg and ssh read to find the
/// repository, keys, caches and the agent.
const ACCESS_ENV: &[&str] = &[
    "HOME",
    "PATH",
    "SSH_AUTH_SOCK",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_RUNTIME_DIR",
];

fn is_access_env(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    (name.starts_with("BORG_") && name != "BORG_PASSPHRASE_FD") || ACCESS_ENV.contains(&&*name)
}

impl Access {
    /// This process's access for `borg` (with its own environment) and a
    /// create's `args`.
    pub fn of_this_process(
        borg: &CommandLine,
        args: &CreateArgs,
        passphrase: Option<Vec<u8>>,
    ) -> Access {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| is_access_env(k))
            .collect();
        env.extend(borg.env().iter().cloned());
        Access {
            borg: std::iter::once(borg.program().to_owned())
                .chain(borg.leading().iter().cloned())
                .collect(),
            reach: args.reach.clone(),
            env,
            passphrase,
        }
    }

    /// `borg ARGS` as the create ran it: our environment less what
    /// [`Access::env`] speaks for, then that; no terminal and no display,
    /// so neither borg nor ssh can prompt; stdin empty.
    fn command(&self, args: &[OsString]) -> Result<(Command, Option<OwnedFd>)> {
        let (program, leading) = self
            .borg
            .split_first()
            .ok_or_else(|| RecordError::Figures("no borg program".into()))?;
        let mut command = CommandLine::program_only("borg", program).command(&[]);
        command.args(leading).args(args);
        for (k, _) in std::env::vars_os().filter(|(k, _)| is_access_env(k)) {
            command.env_remove(k);
        }
        command.env_remove("BORG_PASSPHRASE_FD");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Nor through a window: ssh's askpass and a passcommand's pinentry
        // look for a display when there is no terminal.
        command
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("SSH_ASKPASS")
            .env("SSH_ASKPASS_REQUIRE", "never");
        let pipe = match &self.passphrase {
            Some(p) => {
                let read = pipe_holding(p).map_err(RecordError::io("a passphrase pipe"))?;
                command.env("BORG_PASSPHRASE_FD", read.as_raw_fd().to_string());
                Some(read)
            }
            None => None,
        };
        let inherit = pipe.as_ref().map(|fd| fd.as_raw_fd());
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid and fcntl are async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                // A session of its own: no controlling terminal to prompt
                // on, and one process group to kill at the deadline.
                nix::unistd::setsid()?;
                if let Some(fd) = inherit {
                    nix::libc::fcntl(fd, nix::libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok((command, pipe))
    }

    /// `borg ARGS`'s stdout, the call ended by `deadline` (its process
    /// group killed then) or by a signal to us.
    fn capture(&self, args: &[OsString], deadline: Instant, signals: &Signals) -> Result<Vec<u8>> {
        let shown = format!(
            "borg {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let (mut command, pipe) = self.command(args)?;
        let mut child = command
            .spawn()
            .map_err(|e| RecordError::Figures(format!("cannot run {shown}: {e}")))?;
        drop(pipe);
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        // Read in threads that report through channels: a descendant that
        // left borg's process group and kept its output open is not waited
        // for past the deadline.
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            let _ = out_tx.send(v);
        });
        let (err_tx, err_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The first 64 KiB kept, the rest read and dropped (a closed
            // pipe would fail a chatty borg).
            let mut v = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = (64 * 1024usize).saturating_sub(v.len());
                v.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = err_tx.send(v);
        });
        let status = loop {
            if let Some(status) = child.try_wait().map_err(RecordError::io("borg"))? {
                break Ok(status);
            }
            let stop = if let Some(signal) = signals.received() {
                Some(format!("stopped by signal {signal}"))
            } else if Instant::now() >= deadline {
                Some("still running at the deadline (ZFS_SNAP_METRICS_TOTALS_TIMEOUT)".to_owned())
            } else {
                None
            };
            if let Some(why) = stop {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                break Err(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let stdout = out_rx.recv_timeout(wait).unwrap_or_default();
        let stderr = err_rx
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default();
        match status {
            Ok(s) if s.success() => Ok(stdout),
            Ok(s) => Err(RecordError::Figures(format!(
                "{shown} failed ({s}): {}",
                String::from_utf8_lossy(&stderr).trim()
            ))),
            Err(why) => Err(RecordError::Figures(format!("{shown} {why}"))),
        }
    }
}

/// How many archives `repository` holds (`borg list --json`).
pub fn count_archives(
    borg: &CommandLine,
    args: &CreateArgs,
    signals: &Signals,
    repository: &str,
) -> Result<u64> {
    let mut argv: Vec<OsString> = vec!["list".into(), "--json".into()];
    argv.extend(args.reach.iter().cloned());
    argv.push(repository.into());
    parse_list_json(&borg.capture_forwarding(&argv, signals)?)
}

/// The totals of `repository` (`borg info --json REPOSITORY`) and its
/// archive count (`borg list --json`), opened as `access` says, both calls
/// ended by `deadline`.
pub fn repository_totals(
    access: &Access,
    repository: &str,
    deadline: Instant,
    signals: &Signals,
) -> Result<(RepositoryTotals, u64)> {
    let call = |verb: &str| {
        let mut argv: Vec<OsString> = vec![verb.into(), "--json".into()];
        argv.extend(access.reach.iter().cloned());
        argv.push(repository.into());
        access.capture(&argv, deadline, signals)
    };
    let totals = parse_repository_info_json(&call("info")?)?;
    let archives = parse_list_json(&call("list")?)?;
    Ok((totals, archives))
}
