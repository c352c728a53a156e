//! Boots the guest under QEMU (TCG) with a 9p share, streams its console, enforces
//! a timeout and returns the exit code the guest wrote into the share.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::image::Image;
use crate::util::{fmt_dur, link_or_copy, sh_quote, show, target_dir};

/// Exit code when the guest ran out of time (like timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code when the guest never reported a result (crashed, panicked, ...).
pub const EXIT_NO_RESULT: i32 = 125;

pub const SHARE_TAG: &str = "share";
pub const GUEST_BIN: &str = "/share/bin";

#[derive(Debug, Clone)]
pub struct VmOpts {
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Size of the /var/tmp tmpfs in the guest (file vdevs go there).
    pub vartmp: String,
    /// Boot systemd as PID 1 (`vmtests.systemd=1`); the job runs as a unit.
    pub systemd: bool,
    /// The seed's host (`vmtests.seedhost=1`, with `systemd`): the guest's
    /// init makes a root pool, copies the rootfs in and switches root to it.
    pub seed_host: bool,
}

/// A prepared share directory: executables in bin/, the job in .vm/.
pub struct Share {
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    commands: Vec<(String, Vec<String>)>,
    /// Run after `commands`, at most `parallel` at a time.
    jobs: Vec<(String, Vec<String>)>,
    parallel: usize,
}

impl Share {
    /// Creates an empty `<target>/vm-tests/share-<pid>` (per process, so that a run
    /// waiting for the VM lock never disturbs the share of the one running), and
    /// removes the shares of processes that are gone.
    pub fn new() -> Result<Share> {
        Share::new_named("")
    }

    /// [`Share::new`], as `share-<pid>-<name>`: a second share of the same
    /// process (the systemd guest's).
    pub fn new_named(name: &str) -> Result<Share> {
        let base = target_dir().join("vm-tests");
        fs::create_dir_all(&base)?;
        for e in fs::read_dir(&base)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("share-")
                .map(|rest| rest.split('-').next().unwrap_or(rest))
            {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = match name {
            "" => base.join(format!("share-{}", std::process::id())),
            name => base.join(format!("share-{}-{name}", std::process::id())),
        };
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("bin"))?;
        fs::create_dir_all(dir.join(".vm"))?;
        let mut s = Share {
            dir,
            env: Vec::new(),
            commands: Vec::new(),
            jobs: Vec::new(),
            parallel: 1,
        };
        s.set_env(
            "PATH",
            &format!("{GUEST_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        );
        // What may not skip there (integration's `skip`): what the image
        // has (image.rs); systemd only in the guest that boots it. Not
        // prometheus: the image has none.
        s.set_env(
            "ZFS_SNAP_REQUIRE",
            if name == "systemd" {
                "zfs,borg,borgmatic,systemd,seedhost"
            } else {
                "zfs,borg,borgmatic"
            },
        );
        s.set_env("RUST_BACKTRACE", "1");
        s.set_env("HOME", "/root");
        s.set_env("TERM", "dumb");
        // The console is a tty; keep colour codes out of the logs.
        s.set_env("NO_COLOR", "1");
        s.set_env("TMPDIR", "/tmp");
        Ok(s)
    }

    /// Copies (hard-links) a host file into the share's bin/; returns its guest path.
    pub fn add_file(&mut self, host: &Path, name: Option<&str>) -> Result<String> {
        let name = match name {
            Some(n) => n.to_string(),
            None => host
                .file_name()
                .context("executable path has no file name")?
                .to_string_lossy()
                .into_owned(),
        };
        if !host.is_file() {
            bail!("{} is not a file", host.display());
        }
        link_or_copy(host, &self.dir.join("bin").join(&name))?;
        Ok(format!("{GUEST_BIN}/{name}"))
    }

    pub fn add_text(&mut self, name: &str, text: &str, executable: bool) -> Result<String> {
        let p = self.dir.join("bin").join(name);
        fs::write(&p, text)?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        }
        Ok(format!("{GUEST_BIN}/{name}"))
    }

    /// Stages the zfs-snap binary under test and points ZFS_SNAP_BIN at it.
    pub fn add_zfs_snap(&mut self, host: &Path) -> Result<()> {
        let g = self.add_file(host, Some("zfs-snap"))?;
        self.set_env("ZFS_SNAP_BIN", &g);
        Ok(())
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(kk, _)| kk != k);
        self.env.push((k.to_string(), v.to_string()));
    }

    pub fn add_command(&mut self, label: &str, argv: Vec<String>) {
        self.commands.push((label.to_string(), argv));
    }

    /// A command run after every [`Share::add_command`] one, alongside the
    /// other jobs, at most [`Share::set_parallel`] at a time; its output is
    /// printed whole when it ends.
    pub fn add_job(&mut self, label: &str, argv: Vec<String>) {
        self.jobs.push((label.to_string(), argv));
    }

