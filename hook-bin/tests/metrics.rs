//! Monitoring: what creates through zfs-snap record, the exposition
//! `zfs-snap metrics` and the exporter make of it, promtool's verdict on it
//! and on the alert rules, and a real Prometheus scraping the exporter.
//! Against the fake zfs, real borg 1.4 and Debian's prometheus; borg itself
//! (`borg info --json`, `borg list --json`) is the oracle for every figure.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// The samples of an exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

fn of(samples: &BTreeMap<String, f64>, name: &str, repo: &str) -> f64 {
    let key = format!("{name}{{repository=\"{repo}\"}}");
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no {key} in {samples:#?}"))
}

fn metrics(w: &World) -> String {
    let out = run(w.cmd().arg("metrics"));
    assert!(out.status.success());
    stdout(&out)
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A world with one dataset of a few files, and a second repository.
fn world() -> (World, PathBuf, String) {
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    for i in 0..20 {
        w.write(&data.join(format!("f{i}")), &"x".repeat(i * 100));
    }
    let repo2 = w.dir.path().join("repo2");
    w.borg(&["init", "-e", "none", repo2.to_str().unwrap()]);
    (w, data, repo2.display().to_string())
}

/// The names the seed promises and dashboard 20334 reads: each must come
/// with `# HELP` and `# TYPE`.
const PROMISED: &[&str] = &[
    "borg_last_backup_timestamp",
    "borg_backup_duration_seconds",
    "borg_backup_size_bytes",
    "borg_repository_size_bytes",
    "borg_backup_files_count",
    "borg_total_backups",
    "borg_total_chunks",
    "borg_total_compressed_size",
    "borg_total_size",
    "borg_total_deduplicated_compressed_size",
    "borg_total_deduplicated_size",
    "borg_last_backup_duration",
    "borg_last_backup_files",
    "borg_last_backup_deduplicated_compressed_size",
    "borg_last_backup_compressed_size",
    "borg_last_backup_size",
];

/// A borg whose creates keep a copy of what they print on stdout in
/// `$BORG_STDOUT_COPY`: the JSON zfs-snap asked for when the caller did
/// not, borg's own report of that very create, the oracle for its figures.
fn recording_borg(w: &World) -> PathBuf {
    let path = w.dir.path().join("recording-borg");
    if !path.exists() {
        std::fs::write(
            &path,
            "#!/bin/bash\nset -o pipefail\n[ \"$1\" = create ] || exec borg \"$@\"\n\
             borg \"$@\" | tee \"${BORG_STDOUT_COPY:-/dev/null}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

fn copied(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Checks every figure of `repo` against borg's own.
fn assert_figures_match_borg(
    w: &World,
    m: &BTreeMap<String, f64>,
    repo: &str,
    archive: &str,
    printed: &Value,
    counted: bool,
) {
    let info = json_of(&w.borg(&["info", "--json", &format!("{repo}::{archive}")]));
    // The repository's totals are the same either way.
    let cache = &info["cache"]["stats"];
    assert_eq!(
        &printed["cache"]["stats"], cache,
        "borg's totals, printed and asked"
    );
    // borg's create-time sizes count the archive's own metadata stream
    // too; `borg info` does not: the create's report is the figure.
    let (a, duration) = (
        &printed["archive"]["stats"],
        &printed["archive"]["duration"],
    );
    assert_eq!(
        a["nfiles"], info["archives"][0]["stats"]["nfiles"],
        "the same archive"
    );
    let list = json_of(&w.borg(&["list", "--json", repo]));
    let n = |v: &Value| v.as_u64().unwrap() as f64;
    for (name, want) in [
        ("borg_backup_size_bytes", n(&a["original_size"])),
        ("borg_backup_files_count", n(&a["nfiles"])),
        ("borg_last_backup_size", n(&a["original_size"])),
        ("borg_last_backup_files", n(&a["nfiles"])),
        ("borg_last_backup_compressed_size", n(&a["compressed_size"])),
        (
            "borg_last_backup_deduplicated_compressed_size",
            n(&a["deduplicated_size"]),
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
        assert_eq!(of(m, name, repo), want, "{name} of {repo}");
    }
    // The archive count: from a borg list zfs-snap ran (a session's end,
    // or `--metrics-info always`), or none.
    let count = format!("borg_total_backups{{repository=\"{repo}\"}}");
    if counted {
        assert_eq!(
            of(m, "borg_total_backups", repo),
            list["archives"].as_array().unwrap().len() as f64
        );
    } else {
        assert!(!m.contains_key(&count), "{count} with no borg list");
    }
    let duration = duration.as_f64().unwrap();
    assert!((of(m, "borg_last_backup_duration", repo) - duration).abs() < 1e-3);
}

#[test]
fn creates_with_and_without_json_record_what_borg_says() {
    need!(Need::Borg);
    need!(Need::Prometheus);
    let (w, data, repo2) = world();
    let repo = w.repo();
    let before = now();
    let textfile = w.dir.path().join("textfile/zfs-snap.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    // Without --json: zfs-snap adds it, and keeps borg's JSON from the
    // caller; the recording borg keeps a copy, the oracle. `always`: and a
    // borg list after it for the archive count (`auto`, the second: none).
    let copy = w.dir.path().join("one.json");
    let plain = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "always")
        .env("ZFS_SNAP_METRICS_TEXTFILE", &textfile)
        .env("BORG_STDOUT_COPY", &copy)
        .args(["wrap", "--"])
        .arg(recording_borg(&w))
        .args(["create", &format!("{repo}::one")])
        .arg(&data));
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(plain.stdout.is_empty(), "nothing of ours on borg's stdout");
    let one = copied(&copy);
    assert_eq!(one["archive"]["name"], "one", "borg was asked for --json");
    // With --json: borg's own output, passed on unchanged and read.
    let json = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .env("ZFS_SNAP_METRICS_TEXTFILE", &textfile)
        .args(["wrap", "--", "borg", "create", "--json"])
        .arg(format!("{repo2}::two"))
        .arg(&data));
    assert!(json.status.success());
    let printed = json_of(&json);
    assert_eq!(
        printed["archive"]["name"], "two",
        "borg's JSON reaches stdout"
    );

    let text = metrics(&w);
    let m0 = samples(&text);
    assert!(
        of(&m0, "zfs_snap_backup_figures_timestamp_seconds", &repo)
            == of(&m0, "borg_last_backup_timestamp", &repo),
        "the figures are the last create's"
    );
    for name in PROMISED {
        assert!(text.contains(&format!("# HELP {name} ")), "HELP of {name}");
        assert!(
            text.contains(&format!("# TYPE {name} gauge")),
            "TYPE of {name}"
        );
    }
    let m = samples(&text);
    assert_figures_match_borg(&w, &m, &repo, "one", &one, true);
    assert_figures_match_borg(&w, &m, &repo2, "two", &printed, false);
    for r in [&repo, &repo2] {
        let t = of(&m, "borg_last_backup_timestamp", r);
        assert!(before <= t && t <= now(), "{t} in [{before}, now]");
        assert_eq!(of(&m, "zfs_snap_creates_total", r), 1.0);
        assert_eq!(of(&m, "zfs_snap_create_failures_total", r), 0.0);
        assert_eq!(of(&m, "zfs_snap_create_last_status", r), 0.0);
    }
    let record = |r: &str| record_of(&w, r);
    assert_eq!(
        record(&repo)["last_success"]["figures_from"],
        "create --json",
        "no --json: the one zfs-snap added"
    );
    assert_eq!(
        record(&repo2)["last_success"]["figures_from"],
        "create --json"
    );
    assert_eq!(m["zfs_snap_runs_total"], 2.0);
    assert_eq!(m["zfs_snap_last_run_success"], 1.0);
    assert_eq!(m["zfs_snap_last_run_datasets"], 1.0);
    assert_eq!(
        m["zfs_snap_last_run_info{backend=\"command\",kind=\"wrap\"}"],
        1.0
    );

    // A failed create (the archive exists): failure figures move, the last
    // success stays.
    let success_before = record(&repo)["last_success"].clone();
    let failed = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .env("ZFS_SNAP_METRICS_TEXTFILE", &textfile)
        .args(["wrap", "--", "borg", "create", &format!("{repo}::one")])
        .arg(&data));
    assert_eq!(failed.status.code(), Some(2));
    let text = metrics(&w);
    let m = samples(&text);
    assert_eq!(record(&repo)["last_success"], success_before);
    assert_eq!(of(&m, "zfs_snap_creates_total", &repo), 2.0);
    assert_eq!(of(&m, "zfs_snap_create_failures_total", &repo), 1.0);
    assert_eq!(of(&m, "zfs_snap_create_last_status", &repo), 2.0);
    assert_figures_match_borg(&w, &m, &repo, "one", &one, true);
    assert_eq!(m["zfs_snap_last_run_success"], 0.0);
    assert_eq!(m["zfs_snap_run_failures_total"], 1.0);

    // The textfile is the same exposition, written whole.
    assert_eq!(std::fs::read_to_string(&textfile).unwrap(), text);
    let leftovers: Vec<_> = std::fs::read_dir(textfile.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    assert_promtool_accepts(&text);
}

/// promtool, Prometheus's own parser and linter, accepts the exposition.
/// Its one finding is the seed's `borg_backup_files_count`, kept on purpose
/// (the seed's users query it; `borg_last_backup_files` is the same figure
/// by the conventions): promtool says a gauge should not end in `_count`.
/// A parse error exits 1; lint findings exit 3 and are listed.
fn assert_promtool_accepts(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let findings: Vec<String> = stdout(&out)
        .lines()
        .chain(stderr(&out).lines())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        findings,
        ["borg_backup_files_count non-histogram and non-summary metrics should not have \"_count\" suffix"],
        "promtool check metrics (exit {:?})",
        out.status.code()
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "lint findings only, no parse error"
    );
}

#[test]
fn a_session_records_each_create_and_the_run() {
    need!(Need::Borg);
    let (w, data, repo2) = world();
    let repo = w.repo();
    let link_dir = w.dir.path().join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), link_dir.join("borg")).unwrap();
    let printed = w.dir.path().join("printed.json");
    let copy = w.dir.path().join("b.json");
    let script = "\"$LINK\" create --json \"$REPO::a\" \"$DATA\" >\"$PRINTED\"\n\
                  \"$LINK\" create \"$REPO2::b\" \"$DATA\"\n";
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .args(["session", "--", "sh", "-ec", script])
        .env("ZFS_SNAP_BORG", recording_borg(&w))
        .env("BORG_STDOUT_COPY", &copy)
        .env("LINK", link_dir.join("borg"))
        .env("REPO", &repo)
        .env("REPO2", &repo2)
        .env("DATA", &data)
        .env("PRINTED", &printed));
    assert!(out.status.success());
    let m = samples(&metrics(&w));
    let printed: Value = serde_json::from_slice(&std::fs::read(&printed).unwrap()).unwrap();
    assert_figures_match_borg(&w, &m, &repo, "a", &printed, true);
    assert_figures_match_borg(&w, &m, &repo2, "b", &copied(&copy), true);
    assert_eq!(m["zfs_snap_last_run_creates"], 2.0);
    assert_eq!(m["zfs_snap_runs_total"], 1.0, "one run: the session");
    assert_eq!(
        m["zfs_snap_last_run_info{backend=\"command\",kind=\"session\"}"],
        1.0
    );
    w.assert_clean();
}

#[test]
fn a_state_directory_others_may_write_is_refused_and_the_backup_goes_on() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let state = w.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", &format!("{}::a", w.repo())])
        .arg(&data));
    assert!(out.status.success(), "recording never fails a backup");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("state directory {} refused", state.display()))
            && err.contains("writable by group or others"),
        "{err}"
    );
    assert!(
        !state.join("repositories").exists(),
        "nothing written there"
    );
}

