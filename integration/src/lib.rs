//! Support for the integration tests (see tests/): zfs-snap against real
//! OpenZFS (pools on file vdevs), real mounts and real borg.
//!
//! Each test takes a [`Fixture`]: its own pool, its own runtime root and its
//! own work directory (borg repository, scripts, logs), all removed on drop,
//! so tests run in parallel. On a host without root and ZFS every test
//! skips loudly; with `ZFS_SNAP_REQUIRE=zfs` (the VM suite) it fails
//! instead, so nothing can skip there. How tests skip: [`skip`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

pub const OWNER_PROPERTY: &str = "org.torsion.zfs-snap:run";
pub const TAG_PROPERTY: &str = "org.torsion.borgmatic:backup";
pub const HOLD_TAG: &str = "zfs-snap";

/// Size of each pool's (sparse) file vdev.
const VDEV_SIZE: u64 = 256 << 20;
/// Serialises tests that tag datasets against every other test: a tag
/// selects a dataset for every run on the host, not only the test's own.
const GLOBAL_LOCK: &str = "/var/tmp/zfs-snap-integration.lock";

// ---------------------------------------------------------------- skipping

pub mod skip;
pub mod units;
pub use skip::{need, test_name, which, Need, REQUIRE_ENV};

/// Proof that this host can run the tests: root, `/dev/zfs`, `zpool`, `zfs`, borg 1.4.
#[derive(Debug)]
pub struct ZfsHost(());

/// `Some` on a host with root, ZFS and borg 1.4 ([`Need::Zfs`],
/// [`Need::Borg`]); otherwise `None` after a loud skip, or a panic when
/// [`REQUIRE_ENV`] lists the missing need. Use [`require_zfs!`].
#[track_caller]
pub fn require_zfs() -> Option<ZfsHost> {
    need(Need::Zfs)?;
    need(Need::Borg)?;
    Some(ZfsHost(()))
}

/// The fixture for a test, or a loud skip (`return`) on a host without ZFS
/// ([`require_zfs`]). `require_zfs!(exclusive)` runs the test alone: for
/// tests that tag datasets.
#[macro_export]
macro_rules! require_zfs {
    () => {
        match $crate::require_zfs() {
            Some(host) => $crate::Fixture::new(&host, false),
            None => return,
        }
    };
    (exclusive) => {
        match $crate::require_zfs() {
            Some(host) => $crate::Fixture::new(&host, true),
            None => return,
        }
    };
}

// ---------------------------------------------------------------- commands

/// What a command did, with enough to explain a failure.
#[derive(Debug)]
pub struct Out {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    /// The exit code, or 128+N for a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    pub fn dump(&self) -> String {
        format!(
            "command: {}\nstatus: {} ({:.1} s)\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn success(self) -> Out {
        self.expect_code(0)
    }

    #[track_caller]
    pub fn expect_code(self, code: i32) -> Out {
        assert_eq!(self.code(), code, "expected exit {code}\n{}", self.dump());
        self
    }

    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Out {
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} on stderr\n{}",
            self.dump()
        );
        self
    }
}

/// A shell-like rendering of a command (environment overrides included).
pub fn show(cmd: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| k.to_string_lossy().starts_with("ZFS_SNAP"))
        .map(|(k, v)| {
            format!(
                "{}={}",
                k.to_string_lossy(),
                v.map(quote).unwrap_or_default()
            )
        })
        .collect();
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

/// How long any one command may take before the test kills it and fails
/// (a hang must not eat the whole VM's time limit).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion, capturing its output (in files, so that no
/// pipe a stray grandchild keeps open can hang the test). Never panics on a
/// non-zero exit (see [`Out::success`]); panics, after killing it, when it
/// runs longer than [`COMMAND_TIMEOUT`].
#[track_caller]
pub fn run(cmd: &mut Command) -> Out {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!("zst-run-{}-{n}", std::process::id()));
    let running = start(
        cmd,
        base.with_extension("out"),
        base.with_extension("err"),
        true,
    );
    running.wait(COMMAND_TIMEOUT)
}

