//! A real exporter and a real Prometheus scraping it, for the tests that
//! read what Prometheus makes of zfs-snap's metrics (`#[path]`-included).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::World;

/// Unix time, seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET; the status code and body.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
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

/// Percent-encodes a query parameter's value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `zfs-snap exporter` on an ephemeral loopback port, stopped when dropped.
pub struct Exporter {
    child: Child,
    pub port: u16,
}

impl Exporter {
    pub fn start(w: &World) -> Exporter {
        let port = free_port();
        let child = w
            .cmd()
            .args(["exporter", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(port, "/metrics").is_err() {
            assert!(Instant::now() < deadline, "the exporter never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Exporter { child, port }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `prometheus`, scraping `targets` as job `borgmatic` every
/// second (the README's scrape job), killed when dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
}

impl Prometheus {
    pub fn start(dir: &Path, exporter_port: u16) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: borgmatic\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus { child, port }
    }

    /// GET `path` of the HTTP API; its JSON answer (Prometheus answers
    /// errors in JSON too, with `status` "error").
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = get(self.port, path).map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))
    }

    /// An instant query at `time`: its result, or Prometheus's error.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>, String> {
        let v = self.api(&format!(
            "/api/v1/query?query={}&time={time:.3}",
            encode(expr)
        ))?;
        result(v)
    }

    /// A range query, as Grafana sends a panel's range target.
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: u64,
    ) -> Result<Vec<Value>, String> {
        let v = self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode(expr)
        ))?;
        result(v)
    }

    /// Waits until `expr` has a result; panics after `within`.
    pub fn wait_for(&self, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if matches!(self.query(expr, now()), Ok(r) if !r.is_empty()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never answered {expr}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn result(v: Value) -> Result<Vec<Value>, String> {
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