#[test]
fn the_alert_fires_after_25_hours_without_a_backup_and_not_before() {
    need!(Need::Prometheus);
    let dir = rules_dir();
    let check = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("zfs-snap.rules.yml")));
    assert!(check.status.success());
    let test = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.join("zfs-snap.rules.test.yml"))
        .current_dir(&dir));
    assert!(test.status.success(), "{}", stdout(&test));
    assert!(stdout(&test).contains("SUCCESS"));
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request; the status code and body.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(w: &World) -> Exporter {
        let port = free_port();
        let child = w
            .cmd()
            .args(["exporter", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while http(port, "GET", "/metrics").is_err() {
            assert!(Instant::now() < deadline, "the exporter never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Exporter { child, port }
    }

    /// SIGTERM; its exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        nix_kill(self.child.id(), "TERM");
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        eprintln!("exporter stderr:\n{err}");
        (status, err)
    }
}

fn nix_kill(pid: u32, signal: &str) {
    assert!(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

/// Two repositories with one archive each, recorded (ask for
/// [`Need::Borg`] first).
fn recorded_world() -> (World, String, String) {
    let (w, data, repo2) = world();
    let repo = w.repo();
    for (r, name) in [(&repo, "one"), (&repo2, "two")] {
        let out = run(w
            .cmd()
            .env("ZFS_SNAP_METRICS_INFO", "auto")
            .args(["wrap", "--", "borg", "create", &format!("{r}::{name}")])
            .arg(&data));
        assert!(out.status.success());
    }
    (w, repo, repo2)
}

#[test]
fn a_real_prometheus_scrapes_the_exporter() {
    need!(Need::Prometheus);
    need!(Need::Borg);
    let (w, repo, repo2) = recorded_world();
    let exporter = Exporter::start(&w);
    let dir = w.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: borgmatic\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            rules = rules_dir().join("zfs-snap.rules.yml").display(),
            port = exporter.port
        ),
    )
    .unwrap();
    let web = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let found = loop {
        let got = http(web, "GET", "/api/v1/query?query=borg_last_backup_timestamp")
            .ok()
            .and_then(|(code, body)| (code == 200).then_some(body))
            .and_then(|body| serde_json::from_str::<Value>(&body).ok());
        let repos: Vec<String> = got
            .iter()
            .flat_map(|v| v["data"]["result"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["metric"]["job"] == "borgmatic")
            .map(|r| r["metric"]["repository"].as_str().unwrap().to_owned())
            .collect();
        if repos.len() == 2 || Instant::now() > deadline {
            break repos;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let rules = http(web, "GET", "/api/v1/rules").map(|(_, b)| b);
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let (status, err) = exporter.stop();
    let mut found = found;
    found.sort();
    let mut want = vec![repo, repo2];
    want.sort();
    assert_eq!(found, want, "Prometheus's query API has both repositories");
    let rules: Value = serde_json::from_str(&rules.unwrap()).unwrap();
    let alert = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .find(|r| r["name"] == "BorgmaticMissingBackup")
        .expect("the seed's alert is loaded");
    assert_eq!(alert["state"], "inactive", "backups are fresh");
    assert!(status.success(), "SIGTERM stops the exporter cleanly");
    assert!(err.contains("exporter stopped"), "{err}");
}

#[test]
fn the_exporter_serves_the_rest_when_state_files_are_bad() {
    need!(Need::Borg);
    let (w, repo, repo2) = recorded_world();
    let repos = w.state_dir().join("repositories");
    let good = std::fs::read_dir(&repos)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains(&repo2))
        .unwrap();
    let text = std::fs::read(&good).unwrap();
    let bad = [
        ("empty.json", Vec::new()),
        ("truncated.json", text[..text.len() / 2].to_vec()),
        (
            "foreign.json",
            br#"{"name": "not ours", "size": 3}"#.to_vec(),
        ),
        ("future.json", br#"{"format": 99}"#.to_vec()),
    ];
    for (name, bytes) in &bad {
        std::fs::write(repos.join(name), bytes).unwrap();
    }
    std::fs::write(w.state_dir().join("run.json"), b"\x00\x01garbage").unwrap();
    let exporter = Exporter::start(&w);
    let mut body = String::new();
    for _ in 0..3 {
        let (code, b) = http(exporter.port, "GET", "/metrics").unwrap();
        assert_eq!(code, 200);
        body = b;
    }
    assert_eq!(http(exporter.port, "GET", "/").unwrap().0, 404);
    assert_eq!(http(exporter.port, "GET", "/metricsx").unwrap().0, 404);
    assert_eq!(http(exporter.port, "POST", "/metrics").unwrap().0, 405);
    let (status, err) = exporter.stop();
    assert!(status.success());
    let m = samples(&body);
    for r in [&repo, &repo2] {
        assert!(of(&m, "borg_last_backup_timestamp", r) > 0.0);
    }
    assert_eq!(m["zfs_snap_state_files_unreadable"], 5.0);
    assert!(!body.contains("zfs_snap_last_run_timestamp_seconds"));
    for (name, why) in [
        ("repositories/empty.json", "empty"),
        ("repositories/truncated.json", "not JSON"),
        ("repositories/foreign.json", "not a zfs-snap record"),
        ("repositories/future.json", "format 99"),
        ("run.json", "not JSON"),
    ] {
        let path = w.state_dir().join(name);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!("{}:", path.display())))
            .collect();
        assert_eq!(lines.len(), 1, "{name} logged once in three scrapes: {err}");
        assert!(
            lines[0].contains(why) && lines[0].contains("left out of the metrics"),
            "{}",
            lines[0]
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A benchmark, not a timed test: 1,000 scrapes on loopback; descriptors
/// must not grow and memory must settle; latencies are printed.
#[test]
fn a_thousand_scrapes_grow_neither_memory_nor_descriptors() {
    need!(Need::Borg);
    let (w, _, _) = recorded_world();
    let exporter = Exporter::start(&w);
    let pid = exporter.child.id();
    for _ in 0..100 {
        http(exporter.port, "GET", "/metrics").unwrap();
    }
    // Let the last connection close on the exporter's side too.
    let settle = || std::thread::sleep(Duration::from_millis(300));
    settle();
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let mut latencies = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let (code, _) = http(exporter.port, "GET", "/metrics").unwrap();
        latencies.push(t.elapsed());
        assert_eq!(code, 200);
    }
    settle();
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    let (status, _) = exporter.stop();
    assert!(status.success());
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(999)];
    println!(
        "MEASURED exporter 1000 scrapes: p50 {:?} p99 {:?} max {:?}; RSS {rss0} -> {rss1} KiB; fds {fds0} -> {fds1}",
        p(0.5),
        p(0.99),
        latencies[999]
    );
    assert_eq!(fds1, fds0, "descriptors after 1,000 scrapes");
    assert!(
        rss1 <= rss0 + 1024,
        "memory grew by more than 1 MiB over 1,000 scrapes: {rss0} -> {rss1} KiB"
    );
}

#[test]
fn a_content_from_command_create_is_recorded_without_snapshots() {
    need!(Need::Borg);
    let w = World::new();
    let repo = w.repo();
    let copy = w.dir.path().join("dump.json");
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .env("BORG_STDOUT_COPY", &copy)
        .args(["wrap", "--"])
        .arg(recording_borg(&w))
        .args([
            "create",
            "--content-from-command",
            &format!("{repo}::dump"),
            "--",
            "echo",
            "a database dump",
        ]));
    assert!(out.status.success());
    assert_eq!(w.snapshot_calls(), 0);
    let m = samples(&metrics(&w));
    assert_figures_match_borg(&w, &m, &repo, "dump", &copied(&copy), false);
    assert!(
        !m.contains_key("zfs_snap_runs_total"),
        "no snapshot run to record"
    );
}

#[test]
fn state_dir_none_records_nothing_and_says_so_to_metrics() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_STATE_DIR", "none")
        .args(["wrap", "--", "borg", "create", &format!("{}::a", w.repo())])
        .arg(&data));
    assert!(out.status.success());
    assert!(!w.state_dir().exists());
    let out = run(w.cmd().env("ZFS_SNAP_STATE_DIR", "none").arg("metrics"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--state-dir is `none`"));
}

#[test]
fn an_exporter_that_cannot_listen_says_where() {
    let w = World::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(w.cmd().args(["exporter", "--listen", &addr]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("exporter: cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

/// `command` run by `sh -c SCRIPT`, as `"$@"`: same arguments,
/// environment and working directory.
fn in_shell(command: &Command, script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, "sh"])
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        cmd.current_dir(dir);
    }
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The figures of a repository's record file.
fn record_of(w: &World, repo: &str) -> Value {
    std::fs::read_dir(w.state_dir().join("repositories"))
        .unwrap()
        .map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.unwrap().path()).unwrap()))
        .map(Result::unwrap)
        .find(|v| v["repository"] == repo)
        .unwrap_or_else(|| panic!("no record of {repo}"))
}

#[test]
fn a_warning_exit_with_modern_codes_is_a_backup_made() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let repo = w.repo();
    // A file borg may not read: a warning, and the archive is made. The
    // real borg, without root's power to read anything.
    let secret = data.join("secret");
    w.write(&secret, "x");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let unprivileged = w.dir.path().join("borg-unprivileged");
    std::fs::write(
        &unprivileged,
        "#!/bin/sh\nif [ \"$(id -u)\" = 0 ]; then\n  exec setpriv --bounding-set=-dac_override,-dac_read_search \
         --inh-caps=-dac_override,-dac_read_search \"$RECORDING\" \"$@\"\nfi\nexec \"$RECORDING\" \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&unprivileged, std::fs::Permissions::from_mode(0o755)).unwrap();
    // As borgmatic 2 runs borg: modern exit codes (a warning is 100-127).
    let out = run(w
        .cmd()
        .env("BORG_EXIT_CODES", "modern")
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .env("RECORDING", recording_borg(&w))
        .env("BORG_STDOUT_COPY", w.dir.path().join("w.json"))
        .arg("wrap")
        .arg("--")
        .arg(&unprivileged)
        .args(["create", &format!("{repo}::w")])
        .arg(&data));
    let code = out.status.code().unwrap();
    assert!((100..=127).contains(&code), "a modern warning: {code}");
    assert!(
        stderr(&out).contains("Permission denied"),
        "the warning borg gave"
    );
    let m = samples(&metrics(&w));
    let printed = copied(&w.dir.path().join("w.json"));
    assert_figures_match_borg(&w, &m, &repo, "w", &printed, false);
    assert_eq!(
        of(&m, "zfs_snap_create_last_status", &repo),
        f64::from(code)
    );
    assert_eq!(of(&m, "zfs_snap_create_last_success", &repo), 1.0);
    assert_eq!(of(&m, "zfs_snap_create_failures_total", &repo), 0.0);
}

#[test]
fn a_passphrase_through_a_pipe_is_not_read_twice() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let repo = w.dir.path().join("secret");
    let init = run(Command::new("borg")
        .args(["init", "-e", "repokey"])
        .arg(&repo)
        .env("BORG_PASSPHRASE", "pw")
        .env("BORG_BASE_DIR", w.dir.path().join("borg-home")));
    assert!(init.status.success());
    // As borgmatic passes it: a pipe that borg reads to its end.
    let through_a_pipe = |archive: &str, json: bool, env_too: bool| {
        let mut zfs_snap = w.cmd();
        zfs_snap
            .env_remove("BORG_PASSPHRASE")
            .env("ZFS_SNAP_METRICS_INFO", "always")
            .args(["wrap", "--", "borg", "create"])
            .args(json.then_some("--json"))
            .arg(format!("{}::{archive}", repo.display()))
            .arg(&data);
        let mut cmd = in_shell(
            &zfs_snap,
            "exec 3<<EOF\npw\nEOF\nBORG_PASSPHRASE_FD=3 exec \"$@\"",
        );
        if env_too {
            cmd.env("BORG_PASSPHRASE", "pw");
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "the create itself reads the passphrase"
        );
        (
            stderr(&out),
            record_of(&w, &repo.display().to_string())["last_success"].clone(),
        )
    };
    // The create reports its own figures (the --json zfs-snap added), so
    // no second borg needs the passphrase; only the count `always` asks
    // for is missing.
    for (archive, json) in [("a", false), ("b", true)] {
        let (err, last) = through_a_pipe(archive, json, false);
        assert!(err.contains("no borg list for the archive count"), "{err}");
        assert_eq!(last["figures_from"], "create --json");
        assert_eq!(last["archive_figures"]["name"], archive);
        assert_eq!(last["archives"], Value::Null);
    }
    // borg prefers BORG_PASSPHRASE to the pipe: then borg list works.
    let (err, last) = through_a_pipe("c", false, true);
    assert!(!err.contains("BORG_PASSPHRASE_FD"), "{err}");
    assert_eq!(last["figures_from"], "create --json");
    assert_eq!(last["archives"], 3);
}

#[test]
fn records_are_readable_by_others_whatever_the_umask() {
    need!(Need::Borg);
    let (w, data, _) = world();
    // Relative: the caller's directory.
    let textfile = w.dir.path().join("zfs-snap.prom");
    let mut zfs_snap = w.cmd();
    zfs_snap
        .env("ZFS_SNAP_METRICS_TEXTFILE", "zfs-snap.prom")
        .env("ZFS_SNAP_STATE_DIR", w.state_dir().join("made/here"))
        .args(["wrap", "--", "borg", "create", &format!("{}::a", w.repo())])
        .arg(&data);
    assert!(run(&mut in_shell(&zfs_snap, "umask 077; exec \"$@\""))
        .status
        .success());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.state_dir()), 0o755, "each directory made");
    assert_eq!(mode(&w.state_dir().join("made")), 0o755);
    let state = w.state_dir().join("made/here");
    assert_eq!(mode(&state), 0o755);
    assert_eq!(mode(&state.join("repositories")), 0o755);
    assert_eq!(mode(&state.join("run.json")), 0o644);
    let repo_file = std::fs::read_dir(state.join("repositories"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&repo_file), 0o644);
    assert_eq!(mode(&textfile), 0o644);
}