/// Starts `cmd` with stdout and stderr going to `out` and `err`.
#[track_caller]
fn start(cmd: &mut Command, out: PathBuf, err: PathBuf, remove_files: bool) -> Running {
    let command = show(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display())))
        .stderr(File::create(&err).unwrap_or_else(|e| panic!("create {}: {e}", err.display())))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    Running {
        child,
        command,
        out,
        err,
        started: Instant::now(),
        remove_files,
    }
}

/// `program args...`, which must succeed; its stdout.
#[track_caller]
pub fn must<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    run(Command::new(program).args(args)).success().stdout
}

#[track_caller]
pub fn zfs<S: AsRef<OsStr>>(args: &[S]) -> String {
    must("zfs", args)
}

/// A running process whose output goes to files (no pipe can fill up).
pub struct Running {
    pub child: Child,
    pub command: String,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    remove_files: bool,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits up to `timeout`; on timeout kills it (and its descendants) and panics.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return self.out(status),
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(50)),
                Ok(None) => {
                    let pid = self.pid();
                    let family = descendants(pid);
                    let report = process_report(pid, &family);
                    for p in std::iter::once(pid).chain(family) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let status = self.child.wait().expect("wait for a killed child");
                    let out = self.out(status);
                    panic!(
                        "still running after {:.0} s, killed it\n{report}\n{}",
                        timeout.as_secs_f64(),
                        out.dump()
                    );
                }
                Err(e) => panic!("waiting for `{}`: {e}", self.command),
            }
        }
    }

    fn out(&self, status: ExitStatus) -> Out {
        Out {
            command: self.command.clone(),
            status,
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.alive() {
            let pid = self.pid();
            for p in descendants(pid).into_iter().chain(std::iter::once(pid)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.wait();
        }
        if self.remove_files {
            let _ = fs::remove_file(&self.out);
            let _ = fs::remove_file(&self.err);
        }
    }
}

// ---------------------------------------------------------------- processes

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Every live descendant of `pid`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|p| Some((p, parent_of(p)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim_end()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 2..].starts_with('Z'))
                .map(|zombie| !zombie)
        })
        .unwrap_or(false)
}

/// Where the threads of `pid` sleep in the kernel (`/proc/PID/task/*/wchan`).
pub fn wchans(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| fs::read_to_string(t.path().join("wchan")).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The state of `pid` and `family` for a failure message.
pub fn process_report(pid: i32, family: &[i32]) -> String {
    let mut text = String::new();
    for p in std::iter::once(pid).chain(family.iter().copied()) {
        let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let pick: Vec<&str> = status
            .lines()
            .filter(|l| {
                [
                    "State:", "PPid:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigCgt:", "SigIgn:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect();
        text.push_str(&format!(
            "process {p}: {}\n  wchan: {:?}\n  {}\n",
            cmdline(p),
            wchans(p),
            pick.join("\n  ")
        ));
    }
    text
}

/// Polls `cond` every 50 ms; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {:.0} s waiting for {what}",
            timeout.as_secs_f64()
        );
        sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- mounts

/// A line of `/proc/self/mountinfo`.
#[derive(Clone, Debug)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                options: fields.get(5)?.to_string(),
                fstype: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
            })
        })
        .collect()
}

/// Mounts at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<Mount> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

fn lazy_unmount(target: &Path) {
    let out = run(Command::new("umount").arg("-l").arg(target));
    if out.code() != 0 {
        eprintln!("cleanup: {}", out.dump());
    }
}

// ---------------------------------------------------------------- pools

static POOLS: AtomicUsize = AtomicUsize::new(0);

/// A pool on a sparse file in /var/tmp, mounted at `/<name>`; destroyed
/// (with its file) on drop.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub vdev: PathBuf,
}

impl Pool {
    /// A new, uniquely named pool.
    #[track_caller]
    pub fn create(_host: &ZfsHost) -> Pool {
        let n = POOLS.fetch_add(1, Ordering::SeqCst);
        let name = format!("zst{}n{n}", std::process::id());
        let vdev = PathBuf::from(format!("/var/tmp/{name}.img"));
        let file = File::create(&vdev).unwrap_or_else(|e| panic!("create {}: {e}", vdev.display()));
        file.set_len(VDEV_SIZE).expect("size the file vdev");
        drop(file);
        let pool = Pool { name, vdev };
        pool.zpool_create();
        eprintln!(
            "[{}] pool {} on {}",
            test_name(),
            pool.name,
            pool.vdev.display()
        );
        pool
    }

