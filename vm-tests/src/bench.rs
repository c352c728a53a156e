//! `vm-tests bench`: zfs-snap (both backends) against borgmatic's own ZFS hook and
//! against the floor, in one guest boot; writes docs/benchmarks.md.
//!
//! The guest half is `guest/bench.sh` (it records raw data only); everything here
//! reads that data: run times, borg's own times (a timing wrapper every tool calls
//! borg through), zfs-snap's `--timings-json`, the floor's phases and BSD process
//! accounting records (acct(2), v3) for the process counts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const BENCH_SH: &str = include_str!("guest/bench.sh");

/// Everything after this line of docs/benchmarks.md is hand-written and kept.
const NOTES_MARKER: &str =
    "<!-- notes: written by hand below this line; `vm-tests bench` keeps them -->";

pub const COMMAND: &str = "cargo run -p vm-tests -- bench";

/// One measured run (a line of runs.tsv).
#[derive(Debug, Clone)]
struct Run {
    id: String,
    pid: u32,
    start: f64,
    end: f64,
    rc: i32,
}

/// One borg call through the timing wrapper (a line of borg-calls.tsv).
#[derive(Debug, Clone)]
struct BorgCall {
    pid: u32,
    ppid: u32,
    start: f64,
    end: f64,
    parent_hwm_kb: Option<u64>,
    args: String,
}

impl BorgCall {
    /// The real `borg create`; borgmatic's `create --dry-run --list` (its search for
    /// special files) is borgmatic's own work, counted as overhead.
    fn is_create(&self) -> bool {
        let mut words = self.args.split_whitespace();
        words.clone().any(|a| a == "create") && !words.any(|a| a == "--dry-run")
    }
}

/// One process accounting record (struct acct_v3).
#[derive(Debug, Clone)]
struct Acct {
    pid: u32,
    ppid: u32,
    btime: u32,
    comm: String,
}

fn parse_acct(bytes: &[u8]) -> Vec<Acct> {
    let u32_at = |r: &[u8], o: usize| u32::from_le_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
    bytes
        .chunks_exact(64)
        .filter(|r| r[1] == 3)
        .map(|r| {
            let comm = &r[48..64];
            let len = comm.iter().position(|&b| b == 0).unwrap_or(16);
            Acct {
                pid: u32_at(r, 16),
                ppid: u32_at(r, 20),
                btime: u32_at(r, 24),
                comm: String::from_utf8_lossy(&comm[..len]).into_owned(),
            }
        })
        .collect()
}

/// What one run cost.
#[derive(Debug, Clone, Default)]
struct Measured {
    wall_ms: f64,
    borg_ms: f64,
    /// wall - borg create (for the floor: its own phases, start-up excluded).
    overhead_ms: f64,
    /// Processes the tool spawned (borg create and the timing wrapper not counted).
    processes: Option<usize>,
    by_comm: BTreeMap<String, usize>,
    /// zfs-snap's --timings-json or the floor's phases.
    phases: BTreeMap<String, f64>,
    self_reported_processes: Option<usize>,
    parent_hwm_kb: Option<u64>,
    rc: i32,
}

struct Data {
    dir: PathBuf,
    guest: BTreeMap<String, String>,
    runs: Vec<Run>,
    calls: Vec<BorgCall>,
    acct: Vec<Acct>,
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let p = dir.join(name);
    fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
}

fn tsv(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').collect())
}

impl Data {
    fn load(dir: &Path) -> Result<Data> {
        let guest = read(dir, "guest.txt")?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let mut runs = Vec::new();
        for f in tsv(&read(dir, "runs.tsv")?) {
            if f.len() < 5 {
                continue;
            }
            runs.push(Run {
                id: f[0].to_string(),
                pid: f[1].parse()?,
                start: f[2].parse()?,
                end: f[3].parse()?,
                rc: f[4].parse()?,
            });
        }
        let mut calls = Vec::new();
        for f in tsv(&read(dir, "borg-calls.tsv").unwrap_or_default()) {
            if f.len() < 6 {
                continue;
            }
            calls.push(BorgCall {
                pid: f[0].parse()?,
                ppid: f[1].parse()?,
                start: f[2].parse()?,
                end: f[3].parse()?,
                parent_hwm_kb: f[4].parse().ok(),
                args: f[5].to_string(),
            });
        }
        let acct = fs::read(dir.join("pacct"))
            .map(|b| parse_acct(&b))
            .unwrap_or_default();
        Ok(Data {
            dir: dir.to_path_buf(),
            guest,
            runs,
            calls,
            acct,
        })
    }

