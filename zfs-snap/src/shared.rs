//! One snapshot set for a whole command (`zfs-snap session -- borgmatic
//! create`): the session takes the runtime root's lock, recovers what dead
//! runs left, runs the command with [`SESSION_ENV`] set and serves every
//! `borg create` it starts (through the `borg` link or `zfs-snap wrap`) on
//! a Unix socket in the runtime root. The first create that needs
//! snapshots takes them (one atomic call per pool); a later create reuses
//! them, and snapshots only datasets not frozen yet, as a later point in
//! time. Teardown happens once, when the command has ended and every create
//! it started has finished.
//!
//! The protocol is one JSON line each way, then one more from the client
//! when its borg has exited:
//! `{"session", "argv", "cwd"}` → `{"ready": argv}` or `{"refused": text}`
//! → `{"status": code}`. Only a peer with the session's own uid is served;
//! the runtime root is 0700 besides.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backup::{
    discover_here, log_plan, needs_snapshots, resolve_roots, write_rewrite, Context, CreateRun,
    Outcome,
};
use crate::borg::{self, CreateArgs, Sources};
use crate::command::CommandLine;
use crate::error::{Error, Result};
use crate::session::{Report, Session};
use crate::signals::Signals;

/// Set for the session's command: the session's id. A create that sees it
/// is served by the session instead of taking snapshots itself.
pub const SESSION_ENV: &str = "ZFS_SNAP_SESSION";
/// The session's socket, in the runtime root: a name zfs-snap owns.
pub const SOCKET: &str = "session.sock";
/// After a signal, how long the session waits for the creates still
/// running before it tears down anyway.
const GRACE_AFTER_SIGNAL: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

#[derive(Serialize, Deserialize)]
struct Request {
    session: String,
    argv: Vec<String>,
    /// The working directory's bytes (it need not be UTF-8).
    cwd: Vec<u8>,
    /// Each pattern file the command line names (path bytes, text), as the
    /// client read it: `/dev/stdin` or `/dev/fd/63` mean the client's.
    files: Vec<(Vec<u8>, String)>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Ready(Vec<String>),
    Refused(String),
}

#[derive(Serialize, Deserialize)]
struct Done {
    /// borg's exit code, `128 + N` for a signal.
    status: i32,
}

/// The session this process belongs to, from [`SESSION_ENV`].
pub fn joined() -> Option<String> {
    std::env::var(SESSION_ENV).ok().filter(|id| !id.is_empty())
}

/// A create inside a session: asks the session for the rewritten command
/// line (it freezes what this create needs), runs borg with it, and tells
/// the session borg's status.
pub(crate) fn join(
    ctx: &Context<'_>,
    id: &str,
    borg: &CommandLine,
    args: &CreateArgs,
    signals: &Signals,
) -> Result<Outcome> {
    let root = crate::runtime::canonical(&ctx.options.runtime_root)?;
    let socket = root.join(SOCKET);
    // Before connecting: the session answers one create at a time.
    borg::check_version_cached(borg, &root)?;
    let mut files = Vec::new();
    for path in Sources::files_named(args, &ctx.cwd) {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::PatternFile {
            path: path.clone(),
            source,
        })?;
        files.push((path.into_os_string().into_vec(), text));
    }
    let unreachable = |e: std::io::Error| {
        Error::Session(format!(
            "{SESSION_ENV}={id} says this borg belongs to a zfs-snap session, but no session \
             serves {}: {e}. Run it inside `zfs-snap session -- ...`, or unset {SESSION_ENV}",
            socket.display()
        ))
    };
    let mut stream = UnixStream::connect(&socket).map_err(unreachable)?;
    let request = Request {
        session: id.to_owned(),
        argv: args
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: ctx.cwd.as_os_str().as_bytes().to_vec(),
        files,
    };
    send(&mut stream, &request).map_err(unreachable)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(unreachable)?);
    let reply: Reply = receive(&mut reader).map_err(|e| {
        Error::Session(format!(
            "the session serving {} ended before answering: {e}",
            socket.display()
        ))
    })?;
    let argv: Vec<OsString> = match reply {
        Reply::Ready(argv) => argv.into_iter().map(OsString::from).collect(),
        Reply::Refused(reason) => return Err(Error::Session(reason)),
    };
    if let Some(signal) = signals.received() {
        return Err(Error::Interrupted { signal });
    }
    // borg inherits the connection: the session sees it close only when
    // both this process and borg are gone (this one killed, borg still
    // reading the mirror, is not "ended").
    inheritable(&stream);
    let (status, create) = CreateRun::run(borg, args, &argv, signals)?;
    let _ = send(
        &mut stream,
        &Done {
            status: borg::exit_code(status),
        },
    );
    Ok(Outcome {
        status,
        teardown: Ok(Report::default()),
        timings: None,
        create: Some(create),
    })
}