    fn zpool_create(&self) {
        let mountpoint = format!("mountpoint=/{}", self.name);
        let vdev = self.vdev.display().to_string();
        must(
            "zpool",
            &[
                "create",
                "-f",
                "-o",
                "cachefile=none",
                "-O",
                &mountpoint,
                &self.name,
                &vdev,
            ],
        );
    }

    /// Destroys the pool and creates it again on the same file, under the
    /// same name: a new pool (new guid), empty.
    #[track_caller]
    pub fn recreate(&self) {
        must("zpool", &["destroy", &self.name]);
        self.zpool_create();
    }

    /// `/<pool>`: where the pool's root dataset is mounted.
    pub fn mountpoint(&self) -> PathBuf {
        PathBuf::from(format!("/{}", self.name))
    }

    /// `<pool>/<rel>` (the pool itself for "").
    pub fn ds(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{rel}", self.name)
        }
    }

    /// `/<pool>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint().join(rel)
    }

    /// `zfs create -p [-o PROP]... <pool>/<rel>`; returns the dataset name.
    #[track_caller]
    pub fn dataset(&self, rel: &str, props: &[&str]) -> String {
        let name = self.ds(rel);
        let mut cmd = Command::new("zfs");
        cmd.args(["create", "-p"]);
        for prop in props {
            cmd.args(["-o", prop]);
        }
        cmd.arg(&name);
        run(&mut cmd).success();
        name
    }

    /// Writes `/<pool>/<rel>`, creating its parent directories.
    #[track_caller]
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        write_file(&self.path(rel), content)
    }

    /// `(txg, snapshot)` for every snapshot named like ours (`@zfs-snap-`)
    /// ever made in the pool, in order, from ZFS's own internal history:
    /// one atomic call per pool is one txg.
    pub fn snapshots_made(&self) -> Vec<(String, String)> {
        must("zpool", &["history", "-i", &self.name])
            .lines()
            .filter(|l| l.contains("] snapshot ") && l.contains("@zfs-snap-"))
            .filter_map(|l| {
                let txg = l.split("[txg:").nth(1)?.split(']').next()?.to_owned();
                let name = l.split("] snapshot ").nth(1)?.split(' ').next()?.to_owned();
                Some((txg, name))
            })
            .collect()
    }

    /// `zfs list -H -t snapshot -o name,<owner property> -r <pool>`.
    pub fn snapshots(&self) -> Vec<(String, String)> {
        zfs(&[
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            &format!("name,{OWNER_PROPERTY}"),
            "-r",
            &self.name,
        ])
        .lines()
        .filter_map(|l| {
            l.split_once('\t')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        })
        .collect()
    }

    /// `(name, value)` of the pool's snapshots whose ownership property is
    /// set locally (what makes a snapshot zfs-snap's).
    pub fn snapshots_with_local_owner(&self) -> Vec<(String, String)> {
        zfs(&[
            "get",
            "-H",
            "-r",
            "-t",
            "snapshot",
            "-s",
            "local",
            "-o",
            "name,value",
            OWNER_PROPERTY,
            &self.name,
        ])
        .lines()
        .filter_map(|l| {
            l.split_once('\t')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        })
        .collect()
    }

    /// `(snapshot, tag)` for every hold on every snapshot of the pool.
    pub fn holds(&self) -> Vec<(String, String)> {
        let names: Vec<String> = self.snapshots().into_iter().map(|(n, _)| n).collect();
        if names.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["holds".to_owned(), "-H".to_owned()];
        args.extend(names);
        zfs(&args)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.to_owned(), f.next()?.to_owned()))
            })
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Whatever is still mounted from the pool (legacy mounts, snapshot
        // mounts a failed test left), deepest first, so the pool can go.
        let prefix = format!("{}/", self.name);
        let snap = format!("{}@", self.name);
        let mut ours: Vec<Mount> = mounts()
            .into_iter()
            .filter(|m| {
                m.fstype == "zfs"
                    && (m.source == self.name
                        || m.source.starts_with(&prefix)
                        || m.source.starts_with(&snap))
            })
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        for m in ours.iter().filter(|m| m.source.contains('@')) {
            lazy_unmount(&m.mount_point);
        }
        let out = run(Command::new("zpool").args(["destroy", "-f", &self.name]));
        if out.code() != 0 {
            for m in &ours {
                lazy_unmount(&m.mount_point);
            }
            let again = run(Command::new("zpool").args(["destroy", "-f", &self.name]));
            if again.code() != 0 {
                eprintln!(
                    "cleanup: cannot destroy pool {}:\n{}",
                    self.name,
                    again.dump()
                );
                return;
            }
        }
        let _ = fs::remove_file(&self.vdev);
        let top = self.mountpoint();
        if mounts_under(&top).is_empty() {
            let _ = fs::remove_dir_all(&top);
        }
    }
}

