//! The borg call zfs-snap makes itself for a figure a create does not
//! print: `borg list --json` for the archive count. It goes through the
//! one runner, signals passed on.

use std::ffi::OsString;

use crate::borg::CreateArgs;
use crate::command::CommandLine;
use crate::records::error::RecordError;
use crate::records::figures::parse_list_json;
use crate::signals::Signals;

type Result<T> = std::result::Result<T, RecordError>;

/// Whether borg took its passphrase from `BORG_PASSPHRASE_FD`: only when
/// neither `BORG_PASSPHRASE` nor `BORG_PASSCOMMAND` is set (borg's order).
pub fn passphrase_through_a_pipe() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some();
    set("BORG_PASSPHRASE_FD") && !set("BORG_PASSPHRASE") && !set("BORG_PASSCOMMAND")
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