#[test]
fn a_run_that_fails_early_keeps_what_the_last_run_left_on_record() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let repo = w.repo();
    assert!(run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", &format!("{repo}::a")])
        .arg(&data))
    .status
    .success());
    // As if that run's teardown had left two things behind.
    let run_file = w.state_dir().join("run.json");
    let mut record: Value = serde_json::from_slice(&std::fs::read(&run_file).unwrap()).unwrap();
    record["left_behind"] = 2.into();
    std::fs::write(&run_file, serde_json::to_vec(&record).unwrap()).unwrap();
    // The next run stops before borg: a patterns file that does not exist.
    let out = run(w
        .cmd()
        .args([
            "wrap",
            "--",
            "borg",
            "create",
            "--patterns-from",
            "/nonexistent",
        ])
        .arg(format!("{repo}::b"))
        .arg(&data));
    assert_eq!(out.status.code(), Some(2));
    let m = samples(&metrics(&w));
    assert_eq!(m["zfs_snap_last_run_left_behind"], 2.0, "still on record");
    assert_eq!(m["zfs_snap_last_run_success"], 0.0, "this run failed");
    assert_eq!(m["zfs_snap_last_run_status"], 2.0);
    assert_eq!(m["zfs_snap_runs_total"], 2.0);
    assert_eq!(m["zfs_snap_run_failures_total"], 1.0);
    assert_eq!(of(&m, "zfs_snap_create_last_success", &repo), 0.0);
    assert_eq!(of(&m, "zfs_snap_create_failures_total", &repo), 1.0);
}