// ---------------------------------------------------------------- files

#[track_caller]
pub fn write_file(path: &Path, content: &str) -> PathBuf {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_owned()
}

#[track_caller]
pub fn read_file(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes an executable `#!/bin/sh` script.
#[track_caller]
pub fn write_script(path: &Path, body: &str) -> PathBuf {
    write_file(path, &format!("#!/bin/sh\n{body}\n"));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    path.to_owned()
}

#[track_caller]
pub fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// One entry of a directory tree, as compared between archive and snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
    Fifo { mode: u32 },
    Other,
}

/// Every entry below `dir` (not `dir` itself), by relative path.
pub fn tree(dir: &Path) -> BTreeMap<String, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.mode() & 0o7777;
            let rel = path
                .strip_prefix(base)
                .expect("below base")
                .display()
                .to_string();
            let kind = meta.file_type();
            let node = if kind.is_dir() {
                walk(base, &path, out);
                Node::Dir { mode }
            } else if kind.is_file() {
                Node::File {
                    mode,
                    content: fs::read(&path).expect("read file"),
                }
            } else if kind.is_symlink() {
                Node::Symlink {
                    target: fs::read_link(&path).expect("readlink"),
                }
            } else if kind.is_fifo() {
                Node::Fifo { mode }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Every path below `dir` (relative), not entering other file systems.
pub fn tree_within_fs(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, dev: u64, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            out.push(
                path.strip_prefix(base)
                    .expect("below base")
                    .display()
                    .to_string(),
            );
            if meta.is_dir() && meta.dev() == dev {
                walk(base, &path, dev, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(meta) = fs::symlink_metadata(dir) {
        walk(dir, dir, meta.dev(), &mut out);
    }
    out.sort();
    out
}

/// Panics with the differing entries when the trees differ.
#[track_caller]
pub fn assert_same_tree(
    actual: &BTreeMap<String, Node>,
    expected: &BTreeMap<String, Node>,
    what: &str,
) {
    if actual == expected {
        return;
    }
    let mut diff = String::new();
    for (path, node) in expected {
        match actual.get(path) {
            None => diff.push_str(&format!("  missing: {path} ({node:?})\n")),
            Some(other) if other != node => diff.push_str(&format!(
                "  differs: {path}: got {other:?}, expected {node:?}\n"
            )),
            _ => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        diff.push_str(&format!("  extra: {path}\n"));
    }
    panic!("{what}: trees differ\n{diff}");
}

/// Panics with a readable difference when two sorted path lists differ.
#[track_caller]
pub fn assert_same_paths(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let missing: Vec<&String> = expected.iter().filter(|p| !actual.contains(p)).collect();
    let extra: Vec<&String> = actual.iter().filter(|p| !expected.contains(p)).collect();
    panic!(
        "{what}: path lists differ\n  missing: {missing:?}\n  extra: {extra:?}\n  got: {actual:#?}\n  expected: {expected:#?}"
    );
}

// ---------------------------------------------------------------- borg

/// Sets the environment borg needs for an unencrypted test repository.
pub fn borg_env<'a>(cmd: &'a mut Command, base: &Path) -> &'a mut Command {
    cmd.env("BORG_PASSPHRASE", "")
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_BASE_DIR", base)
        // Each test records in its own state directory, and without the
        // extra `borg info` (two Python start-ups per create under TCG);
        // the monitoring tests turn it on.
        .env("ZFS_SNAP_STATE_DIR", state_dir_of(base))
        .env("ZFS_SNAP_METRICS_INFO", "never")
        .env_remove("ZFS_SNAP_METRICS_TEXTFILE")
}

/// The state directory zfs-snap records in, for a test whose borg base
/// directory is `base`.
pub fn state_dir_of(base: &Path) -> PathBuf {
    base.join("zfs-snap-state")
}

/// A borg repository in the test's work directory.
#[derive(Clone, Debug)]
pub struct Repo {
    pub path: PathBuf,
    base: PathBuf,
}

impl Repo {
    /// Plain borg (not the wrapper), with the test environment.
    pub fn borg(&self) -> Command {
        let mut cmd = Command::new("borg");
        borg_env(&mut cmd, &self.base);
        cmd
    }

    /// `REPO::NAME`.
    pub fn at(&self, archive: &str) -> String {
        format!("{}::{archive}", self.path.display())
    }

    /// The archive's paths, sorted.
    #[track_caller]
    pub fn list(&self, archive: &str) -> Vec<String> {
        let out = run(self
            .borg()
            .args(["list", "--format", "{path}{NL}", &self.at(archive)]))
        .success();
        let mut paths: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        paths.sort();
        paths
    }

    /// The archives' names.
    #[track_caller]
    pub fn archives(&self) -> Vec<String> {
        let out = run(self.borg().args([
            "list",
            "--format",
            "{archive}{NL}",
            &self.path.display().to_string(),
        ]))
        .success();
        out.stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Extracts the whole archive into `dest` (created).
    #[track_caller]
    pub fn extract(&self, archive: &str, dest: &Path) {
        fs::create_dir_all(dest).expect("create the extraction directory");
        run(self
            .borg()
            .current_dir(dest)
            .args(["extract", &self.at(archive)]))
        .success();
    }

    /// Plain `borg create ARGS...` over live paths (the comparison baseline).
    #[track_caller]
    pub fn create_plain<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        run(self.borg().arg("create").args(args))
    }
}

// ---------------------------------------------------------------- fixture

/// The zfs-snap binary under test: `$ZFS_SNAP_BIN`, else `target/debug/zfs-snap`.
pub fn zfs_snap_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ZFS_SNAP_BIN") {
        return PathBuf::from(bin);
    }
    // Test executables live in target/debug/deps.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("zfs-snap"))
        .expect("the test executable lives in target/<profile>/deps")
}

