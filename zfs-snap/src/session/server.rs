//! `zfs-snap session -- COMMAND`: the run that holds the lock, serves every
//! create its command starts from one snapshot set, and tears it down once
//! at the end.

use std::ffi::OsString;
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::borg::{self, CreateArgs};
use crate::command::CommandLine;
use crate::create::{self, needs_snapshots, Context, Outcome, Request as CreateRequest};
use crate::error::{Error, Result};
use crate::lifecycle::Run;
use crate::private::{self, RANDOM_SOURCE};
use crate::records::{RunRecord, Written};
use crate::runtime::SOCKET;
use crate::session::protocol::{
    joined, label, receive, send, session_id, Done, Reply, Request, SESSION_ENV,
};
use crate::session::reaper;
use crate::signals::Signals;

/// How long the session waits for what its command left running (its
/// creates, its hooks, any process it started) once the command has ended
/// or a signal came, unless told otherwise: systemd's default stop timeout
/// (90 s) less time to tear down.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(80);
const POLL: Duration = Duration::from_millis(20);

/// `zfs-snap session -- COMMAND...`: runs `command` with every create it
/// starts served from one snapshot set, and tears that down once at the end.
/// The outcome's status is the command's, raised when the session's
/// creates did not read its snapshots ([`session_status`]). Teardown waits
/// for every process the command started, at most `stop_timeout` after a
/// signal or after the command ended. A session that stops before its
/// command has ended (the lock held, a runtime root or socket refused, the
/// command not started) is recorded as a failed run.
pub fn serve(
    ctx: &Context<'_>,
    command: &[OsString],
    signals: &Signals,
    stop_timeout: Duration,
) -> Result<Outcome> {
    if let Some(id) = joined() {
        return Err(Error::Session(format!(
            "already inside {} ({SESSION_ENV} is set): run the command without \
             `zfs-snap session`, it is served by that session",
            label(&id)
        )));
    }
    let Some((program, args)) = command.split_first() else {
        return Err(Error::Session(
            "nothing to run: use `zfs-snap session -- borgmatic create ...`".into(),
        ));
    };
    let start = crate::records::now();
    let result = serve_command(ctx, program, args, signals, stop_timeout, start);
    if let (Err(e), Some(settings)) = (&result, &ctx.state) {
        create::record_failed_run(settings, "session", start, i32::from(e.exit_code()));
    }
    result
}

/// The session from its lock to its record; an error means it stopped
/// before its command ended, and nothing is recorded yet.
fn serve_command(
    ctx: &Context<'_>,
    program: &OsString,
    args: &[OsString],
    signals: &Signals,
    stop_timeout: Duration,
    start: f64,
) -> Result<Outcome> {
    let started = Instant::now();
    let (mut run, _, _, recovered) = Run::begin(ctx.zfs, ctx.mounter, &ctx.options)?;
    // Lock and recovery; each create adds its own look and discovery.
    run.timings_mut().discovery_ms = started.elapsed().as_secs_f64() * 1000.0;
    let root = run.runtime_root().to_owned();
    // Not the run id (that is in the snapshots' names, which anyone may
    // list): the session's own secret, for its creates to name it.
    let secret = private::random_hex().map_err(|source| Error::Io {
        path: PathBuf::from(RANDOM_SOURCE),
        source,
    })?;
    let id = session_id(std::process::id(), &secret);
    let (listener, socket) = listen(&root.join(SOCKET))?;
    if let Some(signal) = signals.received() {
        return Err(Error::Interrupted { signal });
    }
    let command_line = session_command(ctx, program, &id, &root);
    if let Err(e) = reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become the reaper of the command's processes: teardown waits for the command alone");
    }
    let mut child = command_line.spawn_forwarding(args, signals)?;
    tracing::info!(pid = child.id(), command = %program.to_string_lossy(), "session started");
    let mut server = Server {
        ctx,
        signals,
        run: &mut run,
        id: &id,
        creates: 0,
        asked: 0,
        refused: Vec::new(),
        running: Vec::new(),
        written: Vec::new(),
        signalled_at: None,
    };
    let status = server.run_until_exit(&listener, &mut child);
    signals.set_child(None);
    server.drain(&listener, stop_timeout);
    drop(listener);
    drop(socket);
    let command_status = status?;
    let creates = server.creates;
    let refused = std::mem::take(&mut server.refused);
    let written = std::mem::take(&mut server.written);
    let (teardown, timings) = run.finish();
    tracing::info!(
        status = %command_status,
        creates,
        refused = refused.len(),
        datasets = timings.datasets,
        pools = timings.pools,
        snapshot_ms = timings.snapshot_ms.round(),
        teardown_ms = timings.teardown_ms.round(),
        processes = timings.processes,
        "session done"
    );
    let status = session_status(command_status, creates, refused.len());
    say_what_was_read(command_status, status, creates, &refused);
    if let Some(settings) = &ctx.state {
        // After teardown (the snapshots are not held for it), before the
        // run's record: the run ends when its figures are in.
        if settings.takes_totals_at_session_end() && !written.is_empty() {
            crate::records::record_totals(settings, &written, start, signals);
        }
        create::record_run(
            settings,
            &RunRecord {
                kind: "session",
                start,
                status: borg::exit_code(status),
                timings: &timings,
                creates: creates as u64,
                recovered: &recovered,
                teardown: teardown.as_ref().map_err(create::problems),
            },
        );
    }
    Ok(Outcome::Session {
        status,
        command: command_status,
        creates,
        refused: refused.len(),
        timings,
        teardown,
    })
}

