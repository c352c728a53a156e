//! The shipped Grafana dashboard, `monitoring/grafana/zfs-snap-borg.json`
//! (dashboard 20334's layout and panels, made correct for Prometheus, plus
//! zfs-snap's own), against a real Prometheus scraping the real exporter
//! after real borg creates. Every panel target and every variable query is
//! read from the JSON, so a panel added later is tested too: Grafana's
//! variables are put in, each query is evaluated through Prometheus's HTTP
//! API, and each must answer without error, with data (for each repository
//! where it is per repository), with the labels its legend names, and name
//! only metrics the exposition has.
//!
//! `ZFS_SNAP_DASHBOARD=PATH` runs the same tests against another dashboard
//! file (how 20334's own JSON was shown to fail them).

mod support;

#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prometheus::{encode, now, Exporter, Prometheus};
use serde_json::Value;
use support::*;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

fn dashboard_path() -> PathBuf {
    std::env::var_os("ZFS_SNAP_DASHBOARD")
        .map(PathBuf::from)
        .unwrap_or_else(|| monitoring().join("grafana/zfs-snap-borg.json"))
}

fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The dashboard's time range (its default, `now-7d` to `now`), as Grafana
/// puts it in `$__range`; its step and `$__interval` for about a thousand
/// points; `$__rate_interval` as Grafana derives it with the data source's
/// 15 s scrape interval (`max($__interval + scrape, 4 * scrape)`).
const RANGE_S: u64 = 7 * 24 * 3600;
const STEP_S: u64 = 600;
const RATE_INTERVAL_S: u64 = STEP_S + 15;

/// Every panel, rows' nested panels included, with the variable its row (or
/// itself) repeats over.
fn panels(d: &Value) -> Vec<(&Value, Option<String>)> {
    fn walk<'a>(ps: &'a Value, repeat: Option<String>, out: &mut Vec<(&'a Value, Option<String>)>) {
        for p in ps.as_array().into_iter().flatten() {
            let own = p["repeat"].as_str().map(str::to_owned).or(repeat.clone());
            out.push((p, own.clone()));
            // A collapsed row holds its panels; an open row's follow it.
            walk(&p["panels"], own, out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], None, &mut out);
    out
}

/// One query as Grafana would send it.
struct Target {
    panel: String,
    ref_id: String,
    expr: String,
    /// The labels its legend names (`{{label}}`): each series must have them.
    legend_labels: Vec<String>,
    /// A range query (Grafana's default), else instant only.
    range: bool,
    /// The variable its panel is repeated over: one query per value.
    repeat: Option<String>,
}

fn targets(d: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for (p, repeat) in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["hide"] == true {
                continue;
            }
            let Some(expr) = t["expr"].as_str() else {
                continue;
            };
            let instant_only = t["instant"] == true && t["range"] != true;
            out.push(Target {
                panel: p["title"].as_str().unwrap_or("?").to_owned(),
                ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                expr: expr.to_owned(),
                legend_labels: t["legendFormat"]
                    .as_str()
                    .unwrap_or("")
                    .split("{{")
                    .skip(1)
                    .filter_map(|s| Some(s.split_once("}}")?.0.trim().to_owned()))
                    .collect(),
                range: !instant_only,
                repeat: repeat.clone(),
            });
        }
    }
    out
}

