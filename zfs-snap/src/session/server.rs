//! `zfs-snap session -- COMMAND`: the run that holds the lock, serves every
//! create its command starts from one snapshot set, and tears it down once
//! at the end.

use std::ffi::OsString;
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::borg::{self, CreateArgs};
use crate::command::CommandLine;
use crate::create::{self, needs_snapshots, Context, Outcome, Request as CreateRequest};
use crate::error::{Error, Result};
use crate::lifecycle::Run;
use crate::private::{self, RANDOM_SOURCE};
use crate::records::RunRecord;
use crate::runtime::SOCKET;
use crate::session::protocol::{joined, receive, send, Done, Reply, Request, SESSION_ENV};
use crate::signals::Signals;

/// After a signal, how long the session waits for the creates still
/// running before it tears down anyway.
const GRACE_AFTER_SIGNAL: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

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
    let start = crate::records::now();
    let (mut run, _, _, recovered) = Run::begin(ctx.zfs, ctx.mounter, &ctx.options)?;
    let root = run.runtime_root().to_owned();
    // Not the run id (that is in the snapshots' names, which anyone may
    // list): the session's own secret, for its creates to name it.
    let id = private::random_hex().map_err(|source| Error::Io {
        path: PathBuf::from(RANDOM_SOURCE),
        source,
    })?;
    let socket = SocketFile(root.join(SOCKET));
    let listener = listen(&socket.0)?;
    if let Some(signal) = signals.received() {
        return Err(Error::Interrupted { signal });
    }
    let command_line = session_command(ctx, program, &id, &root);
    let mut child = command_line.spawn_forwarding(args, signals)?;
    tracing::info!(pid = child.id(), command = %program.to_string_lossy(), "session started");
    let mut server = Server {
        ctx,
        signals,
        run: &mut run,
        id: &id,
        creates: 0,
        running: Vec::new(),
    };
    let status = server.run_until_exit(&listener, &mut child);
    signals.set_child(None);
    server.drain(&listener);
    drop(listener);
    drop(socket);
    let status = status?;
    let creates = server.creates;
    let (teardown, timings) = run.finish();
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
        creates,
        timings,
        teardown,
    })
}

/// The session's command, with the session's id and runtime root in its
/// environment, and its creates recording where the session does.
fn session_command(ctx: &Context<'_>, program: &OsString, id: &str, root: &Path) -> CommandLine {
    let mut command = CommandLine::program_only("session command", program.clone())
        .with_env(SESSION_ENV, id)
        .with_env("ZFS_SNAP_RUNTIME_ROOT", root);
    match &ctx.state {
        Some(settings) => {
            command = command
                .with_env("ZFS_SNAP_STATE_DIR", &settings.dir)
                .with_env("ZFS_SNAP_METRICS_INFO", settings.info.as_str());
            if let Some(textfile) = &settings.textfile {
                command = command.with_env("ZFS_SNAP_METRICS_TEXTFILE", textfile);
            }
        }
        None => command = command.with_env("ZFS_SNAP_STATE_DIR", ""),
    }
    command
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
    run: &'s mut Run<'a>,
    id: &'s str,
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
                self.run.runtime_root().display(),
                self.id
            ));
        }
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
        let filesystems = self.ctx.zfs.filesystems()?;
        let mounts = crate::mountinfo::read(self.run.mountinfo_path())?;
        create::freeze_for(
            self.run,
            &request,
            (&filesystems, &mounts),
            Some(self.creates),
            self.signals,
        )
    }
}