/// The session's status, which says whether its backup read its snapshots:
/// the command's, but at least 2 (an error) when the session refused a
/// create of its command (that create made no archive, whatever the
/// command made of its failure), and at least 1 (a warning) when the
/// command succeeded but no create reached the session (whatever it backed
/// up, it read live).
pub fn session_status(command: ExitStatus, creates: usize, refused: usize) -> ExitStatus {
    let floor = if refused > 0 {
        2
    } else if creates == 0 {
        1
    } else {
        0
    };
    if borg::exit_code(command) >= floor {
        command
    } else {
        ExitStatus::from_raw(floor << 8)
    }
}

/// Says, when it is not so, that the session's creates did not all read
/// its snapshots, and what to do.
fn say_what_was_read(command: ExitStatus, status: ExitStatus, creates: usize, refused: &[String]) {
    let command_code = borg::exit_code(command);
    let code = borg::exit_code(status);
    if let Some(first) = refused.first() {
        tracing::error!(
            "the session refused {} borg create(s) of its command, which made no archive from \
             its snapshots (the first refused because: {first}); the session exits {code} \
             (its command exited {command_code}). Fix what the first refusal names and run the \
             backup again",
            refused.len()
        );
    } else if creates == 0 {
        let text = "no borg create reached the session, so nothing was read from its \
                    snapshots: if the command made backups, they read live files. Point \
                    borgmatic's `local_path` (or your script's borg) at zfs-snap's `borg` link or \
                    `zfs-snap wrap`, not at the real borg (that one belongs in ZFS_SNAP_BORG); a \
                    command that makes no backup (prune, check, --dry-run) needs no session";
        if command_code == 0 {
            tracing::error!(
                "{text}. The session exits {code} (a warning) although its command exited 0"
            );
        } else {
            tracing::warn!("{text}");
        }
    }
}

/// The session's command, with the session's id and runtime root in its
/// environment, and its creates recording where the session does.
fn session_command(ctx: &Context<'_>, program: &OsString, id: &str, root: &Path) -> CommandLine {
    let mut command = CommandLine::program_only("the session's", program.clone())
        .with_env(SESSION_ENV, id)
        .with_env("ZFS_SNAP_RUNTIME_ROOT", root);
    match &ctx.state {
        Some(settings) => {
            command = command
                .with_env("ZFS_SNAP_STATE_DIR", &settings.dir)
                .with_env("ZFS_SNAP_METRICS_INFO", settings.info.as_str())
                .with_env(
                    "ZFS_SNAP_METRICS_TOTALS_TIMEOUT",
                    settings.totals_timeout.as_secs().to_string(),
                );
            if let Some(textfile) = &settings.textfile {
                command = command.with_env("ZFS_SNAP_METRICS_TEXTFILE", textfile);
            }
        }
        None => command = command.with_env("ZFS_SNAP_STATE_DIR", ""),
    }
    command
}