    pub fn set_parallel(&mut self, jobs: usize) {
        self.parallel = jobs.max(1);
    }

    /// Commands and jobs the guest will report on.
    pub fn expected(&self) -> usize {
        self.commands.len() + self.jobs.len()
    }

    fn write_job(&self) -> Result<()> {
        let mut s = String::from(
            "#!/bin/bash\n# Written by vm-tests for one boot: runs the commands, records exit codes.\n",
        );
        for (k, v) in &self.env {
            s.push_str(&format!("export {k}={}\n", sh_quote(v)));
        }
        s.push_str(&format!("vm_parallel={}\n", self.parallel));
        s.push_str(
            r#"cd /tmp
results=/share/.vm/results
: >"$results"
echo "vm-tests guest: up $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r), $(zfs version 2>/dev/null | head -n1), $vm_parallel jobs at a time"
vm_run() {
    label=$1; shift
    echo "vm-tests guest: >>> $label"
    start=$(cut -d' ' -f1 /proc/uptime)
    "$@"
    rc=$?
    end=$(cut -d' ' -f1 /proc/uptime)
    echo "vm-tests guest: <<< $label: exit $rc ($start s -> $end s)"
    echo "$rc $label" >>"$results"
}
# One job in the background: its output kept, then printed whole (one
# job at a time) when it ends.
vm_job() {
    n=$1; label=$2; shift 2
    log=/tmp/vm-job-$n.log
    start=$(cut -d' ' -f1 /proc/uptime)
    "$@" >"$log" 2>&1 </dev/null
    rc=$?
    end=$(cut -d' ' -f1 /proc/uptime)
    {
        flock 9
        echo "vm-tests guest: >>> $label"
        cat "$log"
        echo "vm-tests guest: <<< $label: exit $rc ($start s -> $end s)"
        echo "$rc $label" >>"$results"
    } 9>>/tmp/vm-job.lock
    rm -f "$log"
}
vm_running=0
vm_spawn() {
    if [ "$vm_running" -ge "$vm_parallel" ]; then
        wait -n
        vm_running=$((vm_running - 1))
    fi
    vm_job "$@" &
    vm_running=$((vm_running + 1))
}
"#,
        );
        for (label, argv) in &self.commands {
            let q: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
            s.push_str(&format!("vm_run {} {}\n", sh_quote(label), q.join(" ")));
        }
        for (n, (label, argv)) in self.jobs.iter().enumerate() {
            let q: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
            s.push_str(&format!(
                "vm_spawn {n} {} {}\n",
                sh_quote(label),
                q.join(" ")
            ));
        }
        s.push_str(
            r#"wait
vm_status=$(awk '$1 != 0 { s = $1 } END { print s + 0 }' "$results")
echo "$vm_status" >/share/.vm/exit-code
sync
"#,
        );
        let p = self.dir.join(".vm/run.sh");
        fs::write(&p, s)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// `(exit code, label)` for each command the guest finished.
    pub fn results(&self) -> Vec<(i32, String)> {
        fs::read_to_string(self.dir.join(".vm/results"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (rc, label) = l.split_once(' ')?;
                Some((rc.parse().ok()?, label.to_string()))
            })
            .collect()
    }
}

fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn qemu_command(image: &Image, share: &Path, opts: &VmOpts) -> Command {
    let mut c = Command::new(
        std::env::var("ZFS_SNAP_VM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
    );
    let append = [
        "console=ttyS0",
        "quiet",
        "loglevel=3",
        "panic=-1",
        "rdinit=/init",
        // A throw-away test guest: no Spectre mitigations (retpolines cost
        // emulated time on every indirect call; about 10% here).
        "mitigations=off",
        // Keep ZFS's cache small: guest memory also holds the rootfs and /var/tmp.
        "zfs.zfs_arc_max=268435456",
        &format!("vmtests.vartmp={}", opts.vartmp),
        // systemd's own status lines (a unit a test makes fail on purpose)
        // would mix with the tests' output on the console.
        if opts.systemd {
            "vmtests.systemd=1 systemd.show_status=0"
        } else {
            ""
        },
        if opts.seed_host {
            "vmtests.seedhost=1"
        } else {
            ""
        },
    ]
    .join(" ");
    // Experiments: more kernel arguments, another CPU model.
    let append = match std::env::var("ZFS_SNAP_VM_APPEND") {
        Ok(more) if !more.is_empty() => format!("{append} {more}"),
        _ => append,
    };
    if let Some(cpu) = std::env::var("ZFS_SNAP_VM_CPU")
        .ok()
        .filter(|c| !c.is_empty())
    {
        c.args(["-cpu", &cpu]);
    }
    c.args(["-accel", "tcg", "-smp", "2", "-m"])
        .arg(opts.memory_mb.to_string())
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        .arg(append)
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag={SHARE_TAG},security_model=none,id={SHARE_TAG}",
            share.display()
        ));
    c
}