#[test]
fn a_bad_metrics_setting_is_a_warning_and_the_backup_goes_on() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let out = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "off")
        .args(["wrap", "--", "borg", "create", &format!("{}::a", w.repo())])
        .arg(&data));
    assert!(out.status.success());
    assert!(stderr(&out).contains("ZFS_SNAP_METRICS_INFO: unknown value \"off\""));
}

#[test]
fn a_retired_repository_is_forgotten_on_request() {
    need!(Need::Borg);
    let (w, repo, repo2) = recorded_world();
    let forget = run(w.cmd().args(["metrics", "--forget", &format!("{repo}/")]));
    assert!(
        forget.status.success(),
        "a trailing slash names the same repository"
    );
    let m = samples(&metrics(&w));
    assert!(!m.keys().any(|k| k.contains(&format!("\"{repo}\""))));
    assert!(of(&m, "borg_last_backup_timestamp", &repo2) > 0.0);
    let again = run(w.cmd().args(["metrics", "--forget", &repo]));
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("no record of"));
}

/// The lines of borg's `--stats` block in `text`: from its first line of
/// dashes to its last.
fn stats_block(text: &str) -> Vec<String> {
    let dashes = "-".repeat(78);
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| *l == dashes)
        .expect("a stats block");
    let last = lines.iter().rposition(|l| *l == dashes).unwrap();
    lines[first..=last].iter().map(|l| l.to_string()).collect()
}