/// One test's world: a pool, a runtime root, a work directory and a borg
/// repository; all of it removed on drop.
pub struct Fixture {
    pub pool: Pool,
    /// The runtime root every zfs-snap call of this test uses.
    pub root: PathBuf,
    /// Scratch space outside every pool: scripts, logs, repositories.
    pub work: PathBuf,
    pub repo: Repo,
    extra_pools: Vec<Pool>,
    _lock: Flock<File>,
}

impl Fixture {
    /// Use [`require_zfs!`]. `exclusive`: no other test runs meanwhile.
    #[track_caller]
    pub fn new(host: &ZfsHost, exclusive: bool) -> Fixture {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(GLOBAL_LOCK)
            .unwrap_or_else(|e| panic!("open {GLOBAL_LOCK}: {e}"));
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let lock =
            Flock::lock(file, arg).unwrap_or_else(|(_, e)| panic!("flock {GLOBAL_LOCK}: {e}"));
        let pool = Pool::create(host);
        let root = PathBuf::from(format!("/run/zst-{}", pool.name));
        let work = PathBuf::from(format!("/var/tmp/{}-work", pool.name));
        fs::create_dir_all(work.join("bin")).expect("create the work directory");
        let repo = Repo {
            path: work.join("repo"),
            base: work.join("borg-base"),
        };
        let fixture = Fixture {
            pool,
            root,
            work,
            repo,
            extra_pools: Vec::new(),
            _lock: lock,
        };
        fixture.init_repo(&fixture.repo);
        fixture
    }

