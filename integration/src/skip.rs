//! The one way a test of this workspace skips (the integration tests and
//! hook-bin's, which take this crate as a dev-dependency).
//!
//! A test asks for what it needs with [`need!`](crate::need): it gets the
//! thing (a path), or the test is skipped loudly (a banner on stderr, past
//! libtest's capture, naming the test, what is missing and how to get it)
//! and `need!` returns from it. A skipped test still shows as passed in
//! libtest's summary; the banner is what tells.
//!
//! [`REQUIRE_ENV`] (`ZFS_SNAP_REQUIRE`) lists what must not be skipped on
//! this host, by [`Need::name`] (`zfs,borg,prometheus`, or `all`): with a
//! need listed there, a missing tool fails the test instead. CI's hermetic
//! run sets `borg,prometheus`; the vm-tests guests set what they have.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// What must not be skipped on this host: [`Need::name`]s separated by
/// commas or spaces, or `all`.
pub const REQUIRE_ENV: &str = "ZFS_SNAP_REQUIRE";

/// The variables [`REQUIRE_ENV`] replaced; one of them set fails the test
/// rather than let what it required skip.
const RETIRED_ENV: &[&str] = &[
    "ZFS_SNAP_REQUIRE_ZFS",
    "ZFS_SNAP_REQUIRE_BORG",
    "ZFS_SNAP_REQUIRE_PROMETHEUS",
];

const VM_SUITE: &str = "cargo run -p vm-tests -- test";

/// Something a test cannot run without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Root, `/dev/zfs`, `zpool` and `zfs` on PATH. Gives the `zfs` path.
    Zfs,
    /// borg 1.4.x as `borg` on PATH. Gives its path.
    Borg,
    /// `borgmatic` on PATH. Gives its path.
    Borgmatic,
    /// `promtool` and `prometheus` on PATH, both answering `--version`.
    /// Gives the `prometheus` path.
    Prometheus,
    /// systemd as PID 1. Gives `/run/systemd/system`.
    Systemd,
    /// The seed's host: `/` on ZFS, with sshd and PostgreSQL installed.
    /// Gives the root dataset's name.
    SeedHost,
    /// An executable of this name on PATH (its name in [`REQUIRE_ENV`]).
    /// Gives its path.
    Tool(&'static str),
}

impl Need {
    /// Its word in [`REQUIRE_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Need::Zfs => "zfs",
            Need::Borg => "borg",
            Need::Borgmatic => "borgmatic",
            Need::Prometheus => "prometheus",
            Need::Systemd => "systemd",
            Need::SeedHost => "seedhost",
            Need::Tool(name) => name,
        }
    }

    fn what(self) -> String {
        match self {
            Need::Zfs => "root and ZFS".to_owned(),
            Need::Borg => "borg 1.4 on PATH".to_owned(),
            Need::Borgmatic => "`borgmatic` on PATH".to_owned(),
            Need::Prometheus => "`promtool` and `prometheus` on PATH".to_owned(),
            Need::Systemd => "systemd as PID 1".to_owned(),
            Need::SeedHost => "a root file system on ZFS, sshd and PostgreSQL".to_owned(),
            Need::Tool(name) => format!("`{name}` on PATH"),
        }
    }

    fn how(self) -> String {
        match self {
            Need::Zfs => format!("run it in the VM: {VM_SUITE}"),
            Need::Borg => {
                "sudo apt-get install -t bookworm-backports borgbackup (after .ci/apt-sources.sh)"
                    .to_owned()
            }
            Need::Borgmatic => format!("pip install borgmatic, or run it in the VM: {VM_SUITE}"),
            Need::Prometheus => {
                "sudo apt-get install --no-install-recommends prometheus".to_owned()
            }
            Need::Systemd | Need::SeedHost => {
                format!("run it in the vm-tests seed's host guest: {VM_SUITE}")
            }
            Need::Tool(name) => format!("install `{name}`"),
        }
    }

    /// The thing, or what is missing.
    fn probe(self) -> Result<PathBuf, String> {
        match self {
            Need::Zfs => {
                let mut missing = Vec::new();
                if !nix::unistd::geteuid().is_root() {
                    missing.push("root".to_owned());
                }
                if !Path::new("/dev/zfs").exists() {
                    missing.push("/dev/zfs".to_owned());
                }
                if which("zpool").is_none() {
                    missing.push("`zpool` on PATH".to_owned());
                }
                let zfs = which("zfs");
                if zfs.is_none() {
                    missing.push("`zfs` on PATH".to_owned());
                }
                match zfs {
                    Some(zfs) if missing.is_empty() => Ok(zfs),
                    _ => Err(missing.join(", ")),
                }
            }
            Need::Borg => {
                let borg = which("borg").ok_or("no `borg` on PATH")?;
                let version = version_of(&borg)?;
                if version.starts_with("borg 1.4") {
                    Ok(borg)
                } else {
                    Err(format!("{} is {version:?}", borg.display()))
                }
            }
            Need::Prometheus => {
                for tool in ["promtool", "prometheus"] {
                    let path = which(tool).ok_or(format!("no `{tool}` on PATH"))?;
                    version_of(&path)?;
                }
                Ok(which("prometheus").expect("found just now"))
            }
            Need::Systemd => {
                let run = Path::new("/run/systemd/system");
                if run.is_dir() {
                    Ok(run.to_owned())
                } else {
                    Err("systemd is not PID 1 (no /run/systemd/system)".to_owned())
                }
            }
            Need::SeedHost => {
                let root = std::fs::read_to_string("/proc/self/mountinfo")
                    .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?
                    .lines()
                    .find_map(|line| {
                        let (left, right) = line.split_once(" - ")?;
                        let mut fields = left.split(' ');
                        let mountpoint = fields.nth(4)?;
                        let mut right = right.split(' ');
                        (mountpoint == "/" && right.next()? == "zfs")
                            .then(|| right.next().map(str::to_owned))
                            .flatten()
                    })
                    .ok_or("/ is not on ZFS")?;
                for tool in ["sshd", "pg_dump", "psql"] {
                    which(tool).ok_or(format!("no `{tool}` on PATH"))?;
                }
                Ok(PathBuf::from(root))
            }
            Need::Borgmatic => which("borgmatic").ok_or("no `borgmatic` on PATH".to_owned()),
            Need::Tool(name) => which(name).ok_or(format!("no `{name}` on PATH")),
        }
    }
}