/// A caller that asked for `--stats` gets borg's text though zfs-snap
/// asked borg for `--json`: line for line what real borg prints for the
/// same create (the same repository path and archive name, borg's command
/// line the same length, no compression: the same bytes stored), but for
/// the lines that name the moment (fingerprint, times, duration).
#[test]
fn a_caller_asking_for_stats_gets_borgs_own_text() {
    need!(Need::Borg);
    let w = World::new();
    let repo = w.dir.path().join("stats-repo");
    let archive = format!("{}::s", repo.display());
    let init = || {
        let _ = std::fs::remove_dir_all(&repo);
        w.borg(&["init", "-e", "none", repo.to_str().unwrap()]);
    };
    let create = |first: Option<&str>| {
        let mut argv = vec!["create".to_owned()];
        argv.extend(first.map(str::to_owned));
        argv.extend(
            [
                "--stats",
                "--compression",
                "none",
                "--content-from-command",
                &archive,
                "--",
                "echo",
                "a database dump",
            ]
            .map(str::to_owned),
        );
        argv
    };
    init();
    // `--info` is as long as the `--json` zfs-snap adds in its place.
    let plain = run(Command::new("borg")
        .args(create(Some("--info")))
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_BASE_DIR", w.dir.path().join("borg-home"))
        .current_dir(w.dir.path()));
    assert!(plain.status.success(), "{}", stderr(&plain));
    init();
    let ours = run(w
        .cmd()
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .args(["wrap", "--", "borg"])
        .args(create(None)));
    assert!(
        stderr(&ours).contains("borg create --json --stats"),
        "zfs-snap asked for --json: {}",
        stderr(&ours)
    );
    assert!(ours.status.success(), "{}", stderr(&ours));
    assert!(ours.stdout.is_empty(), "borg's JSON is not the caller's");
    let (plain, ours) = (stats_block(&stderr(&plain)), stats_block(&stderr(&ours)));
    assert_eq!(plain.len(), ours.len(), "{plain:#?}\n{ours:#?}");
    let moment = [
        "Archive fingerprint:",
        "Time (start):",
        "Time (end):",
        "Duration:",
    ];
    for (p, o) in plain.iter().zip(&ours) {
        match moment.iter().find(|m| p.starts_with(**m)) {
            Some(m) => assert!(o.starts_with(m), "{o:?} for {p:?}"),
            None => assert_eq!(o, p),
        }
    }
    assert!(
        ours.iter().any(|l| l.starts_with("This archive:")),
        "{ours:#?}"
    );
}