/// Boots the guest for the job in `share`; returns the guest's exit code.
pub fn boot(image: &Image, share: &Share, opts: &VmOpts) -> Result<i32> {
    share.write_job()?;
    let out_dir = target_dir().join("vm-tests");
    fs::create_dir_all(&out_dir)?;
    // One VM at a time (2 cores; TCG is CPU-bound).
    let lock = fs::File::create(out_dir.join(".vm.lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("vm-tests: another guest is running; waiting for it");
        lock.lock()?;
    }
    prune_logs(&out_dir, 30);
    let log_path = out_dir.join(format!("serial-{}-{}.log", timestamp(), std::process::id()));
    let log = Arc::new(Mutex::new(
        fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?,
    ));

    let mut cmd = qemu_command(image, &share.dir, opts);
    writeln!(log.lock().unwrap(), "# {}", show(&cmd))?;
    eprintln!(
        "vm-tests: booting {} (TCG, {} MiB, timeout {}s); serial log {}",
        image.key,
        opts.memory_mb,
        opts.timeout.as_secs(),
        log_path.display()
    );
    let t0 = Instant::now();
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => bail!(crate::util::cannot_start(&cmd, &e)),
    };

    let mut pumps = Vec::new();
    for (stream, to_stderr) in [
        (
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            false,
        ),
        (
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            true,
        ),
    ] {
        let log = Arc::clone(&log);
        pumps.push(std::thread::spawn(move || pump(stream, to_stderr, &log)));
    }

    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > opts.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for p in pumps {
        let _ = p.join();
    }
    let elapsed = t0.elapsed();
    let _ = log.lock().unwrap().flush();

    if timed_out {
        let running = share
            .commands
            .get(share.results().len())
            .map(|(label, _)| format!(" while running `{label}`"))
            .unwrap_or_default();
        eprintln!(
            "vm-tests: TIMEOUT: the guest did not finish within {}s{running}; qemu was killed.\nvm-tests: serial log: {}",
            opts.timeout.as_secs(),
            log_path.display()
        );
        return Ok(EXIT_TIMEOUT);
    }
    let code = fs::read_to_string(share.dir.join(".vm/exit-code"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match code {
        Some(c) => {
            eprintln!(
                "vm-tests: guest finished in {} with exit code {c}",
                fmt_dur(elapsed)
            );
            if c != 0 {
                eprintln!("vm-tests: serial log: {}", log_path.display());
            }
            Ok(c)
        }
        None => {
            eprintln!(
                "vm-tests: the guest stopped after {} without reporting an exit code (qemu: {status}); it crashed or the job never ran.\nvm-tests: serial log: {}",
                fmt_dur(elapsed),
                log_path.display()
            );
            Ok(EXIT_NO_RESULT)
        }
    }
}

/// Keeps the newest `keep` serial logs.
fn prune_logs(dir: &Path, keep: usize) {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("serial-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort(); // names sort by time
    let n = logs.len().saturating_sub(keep);
    for p in &logs[..n] {
        let _ = fs::remove_file(p);
    }
}

/// Copies the guest console to our stdout (or stderr) and the log, as it comes.
fn pump(mut from: Box<dyn Read + Send>, to_stderr: bool, log: &Mutex<fs::File>) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The serial line is a tty: drop the carriage returns it adds.
        let chunk: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
        if to_stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&chunk);
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&chunk);
            let _ = o.flush();
        }
        let _ = log.lock().unwrap().write_all(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_looks_like_utc_date_time() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert_eq!(&t[8..9], "-");
        assert!(t[..8].chars().all(|c| c.is_ascii_digit()));
        assert!(t.starts_with("20"));
    }

    #[test]
    fn qemu_never_uses_kvm() {
        let img = Image {
            kernel: "/k".into(),
            initrd: "/i".into(),
            key: "image-x".into(),
        };
        let opts = VmOpts {
            timeout: Duration::from_secs(1),
            memory_mb: 2048,
            vartmp: "1G".into(),
            systemd: false,
            seed_host: false,
        };
        let c = show(&qemu_command(&img, Path::new("/s"), &opts));
        assert!(c.contains("-accel tcg"), "{c}");
        assert!(!c.contains("kvm"), "{c}");
        assert!(c.contains("-no-reboot"), "{c}");
        assert!(c.contains("security_model=none"), "{c}");
        assert!(c.contains("vmtests.vartmp=1G"), "{c}");
    }
}
