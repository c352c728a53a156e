//! vm-tests: runs zfs-snap against real OpenZFS in a QEMU guest (TCG), on machines
//! that have no ZFS of their own. See docs/vm-tests.md.

mod bench;
mod image;
mod util;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::util::{fmt_dur, show, workspace_root};
use crate::vm::{Share, VmOpts};

const SMOKE_SH: &str = include_str!("guest/smoke.sh");
const DEMO_SH: &str = include_str!("guest/demo.sh");

#[derive(Parser)]
#[command(
    name = "vm-tests",
    about = "Real-ZFS tests for zfs-snap in a QEMU guest"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or reuse from the cache) the guest kernel, OpenZFS modules and rootfs.
    BuildImage {
        /// Rebuild every stage even when the cache has it.
        #[arg(long)]
        force: bool,
    },
    /// Boot the guest and run one executable in it (as root); exit with its exit code.
    ///
    /// EXE is copied into the share when it is a file on this machine; otherwise it
    /// is run as a command of the guest (e.g. `vm-tests run -- zpool version`).
    Run {
        #[command(flatten)]
        vm: VmArgs,
        /// A zfs-snap binary to stage as /share/bin/zfs-snap (sets ZFS_SNAP_BIN).
        #[arg(long, value_name = "PATH")]
        zfs_snap: Option<PathBuf>,
        /// Extra environment for the guest command (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The executable (and its arguments).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The CI entry: image, `cargo build -p hook-bin`, the integration tests built
    /// with `cargo test --no-run`, all run in one guest. Extra args go to every test
    /// executable (after `--test-threads=2`), e.g. a test name filter.
    Test {
        #[command(flatten)]
        vm: VmArgs,
        /// The package whose test executables run in the guest.
        #[arg(long, default_value = "integration")]
        package: String,
        /// Skip the guest self-check (pool, snapshot, borg, borgmatic) before the tests.
        #[arg(long)]
        no_smoke: bool,
        /// Boot only this guest: `plain` (the pools-on-file-vdevs guest) or
        /// `seed` (the seed's host: root on ZFS, systemd).
        #[arg(long, value_name = "GUEST")]
        only: Option<Guest>,
        /// Tests run at a time in the plain guest (each test its own process;
        /// the systemd guest's run one at a time).
        #[arg(long, default_value_t = 3, value_name = "N")]
        jobs: usize,
        /// Arguments for every test executable.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// Check the guest: a pool on a file vdev, snapshot, snapshot mount, borg, borgmatic.
    Smoke {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Show zfs-snap at work on a loopback pool (builds hook-bin, boots the guest).
    Demo {
        #[command(flatten)]
        vm: VmArgs,
        /// Use this zfs-snap binary instead of building hook-bin.
        #[arg(long, value_name = "PATH")]
        zfs_snap: Option<PathBuf>,
    },
    /// Measure zfs-snap against borgmatic's ZFS hook and the floor in one guest;
    /// writes docs/benchmarks.md (docs/benchmarks.md says what is measured and how).
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Guest {
    Plain,
    Seed,
}

#[derive(Args, Clone)]
struct VmArgs {
    /// Overall limit for the guest, boot included; qemu is killed after it
    /// [default: 3000 for test, 3600 for bench, 600 otherwise].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Guest memory [default: 6144 for bench, 3072 otherwise].
    #[arg(long, value_name = "MB")]
    memory: Option<u32>,
    /// Size limit of the guest's /var/tmp tmpfs, where file vdevs and borg
    /// repositories live [default: 5G for bench, 2G otherwise].
    #[arg(long, value_name = "SIZE")]
    vartmp: Option<String>,
}

/// What a command gives its guest unless told otherwise.
struct VmDefaults {
    timeout_secs: u64,
    memory_mb: u32,
    vartmp: &'static str,
}

impl VmDefaults {
    const fn with_timeout(timeout_secs: u64) -> Self {
        VmDefaults {
            timeout_secs,
            memory_mb: 3072,
            vartmp: "2G",
        }
    }
}

impl VmArgs {
    fn opts(&self, default_timeout: u64) -> VmOpts {
        self.opts_with(VmDefaults::with_timeout(default_timeout))
    }

    fn opts_with(&self, defaults: VmDefaults) -> VmOpts {
        VmOpts {
            timeout: Duration::from_secs(self.timeout.unwrap_or(defaults.timeout_secs)),
            memory_mb: self.memory.unwrap_or(defaults.memory_mb),
            vartmp: self.vartmp.clone().unwrap_or(defaults.vartmp.into()),
            systemd: false,
            seed_host: false,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vm-tests: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<i32> {
    let t0 = Instant::now();
    let code = match cli.command {
        Cmd::BuildImage { force } => {
            let img = image::ensure(force)?;
            println!("kernel: {}", img.kernel.display());
            println!("initrd: {}", img.initrd.display());
            0
        }
        Cmd::Run {
            vm,
            zfs_snap,
            env,
            command,
        } => {
            let img = image::ensure(false)?;
            let mut share = Share::new()?;
            if let Some(p) = zfs_snap {
                share.add_zfs_snap(&p)?;
            }
            for kv in &env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv}: expected KEY=VALUE"))?;
                share.set_env(k, v);
            }
            let mut argv = command;
            let exe = Path::new(&argv[0]);
            if exe.is_file() {
                argv[0] = share.add_file(exe, None)?;
            }
            let label = argv[0].clone();
            share.add_command(&label, argv);
            vm::boot(&img, &share, &vm.opts(600))?
        }
        Cmd::Test {
            vm,
            package,
            no_smoke,
            only,
            jobs,
            test_args,
        } => test(&vm, &package, no_smoke, only, jobs, &test_args)?,
        Cmd::Smoke { vm } => {
            let img = image::ensure(false)?;
            let mut share = Share::new()?;
            let s = share.add_text("smoke.sh", SMOKE_SH, true)?;
            share.add_command("smoke", vec![s]);
            vm::boot(&img, &share, &vm.opts(600))?
        }
        Cmd::Demo { vm, zfs_snap } => {
            let img = image::ensure(false)?;
            let bin = match zfs_snap {
                Some(p) => p,
                None => build_zfs_snap()?,
            };
            let mut share = Share::new()?;
            share.add_zfs_snap(&bin)?;
            let s = share.add_text("demo.sh", DEMO_SH, true)?;
            share.add_command("demo", vec![s]);
            vm::boot(&img, &share, &vm.opts(600))?
        }
        Cmd::Bench(args) => bench::bench(&args)?,
    };
    eprintln!("vm-tests: total {}", fmt_dur(t0.elapsed()));
    Ok(code)
}

fn cargo() -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// `cargo build -p hook-bin --features libzetta` (so the guest can run both
/// backends); returns target/debug/zfs-snap.
fn build_zfs_snap() -> Result<PathBuf> {
    util::step("cargo build -p hook-bin --features libzetta", || {
        util::run(cargo().args(["build", "-p", "hook-bin", "--features", "libzetta"]))
    })?;
    let bin = util::target_dir().join("debug/zfs-snap");
    if !bin.is_file() {
        bail!(
            "{} was not built (is hook-bin's binary called zfs-snap?)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `cargo test -p PACKAGE --no-run`: the test executables, from cargo's JSON messages.
fn build_tests(package: &str) -> Result<Vec<PathBuf>> {
    util::step(&format!("cargo test -p {package} --no-run"), || {
        let mut c = cargo();
        c.args([
            "test",
            "-p",
            package,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let out = c
            .output()
            .with_context(|| format!("cannot run {}", show(&c)))?;
        if !out.status.success() {
            bail!("`{}` failed: {}", show(&c), out.status);
        }
        let mut exes = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true {
                if let Some(exe) = msg["executable"].as_str() {
                    exes.push(PathBuf::from(exe));
                }
            }
        }
        Ok(exes)
    })
}

/// Scenarios 1, 3 and 4 of the "Real OpenZFS" suite (snapshot, nested
/// datasets, tags: discovery parses the zfs command's output), run on both
/// backends (test-name filters; an executable without them runs none).
/// Failure, SIGTERM and SIGKILL recovery on the command backend are
/// faults.rs's: it fails, kills and terminates a command-backend run at
/// every call, and its next runs alternate between the backends.
const COMMAND_BACKEND_TESTS: &[&str] = &[
    "data_changed_after_the_snapshot_is_not_archived",
    "nested_datasets_are_followed_unless_one_file_system",
    "tagged_datasets_are_backed_up_whole_inherited_tags_count",
];

/// Executables whose tests take longest, in that order: their jobs start
/// first so that the last jobs to end are short ones.
const SLOW_FIRST: &[&str] = &["faults", "same_archive", "patterns", "lifecycle", "basics"];

fn slow_first(label: &str) -> usize {
    SLOW_FIRST
        .iter()
        .position(|s| label.starts_with(&format!("{s}-")))
        .unwrap_or(SLOW_FIRST.len())
}

/// One job per test of `exes` (each test its own process); the core
/// scenarios a second time on the zfs command backend, after the others.
fn add_test_jobs(share: &mut Share, exes: &[&PathBuf], test_args: &[String]) -> Result<()> {
    let mut backend_jobs = Vec::new();
    for exe in exes {
        let g = share.add_file(exe, None)?;
        let label = exe.file_name().unwrap().to_string_lossy().into_owned();
        let short = label.rsplit_once('-').map_or(label.as_str(), |(s, _)| s);
        for name in list_tests(exe, test_args)? {
            let mut argv = vec![
                g.clone(),
                "--exact".into(),
                name.clone(),
                "--test-threads=1".into(),
            ];
            argv.extend(test_args.iter().cloned());
            share.add_job(&format!("{short}::{name}"), argv);
            // The first pass runs with the default backend, which in the
            // guest is libzetta (plain `zfs`, libzfs_core opens); the core
            // scenarios run once more on the zfs command backend.
            if test_args.is_empty() && COMMAND_BACKEND_TESTS.contains(&name.as_str()) {
                backend_jobs.push((
                    format!("{short}::{name} (command backend)"),
                    vec![
                        "env".into(),
                        "ZFS_SNAP_BACKEND=command".into(),
                        g.clone(),
                        "--exact".into(),
                        name,
                        "--test-threads=1".into(),
                    ],
                ));
            }
        }
    }
    for (label, argv) in backend_jobs {
        share.add_job(&label, argv);
    }
    Ok(())
}

/// The tests of a test executable that `args` (a name filter, say) select,
/// from its own `--list`.
fn list_tests(exe: &Path, args: &[String]) -> Result<Vec<String>> {
    let mut c = std::process::Command::new(exe);
    c.args(["--list", "--format", "terse"]).args(args);
    let out = c
        .output()
        .with_context(|| format!("cannot run {}", show(&c)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", show(&c), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// Test executables whose name starts with one of these run in the seed's
/// host: a guest with its root file system on ZFS that boots systemd as
/// PID 1 (one boot of their own, one test at a time); the others in the
/// plain guest.
const SEED_HOST_TESTS: &[&str] = &["systemd", "seedhost"];

fn test(
    vm: &VmArgs,
    package: &str,
    no_smoke: bool,
    only: Option<Guest>,
    jobs: usize,
    test_args: &[String],
) -> Result<i32> {
    let img = image::ensure(false)?;
    let bin = build_zfs_snap()?;
    let exes = build_tests(package)?;
    if exes.is_empty() {
        eprintln!("vm-tests: warning: package {package} has no test executables");
    }
    let label_of = |exe: &PathBuf| exe.file_name().unwrap().to_string_lossy().into_owned();
    let starts = |exe: &&PathBuf, names: &[&str]| {
        let label = label_of(exe);
        names.iter().any(|p| label.starts_with(&format!("{p}-")))
    };
    let (mut systemd_exes, mut plain_exes): (Vec<&PathBuf>, Vec<&PathBuf>) =
        exes.iter().partition(|e| starts(e, SEED_HOST_TESTS));
    match only {
        Some(Guest::Plain) => systemd_exes.clear(),
        Some(Guest::Seed) => plain_exes.clear(),
        None => {}
    }

    let mut share = Share::new()?;
    share.add_zfs_snap(&bin)?;
    if !no_smoke {
        let s = share.add_text("smoke.sh", SMOKE_SH, true)?;
        share.add_command("smoke", vec!["env".into(), "SMOKE_QUICK=1".into(), s]);
    }
    // One job per test, longest first (roughly), a few at a time: a test
    // mostly waits on one Python borg at a time, so one alone leaves the
    // guest's second CPU idle.
    plain_exes.sort_by_key(|e| slow_first(&label_of(e)));
    add_test_jobs(&mut share, &plain_exes, test_args)?;
    share.set_parallel(jobs);
    let (mut expected, mut code, mut results) = if only == Some(Guest::Seed) {
        (0, 0, Vec::new())
    } else {
        let code = vm::boot(&img, &share, &vm.opts(3000))?;
        (share.expected(), code, share.results())
    };

    if !systemd_exes.is_empty() {
        let mut share = Share::new_named("systemd")?;
        share.add_zfs_snap(&bin)?;
        for exe in &systemd_exes {
            let g = share.add_file(exe, None)?;
            // Their figures (a benchmark among them) are worth seeing.
            let mut argv = vec![
                g,
                "--test-threads=1".to_string(),
                "--show-output".to_string(),
            ];
            argv.extend(test_args.iter().cloned());
            share.add_command(&format!("{} (seed's host)", label_of(exe)), argv);
        }
        expected += share.expected();
        let opts = VmOpts {
            systemd: true,
            seed_host: true,
            ..vm.opts_with(VmDefaults {
                // Measured: about 32 minutes under TCG on 2 cores.
                timeout_secs: 3000,
                // The root pool's vdev is in RAM too.
                memory_mb: 4096,
                vartmp: "2G",
            })
        };
        let systemd_code = vm::boot(&img, &share, &opts)?;
        results.extend(share.results());
        if code == 0 {
            code = systemd_code;
        }
    }
    eprintln!("vm-tests: summary:");
    for (rc, label) in &results {
        eprintln!(
            "vm-tests:   {} {label}{}",
            if *rc == 0 { "PASS" } else { "FAIL" },
            if *rc == 0 {
                String::new()
            } else {
                format!(" (exit {rc})")
            }
        );
    }
    if results.len() < expected && code == 0 {
        eprintln!(
            "vm-tests: only {} of {expected} executables reported a result",
            results.len()
        );
        return Ok(vm::EXIT_NO_RESULT);
    }
    Ok(code)
}
