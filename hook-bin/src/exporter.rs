//! `zfs-snap exporter`: serves the exposition of the state directory at
//! `/metrics`, read afresh on every scrape. It never runs borg or zfs, so a
//! scrape costs a few small file reads, whatever the repositories are
//! doing. One thread answers, one request at a time (tiny_http: no async
//! runtime for one endpoint); SIGTERM or SIGINT stops it between requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};
use zfs_snap::signals::Signals;

use crate::exit::Failure;

/// How often the loop looks for a signal while no request comes.
const TICK: Duration = Duration::from_millis(200);

pub fn serve(listen: &str, state_dir: &Path, signals: &Signals) -> Result<(), Failure> {
    let server = Server::http(listen).map_err(|e| {
        Failure::Usage(format!(
            "exporter: cannot listen on {listen}: {e} (use --listen ADDR:PORT)"
        ))
    })?;
    tracing::info!(
        listen = %server.server_addr(),
        state_dir = %state_dir.display(),
        "exporter serving /metrics"
    );
    // Each bad state file is logged once, until it changes or goes away.
    let mut reported = BTreeMap::new();
    loop {
        if let Some(signal) = signals.received() {
            tracing::info!(signal, "exporter stopped");
            return Ok(());
        }
        match server.recv_timeout(TICK) {
            Ok(Some(request)) => answer(request, state_dir, &mut reported),
            Ok(None) => {}
            // tiny_http's accept loop has ended (out of descriptors, say):
            // no request will come again. Exit, for systemd to restart it.
            Err(e) => {
                return Err(Failure::Usage(format!(
                    "exporter: no longer accepting connections ({e}); exiting"
                )))
            }
        }
    }
}

fn answer(request: Request, state_dir: &Path, reported: &mut BTreeMap<PathBuf, String>) {
    let path = request.url().split('?').next().unwrap_or("");
    let response = if path != "/metrics" {
        Response::from_string("zfs-snap exporter: only /metrics is served\n").with_status_code(404)
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        Response::from_string("zfs-snap exporter: GET /metrics\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"))
    } else {
        let recorded = zfs_snap::records::read(state_dir);
        for (file, why) in &recorded.unreadable {
            if reported.get(file) != Some(why) {
                tracing::warn!("{}: {why}; left out of the metrics", file.display());
                reported.insert(file.clone(), why.clone());
            }
        }
        reported.retain(|file, _| recorded.unreadable.iter().any(|(f, _)| f == file));
        Response::from_string(zfs_snap::metrics::render(&recorded))
            .with_header(header("Content-Type", zfs_snap::metrics::CONTENT_TYPE))
    };
    if let Err(e) = request.respond(response) {
        tracing::debug!("exporter: the client went away: {e}");
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}
