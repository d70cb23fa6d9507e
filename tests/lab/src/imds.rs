//! An IMDSv2 emulator, one per NAT instance.
//!
//! Speaks just enough HTTP/1.1 for the AWS SDK's IMDS client: `PUT
//! /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` issues a
//! token; every `GET` must carry a valid, unexpired
//! `X-aws-ec2-metadata-token` or gets 401 (tokens enforced, as on an
//! instance that requires IMDSv2); unknown paths get 404. Values can be
//! changed while it runs (e.g. `autoscaling/target-lifecycle-state`), and
//! it can be made unavailable to test boot-time retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    values: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    /// While true, every request is answered 503.
    unavailable: bool,
    rejected_without_token: u32,
    served: u32,
}

/// Handle to a running emulator; the server stops when the handle drops.
#[derive(Clone)]
pub struct Imds {
    state: Arc<Mutex<State>>,
    pub addr: std::net::SocketAddr,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Metadata of one instance, under `/latest/meta-data/`.
#[derive(Debug, Clone)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub region: String,
    pub az: String,
    pub mac: String,
    pub eni: String,
    pub vpc_id: String,
    pub vpc_cidrs: Vec<String>,
    pub subnet_id: String,
    pub private_ip: String,
}

impl InstanceMetadata {
    pub fn values(&self) -> HashMap<String, String> {
        let m = format!("network/interfaces/macs/{}", self.mac);
        [
            ("instance-id".to_owned(), self.instance_id.clone()),
            ("placement/availability-zone".into(), self.az.clone()),
            ("placement/region".into(), self.region.clone()),
            ("mac".into(), self.mac.clone()),
            ("local-ipv4".into(), self.private_ip.clone()),
            (format!("{m}/interface-id"), self.eni.clone()),
            (format!("{m}/vpc-id"), self.vpc_id.clone()),
            (format!("{m}/subnet-id"), self.subnet_id.clone()),
            (
                format!("{m}/vpc-ipv4-cidr-blocks"),
                self.vpc_cidrs.join("\n"),
            ),
            (format!("{m}/local-ipv4s"), self.private_ip.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("/latest/meta-data/{k}"), v))
        .collect()
    }
}

impl Imds {
    /// Serve on `listener` (which may live in any network namespace).
    pub fn serve(
        listener: std::net::TcpListener,
        values: HashMap<String, String>,
    ) -> std::io::Result<Imds> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let state = Arc::new(Mutex::new(State {
            values,
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = handle(conn, st).await;
                });
            }
        });
        Ok(Imds {
            state,
            addr,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Set `path` (relative to `/latest/meta-data/`) to `value`.
    pub fn set(&self, path: &str, value: &str) {
        self.lock()
            .values
            .insert(format!("/latest/meta-data/{path}"), value.to_owned());
    }

    pub fn remove(&self, path: &str) {
        self.lock()
            .values
            .remove(&format!("/latest/meta-data/{path}"));
    }

    pub fn set_unavailable(&self, down: bool) {
        self.lock().unavailable = down;
    }

    /// GETs refused for lack of a valid token.
    pub fn rejected_without_token(&self) -> u32 {
        self.lock().rejected_without_token
    }

    /// Metadata values served (200 answers to GETs).
    pub fn served(&self) -> u32 {
        self.lock().served
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn handle(mut conn: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("read timeout"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 16 * 1024 {
            return respond(&mut conn, 400, "request too large", None).await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();

    let mut ttl_header = None;
    let (status, body) = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if st.unavailable {
            (503, String::from("unavailable"))
        } else if method == "PUT" && path == "/latest/api/token" {
            match headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|t| t.parse::<u64>().ok())
                .filter(|t| (1..=21600).contains(t))
            {
                Some(ttl) => {
                    let token = format!("lab-token-{:016x}", fastrand_u64());
                    st.tokens
                        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
                    ttl_header = Some(ttl);
                    (200, token)
                }
                None => (400, "missing or invalid token TTL".into()),
            }
        } else if method == "GET" {
            let valid = headers
                .get("x-aws-ec2-metadata-token")
                .and_then(|t| st.tokens.get(t))
                .is_some_and(|exp| *exp > Instant::now());
            if !valid {
                st.rejected_without_token += 1;
                (401, "Unauthorized".into())
            } else if let Some(v) = st.values.get(&path).cloned() {
                st.served += 1;
                (200, v)
            } else {
                (404, "Not Found".into())
            }
        } else {
            (405, "Method Not Allowed".into())
        }
    };
    respond(&mut conn, status, &body, ttl_header).await
}

async fn respond(
    conn: &mut TcpStream,
    status: u16,
    body: &str,
    ttl: Option<u64>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let ttl = ttl
        .map(|t| format!("x-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
        .unwrap_or_default();
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n{ttl}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}
