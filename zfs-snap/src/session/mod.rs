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
//! `{"session", "argv", "cwd", "files"}` → `{"ready": argv}` or `{"refused": text}`
//! → `{"status": code}`. Only a peer with the session's own uid is served,
//! and a create asks only a session of its own uid, reached through a
//! runtime root no one else can replace; the session's secret is never
//! printed. The session's status says whether its creates read its
//! snapshots ([`server::session_status`]).
//!
//! The session reaps its command's orphans ([`reaper`]): teardown waits for
//! every process the command started, however deep, at most the stop
//! timeout (`--stop-timeout`) after a signal or after the command ended.

//!
//! [`protocol`] (the messages), [`client`] (a create asking its session),
//! [`reaper`] (waiting for the command's whole tree), [`server`] (the
//! session itself).

pub mod client;
pub mod protocol;
pub mod reaper;
pub mod server;

pub use client::join;
pub use protocol::{joined, SESSION_ENV};
pub use server::serve;
