//! `zfs-snap exporter`: serves the exposition of the state directory at
//! `/metrics`, read afresh on every scrape. It never runs borg or zfs, so a
//! scrape costs a few small file reads, whatever the repositories are
//! doing.
//!
//! Whoever can connect must not be able to stop, crash or bloat it: hyper's
//! HTTP/1 server on a current-thread tokio runtime (the main thread; the
//! signal thread is the only other), with every client bounded in time and
//! memory (the caps below), a request body never read, and connections
//! bounded in two sets. One that has sent nothing yet costs no buffer (its
//! task waits for the first byte), so many may wait ([`MAX_WAITING`], less
//! where the descriptor limit is lower): a flood of new connections must
//! open that many before a scraper that connects and sends its request a
//! little later loses its connection. One whose request is being read or
//! answered holds hyper's buffers: at most [`MAX_READING`]. Past either
//! cap the set's oldest is closed. Each connection serves one request (no
//! keep-alive: scrapes are seconds apart, and no connection sits idle).
//! SIGTERM or SIGINT stops it within [`TICK`] + [`GRACE`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant as Deadline;
use zfs_snap::signals::Signals;

use crate::exit::Failure;

/// The request line and headers, in bytes (hyper answers 431 past it).
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Headers in one request (431 past it).
const MAX_HEADERS: usize = 64;
/// hyper's read buffer; its smallest allowed size is 8 KiB.
const MAX_BUF_BYTES: usize = 16 * 1024;
/// From accepting a connection to its first byte, and from its first byte
/// to the end of its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Everything on one connection, the answer's writing included: a client
/// that reads it slowly, or not at all, is dropped then.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Connections that have sent nothing yet. Each costs a task and a socket,
/// no buffer; past the cap the oldest is closed. Lower where the
/// descriptor limit leaves fewer ([`waiting_cap`]).
const MAX_WAITING: usize = 4096;
/// Connections whose request is being read or answered. Each costs a few
/// tens of KiB at most (buffers capped above); past the cap the oldest is
/// closed.
const MAX_READING: usize = 64;
/// Closed connections whose tasks the runtime has not dropped yet (each
/// still holds its socket): past this many, no new one is taken until
/// they are.
const CLOSING: usize = 32;
/// Descriptors left to everything but waiting connections: the reading
/// ones, those closing, the listener, the state files a scrape reads, the
/// log.
const DESCRIPTORS_KEPT: u64 = (MAX_READING + CLOSING) as u64 + 64;
/// Connections the kernel completes before we take them (it caps this at
/// net.core.somaxconn): large, so that a burst of connections fills it
/// before a scrape's connection is refused and waits for a SYN retry (1 s).
const BACKLOG: u32 = 1024;
/// How often the accept loop looks for a signal while no client comes.
const TICK: Duration = Duration::from_millis(100);
/// After a signal, how long answers under way may take to finish.
const GRACE: Duration = Duration::from_millis(300);
/// Accepting that has failed for this long, without a success between, is
/// taken as for good: exit, for systemd to restart us.
const GIVE_UP: Duration = Duration::from_secs(5);

/// What the answers share: where the records are, and which bad state
/// files were already logged (each once, until it changes or goes away).
struct State {
    dir: PathBuf,
    reported: Mutex<BTreeMap<PathBuf, String>>,
}

pub fn serve(listen: &str, state_dir: &Path, signals: &Signals) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Failure::Usage(format!("exporter: cannot start its runtime: {e}")))?;
    let state = Arc::new(State {
        dir: state_dir.to_owned(),
        reported: Mutex::default(),
    });
    let served = runtime.block_on(async {
        let listener = bind(listen).map_err(|e| {
            Failure::Usage(format!(
                "exporter: cannot listen on {listen}: {e} (use --listen ADDR:PORT)"
            ))
        })?;
        let waiting_cap = waiting_cap();
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(
                listen = %addr,
                state_dir = %state_dir.display(),
                waiting_cap,
                "exporter serving /metrics"
            );
        }
        accept(listener, state, waiting_cap, signals).await
    });
    // Whatever a client still holds is dropped with the runtime, now.
    drop(runtime);
    let signal = served?;
    tracing::info!(signal, "exporter stopped");
    Ok(())
}