    /// Another pool, destroyed with the fixture.
    pub fn add_pool(&mut self) -> &Pool {
        let pool = Pool::create(&ZfsHost(()));
        self.extra_pools.push(pool);
        self.extra_pools.last().expect("just pushed")
    }

    pub fn extra_pool(&self, i: usize) -> &Pool {
        &self.extra_pools[i]
    }

    /// A further repository in the work directory, initialised.
    pub fn new_repo(&self, name: &str) -> Repo {
        let repo = Repo {
            path: self.work.join(name),
            base: self.repo.base.clone(),
        };
        self.init_repo(&repo);
        repo
    }

    fn init_repo(&self, repo: &Repo) {
        run(repo.borg().args(["init", "-e", "none"]).arg(&repo.path)).success();
    }

    /// Where this test's zfs-snap calls record for monitoring.
    pub fn state_dir(&self) -> PathBuf {
        state_dir_of(&self.repo.base)
    }

    /// The zfs-snap command with this test's runtime root and borg's environment.
    pub fn zfs_snap(&self) -> Command {
        self.zfs_snap_at(&self.root)
    }

    /// The zfs-snap command with another runtime root (as spelt here).
    pub fn zfs_snap_at(&self, root: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(zfs_snap_bin());
        cmd.arg("--runtime-root").arg(root);
        borg_env(&mut cmd, &self.repo.base);
        cmd
    }

    /// Any command, with borg's environment for this test's repositories.
    pub fn with_borg_env(&self, mut cmd: Command) -> Command {
        borg_env(&mut cmd, &self.repo.base);
        cmd
    }

    /// `zfs-snap [GLOBALS] wrap -- borg BORG_ARGS...`, run to completion.
    #[track_caller]
    pub fn wrap(&self, globals: &[&str], borg_args: &[&str]) -> Out {
        run(&mut self.wrap_command(globals, borg_args))
    }

    pub fn wrap_command(&self, globals: &[&str], borg_args: &[&str]) -> Command {
        let mut cmd = self.zfs_snap();
        cmd.args(globals)
            .args(["wrap", "--", "borg"])
            .args(borg_args);
        cmd
    }