/// As borgmatic runs a session's actions: creates whose passphrase comes
/// through a pipe (`BORG_PASSPHRASE_FD`), then a prune and compact. The
/// totals and archive count recorded are the repository's after the run,
/// as `borg info` and `borg list` give them then; the passphrase is in no
/// file of ours and no output. With the timeout 0 they stay the create's.
#[test]
fn a_sessions_end_records_the_totals_after_its_prune_with_the_piped_passphrase() {
    need!(Need::Borg);
    let (w, data, _) = world();
    const SECRET: &str = "correct horse 7391 battery";
    let repo = w.dir.path().join("secret").display().to_string();
    let borg_home = w.dir.path().join("borg-home");
    let plain_borg = |args: &[&str]| {
        let out = run(Command::new("borg")
            .args(args)
            .env("BORG_PASSPHRASE", SECRET)
            .env("BORG_BASE_DIR", &borg_home));
        assert!(out.status.success(), "borg {args:?}: {}", stderr(&out));
        out
    };
    plain_borg(&["init", "-e", "repokey-blake2", &repo]);
    let link_dir = w.dir.path().join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), link_dir.join("borg")).unwrap();
    // Each borg gets a pipe of its own, as borgmatic gives it.
    let script = "with_pipe() { exec 4<<EOF\n$SECRET\nEOF\nBORG_PASSPHRASE_FD=4 \"$@\"; }\n\
                  with_pipe \"$LINK\" create \"$REPO::$1-a\" \"$DATA\"\n\
                  with_pipe \"$LINK\" create \"$REPO::$1-b\" \"$DATA\"\n\
                  with_pipe borg delete \"$REPO::$1-a\"\n\
                  with_pipe borg compact \"$REPO\"\n";
    let session = |round: &str, timeout: &str| {
        let out = run(w
            .cmd()
            .env_remove("BORG_PASSPHRASE")
            .env("ZFS_SNAP_METRICS_INFO", "auto")
            .env("ZFS_SNAP_METRICS_TOTALS_TIMEOUT", timeout)
            .args(["session", "--", "sh", "-ec", script, "sh", round])
            .env("SECRET", SECRET)
            .env("LINK", link_dir.join("borg"))
            .env("REPO", &repo)
            .env("DATA", &data)
            .stdin(std::process::Stdio::null()));
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains(SECRET), "{}", stderr(&out));
        assert!(!stdout(&out).contains(SECRET));
        out
    };
    session("one", "120");
    let after: Value =
        serde_json::from_slice(&plain_borg(&["info", "--json", &repo]).stdout).unwrap();
    let list: Value =
        serde_json::from_slice(&plain_borg(&["list", "--json", &repo]).stdout).unwrap();
    let last = record_of(&w, &repo)["last_success"].clone();
    let n = |v: &Value| v.as_u64().unwrap();
    let cache = &after["cache"]["stats"];
    for key in [
        "total_chunks",
        "total_csize",
        "total_size",
        "total_unique_chunks",
        "unique_csize",
        "unique_size",
    ] {
        assert_eq!(
            n(&last["totals"][key]),
            n(&cache[key]),
            "{key} after the run"
        );
    }
    assert_eq!(last["archives"], 1, "one archive left after the delete");
    assert_eq!(list["archives"].as_array().unwrap().len(), 1);
    assert_eq!(last["archive_figures"]["name"], "one-b");
    let totals_end = last["totals_end"].as_f64().expect("totals_end");
    assert!(totals_end > last["end"].as_f64().unwrap(), "{last:#}");
    let m = samples(&metrics(&w));
    assert_eq!(of(&m, "borg_total_backups", &repo), 1.0);
    assert_eq!(
        of(&m, "borg_repository_size_bytes", &repo),
        n(&cache["unique_csize"]) as f64
    );
    assert_eq!(
        of(&m, "zfs_snap_repository_totals_timestamp_seconds", &repo),
        totals_end
    );
    let mut files = vec![w.state_dir().join("run.json")];
    files.extend(
        std::fs::read_dir(w.state_dir().join("repositories"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains(SECRET), "{}", f.display());
    }

    // Not asked: the totals are the create's, before the delete.
    session("two", "0");
    let last = record_of(&w, &repo)["last_success"].clone();
    assert_eq!(last["archive_figures"]["name"], "two-b");
    assert_eq!(last["totals_end"], Value::Null, "{last:#}");
    assert_eq!(
        last["archives"],
        Value::Null,
        "no count without a borg list"
    );
    let m = samples(&metrics(&w));
    assert_eq!(
        of(&m, "zfs_snap_repository_totals_timestamp_seconds", &repo),
        last["end"].as_f64().unwrap()
    );
}

