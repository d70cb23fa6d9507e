//! The endpoints on `metrics.listen`: `/metrics` ([`super::metrics`]),
//! `/health` and `/status` ([`super::snapshot`]), read from the
//! daemon's shared state when asked.
//!
//! Whoever can reach the port must not be able to take what the daemon
//! needs to work (descriptors, memory, CPU, tasks), so the server is
//! bounded ([`Limits`]): at most [`MAX_CONNECTIONS`] connections at once
//! and [`MAX_PER_SOURCE`] from one address — one more is accepted and
//! closed at once (shed), so its descriptor is back within microseconds —
//! the request head within [`HEADER_TIMEOUT`], and any connection closed
//! after [`CONNECTION_LIFETIME`], keep-alive included. The kernel's
//! counters are read at most every [`super::readings::KERNEL_READ_EVERY`]
//! whatever the scrapes ask ([`super::readings`]). Who may connect at all is
//! `metrics.allow`, enforced by the kernel (hanat's input filter), which
//! also resets an address's connection past its 8th open one, before it
//! takes a place in the listen queue EC2's status check needs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;
use tracing::{info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use super::readings::refresh;
use super::snapshot::snapshot;
use crate::decide::backoff::PEER_PORT_RETRY;

/// Connections served at once. A scraper and EC2's status check need one
/// each; the rest is room for `hanat status` and a few more scrapers.
/// With the per-source cap, one host holds at most [`MAX_PER_SOURCE`].
pub const MAX_CONNECTIONS: usize = 32;

/// Connections one address may hold at once.
pub const MAX_PER_SOURCE: usize = 4;

/// Time for a client to send its request head. A scraper sends it at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Any connection is closed this long after it was accepted: a slow
/// reader, a held keep-alive.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// What one connection may buffer of a request (hyper's default is
/// about 400 KiB): the endpoints take bodiless `GET`s of a few hundred
/// bytes, so a client sending more only fills its own 16 KiB, and 32
/// connections hold at most half a megabyte.
pub const MAX_BUFFER: usize = 16 * 1024;

/// Serve the endpoints on `addr` until aborted. A port that cannot be
/// bound (a predecessor still holds it) is retried; nothing here ever stops
/// the daemon.
pub async fn serve(ctx: Arc<Ctx>, addr: SocketAddr) {
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(listen = %addr, error = %e, retry_in = %crate::domain::human(PEER_PORT_RETRY), "cannot open the metrics endpoint; retrying");
                tokio::time::sleep(PEER_PORT_RETRY).await;
            }
        }
    };
    info!(listen = %addr, max_connections = MAX_CONNECTIONS, per_source = MAX_PER_SOURCE, "metrics, health and status endpoints on");
    let limits = Limits::default();
    let mut throttle = LogThrottle::default();
    // A descriptor held back for the one connection that comes when the
    // process has none left (something else took them): EC2's status check
    // still gets its `/health` answer, which needs no other descriptor.
    let mut reserve = Reserve::open();
    loop {
        let (stream, from, on_reserve) = match listener.accept().await {
            Ok((stream, from)) => (stream, from, false),
            Err(e) if reserve.is_some() && Reserve::out_of_descriptors(&e) => {
                drop(reserve.take());
                match listener.accept().await {
                    Ok((stream, from)) => (stream, from, true),
                    Err(_) => {
                        reserve = Reserve::open();
                        continue;
                    }
                }
            }
            Err(e) => {
                // Out of descriptors: wait rather than spin on a listener
                // that stays readable.
                if let Some(n) = throttle.check("accept", &e.to_string(), Instant::now()) {
                    warn!(suppressed = n, error = %e, "cannot accept a connection to the endpoints");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                reserve = reserve.or_else(Reserve::open);
                continue;
            }
        };
        let Some(slot) = limits.admit(from.ip()) else {
            // Shed: closed at once, its descriptor freed.
            ctx.metrics.endpoint_shed();
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let served = tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
        // The connection on the reserve's descriptor is served alone; the
        // reserve is taken back once it is closed.
        if on_reserve {
            let _ = served.await;
            reserve = Reserve::open();
        }
    }
}

/// The endpoints' spare descriptor (`/dev/null`), see [`serve`].
struct Reserve;

impl Reserve {
    fn open() -> Option<std::fs::File> {
        std::fs::File::open("/dev/null").ok()
    }

    fn out_of_descriptors(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error().map(nix::errno::Errno::from_raw),
            Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE)
        )
    }
}

/// The endpoints' connection caps: [`MAX_CONNECTIONS`] in all,
/// [`MAX_PER_SOURCE`] per address. Pure bookkeeping; a [`Slot`] is
/// handed back when its connection ends.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    from: IpAddr,
}

impl Limits {
    /// A place for a connection from `from`, or `None` when the endpoint or
    /// that address is at its cap.
    pub fn admit(&self, from: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = held.values().sum();
        let mine = held.get(&from).copied().unwrap_or(0);
        if total >= MAX_CONNECTIONS || mine >= MAX_PER_SOURCE {
            return None;
        }
        held.insert(from, mine + 1);
        Some(Slot {
            held: self.held.clone(),
            from,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.from);
            }
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn answer(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            refresh(ctx).await;
            // OpenMetrics to whoever asks for it (Prometheus does), the
            // classic text format to everyone else.
            let openmetrics = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let encoded = match openmetrics {
                true => ctx.metrics.encode().map(|t| (OPENMETRICS, t)),
                false => ctx.metrics.encode_classic().map(|t| (CLASSIC, t)),
            };
            match encoded {
                Ok((kind, text)) => reply(StatusCode::OK, kind, text),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "cannot encode the metrics\n".into(),
                ),
            }
        }
        "/health" => {
            let s = snapshot(ctx).await;
            let body = serde_json::json!({
                "healthy": s.healthy,
                "verdict": s.verdict,
                "reasons": s.reasons,
                "warnings": s.warnings,
            });
            let code = match s.healthy {
                true => StatusCode::OK,
                false => StatusCode::SERVICE_UNAVAILABLE,
            };
            reply(code, "application/json", format!("{body}\n"))
        }
        "/status" => {
            let s = snapshot(ctx).await;
            let body = serde_json::to_string(&s).unwrap_or_else(|_| "{}".into());
            reply(StatusCode::OK, "application/json", format!("{body}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /health, /status\n".into(),
        ),
    }
}

fn reply(code: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_connection() {
        let limits = Limits::default();
        let host = |i: u8| IpAddr::from([10, 0, 1, i]);
        let flood: Vec<Slot> = (0..100).filter_map(|_| limits.admit(host(9))).collect();
        assert_eq!(flood.len(), MAX_PER_SOURCE);
        // Others still get in, up to the cap in all.
        let mut others = Vec::new();
        for i in 10..=200 {
            others.extend(limits.admit(host(i)));
        }
        assert_eq!(others.len(), MAX_CONNECTIONS - MAX_PER_SOURCE);
        assert!(limits.admit(host(1)).is_none());
        // Refused addresses leave nothing behind.
        assert_eq!(
            limits.held.lock().unwrap().len(),
            MAX_CONNECTIONS - MAX_PER_SOURCE + 1
        );
        // A connection that ends gives its place back.
        drop(flood);
        assert!(limits.admit(host(1)).is_some());
        assert!(limits.admit(host(9)).is_some());
    }
}