/// Grafana's interpolation of `expr`: `$name`, `${name}`, `${name:raw}`,
/// `[[name]]` from `vars`, and the built-in intervals. A variable it does not
/// know, or another format, is an error: what Grafana would make of it is
/// not tested here.
fn interpolate(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let builtin = |name: &str| -> Option<String> {
        Some(match name {
            "__range" => format!("{RANGE_S}s"),
            "__range_s" => RANGE_S.to_string(),
            "__range_ms" => (RANGE_S * 1000).to_string(),
            "__interval" => format!("{STEP_S}s"),
            "__interval_ms" => (STEP_S * 1000).to_string(),
            "__rate_interval" => format!("{RATE_INTERVAL_S}s"),
            _ => return None,
        })
    };
    let lookup = |name: &str, format: Option<&str>| -> Result<String, String> {
        if let Some(v) = builtin(name) {
            return Ok(v);
        }
        let value = vars
            .get(name)
            .ok_or_else(|| format!("variable {name} is not defined (or not repeated over)"))?;
        match format {
            Some("raw") => Ok(value.clone()),
            _ => Err(format!(
                "${name} without :raw: Grafana escapes a multi-value variable's regex characters"
            )),
        }
    };
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(inner) = rest.strip_prefix("${") {
            let end = inner.find('}').ok_or("unclosed ${")?;
            let (name, format) = match inner[..end].split_once(':') {
                Some((n, f)) => (n, Some(f)),
                None => (&inner[..end], None),
            };
            out.push_str(&lookup(name, format)?);
            rest = &inner[end + 1..];
        } else if let Some(inner) = rest.strip_prefix("[[") {
            let end = inner.find("]]").ok_or("unclosed [[")?;
            out.push_str(&lookup(&inner[..end], None)?);
            rest = &inner[end + 2..];
        } else if let Some(inner) = rest.strip_prefix('$') {
            let n = ident(inner);
            if n == 0 {
                return Err(format!("a lone $ in {expr}"));
            }
            out.push_str(&lookup(&inner[..n], None)?);
            rest = &inner[n..];
        } else {
            out.push('[');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Past a string literal starting at `i`.
    let skip_string = |i: usize| -> usize {
        let q = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != q {
            j += if b[j] == b'\\' && q != b'`' { 2 } else { 1 };
        }
        j + 1
    };
    // Past a bracketed block starting at `i`, strings inside included.
    let skip_block = |i: usize, close: u8| -> usize {
        let mut j = i + 1;
        while j < b.len() && b[j] != close {
            j = if matches!(b[j], b'"' | b'\'' | b'`') {
                skip_string(j)
            } else {
                j + 1
            };
        }
        j + 1
    };
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(i);
        } else if c == b'{' {
            i = skip_block(i, b'}');
        } else if c == b'[' {
            i = skip_block(i, b']');
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            // A function's call, or an aggregation's `by (...)` first.
            let call = b.get(j) == Some(&b'(')
                || ["by", "without"].iter().any(|k| {
                    expr[j..].starts_with(k)
                        && !expr[j + k.len()..]
                            .starts_with(|c: char| c.is_alphanumeric() || c == '_')
                });
            if GROUPING.contains(&word) && call {
                i = skip_block(j, b')');
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let got = metric_names(
        r#"time() - max by(repository) (borg_last_backup_timestamp{job="borgmatic", repository="a{b}"} * 1000) + sum without (x) (increase(c_total[5m] offset 1h)) + on(instance) group_left(y) d:rule 1e3"#,
    );
    let want: BTreeSet<String> = ["borg_last_backup_timestamp", "c_total", "d:rule"]
        .map(str::to_owned)
        .into();
    assert_eq!(got, want);
}

#[test]
fn variables_are_put_in_as_grafana_does() {
    let vars = BTreeMap::from([("REPOSITORY".to_owned(), "/r/x.y".to_owned())]);
    assert_eq!(
        interpolate(
            r#"a{repository="${REPOSITORY:raw}"}[$__rate_interval] [5m] [[__interval]]"#,
            &vars
        )
        .unwrap(),
        r#"a{repository="/r/x.y"}[615s] [5m] 600s"#
    );
    assert!(interpolate("a{r=\"$REPOSITORY\"}", &vars).is_err());
    assert!(interpolate("a{r=\"${OTHER:raw}\"}", &vars).is_err());
}

/// Every `datasource` reference in `v`, with where it is.
fn datasource_refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}/{k}");
                if k == "datasource" {
                    out.push((here.clone(), x));
                }
                datasource_refs(x, here, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                datasource_refs(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_is_for_prometheus_and_provisionable_as_a_file() {
    let d = dashboard();
    let text = serde_json::to_string(&d).unwrap();
    let mut wrong = Vec::new();
    // File provisioning substitutes nothing: no import-time inputs.
    if d.get("__inputs").is_some() || text.contains("${DS_") {
        wrong.push(
            "import-time inputs (__inputs, ${DS_...}): file provisioning leaves them as they are"
                .to_owned(),
        );
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ds_var = vars.iter().find(|v| v["name"] == "datasource");
    if !ds_var.is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus") {
        wrong.push("no variable `datasource` of type datasource (query prometheus)".to_owned());
    }
    // Every reference goes through the variable (or is Grafana's own
    // annotation source): no uid of someone else's Grafana.
    let mut refs = Vec::new();
    datasource_refs(&d, String::new(), &mut refs);
    for (at, r) in refs {
        let uid = r["uid"].as_str().or(r.as_str()).unwrap_or("");
        let ok = matches!(uid, "${datasource}" | "$datasource")
            || (r["type"] == "grafana" && uid == "-- Grafana --");
        if !ok {
            wrong.push(format!("{at}: datasource {r} is not ${{datasource}}"));
        }
    }
    for t in targets(&d) {
        if t.expr.replace(' ', "").contains("now()") {
            wrong.push(format!(
                "{} {}: now() is VictoriaMetrics', Prometheus has time(): {}",
                t.panel, t.ref_id, t.expr
            ));
        }
    }
    // Ids unique, every panel within the 24 columns.
    let mut ids = BTreeSet::new();
    for (p, _) in panels(&d) {
        if !ids.insert(p["id"].to_string()) {
            wrong.push(format!("panel id {} twice", p["id"]));
        }
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        if x + w > 24 {
            wrong.push(format!("{}: wider than the grid: {g}", p["title"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}:\n{}",
        dashboard_path().display(),
        wrong.join("\n")
    );

    // The provisioning files: a file provider, and an example Prometheus.
    let provider =
        std::fs::read_to_string(monitoring().join("grafana/provisioning/dashboards/zfs-snap.yml"))
            .unwrap();
    assert!(provider.contains("type: file"), "{provider}");
    assert!(provider.contains("path: "), "{provider}");
    let source = std::fs::read_to_string(
        monitoring().join("grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(source.contains("type: prometheus"), "{source}");
}

/// `label_values(SELECTOR, LABEL)` (or `label_values(LABEL)`), through the
/// API Grafana's Prometheus data source uses for it.
fn label_values(p: &Prometheus, query: &str, t: f64) -> Result<Vec<String>, String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .ok_or_else(|| format!("a variable query this test cannot evaluate: {query}"))?;
    let (selector, label) = match inner.rsplit_once(',') {
        Some((s, l)) => (Some(s.trim()), l.trim()),
        None => (None, inner.trim()),
    };
    let start = t - RANGE_S as f64;
    let mut path = format!("/api/v1/label/{label}/values?start={start:.3}&end={t:.3}");
    if let Some(s) = selector {
        path.push_str(&format!("&match[]={}", encode(s)));
    }
    let v = p.api(&path)?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect())
}

/// The seed's way: borgmatic's creates through the `borg` link in one
/// `zfs-snap session`, into two `repokey-blake2` repositories, each borg
/// given the passphrase through a pipe of its own (`BORG_PASSPHRASE_FD`);
/// an archive in each, then a failed create into the second (its archive
/// name is taken): every series zfs-snap has, the failure ones and the
/// totals at the session's end included.
fn backed_up_world() -> (World, Vec<String>) {
    const SECRET: &str = "dashboard 5521 passphrase";
    let w = World::new();
    let data = w.dataset("tank/data", "data");
    for i in 0..20 {
        w.write(&data.join(format!("f{i}")), &"x".repeat(i * 100));
    }
    let mut repos: Vec<String> = ["enc1", "enc2"]
        .iter()
        .map(|n| w.dir.path().join(n).display().to_string())
        .collect();
    for r in &repos {
        let out = run(Command::new("borg")
            .args(["init", "-e", "repokey-blake2", r])
            .env("BORG_PASSPHRASE", SECRET)
            .env("BORG_BASE_DIR", w.dir.path().join("borg-home")));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let link_dir = w.dir.path().join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_zfs-snap"), link_dir.join("borg")).unwrap();
    let script = "with_pipe() { exec 4<<EOF\n$SECRET\nEOF\nBORG_PASSPHRASE_FD=4 \"$@\"; }\n\
                  with_pipe \"$LINK\" create \"$REPO1::one\" \"$DATA\" || exit 3\n\
                  with_pipe \"$LINK\" create \"$REPO2::two\" \"$DATA\" || exit 3\n\
                  if with_pipe \"$LINK\" create \"$REPO2::two\" \"$DATA\"; then exit 4; fi\n";
    let out = run(w
        .cmd()
        .env_remove("BORG_PASSPHRASE")
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .args(["session", "--", "sh", "-c", script])
        .env("SECRET", SECRET)
        .env("LINK", link_dir.join("borg"))
        .env("REPO1", &repos[0])
        .env("REPO2", &repos[1])
        .env("DATA", &data)
        .stdin(std::process::Stdio::null()));
    assert!(
        out.status.success(),
        "two creates, then one refused (the name is taken): {}",
        stderr(&out)
    );
    repos.sort();
    (w, repos)
}

/// The names the exposition declares (`# TYPE`).
fn exposed(w: &World) -> BTreeSet<String> {
    let out = run(w.cmd().arg("metrics"));
    assert!(out.status.success());
    stdout(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Names a panel may read that the exporter does not serve: Prometheus's own.
const FROM_PROMETHEUS: &[&str] = &["up", "scrape_duration_seconds"];

#[test]
fn every_panel_and_variable_answers_in_a_real_prometheus() {
    need!(Need::Prometheus);
    need!(Need::Borg);
    let d = dashboard();
    let (w, repos) = backed_up_world();
    let names = exposed(&w);
    let exporter = Exporter::start(&w);
    let prom = Prometheus::start(&w.dir.path().join("prometheus"), exporter.port);
    // Both repositories scraped, and a few scrapes for increase() to see.
    prom.wait_for(
        r#"count(borg_last_backup_timestamp{job="borgmatic"}) == 2"#,
        Duration::from_secs(90),
    );
    prom.wait_for(
        r#"count_over_time(up{job="borgmatic"}[1m]) >= 4"#,
        Duration::from_secs(60),
    );
    let t = now();
    let mut wrong = Vec::new();
    let mut evaluated = 0;

    // Variables: each query variable's values, as Grafana would list them.
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap().to_owned();
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .or(v["definition"].as_str())
            .unwrap_or("");
        match label_values(&prom, query, t) {
            Ok(mut got) => {
                got.sort();
                eprintln!("variable {name}: {query} -> {got:?}");
                if query.contains("repository") && got != repos {
                    wrong.push(format!(
                        "variable {name}: {query} lists {got:?}, not {repos:?}"
                    ));
                }
                if got.is_empty() {
                    wrong.push(format!("variable {name}: {query} lists nothing"));
                }
                values.insert(name, got);
            }
            Err(e) => wrong.push(format!("variable {name}: {query}: {e}")),
        }
        evaluated += 1;
    }

    let targets = targets(&d);
    assert!(!targets.is_empty(), "the dashboard has no queries");
    for target in &targets {
        let what = format!("{} / {}", target.panel, target.ref_id);
        for name in metric_names(&target.expr) {
            if !names.contains(&name) && !FROM_PROMETHEUS.contains(&name.as_str()) {
                wrong.push(format!("{what}: no metric {name} in the exposition"));
            }
        }
        // A repeated panel: once per value of its variable.
        let instances: Vec<(BTreeMap<String, String>, Option<&str>)> = match &target.repeat {
            Some(var) => values
                .get(var)
                .map(|vs| {
                    vs.iter()
                        .map(|v| (BTreeMap::from([(var.clone(), v.clone())]), Some(v.as_str())))
                        .collect()
                })
                .unwrap_or_default(),
            None => vec![(BTreeMap::new(), None)],
        };
        if instances.is_empty() {
            wrong.push(format!(
                "{what}: repeated over {:?}, which has no values",
                target.repeat
            ));
        }
        for (vars, repo) in instances {
            let expr = match interpolate(&target.expr, &vars) {
                Ok(e) => e,
                Err(e) => {
                    wrong.push(format!("{what}: {e}: {}", target.expr));
                    continue;
                }
            };
            let mut answers = vec![("instant", prom.query(&expr, t))];
            if target.range {
                let start = t - RANGE_S as f64;
                answers.push(("range", prom.query_range(&expr, start, t, STEP_S)));
            }
            for (kind, answer) in answers {
                evaluated += 1;
                let series = match answer {
                    Ok(s) => s,
                    Err(e) => {
                        wrong.push(format!("{what} ({kind}): Prometheus: {e}\n    {expr}"));
                        continue;
                    }
                };
                eprintln!("{what} ({kind}): {} series: {expr}", series.len());
                if series.is_empty() {
                    wrong.push(format!("{what} ({kind}): no data\n    {expr}"));
                    continue;
                }
                // Per repository: each one (in a repeat, its own only).
                let labelled: BTreeSet<&str> = series
                    .iter()
                    .filter_map(|s| s["metric"]["repository"].as_str())
                    .collect();
                let want: BTreeSet<&str> = match repo {
                    Some(r) => [r].into(),
                    None => repos.iter().map(String::as_str).collect(),
                };
                if !labelled.is_empty() && labelled != want {
                    wrong.push(format!(
                        "{what} ({kind}): repositories {labelled:?}, not {want:?}\n    {expr}"
                    ));
                }
                for s in &series {
                    for label in &target.legend_labels {
                        if s["metric"][label].is_null() {
                            wrong.push(format!(
                                "{what} ({kind}): its legend names {label}, a series has none: {}",
                                s["metric"]
                            ));
                        }
                    }
                    let last = s["value"]
                        .get(1)
                        .or_else(|| s["values"].as_array().and_then(|v| v.last()?.get(1)));
                    let value: f64 = last
                        .and_then(Value::as_str)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN);
                    if !value.is_finite() {
                        wrong.push(format!("{what} ({kind}): {s}\n    {expr}"));
                    }
                    // An age (time() - a timestamp) is of these backups.
                    if expr.starts_with("time() - ") && !(0.0..3600.0).contains(&value) {
                        wrong.push(format!("{what} ({kind}): an age of {value} s\n    {expr}"));
                    }
                }
            }
        }
    }
    drop(prom);
    drop(exporter);
    eprintln!("{evaluated} queries evaluated, {} wrong", wrong.len());
    assert!(
        wrong.is_empty(),
        "{}:\n{}",
        dashboard_path().display(),
        wrong.join("\n")
    );
}
