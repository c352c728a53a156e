//! A create inside a session: it asks the session to freeze what it needs
//! and rewrite its command line, runs borg with that, and says how borg
//! ended.

use std::ffi::OsString;
use std::io::BufReader;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;

use crate::borg::{self, CreateArgs, Sources};
use crate::command::CommandLine;
use crate::create::{Context, CreateRun, Outcome};
use crate::error::{Error, Result};
use crate::runtime::SOCKET;
use crate::session::protocol::{inheritable, receive, send, Done, Reply, Request, SESSION_ENV};
use crate::signals::Signals;

/// A create inside a session: asks the session for the rewritten command
/// line (it freezes what this create needs), runs borg with it, and tells
/// the session borg's status.
pub fn join(
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
    Ok(Outcome::Served { status, create })
}