    fn run(&self, id: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// Processes below `run` (pid reuse guarded by start time), without the run
    /// itself, the timing wrapper, and borg create's subtree.
    fn processes(&self, run: &Run) -> Option<(usize, BTreeMap<String, usize>)> {
        if self.acct.is_empty() {
            return None;
        }
        let lo = run.start.floor() as u32 - 1;
        let hi = run.end.ceil() as u32 + 1;
        let mut children: HashMap<u32, Vec<&Acct>> = HashMap::new();
        for a in self.acct.iter().filter(|a| (lo..=hi).contains(&a.btime)) {
            children.entry(a.ppid).or_default().push(a);
        }
        let create_wrappers: Vec<u32> = self
            .calls
            .iter()
            .filter(|c| c.ppid == run.pid && c.is_create())
            .map(|c| c.pid)
            .collect();
        let mut count = 0;
        let mut by_comm = BTreeMap::new();
        let mut queue = vec![run.pid];
        while let Some(p) = queue.pop() {
            for a in children.get(&p).into_iter().flatten() {
                if create_wrappers.contains(&a.pid) {
                    continue;
                }
                queue.push(a.pid);
                if a.comm == "borg-timed" {
                    continue;
                }
                count += 1;
                *by_comm.entry(a.comm.clone()).or_insert(0) += 1;
            }
        }
        Some((count, by_comm))
    }

    fn measure(&self, id: &str) -> Option<Measured> {
        let run = self.run(id)?;
        let wall_ms = (run.end - run.start) * 1000.0;
        let create: Vec<&BorgCall> = self
            .calls
            .iter()
            .filter(|c| c.ppid == run.pid && c.is_create() && c.start >= run.start - 1.0)
            .collect();
        let borg_ms: f64 = create.iter().map(|c| (c.end - c.start) * 1000.0).sum();
        let parent_hwm_kb = create.iter().filter_map(|c| c.parent_hwm_kb).max();
        let mut phases = BTreeMap::new();
        let mut self_reported_processes = None;
        let mut overhead_ms = wall_ms - borg_ms;
        for sub in ["json", "floor"] {
            let p = self.dir.join(sub).join(format!("{id}.json"));
            if let Ok(text) = fs::read_to_string(&p) {
                if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&text) {
                    for (k, v) in m {
                        if let Some(x) = v.as_f64() {
                            phases.insert(k, x);
                        }
                    }
                }
            }
        }
        if let Some(p) = phases.get("processes") {
            self_reported_processes = Some(*p as usize);
        }
        if id.starts_with("floor") {
            overhead_ms = phases.get("total_ms").copied().unwrap_or(f64::NAN);
        }
        let (processes, by_comm) = match self.processes(run) {
            Some((n, m)) => (Some(n), m),
            None => (None, BTreeMap::new()),
        };
        Some(Measured {
            wall_ms,
            borg_ms,
            overhead_ms,
            processes,
            by_comm,
            phases,
            self_reported_processes,
            parent_hwm_kb,
            rc: run.rc,
        })
    }

    /// All repetitions of `<tool>-<n>-<rep>`.
    fn reps(&self, tool: &str, n: u32) -> Vec<Measured> {
        let prefix = format!("{tool}-{n}-");
        self.runs
            .iter()
            .filter(|r| {
                r.id.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
            })
            .filter_map(|r| self.measure(&r.id))
            // A failed run measures nothing (it is listed under "Every run").
            .filter(|m| m.rc == 0)
            .collect()
    }

    fn ns(&self) -> Vec<u32> {
        let mut ns: Vec<u32> = self
            .runs
            .iter()
            .filter_map(|r| {
                let rest = r.id.strip_prefix("floor-")?;
                rest.split('-').next()?.parse().ok()
            })
            .collect();
        ns.sort_unstable();
        ns.dedup();
        ns
    }

