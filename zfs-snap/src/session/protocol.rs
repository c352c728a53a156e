//! The session's protocol: one JSON line each way, then one more from the
//! client when its borg has exited: [`Request`] -> [`Reply`] -> [`Done`].

use std::io::{BufRead, ErrorKind, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

/// Set for the session's command: the session's id, `<pid>-<secret>`. A
/// create that sees it is served by the session instead of taking
/// snapshots itself.
pub const SESSION_ENV: &str = "ZFS_SNAP_SESSION";

/// The session this process belongs to, from [`SESSION_ENV`].
pub fn joined() -> Option<String> {
    std::env::var(SESSION_ENV).ok().filter(|id| !id.is_empty())
}

/// A session's id: the session's pid, which names it in messages, and a
/// secret (64 random bits), which shows that a create belongs to it. Only
/// the session's command has the secret (in its environment, which only its
/// uid can read); it is never printed, so logs and the journal never hold it.
pub fn session_id(pid: u32, secret: &str) -> String {
    format!("{pid}-{secret}")
}

/// How messages name the session of `id`, without its secret: "the
/// zfs-snap session of pid N", or "a zfs-snap session" for an id not made
/// by [`session_id`].
pub fn label(id: &str) -> String {
    match id.split_once('-') {
        Some((pid, _)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            format!("the zfs-snap session of pid {pid}")
        }
        _ => "a zfs-snap session".to_owned(),
    }
}

#[derive(Serialize, Deserialize)]
pub struct Request {
    pub session: String,
    pub argv: Vec<String>,
    /// The working directory's bytes (it need not be UTF-8).
    pub cwd: Vec<u8>,
    /// Each pattern file the command line names (path bytes, text), as the
    /// client read it: `/dev/stdin` or `/dev/fd/63` mean the client's.
    pub files: Vec<(Vec<u8>, String)>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Ready(Vec<String>),
    Refused(String),
}

#[derive(Serialize, Deserialize)]
pub struct Done {
    /// borg's exit code, `128 + N` for a signal.
    pub status: i32,
    /// How the create opened its repository, for the totals at the
    /// session's end; sent when it made an archive and they are taken.
    /// It holds the passphrase: never logged.
    #[serde(default)]
    pub access: Option<crate::records::borg_calls::Access>,
}

pub fn send<T: Serialize>(stream: &mut UnixStream, message: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

pub fn receive<T: for<'de> Deserialize<'de>>(reader: &mut impl BufRead) -> std::io::Result<T> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

pub fn inheritable(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFD on a descriptor this stream owns and keeps open.
    unsafe { nix::libc::fcntl(stream.as_raw_fd(), nix::libc::F_SETFD, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_names_the_pid_and_never_the_secret() {
        let id = session_id(4242, "0123456789abcdef");
        assert_eq!(label(&id), "the zfs-snap session of pid 4242");
        for foreign in [
            "0123456789abcdef",
            "outer",
            "-0123456789abcdef",
            "x1-secret",
        ] {
            let text = label(foreign);
            assert_eq!(text, "a zfs-snap session", "{foreign}");
        }
    }
}