/// The socket this session bound: removed when the session ends, however
/// it ends, and only while its path still names that very socket. It
/// exists only once the bind succeeded, so a file found at the path (and
/// refused) is never removed.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the session's socket. A socket of that name is a dead session's
/// (we hold the lock): it is replaced. Anything else there is not ours: it
/// is refused, and stays.
fn listen(path: &Path) -> Result<(UnixListener, SocketFile)> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
        Ok(_) => {
            return Err(io(std::io::Error::other(
                "exists and is not zfs-snap's session socket; move it away",
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            // Bound a moment ago, by us.
            let _ = std::fs::remove_file(path);
            return Err(io(e));
        }
    };
    let socket = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    listener.set_nonblocking(true).map_err(io)?;
    Ok((listener, socket))
}

/// A create answered whose borg has not ended: its connection, what it
/// sent of its last line so far, and its repository (the record's key and
/// the location borg is to find it at).
struct Served {
    stream: UnixStream,
    line: Vec<u8>,
    repository: Option<Repository>,
}

/// A create's repository: its record's key ([`crate::records::canonical`])
/// and where borg finds it (a relative local path made absolute).
#[derive(Clone)]
struct Repository {
    key: String,
    location: String,
}

/// The most a create's last line may hold.
const DONE_MAX: usize = 1 << 20;

struct Server<'s, 'a> {
    ctx: &'s Context<'a>,
    signals: &'s Signals,
    run: &'s mut Run<'a>,
    id: &'s str,
    /// Creates answered with a command line (their borg read the snapshots).
    creates: usize,
    /// Creates of this session that asked (each one's number, for its files).
    asked: usize,
    /// Why each create of this session that was refused was refused.
    refused: Vec<String>,
    /// Creates that were answered and whose borg has not ended.
    running: Vec<Served>,
    /// The repositories this session's creates made archives in, and how
    /// to open each again (for the totals at the session's end).
    written: Vec<Written>,
    /// When the session first saw a signal.
    signalled_at: Option<Instant>,
}

impl Server<'_, '_> {
    fn run_until_exit(&mut self, listener: &UnixListener, child: &mut Child) -> Result<ExitStatus> {
        loop {
            if let Some(status) = child.try_wait().map_err(|source| Error::Spawn {
                command: "the session's command".into(),
                source,
            })? {
                return Ok(status);
            }
            if self.signalled_at.is_none() && self.signals.received().is_some() {
                self.signalled_at = Some(Instant::now());
            }
            self.accept(listener);
            self.reap();
            std::thread::sleep(POLL);
        }
    }

    /// After the command ended: waits for the creates still running and for
    /// every process the command left (borgmatic after `systemd-inhibit`
    /// ended, a hook in its `TERM` trap, a borg writing its checkpoint), at
    /// most `stop_timeout` from the end of the command or from a signal,
    /// whichever came first. New creates are refused.
    fn drain(&mut self, listener: &UnixListener, stop_timeout: Duration) {
        let mut deadline = self.signalled_at.unwrap_or_else(Instant::now) + stop_timeout;
        let mut said = false;
        loop {
            self.reap();
            self.refuse_all(listener, "the session's command has ended");
            let processes = reaper::reap_ended();
            if self.running.is_empty() && !processes {
                return;
            }
            if !said {
                tracing::info!(
                    creates = self.running.len(),
                    processes = %reaper::describe(&reaper::children()),
                    "waiting for what the session's command left running before teardown"
                );
                said = true;
            }
            if self.signalled_at.is_none() && self.signals.received().is_some() {
                let now = Instant::now();
                self.signalled_at = Some(now);
                deadline = deadline.min(now + stop_timeout);
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    creates = self.running.len(),
                    processes = %reaper::describe(&reaper::children()),
                    "still running {}s after the session's command ended or was signalled: \
                     tearing down anyway (raise --stop-timeout, and the unit's TimeoutStopSec=)",
                    stop_timeout.as_secs()
                );
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn accept(&mut self, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.handle(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "session socket: accept failed");
                    return;
                }
            }
        }
    }

    fn refuse_all(&mut self, listener: &UnixListener, why: &str) {
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            // Read the request first: a reply before it reads as a broken pipe.
            let request = receive::<Request>(&mut BufReader::new(&stream));
            tracing::error!("refused a create: {why}");
            if request.is_ok_and(|r| r.session == self.id) {
                self.refused.push(why.to_owned());
            }
            let _ = send(&mut stream, &Reply::Refused(why.to_owned()));
        }
    }

    /// Forgets the creates whose borg has ended (the connection closed),
    /// and keeps how each that made an archive opened its repository (its
    /// last line).
    fn reap(&mut self) {
        let written = &mut self.written;
        self.running.retain_mut(|served| {
            let mut buf = [0u8; 4096];
            loop {
                match served.stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        served.line.extend_from_slice(&buf[..n]);
                        if served.line.len() > DONE_MAX {
                            served.line.clear();
                        }
                        if served.line.ends_with(b"\n") {
                            let line = std::mem::take(&mut served.line);
                            if let Ok(done) = serde_json::from_slice::<Done>(line.trim_ascii()) {
                                tracing::debug!(
                                    status = done.status,
                                    "a create of the session ended"
                                );
                                if let (Some(access), Some(r)) =
                                    (done.access, served.repository.clone())
                                {
                                    written.retain(|w| w.repository != r.key);
                                    written.push(Written {
                                        repository: r.key,
                                        location: r.location,
                                        access,
                                    });
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
        });
    }

    /// Answers one connection: a create of this session gets its command
    /// line or a refusal that counts against the session; anyone else
    /// (another uid, another session's id) a refusal that does not.
    fn handle(&mut self, mut stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let answer = self
            .request_of(&stream)
            .and_then(|request| self.answer(request).map_err(|e| (true, e)));
        match answer {
            Ok((argv, repository)) => {
                if send(&mut stream, &Reply::Ready(argv)).is_ok() {
                    self.creates += 1;
                    if stream.set_nonblocking(true).is_ok() {
                        self.running.push(Served {
                            stream,
                            line: Vec::new(),
                            repository,
                        });
                    }
                }
            }
            Err((ours, e)) => {
                // The client says it as a session's error already.
                let why = match e {
                    Error::Session(text) => text,
                    other => other.to_string(),
                };
                tracing::error!("refused a create: {why}");
                let _ = send(&mut stream, &Reply::Refused(why.clone()));
                if ours {
                    self.refused.push(why);
                }
            }
        }
    }

    /// The request on `stream`, if it is a create of this session: its
    /// peer has our uid and it names this session. `Err((false, _))`: not
    /// this session's create.
    fn request_of(&self, stream: &UnixStream) -> std::result::Result<Request, (bool, Error)> {
        let refuse = |text: String| Err((false, Error::Session(text)));
        let me = nix::unistd::geteuid().as_raw();
        match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(peer) if peer.uid() == me => {}
            Ok(peer) => return refuse(format!("uid {} may not use this session", peer.uid())),
            Err(e) => return refuse(format!("cannot tell who is asking: {e}")),
        }
        let request: Request = match receive(&mut BufReader::new(stream)) {
            Ok(request) => request,
            Err(e) => return refuse(format!("unreadable request: {e}")),
        };
        if request.session != self.id {
            // Neither id is printed: each is a session's secret.
            let ours = label(self.id);
            let theirs = match label(&request.session) {
                same if same == ours => "another zfs-snap session".to_owned(),
                other => other,
            };
            return refuse(format!(
                "this borg belongs to {theirs}, but {} is held by {ours}: a stale \
                 {SESSION_ENV}? Unset it, or run the command inside its own `zfs-snap session`",
                self.run.runtime_root().display(),
            ));
        }
        Ok(request)
    }

    /// The command line for a create of this session, its snapshots frozen,
    /// and its repository: the record's key and where borg finds it.
    fn answer(&mut self, request: Request) -> Result<(Vec<String>, Option<Repository>)> {
        let refuse = |text: String| Err(Error::Session(text));
        if let Some(signal) = self.signals.received() {
            return refuse(format!("the session is stopping (signal {signal})"));
        }
        if let Some(why) = self.run.freeze_failure() {
            return refuse(format!("an earlier create of this session failed: {why}"));
        }
        let argv: Vec<OsString> = request.argv.into_iter().map(OsString::from).collect();
        let Some(args) = needs_snapshots(&argv)? else {
            return refuse("not a borg create that reads files: run it as it is".into());
        };
        let cwd = PathBuf::from(OsString::from_vec(request.cwd));
        if !cwd.is_absolute() {
            return refuse(format!(
                "working directory {} is not absolute",
                cwd.display()
            ));
        }
        let files: Vec<(PathBuf, String)> = request
            .files
            .into_iter()
            .map(|(path, text)| (PathBuf::from(OsString::from_vec(path)), text))
            .collect();
        self.asked += 1;
        let argv = self.freeze_for(&args, &cwd, &files)?;
        let repository = crate::records::repository_of(&args).map(|(given, _)| Repository {
            key: crate::records::canonical(&given, &cwd),
            location: crate::records::absolute_location(&given, &cwd),
        });
        Ok((
            argv.into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            repository,
        ))
    }

    /// What `wrap` does up to borg, on the session's snapshot set.
    fn freeze_for(
        &mut self,
        args: &CreateArgs,
        cwd: &Path,
        files: &[(PathBuf, String)],
    ) -> Result<Vec<OsString>> {
        let read = |path: &Path| {
            files
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, text)| text.clone())
                .ok_or_else(|| Error::Session(format!("{} was not sent", path.display())))
        };
        let request = CreateRequest::new(args, cwd, &read)?;
        // A fresh look for every create: the command's own hooks may have
        // loaded keys or mounted datasets since the session began.
        let started = Instant::now();
        let filesystems = self.ctx.zfs.filesystems()?;
        let mounts = crate::mountinfo::read(self.run.mountinfo_path())?;
        self.run.timings_mut().discovery_ms += started.elapsed().as_secs_f64() * 1000.0;
        create::freeze_for(
            self.run,
            &request,
            (&filesystems, &mounts),
            Some(self.asked),
            self.signals,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn the_status_says_whether_the_creates_read_the_snapshots() {
        let code = |status: ExitStatus| borg::exit_code(status);
        // Served, none refused: the command's.
        assert_eq!(code(session_status(exited(0), 2, 0)), 0);
        assert_eq!(code(session_status(exited(1), 1, 0)), 1);
        // A refused create: at least an error, whatever the command said.
        assert_eq!(code(session_status(exited(0), 0, 1)), 2);
        assert_eq!(code(session_status(exited(1), 1, 1)), 2);
        assert_eq!(code(session_status(exited(75), 1, 1)), 75);
        let killed = ExitStatus::from_raw(15);
        assert_eq!(code(session_status(killed, 0, 1)), 143);
        // No create at all: a warning, unless the command failed itself.
        assert_eq!(code(session_status(exited(0), 0, 0)), 1);
        assert_eq!(code(session_status(exited(2), 0, 0)), 2);
    }

    #[test]
    fn a_file_found_at_the_socket_path_is_refused_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        std::fs::write(&path, b"theirs").unwrap();
        assert!(listen(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
    }

    #[test]
    fn only_the_socket_bound_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let (listener, socket) = listen(&path).unwrap();
        drop(listener);
        drop(socket);
        assert!(std::fs::symlink_metadata(&path).is_err(), "ours, removed");

        // A dead session's socket is replaced, and ours removed at the end.
        let dead = UnixListener::bind(&path).unwrap();
        drop(dead);
        let (listener, socket) = listen(&path).unwrap();
        // Someone put another file in its place meanwhile: it stays.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"theirs").unwrap();
        drop(listener);
        drop(socket);
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
    }
}
