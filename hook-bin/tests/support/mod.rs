//! A hermetic world for the `zfs-snap` binary: a stateful fake `zfs`,
//! `mount` and `umount` (tests/fake/fakezfs.py), a fake mount table, live
//! dataset directories in a temp dir, and real borg when installed (a test
//! that needs it asks with `need!(Need::Borg)`).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// How a test skips: `need!(Need::Borg)` gives borg's path or skips loudly
/// (fails where `ZFS_SNAP_REQUIRE` lists the need); see `integration::skip`.
/// (Unused by the test files that need nothing.)
#[allow(unused_imports)]
pub use integration::{need, Need};

pub const OWNER: &str = "org.torsion.zfs-snap:run";
pub const TAG: &str = "org.torsion.borgmatic:backup";

pub struct World {
    pub dir: tempfile::TempDir,
    pub live: PathBuf,
    pub runtime_root: PathBuf,
    pub bin: PathBuf,
    state_path: PathBuf,
}

fn fake_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake/fakezfs.py")
}

fn write_exe(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn dev_line(id: u32, path: &Path, fstype: &str, source: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).unwrap().dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    let esc = |s: &str| s.replace('\\', "\\134").replace(' ', "\\040");
    format!(
        "{id} 1 {major}:{minor} / {} rw - {fstype} {} rw",
        esc(&path.display().to_string()),
        esc(source)
    )
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let bin = dir.path().join("bin");
        fs::create_dir_all(&live).unwrap();
        fs::create_dir_all(&bin).unwrap();
        let fake = fake_script();
        for role in ["zfs", "mount", "umount"] {
            write_exe(
                &bin.join(role),
                &format!(
                    "#!/bin/sh\nexec python3 '{}' {role} \"$@\"\n",
                    fake.display()
                ),
            );
        }
        let state_path = dir.path().join("state.json");
        let world = World {
            runtime_root: dir.path().join("rt"),
            live,
            bin,
            state_path,
            dir,
        };
        let state = json!({
            "datasets": {},
            "snapshots": {},
            "mounts": [],
            "mountinfo": world.dir.path().join("mountinfo"),
            "log": world.dir.path().join("calls.log"),
            "base_mountinfo": [dev_line(1, Path::new("/"), "ext4", "/dev/root")],
        });
        world.save(&state);
        world.write_base_mountinfo();
        world
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(&fs::read_to_string(&self.state_path).unwrap()).unwrap()
    }

    pub fn save(&self, state: &Value) {
        fs::write(
            &self.state_path,
            serde_json::to_string_pretty(state).unwrap(),
        )
        .unwrap();
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut state = self.state();
        f(&mut state);
        self.save(&state);
        self.write_base_mountinfo();
    }

    fn write_base_mountinfo(&self) {
        let state = self.state();
        let mut lines: Vec<String> = state["base_mountinfo"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        for (i, m) in state["mounts"].as_array().unwrap().iter().enumerate() {
            lines.push(dev_line(
                900 + i as u32,
                Path::new(m["target"].as_str().unwrap()),
                "zfs",
                m["source"].as_str().unwrap(),
            ));
        }
        fs::write(self.dir.path().join("mountinfo"), lines.join("\n") + "\n").unwrap();
    }

    /// A mounted dataset whose files live at `live/<rel>`; returns that path.
    pub fn dataset(&self, name: &str, rel: &str) -> PathBuf {
        self.dataset_with(name, rel, json!({}))
    }

    /// A dataset with extra fields (`mounted`, `canmount`, `keystatus`,
    /// `mountpoint`, `props`).
    pub fn dataset_with(&self, name: &str, rel: &str, extra: Value) -> PathBuf {
        let dir = self.live.join(rel);
        fs::create_dir_all(&dir).unwrap();
        let mut entry = json!({
            "dir": dir,
            "mountpoint": dir,
            "canmount": "on",
            "mounted": true,
            "keystatus": "-",
            "props": {},
        });
        for (k, v) in extra.as_object().unwrap() {
            entry[k] = v.clone();
        }
        let mounted = entry["mounted"].as_bool().unwrap();
        self.edit(|s| {
            s["datasets"][name] = entry;
            if mounted {
                let n = s["base_mountinfo"].as_array().unwrap().len() as u32 + 10;
                let line = dev_line(n, &dir, "zfs", name);
                s["base_mountinfo"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(line));
            }
        });
        dir
    }

    pub fn tag(&self, name: &str) {
        self.edit(|s| s["datasets"][name]["props"][TAG] = json!("auto"));
    }

    pub fn write(&self, path: &Path, content: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, content).unwrap();
    }

    /// A foreign snapshot (no ownership property), as other tools make.
    pub fn foreign_snapshot(&self, name: &str) {
        let store = self
            .dir
            .path()
            .join("snapshots")
            .join(name.replace('/', "_"));
        fs::create_dir_all(&store).unwrap();
        self.edit(|s| s["snapshots"][name] = json!({"props": {}, "holds": [], "store": store}));
    }

    /// A snapshot left by a dead run of this world's runtime root.
    pub fn leftover_snapshot(&self, name: &str, held: bool) {
        let store = self
            .dir
            .path()
            .join("snapshots")
            .join(name.replace('/', "_"));
        fs::create_dir_all(&store).unwrap();
        let owner = format!("20260101T000000Z-1:{}", self.runtime_root.display());
        let holds = if held { json!(["zfs-snap"]) } else { json!([]) };
        self.edit(|s| {
            s["snapshots"][name] = json!({"props": {OWNER: owner}, "holds": holds, "store": store})
        });
    }

    /// The `zfs-snap` binary, pointed at this world's fakes.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zfs-snap"));
        cmd.env("ZFS_SNAP_ZFS_COMMAND", self.bin.join("zfs"))
            .env("ZFS_SNAP_MOUNT_COMMAND", self.bin.join("mount"))
            .env("ZFS_SNAP_UMOUNT_COMMAND", self.bin.join("umount"))
            .env("ZFS_SNAP_RUNTIME_ROOT", &self.runtime_root)
            .env("ZFS_SNAP_MOUNTINFO", self.dir.path().join("mountinfo"))
            .env("FAKE_ZFS_STATE", &self.state_path)
            .env_remove("ZFS_SNAP_BORG")
            .env_remove("ZFS_SNAP_WAIT")
            .env_remove("ZFS_SNAP_VERBOSITY")
            .env("BORG_PASSPHRASE", "")
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_BASE_DIR", self.dir.path().join("borg-home"))
            .env("ZFS_SNAP_STATE_DIR", self.state_dir())
            .env("ZFS_SNAP_METRICS_INFO", "never")
            .env_remove("ZFS_SNAP_METRICS_TEXTFILE")
            .current_dir(self.dir.path());
        cmd
    }

    /// Where this world's runs are recorded for monitoring.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("zfs-snap-state")
    }

    pub fn calls(&self) -> String {
        fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    /// Nothing of this runtime root's is left: no snapshot whose ownership
    /// property names it, no mount,
    /// no mirror directories.
    pub fn assert_clean(&self) {
        let state = self.state();
        let ours: Vec<&String> = state["snapshots"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, s)| {
                s["props"]
                    .get(OWNER)
                    .and_then(|o| o.as_str())
                    .is_some_and(|o| o.ends_with(&format!(":{}", self.runtime_root.display())))
            })
            .map(|(n, _)| n)
            .collect();
        assert!(ours.is_empty(), "snapshots left behind: {ours:?}");
        assert_eq!(state["mounts"], json!([]), "mounts left behind");
        let snap = self.runtime_root.join("snap");
        assert!(!snap.exists(), "mirror left behind: {}", snap.display());
        assert!(
            !self.runtime_root.join("work").exists(),
            "work dir left behind"
        );
    }

    pub fn snapshot_names(&self) -> Vec<String> {
        self.state()["snapshots"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap();
    eprintln!(
        "--- {:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// [`run`], but `None` (the command's process group killed) when it has
/// not ended within `timeout`. The command should run in a process group
/// of its own (`process_group(0)`).
#[allow(dead_code)]
pub fn run_with_timeout(cmd: &mut Command, timeout: std::time::Duration) -> Option<Output> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output.unwrap();
            eprintln!(
                "--- {:?}\nstatus: {}\nstderr:\n{}",
                cmd,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            Some(output)
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            None
        }
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl World {
    pub fn borg(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("borg");
        cmd.args(args)
            .env("BORG_PASSPHRASE", "")
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_BASE_DIR", self.dir.path().join("borg-home"))
            .current_dir(self.dir.path());
        let out = run(&mut cmd);
        assert!(
            out.status.success() || out.status.code() == Some(1),
            "borg {args:?} failed"
        );
        out
    }

    /// `zfs-snap wrap -- borg create <repo>::<archive> PATHS...`, into
    /// this world's repository, run to completion.
    pub fn create(&self, archive: &str, paths: &[&Path]) -> Output {
        let repo = self.repo();
        run(self
            .cmd()
            .args([
                "wrap",
                "--",
                "borg",
                "create",
                &format!("{repo}::{archive}"),
            ])
            .args(paths))
    }

    pub fn repo(&self) -> String {
        let repo = self.dir.path().join("repo");
        if !repo.exists() {
            self.borg(&["init", "-e", "none", repo.to_str().unwrap()]);
        }
        repo.display().to_string()
    }

    /// Sorted paths in an archive.
    pub fn archive_paths(&self, archive: &str) -> Vec<String> {
        self.archive_paths_in(&self.repo(), archive)
    }

    /// Sorted paths in an archive of another repository.
    pub fn archive_paths_in(&self, repo: &str, archive: &str) -> Vec<String> {
        let out = self.borg(&[
            "list",
            "--format",
            "{path}{NL}",
            &format!("{repo}::{archive}"),
        ]);
        let mut paths: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        paths.sort();
        paths
    }

    pub fn extract(&self, archive: &str) -> PathBuf {
        self.extract_from(&self.repo(), archive)
    }

    /// [`World::extract`] from another repository.
    pub fn extract_from(&self, repo: &str, archive: &str) -> PathBuf {
        let dest = self.dir.path().join(format!("extract-{archive}"));
        fs::create_dir_all(&dest).unwrap();
        let mut cmd = Command::new("borg");
        cmd.args(["extract", &format!("{repo}::{archive}")])
            .env("BORG_PASSPHRASE", "")
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_BASE_DIR", self.dir.path().join("borg-home"))
            .current_dir(&dest);
        assert!(run(&mut cmd).status.success());
        dest
    }
}

/// An archive path of a live absolute path (borg strips the leading `/`).
pub fn archived(path: &Path) -> String {
    path.display()
        .to_string()
        .trim_start_matches('/')
        .to_owned()
}

impl World {
    /// How many `zfs snapshot` calls the fake saw.
    pub fn snapshot_calls(&self) -> usize {
        self.calls()
            .lines()
            .filter(|l| l.starts_with("zfs snapshot"))
            .count()
    }
}