    /// Datasets snapshotted at N (the pool root plus N children).
    fn datasets(&self, n: u32) -> usize {
        read(&self.dir, &format!("datasets-{n}.tsv"))
            .map(|t| t.lines().filter(|l| !l.is_empty()).count())
            .unwrap_or(n as usize + 1)
    }

    fn mem_peak_kb(&self, id: &str) -> Option<u64> {
        let sampled = read(&self.dir, &format!("mem/{id}.txt"))
            .ok()
            .and_then(|t| t.lines().filter_map(|l| l.trim().parse::<u64>().ok()).max());
        let wrapped = self.measure(id).and_then(|m| m.parent_hwm_kb);
        sampled.into_iter().chain(wrapped).max()
    }

    /// (A, M, U, other) statuses in a `--list --filter=AMUE` output.
    fn statuses(&self, name: &str) -> Option<BTreeMap<char, usize>> {
        let text = read(&self.dir, name).ok()?;
        let mut m = BTreeMap::new();
        for l in text.lines() {
            // Plain `A path`, or borgmatic's --log-json `{"type": "file_status", "status": "A", ...}`.
            let status = match serde_json::from_str::<serde_json::Value>(l) {
                Ok(v) if v["type"] == "file_status" => {
                    v["status"].as_str().and_then(|s| s.chars().next())
                }
                Ok(_) => None,
                Err(_) => {
                    let mut c = l.chars();
                    match (c.next(), c.next()) {
                        (Some(s), Some(' ')) => Some(s),
                        _ => None,
                    }
                }
            };
            if let Some(s) = status.filter(|s| "AMUE".contains(*s)) {
                *m.entry(s).or_insert(0) += 1;
            }
        }
        Some(m)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Median of one field over repetitions.
fn med(ms: &[Measured], f: impl Fn(&Measured) -> f64) -> f64 {
    median(ms.iter().map(f).collect())
}

fn phase(m: &Measured, k: &str) -> f64 {
    m.phases.get(k).copied().unwrap_or(f64::NAN)
}

fn secs(ms: f64) -> String {
    if !ms.is_finite() {
        return "–".into();
    }
    if ms < 10_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if !a.is_finite() || !b.is_finite() || b <= 0.0 {
        return "–".into();
    }
    let r = a / b;
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

fn procs(ms: &[Measured]) -> String {
    let counts: Vec<usize> = ms.iter().filter_map(|m| m.processes).collect();
    match (counts.iter().min(), counts.iter().max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "–".into(),
    }
}

fn breakdown(m: Option<&Measured>) -> String {
    let Some(m) = m else { return "–".into() };
    if m.by_comm.is_empty() {
        return "none".into();
    }
    m.by_comm
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// docs/benchmarks.md from the raw data in `dir`.
pub fn render(dir: &Path, date: &str) -> Result<String> {
    let d = Data::load(dir)?;
    let ns = d.ns();
    if ns.is_empty() {
        bail!(
            "{}: no floor runs recorded: the guest bench did not get far",
            dir.display()
        );
    }
    let g = |k: &str| d.guest.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "# Benchmarks\n")?;
    writeln!(
        w,
        "Measured (run ended) {date} in the vm-tests guest, in one boot, by `{COMMAND}` (written by it; \
         figures as measured, nothing here is asserted by a test). Reproduce with:\n\n\
         ```sh\nsudo bash .ci/vm-image-deps.sh   # once\n{COMMAND}\n```\n"
    )?;
    writeln!(w, "## The guest\n")?;
    writeln!(
        w,
        "- QEMU **TCG emulation** (no KVM), {} vCPUs, {} MiB memory ({}); host: 2 cores shared with other work.\n\
         - Linux {}, {} / {} (zfs_arc_max {} MiB), {}, borgmatic {} ({}).\n\
         - Pool on a file vdev in tmpfs (`/var/tmp`), `atime=off`; borg repositories `-e none` in tmpfs.\n\
         - zfs-snap built `--release --features libzetta`; each tool's first run (warm-up: borg's \
         version check that zfs-snap caches, page cache) is not counted.\n\
         - Emulation makes every process start costly (python3 ~1.4 s, a `zfs` command tens of ms): \
         absolute times are far above a real machine; ratios and counts are what carry over.\n",
        g("cpus"),
        g("mem_kb").parse::<u64>().map(|k| k / 1024).unwrap_or(0),
        g("cpu_model"),
        g("kernel"),
        g("zfs"),
        g("zfs_kmod"),
        g("arc_max").parse::<u64>().map(|b| b >> 20).unwrap_or(0),
        g("borg"),
        g("borgmatic"),
        g("python"),
    )?;

    writeln!(w, "## Setup\n")?;
    writeln!(
        w,
        "One pool `bench`, mounted at `/bench`, grown to N child datasets `bench/dNNN` ({} small files each), \
         **every child tagged** `org.torsion.borgmatic:backup=auto` (borgmatic only snapshots the child \
         datasets of a source directory when they are tagged; zfs-snap snapshots them either way). \
         Source path `/bench` for every tool, so **N+1 datasets** (the pool root and N children) are \
         snapshotted and mounted per run.\n\n\
         - **zfs-snap**: `zfs-snap --backend command|libzetta --timings-json F wrap -- borg create REPO::A /bench`, with a user's defaults: each run recorded in its state directory for monitoring, `--json` added to the create (its figures; borg's own work, so inside borg create's time), no borg process of zfs-snap's own.\n\
         - **borgmatic**: `borgmatic --config C create`, config: `source_directories: [/bench]`, \
         `zfs: {{}}` (its own hook), `store_config_files: false`, same borg, repo `-e none`. \
         Also run once per N with the hook off (`borgmatic, no zfs`) to separate its fixed start-up from the hook.\n\
         - **floor**: a Python program timed from the inside (its own start-up excluded): one \
         `zfs snapshot` of all N+1 names, mount(2) of each (ctypes, same flags as zfs-snap: \
         ro,nosuid,nodev,noexec), umount2(2) of each, one `zfs destroy -r bench@name`. No discovery, no holds, no borg.\n\
         - **borg's own time**: every tool runs borg through the same wrapper (`bash`, `$EPOCHREALTIME` \
         around the real borg); **overhead = wall time of the tool − borg create's own time** \
         (borgmatic's `borg --version` and its `borg create --dry-run --list` pass, which looks for special files, are overhead: processes borgmatic spawns for itself).\n\
         - **processes**: BSD process accounting (acct(2); one record per process with pid and parent pid) \
         while the tools run; counted: every descendant of the tool, minus borg create itself and the \
         timing wrapper. Nothing is shimmed, so counting costs the tools nothing.\n\
         - Repetitions: N ≤ 10: 3, N = 100: 2, N = 500: 1 (medians shown; every run is listed at the end).\n",
        g("files_per_dataset")
    )?;

    // Overhead summary.
    writeln!(
        w,
        "## Overhead per run (median wall time minus borg's own time)\n"
    )?;
    writeln!(
        w,
        "| N | datasets | zfs-snap command | zfs-snap libzetta | borgmatic | floor | borgmatic / zfs-snap (cmd, lzc) | zfs-snap / floor (cmd, lzc) |"
    )?;
    writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for &n in &ns {
        let c = d.reps("zs-command", n);
        let l = d.reps("zs-libzetta", n);
        let b = d.reps("bm", n);
        let f = d.reps("floor", n);
        let (oc, ol, ob, of) = (
            med(&c, |m| m.overhead_ms),
            med(&l, |m| m.overhead_ms),
            med(&b, |m| m.overhead_ms),
            med(&f, |m| m.overhead_ms),
        );
        writeln!(
            w,
            "| {n} | {} | {} | {} | {} | {} | {}, {} | {}, {} |",
            d.datasets(n),
            secs(oc),
            secs(ol),
            secs(ob),
            secs(of),
            ratio(ob, oc),
            ratio(ob, ol),
            ratio(oc, of),
            ratio(ol, of)
        )?;
    }
    writeln!(w)?;

    // zfs-snap phases.
    for (tool, title) in [
        ("zs-command", "zfs-snap, command backend"),
        ("zs-libzetta", "zfs-snap, libzetta backend"),
    ] {
        writeln!(w, "## {title}: phases (`--timings-json`, medians)\n")?;
        writeln!(
            w,
            "| N | discovery | snapshot | hold | mount | teardown | phases sum | rest (start, exit, runtime root) | overhead | borg create | wall | processes (self-reported / acct) |"
        )?;
        writeln!(
            w,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for &n in &ns {
            let r = d.reps(tool, n);
            let p = |k: &'static str| med(&r, move |m| phase(m, k));
            let sum = [
                "discovery_ms",
                "snapshot_ms",
                "hold_ms",
                "mount_ms",
                "teardown_ms",
            ]
            .iter()
            .map(|k| p(k))
            .sum::<f64>();
            let overhead = med(&r, |m| m.overhead_ms);
            let selfp: Vec<String> = r
                .iter()
                .filter_map(|m| m.self_reported_processes)
                .map(|x| x.to_string())
                .collect();
            let selfp = selfp.first().cloned().unwrap_or_else(|| "–".into());
            writeln!(
                w,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {selfp} / {} |",
                secs(p("discovery_ms")),
                secs(p("snapshot_ms")),
                secs(p("hold_ms")),
                secs(p("mount_ms")),
                secs(p("teardown_ms")),
                secs(sum),
                secs(overhead - sum),
                secs(overhead),
                secs(med(&r, |m| m.borg_ms)),
                secs(med(&r, |m| m.wall_ms)),
                procs(&r)
            )?;
        }
        writeln!(w)?;
    }

    writeln!(w, "## borgmatic (its ZFS hook)\n")?;
    writeln!(
        w,
        "| N | wall | borg create | overhead | overhead without the hook | hook's share | processes | of which |"
    )?;
    writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for &n in &ns {
        let b = d.reps("bm", n);
        let nz = d.reps("bm-nozfs", n);
        let (ob, onz) = (med(&b, |m| m.overhead_ms), med(&nz, |m| m.overhead_ms));
        writeln!(
            w,
            "| {n} | {} | {} | {} | {} | {} | {} | {} |",
            secs(med(&b, |m| m.wall_ms)),
            secs(med(&b, |m| m.borg_ms)),
            secs(ob),
            secs(onz),
            secs(ob - onz),
            procs(&b),
            breakdown(b.first())
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## The floor: phases (medians)\n")?;
    writeln!(
        w,
        "| N | zfs snapshot (1 call) | mount(2) ×(N+1) | umount2(2) ×(N+1) | zfs destroy -r (1 call) | total | processes |"
    )?;
    writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for &n in &ns {
        let f = d.reps("floor", n);
        let p = |k: &'static str| med(&f, move |m| phase(m, k));
        writeln!(
            w,
            "| {n} | {} | {} | {} | {} | {} | {} |",
            secs(p("snapshot_ms")),
            secs(p("mount_ms")),
            secs(p("umount_ms")),
            secs(p("destroy_ms")),
            secs(p("total_ms")),
            procs(&f)
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## Processes per run\n")?;
    writeln!(
        w,
        "| N | zfs-snap command | zfs-snap libzetta | borgmatic | floor |"
    )?;
    writeln!(w, "|---:|---|---|---|---|")?;
    for &n in &ns {
        let cell = |tool: &str| {
            let r = d.reps(tool, n);
            format!("{} ({})", procs(&r), breakdown(r.first()))
        };
        writeln!(
            w,
            "| {n} | {} | {} | {} | {} |",
            cell("zs-command"),
            cell("zs-libzetta"),
            cell("bm"),
            cell("floor")
        )?;
    }
    writeln!(w)?;

    // Second backup.
    let sizes: BTreeMap<String, f64> = read(&d.dir, "second-sizes.tsv")
        .map(|t| {
            tsv(&t)
                .filter_map(|f| {
                    let set = f.get(1)?.rsplit('/').next()?.to_string();
                    Some((set, f.first()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let size = |set: &str| match sizes.get(set) {
        Some(b) if *b >= 1048576.0 => format!("{:.0} MiB", b / 1048576.0),
        Some(b) => format!("{:.0} KiB", b / 1024.0),
        None => "?".into(),
    };
    writeln!(
        w,
        "## Second backup of unchanged files\n\n\
         Two sets of {files} files, each in its own dataset of a second pool, each backed up, \
         nothing changed, backed up again by every tool:\n\n\
         - **tiny** (`/bench2/tiny`, {tiny} of data, `du -sb`): one line of text per file; borg's \
         per-file work (stat, xattrs, ACLs, its files cache, the item stream) is all there is to do;\n\
         - **mixed** (`/bench2/mixed`, {mixed}): sizes doubling from 1 KiB to 1 MiB (1, 2, 4, … 1024 KiB, \
         in turn), random content, so reading a file again costs what it does on a real host.\n\n\
         **borg alone** is plain `borg create` over the live path (no snapshot): the reference for \
         what borg itself needs. Every borg create ran with `--list --filter=AMUE` (added by the \
         timing wrapper, for every tool alike) to count statuses: U is a file borg found unchanged \
         in its files cache and did not read.\n",
        files = g("second_files"),
        tiny = size("tiny"),
        mixed = size("mixed"),
    )?;
    for set in ["tiny", "mixed"] {
        writeln!(w, "### {set}\n")?;
        writeln!(
            w,
            "| tool | 1st run wall | 2nd run wall | 2nd: borg create | 2nd: overhead | 2nd: unchanged (U) / listed | borgmatic / this (2nd wall) |"
        )?;
        writeln!(w, "|---|---:|---:|---:|---:|---:|---:|")?;
        let bm2 = d.measure(&format!("second-{set}-bm-2"));
        for (tool, name) in [
            ("zs-command", "zfs-snap, command"),
            ("zs-libzetta", "zfs-snap, libzetta"),
            ("bm", "borgmatic"),
            ("borg", "borg alone (live path)"),
        ] {
            let first = d.measure(&format!("second-{set}-{tool}-1"));
            let second = d.measure(&format!("second-{set}-{tool}-2"));
            let st = d.statuses(&format!("list-second-{set}-{tool}-2.txt"));
            let listed = st.as_ref().map(|m| m.values().sum::<usize>()).unwrap_or(0);
            let unchanged = st.as_ref().and_then(|m| m.get(&'U').copied()).unwrap_or(0);
            let get = |m: &Option<Measured>, f: fn(&Measured) -> f64| {
                m.as_ref().map(f).unwrap_or(f64::NAN)
            };
            writeln!(
                w,
                "| {name} | {} | {} | {} | {} | {unchanged} / {listed} | {} |",
                secs(get(&first, |m| m.wall_ms)),
                secs(get(&second, |m| m.wall_ms)),
                secs(get(&second, |m| m.borg_ms)),
                secs(get(&second, |m| m.overhead_ms)),
                ratio(get(&bm2, |m| m.wall_ms), get(&second, |m| m.wall_ms))
            )?;
        }
        writeln!(w)?;
    }

    // Memory.
    let mem_n = ns.iter().copied().max().unwrap_or(0);
    writeln!(w, "## Peak memory at N = {mem_n}\n")?;
    writeln!(
        w,
        "VmHWM of the zfs-snap process (read from `/proc/PID/status` every 50 ms while it runs, and by the \
         borg wrapper right after borg create; the larger). Not `/usr/bin/time`: its maximum RSS includes \
         borg's, a child. borgmatic's (Python) from the wrapper, for comparison.\n"
    )?;
    writeln!(w, "| process | peak RSS |")?;
    writeln!(w, "|---|---:|")?;
    let kb = |v: Option<u64>| {
        v.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or("–".into())
    };
    writeln!(
        w,
        "| zfs-snap, command backend | {} |",
        kb(d.mem_peak_kb(&format!("mem-zs-command-{mem_n}")))
    )?;
    writeln!(
        w,
        "| zfs-snap, libzetta backend | {} |",
        kb(d.mem_peak_kb(&format!("mem-zs-libzetta-{mem_n}")))
    )?;
    writeln!(
        w,
        "| borgmatic (python) | {} |\n",
        kb(d.reps("bm", mem_n)
            .iter()
            .filter_map(|m| m.parent_hwm_kb)
            .max())
    )?;

    // Targets.
    writeln!(w, "## Targets\n")?;
    let at = if ns.contains(&100) {
        100
    } else {
        *ns.last().unwrap()
    };
    let oc = med(&d.reps("zs-command", at), |m| m.overhead_ms);
    let ol = med(&d.reps("zs-libzetta", at), |m| m.overhead_ms);
    let ob = med(&d.reps("bm", at), |m| m.overhead_ms);
    let of = med(&d.reps("floor", at), |m| m.overhead_ms);
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    // Per backend: met by both, by one (named), or by neither.
    let by_backend = |command: bool, libzetta: bool| match (command, libzetta) {
        (true, true) => "**met** (both backends)",
        (false, true) => "**met** with libzetta; missed with the command backend",
        (true, false) => "**met** with the command backend; missed with libzetta",
        (false, false) => "**missed**",
    };
    let finite = |x: f64| x.is_finite() && x > 0.0;
    writeln!(w, "| target | measured | |")?;
    writeln!(w, "|---|---|---|")?;
    writeln!(
        w,
        "| N={at}: overhead ≥ 10× lower than borgmatic's | borgmatic / zfs-snap: {} (command), {} (libzetta) | {} |",
        ratio(ob, oc),
        ratio(ob, ol),
        by_backend(
            finite(ob) && finite(oc) && ob / oc >= 10.0,
            finite(ob) && finite(ol) && ob / ol >= 10.0
        )
    )?;
    writeln!(
        w,
        "| N={at}: overhead within 1.5× of the floor | zfs-snap / floor: {} (command), {} (libzetta) | {} |",
        ratio(oc, of),
        ratio(ol, of),
        by_backend(
            finite(of) && finite(oc) && oc / of <= 1.5,
            finite(of) && finite(ol) && ol / of <= 1.5
        )
    )?;
    let counts: Vec<usize> = ns
        .iter()
        .flat_map(|&n| d.reps("zs-command", n))
        .filter_map(|m| m.processes)
        .collect();
    let flat = counts.iter().min() == counts.iter().max() && !counts.is_empty();
    writeln!(
        w,
        "| processes per run do not grow with N (command backend: a handful per pool) | command backend: {} for N = {} | {} |",
        counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
        verdict(flat && counts.iter().all(|&c| c <= 8))
    )?;
    // Second runs' wall times; a failed or missing run is NaN, and NaN
    // fails every verdict.
    let s2 = |t: &str| {
        d.measure(t)
            .filter(|m| m.rc == 0)
            .map(|m| m.wall_ms)
            .unwrap_or(f64::NAN)
    };
    let second = |set: &str| {
        let b = s2(&format!("second-{set}-bm-2"));
        let c = s2(&format!("second-{set}-zs-command-2"));
        let l = s2(&format!("second-{set}-zs-libzetta-2"));
        (b, c, l)
    };
    let at_least = |b: f64, z: f64, factor: f64| finite(b) && finite(z) && b / z >= factor;
    let never_slower = |(b, c, l): (f64, f64, f64)| {
        [b, c, l].iter().all(|x| x.is_finite() && *x > 0.0) && b >= c.max(l)
    };
    let (mixed, tiny) = (second("mixed"), second("tiny"));
    writeln!(
        w,
        "| second backup ≥ 3× faster than borgmatic (mixed set) | borgmatic / zfs-snap: {} (command), {} (libzetta) | {} |",
        ratio(mixed.0, mixed.1),
        ratio(mixed.0, mixed.2),
        by_backend(
            at_least(mixed.0, mixed.1, 3.0),
            at_least(mixed.0, mixed.2, 3.0)
        )
    )?;
    writeln!(
        w,
        "| second backup never slower than borgmatic | tiny: {}, {}; mixed: {}, {} (command, libzetta) | {} |\n",
        ratio(tiny.0, tiny.1),
        ratio(tiny.0, tiny.2),
        ratio(mixed.0, mixed.1),
        ratio(mixed.0, mixed.2),
        verdict(never_slower(tiny) && never_slower(mixed))
    )?;

    // Every run.
    writeln!(w, "## Every run\n")?;
    writeln!(
        w,
        "| run | exit | wall | borg create | overhead | processes |"
    )?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|")?;
    for r in &d.runs {
        if let Some(m) = d.measure(&r.id) {
            writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                r.id,
                m.rc,
                secs(m.wall_ms),
                if r.id.contains("floor") {
                    "–".into()
                } else {
                    secs(m.borg_ms)
                },
                secs(m.overhead_ms),
                m.processes.map(|p| p.to_string()).unwrap_or("–".into())
            )?;
        }
    }
    writeln!(w)?;
    if let Ok(t) = read(&d.dir, "create.tsv") {
        let total: f64 = tsv(&t)
            .filter_map(|f| Some(f.get(3)?.parse::<f64>().ok()? - f.get(2)?.parse::<f64>().ok()?))
            .sum();
        writeln!(
            w,
            "Creating the datasets (one `zfs create` each, files written by the shell) took {total:.0} s of guest time in all.\n"
        )?;
    }
    Ok(s)
}

/// Writes `out`, keeping the hand-written notes of the existing file.
pub fn write_doc(generated: &str, out: &Path) -> Result<()> {
    let notes = fs::read_to_string(out)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_string()))
        .unwrap_or_else(|| format!("{NOTES_MARKER}\n"));
    fs::write(out, format!("{generated}{notes}"))
        .with_context(|| format!("cannot write {}", out.display()))
}

/// `vm-tests bench` options.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    vm: crate::VmArgs,
    /// Dataset counts to measure (space separated).
    #[arg(long, default_value = "1 10 100 500")]
    ns: String,
    /// Files in the dataset of the second-backup test.
    #[arg(long, default_value_t = 3000)]
    second_files: u32,
    /// Do not boot: render the report from raw data a previous run saved
    /// (target/vm-tests/bench-<time>/).
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// Where to write the report.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

fn utc_now(format: &str) -> String {
    crate::util::output(crate::util::cmd("date").args(["-u", format]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn bench(args: &BenchArgs) -> Result<i32> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::util::workspace_root().join("docs/benchmarks.md"));
    let (raw, code) = match &args.from {
        Some(dir) => (dir.clone(), 0),
        None => {
            let img = crate::image::ensure(false)?;
            crate::util::step(
                "cargo build --release -p hook-bin --features libzetta",
                || {
                    crate::util::run(crate::cargo().args([
                        "build",
                        "--release",
                        "-p",
                        "hook-bin",
                        "--features",
                        "libzetta",
                    ]))
                },
            )?;
            let bin = crate::util::target_dir().join("release/zfs-snap");
            let mut share = crate::vm::Share::new()?;
            share.add_zfs_snap(&bin)?;
            share.set_env("BENCH_NS", &args.ns);
            share.set_env("BENCH_SECOND_FILES", &args.second_files.to_string());
            let s = share.add_text("bench.sh", BENCH_SH, true)?;
            share.add_command("bench", vec![s]);
            // The second-backup test's mixed set is ~550 MiB, backed up into four
            // repositories, all in the guest's tmpfs.
            let opts = args.vm.opts_with(crate::VmDefaults {
                timeout_secs: 3600,
                memory_mb: 6144,
                vartmp: "5G",
            });
            let code = crate::vm::boot(&img, &share, &opts)?;
            let raw = crate::util::target_dir()
                .join(format!("vm-tests/bench-{}", utc_now("+%Y%m%d-%H%M%S")));
            let from = share.dir.join("bench-out");
            if !from.is_dir() {
                bail!("the guest wrote no results (exit code {code})");
            }
            crate::util::run(crate::util::cmd("cp").arg("-a").arg(&from).arg(&raw))?;
            eprintln!("vm-tests: raw bench data kept in {}", raw.display());
            (raw, code)
        }
    };
    // The raw data's directory is named for the end of the run: bench-YYYYMMDD-HHMMSS.
    let date = raw
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("bench-"))
        .filter(|t| t.len() == 15 && t.as_bytes()[8] == b'-')
        .map(|t| {
            format!(
                "{}-{}-{} {}:{} UTC",
                &t[..4],
                &t[4..6],
                &t[6..8],
                &t[9..11],
                &t[11..13]
            )
        })
        .unwrap_or_else(|| utc_now("+%Y-%m-%d %H:%M UTC"));
    let doc = render(&raw, &date)?;
    write_doc(&doc, &out)?;
    eprintln!("vm-tests: wrote {}", out.display());
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acct_v3_records_are_read() {
        let mut r = vec![0u8; 64];
        r[1] = 3;
        r[16..20].copy_from_slice(&42u32.to_le_bytes());
        r[20..24].copy_from_slice(&7u32.to_le_bytes());
        r[24..28].copy_from_slice(&1000u32.to_le_bytes());
        r[48..51].copy_from_slice(b"zfs");
        let a = parse_acct(&r);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].pid, a[0].ppid, a[0].btime), (42, 7, 1000));
        assert_eq!(a[0].comm, "zfs");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![1.0, 2.0]), 1.5);
        assert!(median(vec![]).is_nan());
    }
}