/// `BORG_PASSPHRASE_FD` naming a pipe whose writer never closes it, or a
/// descriptor that is not a pipe: the link in a session waits for the
/// passphrase a bounded time (10 s), says so, and the create goes on: no
/// backup hangs on it. (An unencrypted repository: borg reads no
/// passphrase.)
#[test]
fn a_passphrase_pipe_that_never_ends_does_not_hang_the_create() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let repo = w.dir.path().join("plain").display().to_string();
    let init = run(Command::new("borg")
        .args(["init", "-e", "none", &repo])
        .env("BORG_BASE_DIR", w.dir.path().join("borg-home")));
    assert!(init.status.success(), "{}", stderr(&init));
    let link_dir = w.dir.path().join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), link_dir.join("borg")).unwrap();
    // fd 5: a pipe whose writer (a sleep) holds it open; fd 6: a directory.
    // The session waits for what its command leaves running: the sleep
    // is killed at the end.
    let script = "exec 5< <(exec sleep 60) 6< /\nwriter=$!\n\
                  BORG_PASSPHRASE_FD=5 \"$LINK\" create \"$REPO::a\" \"$DATA\"\n\
                  BORG_PASSPHRASE_FD=6 \"$LINK\" create \"$REPO::b\" \"$DATA\"\n\
                  kill $writer\n";
    let started = std::time::Instant::now();
    let out = run(w
        .cmd()
        .env_remove("BORG_PASSPHRASE")
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .args(["session", "--", "bash", "-ec", script])
        .env("LINK", link_dir.join("borg"))
        .env("REPO", &repo)
        .env("DATA", &data)
        .stdin(std::process::Stdio::null()));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no end of file within 10 s"),
        "{}",
        stderr(&out)
    );
    assert!(took < std::time::Duration::from_secs(50), "{took:?}");
    let last = record_of(&w, &repo)["last_success"].clone();
    assert_eq!(last["archive_figures"]["name"], "b", "{last:#}");
    assert_eq!(last["archives"], 2, "the session's end counted both");
}