/// `zfs-snap session -- COMMAND...`: runs `command` with every create it
/// starts served from one snapshot set, and tears that down once at the end.
/// The outcome's status is the command's.
pub fn serve(ctx: &Context<'_>, command: &[OsString], signals: &Signals) -> Result<Outcome> {
    if let Some(id) = joined() {
        return Err(Error::Session(format!(
            "already inside session {id} ({SESSION_ENV} is set): run the command without \
             `zfs-snap session`, it is served by that session"
        )));
    }
    let Some((program, args)) = command.split_first() else {
        return Err(Error::Session(
            "nothing to run: use `zfs-snap session -- borgmatic create ...`".into(),
        ));
    };
    let start = crate::state::now();
    let (mut session, _, _, recovered) = Session::begin(ctx.zfs, ctx.mounter, &ctx.options)?;
    let root = session.runtime_root().to_owned();
    // Not the run id (that is in the snapshots' names, which anyone may
    // list): the session's own secret, for its creates to name it.
    let id = crate::session::random_hex().map_err(|source| Error::Io {
        path: PathBuf::from("/dev/urandom"),
        source,
    })?;
    let socket = SocketFile(root.join(SOCKET));
    let listener = listen(&socket.0)?;
    if let Some(signal) = signals.received() {
        return Err(Error::Interrupted { signal });
    }
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env(SESSION_ENV, &id)
        .env("ZFS_SNAP_RUNTIME_ROOT", &root);
    // Its creates record where the session does.
    match &ctx.state {
        Some(settings) => {
            command
                .env("ZFS_SNAP_STATE_DIR", &settings.dir)
                .env("ZFS_SNAP_METRICS_INFO", settings.info.as_str());
            if let Some(textfile) = &settings.textfile {
                command.env("ZFS_SNAP_METRICS_TEXTFILE", textfile);
            }
        }
        None => {
            command.env("ZFS_SNAP_STATE_DIR", "");
        }
    }
    crate::command::unblock_signals_in_child(&mut command);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        command: program.to_string_lossy().into_owned(),
        source,
    })?;
    signals.set_child(Some(child.id()));
    if let Some(signal) = signals.received() {
        // It came between spawn and set_child: not passed on yet.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(signal).ok(),
        );
    }
    tracing::info!(pid = child.id(), command = %program.to_string_lossy(), "session started");
    let mut server = Server {
        ctx,
        signals,
        session: &mut session,
        id: &id,
        creates: 0,
        broken: None,
        running: Vec::new(),
    };
    let status = server.run_until_exit(&listener, &mut child);
    signals.set_child(None);
    server.drain(&listener);
    drop(listener);
    drop(socket);
    let status = status?;
    let creates = server.creates;
    let (teardown, timings) = session.finish();
    tracing::info!(
        %status,
        creates,
        datasets = timings.datasets,
        pools = timings.pools,
        snapshot_ms = timings.snapshot_ms.round(),
        teardown_ms = timings.teardown_ms.round(),
        processes = timings.processes,
        "session done"
    );
    if let Some(settings) = &ctx.state {
        crate::state::record_run(
            settings,
            &crate::state::Run {
                kind: "session",
                start,
                status: borg::exit_code(status),
                timings: &timings,
                creates: creates as u64,
                recovered: &recovered,
                teardown: teardown.as_ref().map_err(crate::backup::problems),
            },
        );
    }
    Ok(Outcome {
        status,
        teardown,
        timings: Some(timings),
        create: None,
    })
}

