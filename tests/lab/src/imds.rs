//! An IMDSv2 emulator, one per NAT instance.
//!
//! Speaks just enough HTTP/1.1 for the AWS SDK's IMDS client: `PUT
//! /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` issues a
//! token; every `GET` must carry a valid, unexpired
//! `X-aws-ec2-metadata-token` or gets 401 (tokens enforced, as on an
//! instance that requires IMDSv2); unknown paths get 404. It serves the
//! standard instance metadata set with EC2's formats ([`PATHS`], the
//! per-interface paths, the public address while there is one, the
//! identity document one key per line) and lists directories as EC2 does.
//! Not emulated: the token hop limit (every request comes from inside the
//! instance), the document's signatures, user data. Values can be changed
//! while it runs (e.g. `autoscaling/target-lifecycle-state`), and it can be
//! made to misbehave ([`ImdsFault`]: slow, hung, erroring, down for a
//! while) to test the daemon's retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    values: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    /// A fault on every request, until a time (or until cleared).
    fault: Option<(ImdsFault, Option<Instant>)>,
    rejected_without_token: u32,
    served: u32,
}

/// How the emulator misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsFault {
    /// Answer, but this much later.
    Delay(Duration),
    /// Never answer while the fault lasts.
    Hang,
    /// Answer every request with this status (503: down).
    Error(u16),
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

/// Metadata of one instance, as EC2 has it.
#[derive(Debug, Clone, Default)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub region: String,
    pub az: String,
    pub mac: String,
    pub eni: String,
    pub vpc_id: String,
    /// The VPC's networks, the primary first.
    pub vpc_cidrs: Vec<String>,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub private_ip: String,
    pub image_id: String,
    pub instance_type: String,
    pub account_id: String,
    pub reservation_id: String,
    /// When it was launched (RFC 3339): the identity document's `pendingTime`.
    pub launch_time: String,
    /// The interface's security groups: (id, name).
    pub security_groups: Vec<(String, String)>,
    /// Its public address, if it has one now (see [`Imds::set_public_ipv4`]).
    pub public_ipv4: Option<String>,
}

/// The standard paths served under `/latest/meta-data/` (besides the
/// per-interface ones under `network/interfaces/macs/<mac>/`, and
/// `public-ipv4`/`public-hostname` while the instance has a public address),
/// and under `/latest/dynamic/`. README lists them.
pub const PATHS: [&str; 21] = [
    "ami-id",
    "ami-launch-index",
    "ami-manifest-path",
    "block-device-mapping/ami",
    "block-device-mapping/root",
    "hostname",
    "instance-action",
    "instance-id",
    "instance-life-cycle",
    "instance-type",
    "local-hostname",
    "local-ipv4",
    "mac",
    "placement/availability-zone",
    "placement/availability-zone-id",
    "placement/region",
    "profile",
    "reservation-id",
    "security-groups",
    "services/domain",
    "services/partition",
];

impl InstanceMetadata {
    /// EC2's private DNS name: `ip-10-0-0-10.ec2.internal` in us-east-1,
    /// `ip-10-0-0-10.<region>.compute.internal` elsewhere.
    pub fn hostname(&self) -> String {
        let host = format!("ip-{}", self.private_ip.replace('.', "-"));
        match self.region.as_str() {
            "us-east-1" => format!("{host}.ec2.internal"),
            r => format!("{host}.{r}.compute.internal"),
        }
    }