    /// Starts `cmd` in the background, its output going to files.
    pub fn spawn(&self, mut cmd: Command) -> Running {
        static SPAWNED: AtomicUsize = AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, Ordering::SeqCst);
        let out = self.work.join(format!("spawn{n}.out"));
        let err = self.work.join(format!("spawn{n}.err"));
        start(&mut cmd, out, err, false)
    }

    /// An executable script in the work directory.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        write_script(&self.work.join("bin").join(name), body)
    }

    /// A borg that appends its first argument (the subcommand, or
    /// `--version`) to `log`, then runs the real borg: counts the borg
    /// processes a run starts.
    pub fn counting_borg(&self, log: &Path) -> PathBuf {
        self.script(
            "counting-borg",
            &format!(
                "printf '%s\\n' \"$1\" >> {}\nexec borg \"$@\"",
                sh_quote(log)
            ),
        )
    }

    /// Where the wrapper mounts the snapshot of the dataset mounted at `live`.
    pub fn snapshot_path(&self, live: &Path) -> PathBuf {
        self.root
            .join("snap")
            .join(live.strip_prefix("/").unwrap_or(live))
    }

    /// Nothing of ours is left: no owned snapshot, no `zfs-snap` hold in the
    /// test's pools, no mount and no mirror directory under the runtime root.
    #[track_caller]
    pub fn assert_clean(&self) {
        self.assert_clean_except(&[]);
    }

    /// [`Fixture::assert_clean`], where `foreign` are mounts under the
    /// runtime root that are not ours (they, and the directories leading to
    /// them, must stay).
    #[track_caller]
    pub fn assert_clean_except(&self, foreign: &[PathBuf]) {
        let mut problems = Vec::new();
        for pool in std::iter::once(&self.pool).chain(&self.extra_pools) {
            for (name, owner) in pool.snapshots_with_local_owner() {
                if owner.ends_with(&format!(":{}", self.root.display())) {
                    problems.push(format!(
                        "snapshot {name} left behind ({OWNER_PROPERTY}={owner})"
                    ));
                }
            }
            for (name, tag) in pool.holds() {
                if tag == HOLD_TAG {
                    problems.push(format!("hold {tag} left on {name}"));
                }
            }
        }
        let mut left_mounted: Vec<PathBuf> = Vec::new();
        for m in mounts_under(&self.root) {
            if m.mount_point == self.root || foreign.contains(&m.mount_point) {
                continue;
            }
            left_mounted.push(m.mount_point.clone());
            problems.push(format!(
                "mount left at {} ({} {})",
                m.mount_point.display(),
                m.fstype,
                m.source
            ));
        }
        let snap = self.root.join("snap");
        if snap.exists() {
            let left: Vec<String> = tree_within_fs(&snap)
                .into_iter()
                .filter(|rel| {
                    let full = snap.join(rel);
                    !foreign
                        .iter()
                        .any(|f| f.starts_with(&full) || full.starts_with(f))
                        && !left_mounted.iter().any(|m| full.starts_with(m))
                })
                .collect();
            if !left.is_empty() || foreign.iter().all(|f| !f.starts_with(&snap)) {
                problems.push(format!(
                    "mirror directory {} left behind, containing {left:?}",
                    snap.display()
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "zfs-snap left things behind:\n  {}",
            problems.join("\n  ")
        );
    }

    /// A dead run's snapshot, made the way a run makes it: our property
    /// naming this test's runtime root, and our hold.
    #[track_caller]
    pub fn plant_leftover(&self, snapshot: &str) {
        let owner = format!(
            "{OWNER_PROPERTY}=20260101T000000Z-1:{}",
            self.root.display()
        );
        zfs(&["snapshot", "-o", &owner, snapshot]);
        zfs(&["hold", HOLD_TAG, snapshot]);
    }

    /// `(name, owner)` of the pool's snapshots with our ownership property.
    pub fn owned_snapshots(&self) -> Vec<String> {
        self.pool
            .snapshots()
            .into_iter()
            .filter(|(_, owner)| owner != "-")
            .map(|(name, _)| name)
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut left = mounts_under(&self.root);
        left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        for m in &left {
            lazy_unmount(&m.mount_point);
        }
        if mounts_under(&self.root).is_empty() {
            let _ = fs::remove_dir_all(&self.root);
        }
        // Pools go with their fields; the work directory holds no mount.
        self.extra_pools.clear();
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// Reads a file that may still be growing (a log), empty if absent.
pub fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// Lines of the form `<status> <path>` borg's `--list` prints, by path suffix.
pub fn listed_status(stderr_and_stdout: &str, path_suffix: &str) -> Option<char> {
    stderr_and_stdout.lines().find_map(|l| {
        let mut chars = l.chars();
        let status = chars.next()?;
        let rest = chars.as_str();
        (rest.starts_with(' ') && rest.trim_start().ends_with(path_suffix)).then_some(status)
    })
}

/// Quotes a word for a `/bin/sh` script.
pub fn sh_quote(word: impl AsRef<OsStr>) -> String {
    format!(
        "'{}'",
        word.as_ref().to_string_lossy().replace('\'', "'\\''")
    )
}

/// `prefix` + each of `rels` (`prefix` alone for ""), sorted: expected archive paths.
pub fn paths(prefix: &str, rels: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = rels
        .iter()
        .map(|r| {
            if r.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}/{r}")
            }
        })
        .collect();
    v.sort();
    v
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
pub fn exposition_samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("`name value`");
            (key.to_owned(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

/// `zfs-snap metrics` of `state_dir`, as samples.
#[track_caller]
pub fn recorded_samples(state_dir: &Path) -> BTreeMap<String, f64> {
    let out = run(Command::new(zfs_snap_bin())
        .arg("--state-dir")
        .arg(state_dir)
        .arg("metrics"))
    .success();
    exposition_samples(&out.stdout)
}

/// Which totals and archive count a record must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Totals {
    /// The create's own (from its `--json`); the archive count from a
    /// `borg list` zfs-snap ran after it (`counted`: as `--metrics-info
    /// always` does outside a session), or none (the default).
    OfTheCreate { counted: bool },
    /// Those of the repository now, as `borg info` and `borg list` give
    /// them: a session's end took them, after the session's prune.
    AfterTheRun,
}

/// Checks what zfs-snap recorded for `location` against borg's own figures
/// of `archive`: those borg printed for the create with `--json`
/// (`printed`), or else `borg info --json`; the repository's totals and
/// archive count as `totals` says. `borg` makes a plain borg command with
/// the repository's environment.
#[track_caller]
pub fn assert_figures_match_borg(
    samples: &BTreeMap<String, f64>,
    borg: &dyn Fn() -> Command,
    location: &str,
    archive: &str,
    printed: Option<&serde_json::Value>,
    totals: Totals,
) {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run(borg().args(args)).success();
        serde_json::from_str(&out.stdout).expect("borg's JSON")
    };
    let info = json(&["info", "--json", &format!("{location}::{archive}")]);
    let now = (totals == Totals::AfterTheRun).then(|| json(&["info", "--json", location]));
    let (a, created) = match printed {
        Some(p) => (&p["archive"], &p["cache"]["stats"]),
        None => (&info["archives"][0], &info["cache"]["stats"]),
    };
    let cache = now.as_ref().map_or(created, |now| &now["cache"]["stats"]);
    assert_eq!(
        a["stats"]["nfiles"], info["archives"][0]["stats"]["nfiles"],
        "the same archive"
    );
    let archives = json(&["list", "--json", location])["archives"]
        .as_array()
        .expect("archives")
        .len() as f64;
    let n = |v: &serde_json::Value| v.as_u64().expect("a count") as f64;
    let of = |name: &str| {
        let key = format!("{name}{{repository=\"{location}\"}}");
        *samples
            .get(&key)
            .unwrap_or_else(|| panic!("no {key} in {samples:#?}"))
    };
    for (name, want) in [
        ("borg_backup_size_bytes", n(&a["stats"]["original_size"])),
        ("borg_backup_files_count", n(&a["stats"]["nfiles"])),
        ("borg_last_backup_size", n(&a["stats"]["original_size"])),
        ("borg_last_backup_files", n(&a["stats"]["nfiles"])),
        (
            "borg_last_backup_compressed_size",
            n(&a["stats"]["compressed_size"]),
        ),
        (
            "borg_last_backup_deduplicated_compressed_size",
            n(&a["stats"]["deduplicated_size"]),
        ),
        ("borg_repository_size_bytes", n(&cache["unique_csize"])),
        ("borg_total_chunks", n(&cache["total_chunks"])),
        ("borg_total_compressed_size", n(&cache["total_csize"])),
        ("borg_total_size", n(&cache["total_size"])),
        (
            "borg_total_deduplicated_compressed_size",
            n(&cache["unique_csize"]),
        ),
        ("borg_total_deduplicated_size", n(&cache["unique_size"])),
    ] {
        assert_eq!(of(name), want, "{name} of {location}");
    }
    let count = format!("borg_total_backups{{repository=\"{location}\"}}");
    if totals != (Totals::OfTheCreate { counted: false }) {
        assert_eq!(
            of("borg_total_backups"),
            archives,
            "the archives in {location}"
        );
    } else {
        assert!(
            !samples.contains_key(&count),
            "{count} without a `borg list`"
        );
    }
    let duration = a["duration"].as_f64().expect("a duration");
    assert!(
        (of("borg_last_backup_duration") - duration).abs() < 1e-3,
        "borg's duration of {location}"
    );
    // The seed's: the create's wall-clock time as zfs-snap ran it, borg's
    // own start-up and repository opening included.
    let wall = of("borg_backup_duration_seconds");
    assert!(
        wall >= duration - 1e-3 && wall < duration + 600.0,
        "borg_backup_duration_seconds of {location}: {wall} s, borg's own {duration} s"
    );
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        - of("borg_last_backup_timestamp");
    assert!((0.0..600.0).contains(&age), "last backup {age} s ago");
}