/// The totals at a session's end never hold the backup up or change its
/// outcome, and never prompt: a `borg info` that never answers is killed at
/// `--metrics-totals-timeout`; a `borg info` and `borg list` that fail are
/// each a warning naming the call; the session's status stays its
/// command's. The session runs with a controlling terminal (a pty, as a
/// user at a shell has), and neither call can open `/dev/tty`, where borg
/// would ask for a passphrase it lacks.
#[test]
fn the_totals_at_a_sessions_end_are_bounded_never_prompt_and_never_change_the_status() {
    need!(Need::Borg);
    need!(Need::Tool("python3"));
    let (w, data, repo) = world();
    let link_dir = w.dir.path().join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), link_dir.join("borg")).unwrap();
    let probe = w.dir.path().join("probe");
    let borg = w.dir.path().join("totals-borg");
    std::fs::write(
        &borg,
        "#!/bin/sh\n\
         case \"$1\" in\n\
         info|list)\n\
         \x20   if (exec 3</dev/tty) 2>/dev/null; then echo \"$1 opened /dev/tty\" >> \"$PROBE\"\n\
         \x20   else echo \"$1 no terminal\" >> \"$PROBE\"; fi\n\
         \x20   if [ \"$1\" = info ] && [ \"$HANG\" = yes ]; then exec sleep 317; fi\n\
         \x20   echo \"refused by the test\" >&2; exit 2 ;;\n\
         esac\n\
         exec borg \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&borg, std::fs::Permissions::from_mode(0o755)).unwrap();
    // python3 gives the session a terminal of its own: a new session
    // whose controlling terminal is a pty (its output still to our pipes).
    const WITH_A_TERMINAL: &str = "import fcntl, os, subprocess, sys, termios\n\
        master, slave = os.openpty()\n\
        sys.exit(subprocess.run(sys.argv[1:], start_new_session=True, \
        stdin=subprocess.DEVNULL, \
        preexec_fn=lambda: fcntl.ioctl(slave, termios.TIOCSCTTY, 0)).returncode)\n";
    let session = |hang: &str| {
        let _ = std::fs::remove_file(&probe);
        let ended = w.dir.path().join("ended");
        let mut cmd = w.cmd();
        cmd.env("ZFS_SNAP_METRICS_INFO", "auto")
            .env("ZFS_SNAP_METRICS_TOTALS_TIMEOUT", "3")
            .env("ZFS_SNAP_BORG", &borg)
            .env("PROBE", &probe)
            .env("HANG", hang)
            .env("LINK", link_dir.join("borg"))
            .env("REPO", &repo)
            .env("DATA", &data)
            .env("ENDED", &ended)
            .args(["session", "--", "sh", "-ec"])
            .arg(
                "(exec 3</dev/tty) || { echo 'the session has no terminal' >&2; exit 9; }\n\
                 \"$LINK\" create \"$REPO::$HANG\" \"$DATA\"\n\
                 : > \"$ENDED\"\n",
            );
        let mut python = Command::new("python3");
        python.args(["-c", WITH_A_TERMINAL]).arg(cmd.get_program());
        python.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => python.env(k, v),
                None => python.env_remove(k),
            };
        }
        let out = run(&mut python);
        let after_end = std::fs::metadata(&ended)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default())
            .unwrap_or_else(|e| panic!("the command did not end: {e}\n{}", stderr(&out)));
        (
            out,
            after_end,
            std::fs::read_to_string(&probe).unwrap_or_default(),
        )
    };

    // A `borg info` that never answers: killed at the deadline, the
    // session's status its command's (0), nothing of it left running.
    let (out, after_end, probed) = session("yes");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        after_end < Duration::from_secs(20),
        "the session ended {after_end:?} after its command, with a 3 s totals timeout\n{}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("no totals at the end of the session")
            && err.contains("borg info")
            && err.contains("still running at the deadline"),
        "{err}"
    );
    assert_eq!(probed, "info no terminal\n", "{err}");
    let left = run(Command::new("pgrep").args(["-f", "sleep 317"]));
    assert!(
        !left.status.success(),
        "the hung call is still running: {}",
        stdout(&left)
    );
    let run_json: Value =
        serde_json::from_slice(&std::fs::read(w.state_dir().join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["success"], true, "{run_json:#}");

    // Calls that fail: each a warning naming it; the status stays 0.
    let (out, _, probed) = session("no");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no totals at the end of the session") && err.contains("refused by the test"),
        "{err}"
    );
    assert!(
        probed.lines().all(|l| l.ends_with("no terminal")) && !probed.is_empty(),
        "{probed}\n{err}"
    );
    let last = record_of(&w, &repo)["last_success"].clone();
    assert_eq!(last["archive_figures"]["name"], "no", "{last:#}");
}

/// Monitoring adds no borg process to a standalone `wrap` with the
/// defaults (`--metrics-info auto`, the variable unset): borg runs once,
/// its create, whose own `--json` gives every figure but the archive count;
/// `always` adds one `borg list` after it for the count.
#[test]
fn a_wrap_with_the_defaults_starts_no_borg_but_its_create() {
    need!(Need::Borg);
    let (w, data, _) = world();
    let repo = w.repo();
    let calls = w.dir.path().join("borg-calls");
    let counting = w.dir.path().join("counting-borg");
    std::fs::write(
        &counting,
        "#!/bin/sh\nprintf '%s\\n' \"$1\" >> \"$BORG_CALLS\"\nexec borg \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&counting, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrap = |archive: &str, info: Option<&str>| {
        let _ = std::fs::remove_file(&calls);
        let mut cmd = w.cmd();
        cmd.env_remove("ZFS_SNAP_METRICS_INFO")
            .env("BORG_CALLS", &calls)
            .args(["wrap", "--"])
            .arg(&counting)
            .args(["create", &format!("{repo}::{archive}")])
            .arg(&data);
        if let Some(info) = info {
            cmd.env("ZFS_SNAP_METRICS_INFO", info);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        // borg's version is asked once, then remembered.
        std::fs::read_to_string(&calls)
            .unwrap()
            .lines()
            .filter(|c| *c != "--version")
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(wrap("default", None), ["create"]);
    let m = samples(&metrics(&w));
    assert!(of(&m, "borg_backup_size_bytes", &repo) > 0.0);
    assert!(of(&m, "borg_repository_size_bytes", &repo) > 0.0);
    assert!(
        !m.contains_key(&format!("borg_total_backups{{repository=\"{repo}\"}}")),
        "no count without a borg list"
    );
    assert_eq!(wrap("always", Some("always")), ["create", "list"]);
    let m = samples(&metrics(&w));
    assert_eq!(of(&m, "borg_total_backups", &repo), 2.0);
}