    /// The AZ's ID as EC2 names them (`use1-az1` for us-east-1a): the
    /// region's short code and the zone letter's place. (On AWS the mapping
    /// from names to IDs differs per account; the lab's is fixed.)
    pub fn az_id(&self) -> String {
        let mut parts = self.region.split('-');
        let code: String = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(n)) => {
                let dir: String = b.chars().take(1).collect();
                format!("{a}{dir}{n}")
            }
            _ => self.region.clone(),
        };
        let letter = self.az.chars().last().unwrap_or('a');
        let n = u32::from(letter).saturating_sub(u32::from('a')) + 1;
        format!("{code}-az{n}")
    }

    /// The instance identity document, formatted as EC2 serves it: one key
    /// per line (boot scripts `grep` it).
    pub fn identity_document(&self) -> String {
        let arch = match self.instance_type.split('.').next() {
            Some(f) if f.contains('g') => "arm64",
            _ => "x86_64",
        };
        let fields = [
            ("accountId", format!("\"{}\"", self.account_id)),
            ("architecture", format!("\"{arch}\"")),
            ("availabilityZone", format!("\"{}\"", self.az)),
            ("billingProducts", "null".into()),
            ("devpayProductCodes", "null".into()),
            ("marketplaceProductCodes", "null".into()),
            ("imageId", format!("\"{}\"", self.image_id)),
            ("instanceId", format!("\"{}\"", self.instance_id)),
            ("instanceType", format!("\"{}\"", self.instance_type)),
            ("kernelId", "null".into()),
            ("pendingTime", format!("\"{}\"", self.launch_time)),
            ("privateIp", format!("\"{}\"", self.private_ip)),
            ("ramdiskId", "null".into()),
            ("region", format!("\"{}\"", self.region)),
            ("version", "\"2017-09-30\"".into()),
        ];
        let lines: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\" : {v}"))
            .collect();
        format!("{{\n{}\n}}", lines.join(",\n"))
    }

    /// Every value served, by full path.
    pub fn values(&self) -> HashMap<String, String> {
        let m = format!("network/interfaces/macs/{}", self.mac);
        let groups = |f: fn(&(String, String)) -> &String| {
            self.security_groups
                .iter()
                .map(f)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        let host = self.hostname();
        let mut v: Vec<(String, String)> = [
            ("ami-id", self.image_id.clone()),
            ("ami-launch-index", "0".into()),
            ("ami-manifest-path", "(unknown)".into()),
            ("block-device-mapping/ami", "/dev/xvda".into()),
            ("block-device-mapping/root", "/dev/xvda".into()),
            ("hostname", host.clone()),
            ("instance-action", "none".into()),
            ("instance-id", self.instance_id.clone()),
            ("instance-life-cycle", "on-demand".into()),
            ("instance-type", self.instance_type.clone()),
            ("local-hostname", host.clone()),
            ("local-ipv4", self.private_ip.clone()),
            ("mac", self.mac.clone()),
            ("placement/availability-zone", self.az.clone()),
            ("placement/availability-zone-id", self.az_id()),
            ("placement/region", self.region.clone()),
            ("profile", "default-hvm".into()),
            ("reservation-id", self.reservation_id.clone()),
            ("security-groups", groups(|g| &g.1)),
            ("services/domain", "amazonaws.com".into()),
            ("services/partition", "aws".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        v.extend(
            [
                ("device-number", "0".to_owned()),
                ("interface-id", self.eni.clone()),
                ("local-hostname", host),
                ("local-ipv4s", self.private_ip.clone()),
                ("mac", self.mac.clone()),
                ("owner-id", self.account_id.clone()),
                ("security-group-ids", groups(|g| &g.0)),
                ("security-groups", groups(|g| &g.1)),
                ("subnet-id", self.subnet_id.clone()),
                ("subnet-ipv4-cidr-block", self.subnet_cidr.clone()),
                ("vpc-id", self.vpc_id.clone()),
                (
                    "vpc-ipv4-cidr-block",
                    self.vpc_cidrs.first().cloned().unwrap_or_default(),
                ),
                ("vpc-ipv4-cidr-blocks", self.vpc_cidrs.join("\n")),
            ]
            .into_iter()
            .map(|(k, v)| (format!("{m}/{k}"), v)),
        );
        let mut out: HashMap<String, String> = v
            .into_iter()
            .map(|(k, v)| (format!("/latest/meta-data/{k}"), v))
            .collect();
        out.insert(
            "/latest/dynamic/instance-identity/document".into(),
            self.identity_document(),
        );
        if let Some(ip) = &self.public_ipv4 {
            for (k, v) in public_values(&self.mac, ip) {
                out.insert(k, v);
            }
        }
        out
    }
}

/// The paths that exist while the instance has public address `ip`.
fn public_values(mac: &str, ip: &str) -> Vec<(String, String)> {
    let name = format!("ec2-{}.compute-1.amazonaws.com", ip.replace('.', "-"));
    let m = format!("/latest/meta-data/network/interfaces/macs/{mac}");
    vec![
        ("/latest/meta-data/public-ipv4".into(), ip.to_owned()),
        ("/latest/meta-data/public-hostname".into(), name.clone()),
        (format!("{m}/public-ipv4s"), ip.to_owned()),
        (format!("{m}/public-hostname"), name),
        (format!("{m}/ipv4-associations/{ip}"), String::new()),
    ]
}

/// What a GET of `path` returns: its value, or for a directory the list of
/// what is in it (sub-directories with a trailing `/`), as EC2 answers.
fn lookup(values: &HashMap<String, String>, path: &str) -> Option<String> {
    if let Some(v) = values.get(path) {
        return Some(v.clone());
    }
    let dir = format!("{}/", path.trim_end_matches('/'));
    let mut entries: Vec<String> = values
        .keys()
        .filter_map(|k| k.strip_prefix(&dir))
        .map(|rest| match rest.split_once('/') {
            Some((d, _)) => format!("{d}/"),
            None => rest.to_owned(),
        })
        .collect();
    entries.sort();
    entries.dedup();
    (!entries.is_empty()).then(|| entries.join("\n"))
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

    /// The instance's public address changed (an Elastic IP claimed, or
    /// released): `None` removes the public paths, as EC2 does.
    pub fn set_public_ipv4(&self, mac: &str, ip: Option<&str>) {
        let mut st = self.lock();
        let now = st.values.get("/latest/meta-data/public-ipv4").cloned();
        if now.as_deref() == ip {
            return;
        }
        if let Some(old) = now {
            for (k, _) in public_values(mac, &old) {
                st.values.remove(&k);
            }
        }
        if let Some(ip) = ip {
            st.values.extend(public_values(mac, ip));
        }
    }

    /// Answer every request 503 (or stop doing so).
    pub fn set_unavailable(&self, down: bool) {
        self.lock().fault = down.then_some((ImdsFault::Error(503), None));
    }

    /// Misbehave for `for_`.
    pub fn set_fault(&self, fault: ImdsFault, for_: Duration) {
        self.lock().fault = Some((fault, Some(Instant::now() + for_)));
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

    let fault = || fault_now(&mut state.lock().unwrap_or_else(|p| p.into_inner()));
    let mut error = None;
    match fault() {
        Some(ImdsFault::Delay(d)) => tokio::time::sleep(d).await,
        Some(ImdsFault::Hang) => {
            while fault() == Some(ImdsFault::Hang) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(ImdsFault::Error(code)) => error = Some(code),
        None => {}
    }
    let mut ttl_header = None;
    let (status, body) = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(code) = error {
            (code, String::from("unavailable"))
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
            } else if let Some(v) = lookup(&st.values, &path) {
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
        500 => "Internal Server Error",
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

fn fault_now(st: &mut State) -> Option<ImdsFault> {
    if st
        .fault
        .is_some_and(|(_, until)| until.is_some_and(|u| Instant::now() >= u))
    {
        st.fault = None;
    }
    st.fault.map(|(f, _)| f)
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}