/// The first line `program --version` prints, if it exits 0.
fn version_of(program: &Path) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    // prometheus and promtool print their version on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or_default().trim().to_owned();
    if out.status.success() {
        Ok(first)
    } else {
        let said = if first.is_empty() {
            String::new()
        } else {
            format!(": {first}")
        };
        Err(format!(
            "`{} --version` failed ({}){said}",
            program.display(),
            out.status
        ))
    }
}

/// The first executable called `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => "<test>".to_owned(),
    }
}

/// [`REQUIRE_ENV`]'s value, when it lists `need` (or `all`).
fn required(need: Need) -> Option<String> {
    let value = std::env::var(REQUIRE_ENV).ok()?;
    lists(&value, need).then_some(value)
}

/// Whether a [`REQUIRE_ENV`] value lists `need` (or `all`).
fn lists(value: &str, need: Need) -> bool {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .any(|word| word.eq_ignore_ascii_case("all") || word.eq_ignore_ascii_case(need.name()))
}

/// What `need` gives, or `None` after a loud skip; a panic instead of the
/// skip when [`REQUIRE_ENV`] lists it. Use [`need!`](crate::need), which
/// returns from the test.
#[track_caller]
pub fn need(need: Need) -> Option<PathBuf> {
    for retired in RETIRED_ENV {
        if std::env::var_os(retired).is_some() {
            panic!("{retired} is gone: set {REQUIRE_ENV}=zfs,borg,prometheus (the needs this host must have) instead");
        }
    }
    // Probed once per test executable (borg's start-up costs seconds under
    // emulation); reported for every test that asks.
    static PROBED: Mutex<Vec<(Need, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let found = {
        let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
        match probed.iter().find(|(n, _)| *n == need) {
            Some((_, found)) => found.clone(),
            None => {
                let found = need.probe();
                probed.push((need, found.clone()));
                found
            }
        }
    };
    let missing = match found {
        Ok(path) => return Some(path),
        Err(missing) => missing,
    };
    let test = test_name();
    let what = need.what();
    let how = need.how();
    if let Some(value) = required(need) {
        panic!(
            "{test}: needs {what}; missing: {missing}. {REQUIRE_ENV}={value} says this host must \
             not skip `{}`; to get it: {how}",
            need.name()
        );
    }
    // Straight to stderr, past libtest's capture: a skip must be seen. One
    // write, so that the banners of tests running in parallel stay whole.
    let banner =
        format!("\n!!!!!!!! SKIPPED {test}: needs {what}; missing: {missing}; to get it: {how} !!!!!!!!\n\n");
    let _ = std::io::stderr().lock().write_all(banner.as_bytes());
    None
}

/// `need!(Need::Borg)`: what the need gives (a path), or a loud skip and
/// `return` from the test (a panic when `ZFS_SNAP_REQUIRE` lists it). See
/// [`skip`](crate::skip).
#[macro_export]
macro_rules! need {
    ($need:expr) => {
        match $crate::skip::need($need) {
            ::std::option::Option::Some(found) => found,
            ::std::option::Option::None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_lists_needs_by_name_or_all() {
        assert!(lists("zfs,borg", Need::Borg));
        assert!(lists(" zfs, Borg ", Need::Borg));
        assert!(lists("zfs borgmatic", Need::Borgmatic));
        assert!(!lists("borgmatic", Need::Borg));
        assert!(!lists("", Need::Zfs));
        assert!(lists("ALL", Need::Systemd));
        assert!(lists("python3", Need::Tool("python3")));
        assert!(!lists("zfs,borg,borgmatic", Need::Prometheus));
    }

    #[test]
    fn a_missing_tool_is_named() {
        let missing = Need::Tool("zfs-snap-no-such-tool").probe().unwrap_err();
        assert!(missing.contains("zfs-snap-no-such-tool"), "{missing}");
        assert!(Need::Tool("sh").probe().is_ok());
    }
}
