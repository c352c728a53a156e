//! The borg calls zfs-snap makes itself to learn figures a create did not
//! print: `borg info --json` of the new archive, `borg list --json` for
//! the archive count. Each goes through the one runner, signals passed on.

use std::ffi::OsString;

use crate::borg::CreateArgs;
use crate::command::CommandLine;
use crate::records::error::RecordError;
use crate::records::figures::{parse_info_json, parse_list_json, ArchiveFigures, RepositoryTotals};
use crate::signals::Signals;

type Result<T> = std::result::Result<T, RecordError>;

/// Whether borg took its passphrase from `BORG_PASSPHRASE_FD`: only when
/// neither `BORG_PASSPHRASE` nor `BORG_PASSCOMMAND` is set (borg's order).
pub fn passphrase_through_a_pipe() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some();
    set("BORG_PASSPHRASE_FD") && !set("BORG_PASSPHRASE") && !set("BORG_PASSCOMMAND")
}

/// `borg info --json` of the archive just made: `REPO::NAME`; when borg
/// expanded placeholders in the name, the newest archive whose name fits
/// the template (`{now}` and the like read as `*`).
pub fn info(
    borg: &CommandLine,
    args: &CreateArgs,
    signals: &Signals,
    repository: &str,
    archive: &str,
) -> Result<(ArchiveFigures, RepositoryTotals)> {
    let mut argv: Vec<OsString> = vec!["info".into(), "--json".into()];
    argv.extend(args.reach.iter().cloned());
    if archive.contains('{') {
        argv.extend([
            "--glob-archives".into(),
            template_glob(archive).into(),
            "--last".into(),
            "1".into(),
            repository.into(),
        ]);
    } else {
        argv.push(format!("{repository}::{archive}").into());
    }
    parse_info_json(&borg.capture_forwarding(&argv, signals)?)
}

/// An archive name template as a glob: each `{...}` placeholder a `*`.
pub(crate) fn template_glob(template: &str) -> String {
    let mut glob = String::new();
    let mut depth = 0;
    for c in template.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    glob.push('*');
                }
                depth += 1;
            }
            '}' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '*' | '?' | '[' | ']' => {
                glob.push('[');
                glob.push(c);
                glob.push(']');
            }
            _ => glob.push(c),
        }
    }
    glob
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_templates_become_globs() {
        assert_eq!(template_glob("sd-{now:%Y%m%dT%H%M%S.%f}"), "sd-*");
        assert_eq!(template_glob("{hostname}-{now}"), "*-*");
        assert_eq!(template_glob("a[1]*{x}"), "a[[]1[]][*]*");
    }
}