/// Listens on the first of `listen`'s addresses that can be bound, as
/// std's `TcpListener::bind` does, with a backlog of [`BACKLOG`].
fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in listen.to_socket_addrs()? {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(BACKLOG)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// Accepts until a signal comes (which it returns) or accepting fails for
/// good; then gives answers under way [`GRACE`] to finish.
async fn accept(
    listener: TcpListener,
    state: Arc<State>,
    waiting_cap: usize,
    signals: &Signals,
) -> Result<i32, Failure> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(false);
    let mut connections = JoinSet::new();
    let open = Arc::new(Mutex::new(Open::default()));
    let mut failing_since: Option<Instant> = None;
    let ended = loop {
        if let Some(signal) = signals.received() {
            break Ok(signal);
        }
        // A closed connection's task is dropped, and its socket closed,
        // only when the runtime gets to it: under a flood, take no new
        // connection while more tasks exist than the caps allow.
        if connections.len() >= waiting_cap + MAX_READING + CLOSING {
            if let Ok(Some(done)) = tokio::time::timeout(TICK, connections.join_next()).await {
                log_panic(done);
            }
            continue;
        }
        let accepted = match tokio::time::timeout(TICK, listener.accept()).await {
            Ok(accepted) => accepted,
            Err(_tick) => continue,
        };
        while let Some(done) = connections.try_join_next() {
            log_panic(done);
        }
        match accepted {
            Ok((stream, _)) => {
                failing_since = None;
                let (id, oldest) = lock(&open).admit(waiting_cap);
                if let Some(oldest) = oldest {
                    tracing::debug!(
                        "exporter: {waiting_cap} connections wait for a request; closing the oldest"
                    );
                    oldest.abort();
                }
                let task = connections.spawn(connection(
                    stream,
                    http.clone(),
                    Arc::clone(&state),
                    Leave {
                        open: Arc::clone(&open),
                        id,
                    },
                ));
                lock(&open).waiting.insert(id, task);
            }
            // The client gave up before we took it: nothing is wrong here.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                let since = *failing_since.get_or_insert_with(|| {
                    tracing::warn!("exporter: cannot accept a connection: {e}");
                    Instant::now()
                });
                if since.elapsed() >= GIVE_UP {
                    break Err(Failure::Usage(format!(
                        "exporter: no longer accepting connections ({e}); exiting"
                    )));
                }
                // Out of descriptors, say: the listener stays ready, so
                // accepting again at once would spin.
                tokio::time::sleep(TICK).await;
            }
        }
    };
    drop(listener);
    let finished = tokio::time::timeout(GRACE, async {
        while let Some(done) = connections.join_next().await {
            log_panic(done);
        }
    })
    .await;
    if finished.is_err() {
        tracing::debug!(
            open = connections.len(),
            "exporter: closing connections still open"
        );
    }
    ended
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("exporter: an answer panicked: {e}");
        }
    }
}

/// The open connections, by the order they came in (`u64` ids, rising).
#[derive(Default)]
struct Open {
    next: u64,
    /// Accepted, nothing received yet.
    waiting: BTreeMap<u64, AbortHandle>,
    /// Their request being read or answered.
    reading: BTreeMap<u64, AbortHandle>,
}

impl Open {
    /// A new connection's id, and the oldest waiting one to close if
    /// `cap` are waiting.
    fn admit(&mut self, cap: usize) -> (u64, Option<AbortHandle>) {
        let id = self.next;
        self.next += 1;
        let oldest = (self.waiting.len() >= cap)
            .then(|| self.waiting.pop_first().map(|(_, task)| task))
            .flatten();
        (id, oldest)
    }

