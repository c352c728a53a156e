//! Reading `/proc/self/mountinfo`: where each dataset is really mounted
//! (legacy mounts from fstab included), and which of several mounts at one
//! path is the visible one.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const DEFAULT_PATH: &str = "/proc/self/mountinfo";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of the mounted file system, as `makedev(major, minor)`.
    pub dev: u64,
    /// The directory of the mounted file system that appears at `mount_point`
    /// (`/` unless this is a bind mount of a subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// The dataset name when this is a ZFS file system (not a snapshot).
    pub fn zfs_dataset(&self) -> Option<&str> {
        (self.fstype == "zfs" && !self.source.contains('@')).then_some(self.source.as_str())
    }
}

pub fn read(path: &Path) -> Result<Vec<MountEntry>> {
    let text = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &String::from_utf8_lossy(&text))
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<MountEntry>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_line(line).map_err(|reason| Error::MalformedMountinfo {
                path: path.to_owned(),
                line_number: index + 1,
                line: line.to_owned(),
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> std::result::Result<MountEntry, &'static str> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields
        .iter()
        .position(|f| *f == "-")
        .ok_or("no ' - ' separator")?;
    if separator < 6 || fields.len() < separator + 3 {
        return Err("too few fields");
    }
    let mount_id = fields[0].parse().map_err(|_| "mount id is not a number")?;
    let parent_id = fields[1].parse().map_err(|_| "parent id is not a number")?;
    let (major, minor) = fields[2].split_once(':').ok_or("no major:minor")?;
    let major: u64 = major.parse().map_err(|_| "bad major number")?;
    let minor: u64 = minor.parse().map_err(|_| "bad minor number")?;
    Ok(MountEntry {
        mount_id,
        parent_id,
        dev: makedev(major, minor),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fstype: String::from_utf8_lossy(unescape(fields[separator + 1]).as_encoded_bytes())
            .into_owned(),
        source: String::from_utf8_lossy(unescape(fields[separator + 2]).as_encoded_bytes())
            .into_owned(),
    })
}

/// Linux's `makedev`, so entries compare with `stat().st_dev`.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// The kernel escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() && is_octal(&bytes[i + 1..i + 4]) {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

fn is_octal(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) && digits[0] <= b'3'
}

/// The mounts a path lookup can reach: a later mount at a path hides every
/// earlier mount at that path or below it.
pub fn visible(entries: &[MountEntry]) -> Vec<MountEntry> {
    let mut out: Vec<MountEntry> = Vec::with_capacity(entries.len());
    for entry in entries {
        out.retain(|earlier| !earlier.mount_point.starts_with(&entry.mount_point));
        out.push(entry.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as OpenZFS 2.3 on Debian 12 prints them, plus a legacy mount, a
    // name with spaces and two datasets stacked on one mountpoint.
    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - zfs rpool/ROOT/debian rw,xattr,noacl,casesensitive
25 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
60 22 0:45 / /tank rw,relatime shared:30 - zfs tank rw,xattr,noacl,casesensitive
61 60 0:46 / /tank/data rw,relatime shared:31 - zfs tank/data rw,xattr,noacl,casesensitive
62 22 0:47 / /srv/legacy rw,relatime shared:32 - zfs tank/legacy rw,xattr,noacl,casesensitive
63 60 0:48 / /tank/with\\040space rw,relatime shared:33 - zfs tank/with\\040space rw,xattr,noacl
64 60 0:49 / /tank/shared rw,relatime shared:34 - zfs tank/first rw,xattr
65 64 0:50 / /tank/shared rw,relatime shared:35 - zfs tank/second rw,xattr
66 22 0:51 / /run/zfs-snap/snap/tank ro,nosuid,nodev,noexec,relatime - zfs tank@zfs-snap-1 ro
67 22 8:1 /sub /bind rw - ext4 /dev/sda1 rw
";

    fn sample() -> Vec<MountEntry> {
        parse(Path::new("mountinfo"), SAMPLE).unwrap()
    }

    #[test]
    fn parses_fields_and_unescapes_spaces() {
        let entries = sample();
        assert_eq!(entries.len(), 10);
        let spaced = &entries[5];
        assert_eq!(spaced.mount_point, Path::new("/tank/with space"));
        assert_eq!(spaced.source, "tank/with space");
        assert_eq!(spaced.zfs_dataset(), Some("tank/with space"));
        assert_eq!(entries[9].root, Path::new("/sub"));
        assert_eq!(entries[9].dev, makedev(8, 1));
    }

    #[test]
    fn snapshots_and_other_file_systems_are_not_datasets() {
        let entries = sample();
        assert_eq!(entries[1].zfs_dataset(), None);
        assert_eq!(entries[8].zfs_dataset(), None);
        assert_eq!(entries[4].zfs_dataset(), Some("tank/legacy"));
    }

    #[test]
    fn later_mount_at_same_path_is_the_visible_one() {
        let visible = visible(&sample());
        let at_shared: Vec<_> = visible
            .iter()
            .filter(|e| e.mount_point == Path::new("/tank/shared"))
            .collect();
        assert_eq!(at_shared.len(), 1);
        assert_eq!(at_shared[0].source, "tank/second");
    }

    #[test]
    fn mount_over_a_parent_hides_mounts_below_it() {
        let mut entries = sample();
        entries.push(MountEntry {
            mount_id: 99,
            parent_id: 22,
            dev: 1,
            root: "/".into(),
            mount_point: "/tank".into(),
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
        });
        let visible = visible(&entries);
        assert!(visible
            .iter()
            .all(|e| !e.mount_point.starts_with("/tank") || e.fstype == "tmpfs"));
    }

    #[test]
    fn malformed_line_is_quoted_with_its_number() {
        let err = parse(Path::new("/proc/self/mountinfo"), "22 1 0:21 / /\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 1"), "{text}");
        assert!(text.contains("22 1 0:21 / /"), "{text}");
    }

    #[test]
    fn backslash_escape_round_trips() {
        assert_eq!(unescape(r"a\134b\011c\012"), OsString::from("a\\b\tc\n"));
        assert_eq!(unescape(r"keep\9"), OsString::from(r"keep\9"));
    }
}
