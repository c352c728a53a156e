//! A create inside a session: it asks the session to freeze what it needs
//! and rewrite its command line, runs borg with that, and says how borg
//! ended.

use std::ffi::OsString;
use std::io::BufReader;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::borg::{self, CreateArgs, Sources};
use crate::command::CommandLine;
use crate::create::{Context, CreateRun, Outcome};
use crate::error::{Error, Result};
use crate::records::borg_calls::{take_piped_passphrase, Access};
use crate::runtime::SOCKET;
use crate::session::protocol::{
    inheritable, label, receive, send, Done, Reply, Request, SESSION_ENV,
};
use crate::signals::Signals;

/// A create inside a session: asks the session for the rewritten command
/// line (it freezes what this create needs), runs borg with it, and tells
/// the session borg's status. The session is trusted only when it is
/// reached through a runtime root no one else can replace and its process
/// has our uid: it chooses what borg runs.
pub fn join(
    ctx: &Context<'_>,
    id: &str,
    borg: &CommandLine,
    args: &CreateArgs,
    signals: &Signals,
) -> Result<Outcome> {
    let root = crate::runtime::canonical(&ctx.options.runtime_root)?;
    // Before anything is read or written there.
    crate::private::check_path(&root).map_err(|(dir, why)| {
        let which = if dir == root {
            String::new()
        } else {
            format!("{}, above it: ", dir.display())
        };
        Error::Session(format!(
            "will not ask a session through runtime root {}: {which}{why} (someone else could \
             put a session of their own there, and choose what borg runs)",
            root.display()
        ))
    })?;
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
            "{SESSION_ENV} says this borg belongs to {}, but no session serves {}: {e}. Run \
             it inside `zfs-snap session -- ...`, or unset {SESSION_ENV}",
            label(id),
            socket.display()
        ))
    };
    // The session's end asks for the repository's totals as this create
    // opens it; borgmatic's passphrase pipe is read once, here, before
    // this process opens any descriptor of its own (one that took a number
    // the environment names is never read as the pipe).
    let totals = ctx
        .state
        .as_ref()
        .is_some_and(crate::records::Settings::takes_totals_at_session_end);
    let passphrase = if totals {
        take_piped_passphrase(signals).unwrap_or_else(|e| {
            tracing::warn!(
                "cannot read borg's passphrase pipe for the totals at the session's end: {e}"
            );
            None
        })
    } else {
        None
    };
    let mut stream = UnixStream::connect(&socket).map_err(unreachable)?;
    // Before the request, which holds the session's secret.
    check_server(&stream, &socket)?;
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
    let (status, create) = CreateRun::run(borg, args, &argv, signals, ctx.asks_for_figures())?;
    let code = borg::exit_code(status);
    let access = (totals && crate::records::made_archive(code))
        .then(|| Access::of_this_process(borg, args, passphrase));
    let _ = send(
        &mut stream,
        &Done {
            status: code,
            access,
        },
    );
    Ok(Outcome::Served { status, create })
}

/// Whether the process serving `socket` has our uid: only then may it
/// choose what this create's borg runs.
fn check_server(stream: &UnixStream, socket: &Path) -> Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let me = nix::unistd::geteuid().as_raw();
    match getsockopt(stream, PeerCredentials) {
        Ok(peer) => judge_server(peer.uid(), peer.pid(), me, socket),
        Err(e) => Err(Error::Session(format!(
            "cannot tell who serves {}: {e}; not asking it",
            socket.display()
        ))),
    }
}

fn judge_server(uid: u32, pid: i32, me: u32, socket: &Path) -> Result<()> {
    if uid == me {
        return Ok(());
    }
    Err(Error::Session(format!(
        "{} is served by uid {uid} (pid {pid}), not by uid {me} running this create: not \
         asking it, as it would choose what borg runs. Find out what that process is; only a \
         `zfs-snap session` of your own uid serves your creates",
        socket.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_of_our_uid_is_asked() {
        let socket = Path::new("/run/zfs-snap/session.sock");
        assert!(judge_server(0, 10, 0, socket).is_ok());
        assert!(judge_server(1000, 10, 1000, socket).is_ok());
        let refused = judge_server(65534, 10, 0, socket).unwrap_err().to_string();
        assert!(
            refused.contains("served by uid 65534 (pid 10), not by uid 0"),
            "{refused}"
        );
        assert!(
            judge_server(0, 10, 1000, socket).is_err(),
            "not even root's"
        );
    }
}