    /// Connection `id` has sent its first byte: moved to the reading set,
    /// with the oldest reading one to close if [`MAX_READING`] were; `None`
    /// if `id` is not waiting.
    fn promote(&mut self, id: u64) -> Option<Option<AbortHandle>> {
        let task = self.waiting.remove(&id)?;
        let oldest = (self.reading.len() >= MAX_READING)
            .then(|| self.reading.pop_first().map(|(_, task)| task))
            .flatten();
        self.reading.insert(id, task);
        Some(oldest)
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    // Every change to it is one map operation: a panic left nothing half-done.
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's place in [`Open`], given up when its task ends or is
/// closed.
struct Leave {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        open.waiting.remove(&self.id);
        open.reading.remove(&self.id);
    }
}

/// How many connections may wait for their first byte: [`MAX_WAITING`],
/// or what the descriptor limit leaves after [`DESCRIPTORS_KEPT`] (the
/// unit raises it with `LimitNOFILE=`; its seccomp filter forbids raising
/// it here). The limit by `getrlimit`, else from `/proc/self/limits` (a
/// filter may refuse the call), else 1024, the kernel's default.
fn waiting_cap() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/self/limits")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Max open files"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(1024);
    let left = soft.saturating_sub(DESCRIPTORS_KEPT).max(16);
    usize::try_from(left).map_or(MAX_WAITING, |left| left.min(MAX_WAITING))
}

async fn connection(stream: TcpStream, http: http1::Builder, state: Arc<State>, place: Leave) {
    let deadline = Deadline::now() + CONNECTION_DEADLINE;
    // Until its first byte (or its end) a connection holds no buffer.
    // `peek`, not `readable`: the latter reports a new socket ready before
    // anything came.
    match tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut [0; 1])).await {
        Ok(Ok(0)) => return tracing::debug!("exporter: connection closed before a request"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return tracing::debug!("exporter: connection ended: {e}"),
        Err(_) => return tracing::debug!("exporter: nothing received in {HEADER_TIMEOUT:?}"),
    }
    // Its place was taken at accepting, before this task could run (the
    // runtime has one thread, and `spawn` does not poll); a closed task is
    // never polled again. Without a place, it is not served.
    let Some(oldest) = lock(&place.open).promote(place.id) else {
        return;
    };
    if let Some(oldest) = oldest {
        tracing::debug!("exporter: {MAX_READING} requests being read; closing the oldest");
        oldest.abort();
    }
    // Boxed: a waiting connection's task does not carry hyper's state.
    Box::pin(answer_on(stream, http, state, deadline)).await;
}

async fn answer_on(stream: TcpStream, http: http1::Builder, state: Arc<State>, deadline: Deadline) {
    let service = service_fn(move |request| {
        let response = answer(&request, &state);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout_at(deadline, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("exporter: connection ended: {e}"),
        Err(_) => tracing::debug!("exporter: connection dropped after {CONNECTION_DEADLINE:?}"),
    }
}

fn answer(request: &Request<Incoming>, state: &State) -> Response<String> {
    if request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "zfs-snap exporter: only /metrics is served\n",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "zfs-snap exporter: GET /metrics\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // A Content-Length above 0 or any Transfer-Encoding: refused, and the
    // body never read (the connection closes after the answer).
    if !request.body().is_end_stream() {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "zfs-snap exporter: a scrape has no body\n",
        );
    }
    let recorded = zfs_snap::records::read(&state.dir);
    {
        // A panic while it was held left nothing half-done in the map.
        let mut reported = state
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (file, why) in &recorded.unreadable {
            if reported.get(file) != Some(why) {
                tracing::warn!("{}: {why}; left out of the metrics", file.display());
                reported.insert(file.clone(), why.clone());
            }
        }
        reported.retain(|file, _| recorded.unreadable.iter().any(|(f, _)| f == file));
    }
    let mut response = Response::new(zfs_snap::metrics::render(&recorded));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(zfs_snap::metrics::CONTENT_TYPE),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response
}