/// Removes the session's socket when the session ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the session's socket. A socket of that name is a dead session's
/// (we hold the lock): it is replaced. Anything else there is not ours.
fn listen(path: &Path) -> Result<UnixListener> {
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
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

struct Server<'s, 'a> {
    ctx: &'s Context<'a>,
    signals: &'s Signals,
    session: &'s mut Session<'a>,
    id: &'s str,
    /// Why the session serves no more creates: a freeze failed half-way
    /// (a snapshot made but not held), so its snapshots are not to be read.
    broken: Option<String>,
    creates: usize,
    /// Creates that were answered and whose borg has not ended.
    running: Vec<UnixStream>,
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
            self.accept(listener);
            self.reap();
            std::thread::sleep(POLL);
        }
    }

    /// After the command ended: waits for the creates still running (a
    /// borg left in the background, or one stopping after a signal), at
    /// most [`GRACE_AFTER_SIGNAL`] once a signal came. New creates are
    /// refused.
    fn drain(&mut self, listener: &UnixListener) {
        let mut deadline = None;
        let mut said = false;
        loop {
            self.reap();
            self.refuse_all(listener, "the session's command has ended");
            if self.running.is_empty() {
                return;
            }
            if !said {
                tracing::info!(
                    creates = self.running.len(),
                    "waiting for borg creates still running before teardown"
                );
                said = true;
            }
            if deadline.is_none() && self.signals.received().is_some() {
                deadline = Some(Instant::now() + GRACE_AFTER_SIGNAL);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(
                    creates = self.running.len(),
                    "borg creates still running after a signal and {}s: tearing down anyway",
                    GRACE_AFTER_SIGNAL.as_secs()
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
            let _ = receive::<Request>(&mut BufReader::new(&stream));
            let _ = send(&mut stream, &Reply::Refused(why.to_owned()));
        }
    }

    /// Forgets the creates whose borg has ended (a status line, or the
    /// connection closed).
    fn reap(&mut self) {
        self.running.retain_mut(|stream| {
            let mut buf = [0u8; 256];
            match stream.read(&mut buf) {
                Ok(0) => false,
                Ok(n) => {
                    if let Ok(done) = serde_json::from_slice::<Done>(buf[..n].trim_ascii()) {
                        tracing::debug!(status = done.status, "a create of the session ended");
                    }
                    true
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                Err(_) => false,
            }
        });
    }

    fn handle(&mut self, mut stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let reply = match self.answer(&stream) {
            Ok(argv) => Reply::Ready(argv),
            Err(e) => {
                tracing::error!("refused a create: {e}");
                Reply::Refused(e.to_string())
            }
        };
        let ready = matches!(reply, Reply::Ready(_));
        if send(&mut stream, &reply).is_ok() && ready && stream.set_nonblocking(true).is_ok() {
            self.running.push(stream);
        }
    }

    fn answer(&mut self, stream: &UnixStream) -> Result<Vec<String>> {
        let refuse = |text: String| Err(Error::Session(text));
        let me = nix::unistd::geteuid().as_raw();
        match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(peer) if peer.uid() == me => {}
            Ok(peer) => return refuse(format!("uid {} may not use this session", peer.uid())),
            Err(e) => return refuse(format!("cannot tell who is asking: {e}")),
        }
        let request: Request = receive(&mut BufReader::new(stream))
            .map_err(|e| Error::Session(format!("unreadable request: {e}")))?;
        if request.session != self.id {
            return refuse(format!(
                "this borg belongs to session {}, but {} is held by session {}: a stale \
                 {SESSION_ENV}? Unset it, or run the command inside its own `zfs-snap session`",
                request.session,
                self.session.runtime_root().display(),
                self.id
            ));
        }
        if let Some(signal) = self.signals.received() {
            return refuse(format!("the session is stopping (signal {signal})"));
        }
        if let Some(why) = &self.broken {
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
        self.creates += 1;
        let argv = self.freeze_for(&args, &cwd, &files)?;
        Ok(argv
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    /// What `wrap` does up to borg, on the session's snapshot set.
    fn freeze_for(
        &mut self,
        args: &CreateArgs,
        cwd: &Path,
        files: &[(PathBuf, String)],
    ) -> Result<Vec<OsString>> {
        let ctx = self.ctx;
        let read = |path: &Path| {
            files
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, text)| text.clone())
                .ok_or_else(|| Error::Session(format!("{} was not sent", path.display())))
        };
        let sources = Sources::read_with(args, cwd, &read)?;
        let roots = resolve_roots(&sources.roots(), cwd)?;
        // A fresh look for every create: the command's own hooks may have
        // loaded keys or mounted datasets since the session began.
        let filesystems = ctx.zfs.filesystems()?;
        let mounts = crate::mountinfo::read(self.session.mountinfo_path())?;
        let plan = discover_here(
            &filesystems,
            &mounts,
            self.session.runtime_root(),
            cwd,
            &roots,
            args.one_file_system,
        );
        log_plan(&plan);
        let signals = self.signals;
        if let Err(e) = self.session.freeze(&plan, &|| signals.received()) {
            self.broken = Some(e.to_string());
            return Err(e);
        }
        write_rewrite(self.session, args, &sources, &plan, Some(self.creates), cwd)
    }
}

fn send<T: Serialize>(stream: &mut UnixStream, message: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn receive<T: for<'de> Deserialize<'de>>(reader: &mut impl BufRead) -> std::io::Result<T> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

fn inheritable(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFD on a descriptor this stream owns and keeps open.
    unsafe { nix::libc::fcntl(stream.as_raw_fd(), nix::libc::F_SETFD, 0) };
}
