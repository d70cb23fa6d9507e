//! The daemon's configuration file (`/etc/hanat/hanat.toml`).
//!
//! Parsed once at start-up into plain values. Unknown keys are errors, and
//! every error names the file, the key and the problem, so an operator can fix
//! a typo without reading source. No I/O beyond reading the one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::Ipv4Cidr;
pub use crate::domain::{Conntrack, NatGatewayId, ProbeTarget};

/// A configuration problem. The message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key has a bad value, an unknown name, or the file is not TOML.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// Dotted key such as `heartbeat.interval`; `(file)` for syntax errors.
        key: String,
        message: String,
    },
}

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub discovery: Discovery,
    pub routes: Routes,
    pub heartbeat: Heartbeat,
    pub kernel: Kernel,
    pub peers: Peers,
    pub exit: Exit,
    pub eip: Eip,
    pub snat: Snat,
    pub aws: Aws,
    pub log: Log,
    pub metrics: Metrics,
    pub cloudwatch: CloudWatch,
}

/// Publishing to CloudWatch: the NAT Gateway's metrics, the verdict, and
/// whether each AZ has a forwarding NAT (`docs/observability.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatch {
    /// Off by default (it costs money); the templates turn it on.
    pub enabled: bool,
    /// Where the metrics go; the templates' IAM policy allows only this one.
    pub namespace: String,
    /// One `PutMetricData` call this often.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// `all`, or `alarms`: only the three metrics the templates' alarms
    /// watch (under a third of the cost).
    pub metrics: MetricSet,
}

impl Default for CloudWatch {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: "hanat".into(),
            interval: Duration::from_secs(60),
            metrics: MetricSet::All,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricSet {
    All,
    Alarms,
}

/// The metrics, health and status endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Where to serve `/metrics`, `/health` and `/status`; `""` turns them
    /// off. The templates' security group admits only the VPC.
    #[serde(deserialize_with = "listen")]
    pub listen: Option<std::net::SocketAddr>,
    /// Who may connect to the endpoints, enforced in hanat's nftables
    /// input filter (loopback always may). Unset: the VPC's CIDRs, which
    /// hold the NAT's own subnet (EC2's application status check asks from
    /// there) and a Prometheus in the VPC. `[]`: loopback only.
    pub allow: Option<Vec<Ipv4Cidr>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 7472))),
            allow: None,
        }
    }
}

impl Metrics {
    /// Who may connect to the endpoints, `vpc` being the VPC's CIDRs.
    pub fn allowed(&self, vpc: &[Ipv4Cidr]) -> Vec<Ipv4Cidr> {
        self.allow.clone().unwrap_or_else(|| vpc.to_vec())
    }
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{s}` is not an address like 0.0.0.0:7472 (\"\" turns the endpoints off)"
        ))
    })
}

/// Which subnets are ours to serve.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    pub tag_key: String,
    pub tag_value: String,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            tag_key: "network".into(),
            tag_value: "private".into(),
        }
    }
}

/// How route tables are taken over and kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// How often routes and the source/destination check are re-read and
    /// repaired. Each wait is jittered by ±10% so a fleet of NATs does not
    /// call the EC2 API in lock-step. 30 s is 3 read calls per NAT per
    /// 30 s in steady state: far below EC2's throttling limits.
    #[serde(deserialize_with = "duration")]
    pub reconcile_interval: Duration,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(30),
        }
    }
}

/// The forwarding heartbeat.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Where probes go, through the NAT path. Any target answering means
    /// the NAT forwards.
    pub targets: Vec<ProbeTarget>,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed rounds before the daemon reconverges the kernel
    /// and, if the next round also fails, marks the instance Unhealthy.
    pub fall: u32,
    /// Consecutive good rounds that clear a failure state.
    pub rise: u32,
    /// After start-up, failures do not count until the first good round or
    /// until this much time has passed, whichever comes first.
    #[serde(deserialize_with = "duration")]
    pub grace_period: Duration,
    /// Name of the daemon's own probe network namespace (`/run/netns/NAME`).
    pub probe_namespace: String,
    /// A /30 for the veth between the host and the probe namespace. Must not
    /// overlap the VPC; it is NATed exactly like VPC traffic.
    pub probe_cidr: Ipv4Cidr,
    /// A daemon that cannot *send* its probes (out of file descriptors or
    /// memory: no evidence that packets stop flowing) for this long ends
    /// itself (exit 75) so systemd starts a fresh one; the kernel forwards
    /// meanwhile. It never reports its instance Unhealthy for that.
    #[serde(deserialize_with = "duration")]
    pub unable_restart: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            targets: [
                "tcp://1.1.1.1:443",
                "tcp://8.8.8.8:443",
                "tcp://9.9.9.9:443",
            ]
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            fall: 3,
            rise: 2,
            grace_period: Duration::from_secs(60),
            probe_namespace: "hanat-probe".into(),
            probe_cidr: Ipv4Cidr {
                addr: std::net::Ipv4Addr::new(198, 19, 255, 252),
                prefix: 30,
            },
            unable_restart: Duration::from_secs(10),
        }
    }
}

/// Kernel NAT settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kernel {
    /// The interface to masquerade out of. Empty: the interface whose MAC is
    /// the primary MAC in instance metadata.
    pub interface: String,
    /// `net.netfilter.nf_conntrack_max`: `"auto"` (from the instance's
    /// memory, [`Kernel::conntrack`]), a number, or 0 to leave the
    /// kernel's value alone.
    #[serde(deserialize_with = "sizing")]
    pub conntrack_max: Sizing,
    /// `net.netfilter.nf_conntrack_buckets` (the hash table; writable in
    /// the initial network namespace only): `"auto"` (as many as
    /// `conntrack_max`), a number, or 0 to leave it.
    #[serde(deserialize_with = "sizing")]
    pub conntrack_buckets: Sizing,
    /// Conntrack's timeouts (`nf_conntrack_tcp_timeout_established`,
    /// `…_tcp_timeout_time_wait`, `…_udp_timeout` for a flow without an
    /// answer, `…_udp_timeout_stream` for one with).
    #[serde(deserialize_with = "duration")]
    pub tcp_timeout_established: Duration,
    #[serde(deserialize_with = "duration")]
    pub tcp_timeout_time_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub udp_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub udp_timeout_stream: Duration,
    /// How often sysctls, the nftables table and the probe namespace are
    /// re-checked and repaired.
    #[serde(deserialize_with = "duration")]
    pub converge_interval: Duration,
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            interface: String::new(),
            conntrack_max: Sizing::Auto,
            conntrack_buckets: Sizing::Auto,
            converge_interval: Duration::from_secs(10),
            tcp_timeout_established: Duration::from_secs(7440),
            tcp_timeout_time_wait: Duration::from_secs(120),
            udp_timeout: Duration::from_secs(30),
            udp_timeout_stream: Duration::from_secs(120),
        }
    }
}

/// A table size: derived from the instance, given, or left to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    Auto,
    /// 0: leave the kernel's value alone.
    Fixed(u64),
}

fn sizing<'de, D: Deserializer<'de>>(d: D) -> Result<Sizing, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Sizing;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("\"auto\", a number, or 0 to leave the kernel's value")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Sizing, E> {
            u64::try_from(v)
                .map(Sizing::Fixed)
                .map_err(|_| E::custom(format!("{v} is negative: use \"auto\", a number, or 0")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Sizing, E> {
            Ok(Sizing::Fixed(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sizing, E> {
            match v {
                "auto" => Ok(Sizing::Auto),
                _ => Err(E::custom(format!(
                    "`{v}`: use \"auto\", a number, or 0 to leave the kernel's value"
                ))),
            }
        }
    }
    d.deserialize_any(Visitor)
}

/// What one tracked connection costs the kernel, with its share of the
/// hash table and NAT extension, rounded up (the `nf_conntrack` slab
/// object is 256 bytes on 64-bit kernels).
pub const CONNTRACK_ENTRY_BYTES: u64 = 320;

impl Kernel {
    /// Conntrack's settings for an instance with `memory` bytes. `auto`
    /// gives the table a quarter of the memory at
    /// [`CONNTRACK_ENTRY_BYTES`] an entry, rounded down to a power of two,
    /// at least 65,536 and at most 4,194,304 (a t4g.nano's 512 MiB:
    /// 262,144); buckets as many as entries (chains of one, as the
    /// kernel's own default).
    pub fn conntrack(&self, memory: u64) -> Conntrack {
        let auto_max = {
            let fit = (memory / 4 / CONNTRACK_ENTRY_BYTES).max(1);
            (1u64 << (63 - fit.leading_zeros())).clamp(65_536, 4_194_304)
        };
        let max = match self.conntrack_max {
            Sizing::Auto => Some(auto_max),
            Sizing::Fixed(0) => None,
            Sizing::Fixed(n) => Some(n),
        };
        let buckets = match self.conntrack_buckets {
            Sizing::Auto => max,
            Sizing::Fixed(0) => None,
            Sizing::Fixed(n) => Some(n),
        };
        Conntrack {
            max,
            buckets,
            tcp_established: self.tcp_timeout_established.as_secs(),
            tcp_time_wait: self.tcp_timeout_time_wait.as_secs(),
            udp: self.udp_timeout.as_secs(),
            udp_stream: self.udp_timeout_stream.as_secs(),
        }
    }
}

/// Failover between the NAT instances of one deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peers {
    /// `peer`: a healthy NAT adopts the private routes of an AZ whose NAT
    /// died; `none`: each AZ waits for its own replacement.
    pub failover: Failover,
    /// How the AZ's own NAT takes its routes back from an adopter:
    /// `immediate`, or `drain:<duration>` to let the adopter's connections
    /// finish first.
    #[serde(deserialize_with = "failback")]
    pub failback: Duration,
    /// UDP port of the heartbeats between NAT instances; the next port
    /// carries the flow hand-off tunnel.
    pub port: u16,
    /// How often each NAT tells its peers how it is (and at once when that
    /// changes). Datagrams are tiny: this can be short.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// A peer that has not been heard from for this long is suspect; it is
    /// declared dead only when EC2 confirms its instance is gone.
    #[serde(deserialize_with = "duration")]
    pub dead_after: Duration,
    /// The tag on the Auto Scaling groups that marks one deployment; peers
    /// are the groups with the same value as ours.
    pub group_tag: String,
    /// After taking routes from a NAT that still forwards (a peer on a
    /// planned exit, or an adopter giving this AZ back), send the packets of
    /// connections it translates to it through a tunnel for at most this
    /// long (and only while it is heard from), so they are not reset.
    /// `0s` turns flow hand-off off.
    #[serde(deserialize_with = "duration")]
    pub flow_handoff: Duration,
    /// Per AZ, a managed NAT Gateway to point the AZ's private routes at
    /// when no NAT instance of the deployment is healthy to serve it; a NAT
    /// instance takes the routes back as soon as it is healthy.
    pub fallback_nat_gateway_id: BTreeMap<String, NatGatewayId>,
    /// The Secrets Manager secret (ARN or name) holding the key that signs
    /// and checks heartbeats (`hanat/2`); its `AWSPREVIOUS` version is
    /// accepted too, for rotation. Without it (or empty), peer failover is
    /// off unless `accept_unauthenticated` is on.
    #[serde(deserialize_with = "blank_is_none")]
    pub key_secret: Option<String>,
    /// Accept unauthenticated `hanat/1` heartbeats (and send them when there
    /// is no key): only for a rolling upgrade from a version without keys.
    /// Anyone who can forge a NAT's source address can then fake its verdict.
    pub accept_unauthenticated: bool,
    /// An EC2 application status check (`asc-…`, or its ARN) that probes
    /// this NAT's `/health`: the daemon associates its own instance with it
    /// at start, and peers take "silent **and** impaired" (by this check or
    /// EC2's own status checks) as proof of death, as they take "silent and
    /// not running". Empty: EC2's own status checks still count.
    #[serde(deserialize_with = "blank_is_none")]
    pub status_check: Option<String>,
}

impl Peers {
    /// UDP port of the flow hand-off tunnel (VXLAN).
    pub fn tunnel_port(&self) -> u16 {
        self.port.saturating_add(1)
    }
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            failover: Failover::Peer,
            failback: Duration::ZERO,
            port: 7470,
            interval: Duration::from_millis(250),
            dead_after: Duration::from_secs(1),
            group_tag: "hanat:stack".into(),
            flow_handoff: Duration::from_secs(300),
            fallback_nat_gateway_id: BTreeMap::new(),
            key_secret: None,
            accept_unauthenticated: false,
            status_check: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    Peer,
    None,
}

fn blank_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(Some(s).filter(|s| !s.trim().is_empty()))
}

fn failback<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    if s == "immediate" {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        serde::de::Error::custom(format!(
            "`{s}` is neither `immediate` nor `drain:<duration>` like drain:60s"
        ))
    };
    let d = s.strip_prefix("drain:").ok_or_else(bad)?;
    humantime::parse_duration(d).map_err(|_| bad())
}

/// Planned exits: scale-in (lifecycle hook), spot interruption, and
/// optionally `systemctl stop`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exit {
    /// How often instance metadata is asked about a coming termination.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// After the routes have moved to a peer, keep forwarding this long so
    /// packets still arriving here (replies to the Elastic IP) get through.
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
    /// Give up waiting for a peer to take the routes after this long.
    #[serde(deserialize_with = "duration")]
    pub handoff_timeout: Duration,
    /// The termination lifecycle hook to complete (the templates' name).
    pub lifecycle_hook: String,
    /// Hand the routes to a peer on SIGTERM too (for planned maintenance).
    /// Off by default: a restart should not move routes.
    pub handoff_on_stop: bool,
}

impl Default for Exit {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            drain: Duration::from_secs(10),
            handoff_timeout: Duration::from_secs(30),
            lifecycle_hook: "hanat-handoff".into(),
            handoff_on_stop: false,
        }
    }
}

/// The AZ's stable public address.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eip {
    /// Claim the Elastic IP tagged for this NAT's group at start and keep it.
    pub claim: bool,
    /// The tag whose value is this NAT's Auto Scaling group name (the
    /// CloudFormation templates set it on each AZ's address).
    pub tag_key: String,
}

impl Default for Eip {
    fn default() -> Self {
        Self {
            claim: true,
            tag_key: "hanat:group".into(),
        }
    }
}

/// How many public addresses a NAT translates to, and which source ports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Snat {
    /// Private addresses on the interface, each with an Elastic IP of the
    /// group's pool: the primary one and `addresses - 1` secondary ones,
    /// which the daemon assigns itself. New connections are spread over
    /// them one by one, so one client's connections to one destination
    /// use them all (`docs/configuration.md`).
    pub addresses: u8,
    /// The source ports TCP and UDP connections are translated to.
    #[serde(deserialize_with = "port_range")]
    pub ports: (u16, u16),
}

/// At most this many addresses per NAT: the NAT Gateway's own limit, and
/// the most the smallest instances accept on one interface.
pub const MAX_SNAT_ADDRESSES: u8 = 8;

impl Default for Snat {
    fn default() -> Self {
        Self {
            addresses: 1,
            ports: (1024, 65535),
        }
    }
}

/// `"1024-65535"` (or one port, `"4000"`).
fn port_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let text = String::deserialize(d)?;
    let bad = || {
        serde::de::Error::custom(format!(
            "`{text}` is not a port range such as \"1024-65535\" (ports 1-65535, low first)"
        ))
    };
    let (lo, hi) = text.split_once('-').unwrap_or((&text, &text));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// AWS API behaviour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aws {
    /// Attempts per API call, with the SDK's exponential backoff and jitter
    /// between them (throttling is retried too).
    pub max_attempts: u32,
    /// Give up on a single API call (all attempts) after this long.
    #[serde(deserialize_with = "duration")]
    pub call_timeout: Duration,
    /// How long start-up waits for the instance metadata service before the
    /// daemon exits (and systemd restarts it).
    #[serde(deserialize_with = "duration")]
    pub imds_timeout: Duration,
    /// What rarely changes is read again this often: the tagged subnets,
    /// the peer list, a held Elastic IP, the source/destination check once
    /// seen off. Route tables are read every `routes.reconcile_interval`.
    #[serde(deserialize_with = "duration")]
    pub refresh_interval: Duration,
}

impl Default for Aws {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            call_timeout: Duration::from_secs(20),
            imds_timeout: Duration::from_secs(120),
            refresh_interval: Duration::from_secs(600),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (journald-friendly, no timestamps when under systemd) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hanat=debug`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("`{s}` is not a duration like 30s or 500ms: {e}"))
    })
}

impl Config {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid("(file)", located(text, &e)))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(file)".to_owned() } else { key };
            invalid(&key, located(text, e.inner()))
        })?;
        config.validate().map_err(|(key, msg)| invalid(key, msg))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let hb = &self.heartbeat;
        if self.discovery.tag_key.is_empty() {
            return Err(("discovery.tag_key", "must not be empty".into()));
        }
        if hb.targets.is_empty() {
            return Err((
                "heartbeat.targets",
                "at least one target is required".into(),
            ));
        }
        if hb.fall == 0 {
            return Err(("heartbeat.fall", "must be at least 1".into()));
        }
        if hb.rise == 0 {
            return Err(("heartbeat.rise", "must be at least 1".into()));
        }
        if hb.interval < Duration::from_millis(100) {
            return Err(("heartbeat.interval", "must be at least 100ms".into()));
        }
        if hb.unable_restart < hb.interval * 3 {
            return Err((
                "heartbeat.unable_restart",
                "must be at least 3 × heartbeat.interval".into(),
            ));
        }
        if hb.timeout.is_zero() || hb.timeout > hb.interval {
            return Err((
                "heartbeat.timeout",
                format!(
                    "must be more than 0 and at most heartbeat.interval ({})",
                    crate::domain::human(hb.interval)
                ),
            ));
        }
        if hb.probe_cidr.prefix > 30 {
            return Err(("heartbeat.probe_cidr", "must be a /30 or larger".into()));
        }
        let ns = &hb.probe_namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                "heartbeat.probe_namespace",
                format!("`{ns}` must be 1-64 characters of letters, digits, - and _"),
            ));
        }
        if self.routes.reconcile_interval < Duration::from_secs(1) {
            return Err(("routes.reconcile_interval", "must be at least 1s".into()));
        }
        if self.aws.refresh_interval < self.routes.reconcile_interval {
            return Err((
                "aws.refresh_interval",
                "must be at least routes.reconcile_interval".into(),
            ));
        }
        let k = &self.kernel;
        for (key, d) in [
            ("kernel.tcp_timeout_established", k.tcp_timeout_established),
            ("kernel.tcp_timeout_time_wait", k.tcp_timeout_time_wait),
            ("kernel.udp_timeout", k.udp_timeout),
            ("kernel.udp_timeout_stream", k.udp_timeout_stream),
        ] {
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err((key, "must be whole seconds, at least 1s".into()));
            }
        }
        if k.udp_timeout_stream < k.udp_timeout {
            return Err((
                "kernel.udp_timeout_stream",
                "must be at least kernel.udp_timeout (a flow with answers outlives one without)"
                    .into(),
            ));
        }
        if self.kernel.converge_interval < Duration::from_millis(100) {
            return Err(("kernel.converge_interval", "must be at least 100ms".into()));
        }
        if self.peers.port == 0 || self.peers.port == u16::MAX {
            return Err((
                "peers.port",
                "must be a port number from 1 to 65534 (the next one carries the flow hand-off tunnel)"
                    .into(),
            ));
        }
        if self.peers.interval < Duration::from_millis(50) {
            return Err(("peers.interval", "must be at least 50ms".into()));
        }
        if self.peers.dead_after < self.peers.interval * 2 {
            return Err((
                "peers.dead_after",
                "must be at least twice peers.interval".into(),
            ));
        }
        if self
            .peers
            .key_secret
            .as_ref()
            .is_some_and(|s| s.contains(char::is_whitespace))
        {
            return Err((
                "peers.key_secret",
                "must be a Secrets Manager secret's ARN or name (no spaces)".into(),
            ));
        }
        if let Some(check) = &self.peers.status_check {
            if status_check_id(check).is_none() {
                return Err((
                    "peers.status_check",
                    format!("`{check}` is not an application status check id (asc-…) or its ARN"),
                ));
            }
            if self.metrics.listen.is_none() {
                return Err((
                    "peers.status_check",
                    "needs the health endpoint it probes: set metrics.listen".into(),
                ));
            }
        }
        let cw = &self.cloudwatch;
        if cw.namespace.is_empty()
            || cw.namespace.len() > 255
            || cw.namespace.starts_with("AWS/")
            || !cw
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c))
        {
            return Err((
                "cloudwatch.namespace",
                format!(
                    "`{}` must be 1-255 characters of letters, digits and . - _ / # : space, not starting with AWS/",
                    cw.namespace
                ),
            ));
        }
        if cw.interval < Duration::from_secs(1) || cw.interval > Duration::from_secs(3600) {
            return Err((
                "cloudwatch.interval",
                "must be from 1s to 1h (60s: one datapoint per CloudWatch minute)".into(),
            ));
        }
        if !(1..=MAX_SNAT_ADDRESSES).contains(&self.snat.addresses) {
            return Err((
                "snat.addresses",
                format!("must be from 1 to {MAX_SNAT_ADDRESSES}"),
            ));
        }
        if self.snat.addresses > 1 && !self.eip.claim {
            return Err((
                "snat.addresses",
                "above 1 needs eip.claim = true (each address needs an Elastic IP of its own)"
                    .into(),
            ));
        }
        if self.aws.max_attempts == 0 {
            return Err(("aws.max_attempts", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The id in an application status check's id or ARN
/// (`arn:aws:ec2:…:application-status-check/asc-…`, what CloudFormation's
/// `Ref` gives).
pub fn status_check_id(s: &str) -> Option<&str> {
    let id = s.rsplit('/').next()?;
    let hex = id.strip_prefix("asc-")?;
    let arn_ok =
        !s.contains('/') || s.starts_with("arn:") && s.contains(":application-status-check/");
    (arn_ok && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_alphanumeric())).then_some(id)
}

/// The error's message, prefixed with its line number when it has a span.
fn located(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{msg} (line {line})")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/hanat/hanat.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.discovery.tag_key, "network");
        assert_eq!(c.routes.reconcile_interval, Duration::from_secs(30));
        assert_eq!(c.heartbeat.fall, 3);
        assert_eq!(c.heartbeat.targets.len(), 3);
    }

    #[test]
    fn contract_example_parses() {
        let c = parse(
            r#"
[discovery]
tag_key = "network"
tag_value = "private"
[routes]
reconcile_interval = "30s"
[heartbeat]
targets = ["tcp://203.0.113.10:80", "http://203.0.113.11:8080/health"]
interval = "1s"
timeout = "500ms"
fall = 3
rise = 2
"#,
        )
        .unwrap();
        assert_eq!(
            c.heartbeat.targets,
            vec![
                ProbeTarget::Tcp {
                    host: "203.0.113.10".into(),
                    port: 80
                },
                ProbeTarget::Http {
                    url: "http://203.0.113.11:8080/health".into()
                }
            ]
        );
        assert_eq!(c.heartbeat.timeout, Duration::from_millis(500));
    }

    #[test]
    fn failback_forms() {
        let c = parse("[peers]\nfailback = \"drain:90s\"\nfailover = \"none\"").unwrap();
        assert_eq!(c.peers.failback, Duration::from_secs(90));
        assert_eq!(c.peers.failover, Failover::None);
        assert_eq!(
            parse("[peers]\nfailback = \"immediate\"")
                .unwrap()
                .peers
                .failback,
            Duration::ZERO
        );
    }

    #[test]
    fn conntrack_sizes_follow_memory_unless_given() {
        const MIB: u64 = 1 << 20;
        let k = Kernel::default();
        let max = |mem: u64| k.conntrack(mem).max;
        // A t4g.nano shows about 434 MiB of its 512.
        assert_eq!(max(434 * MIB), Some(262_144));
        assert_eq!(max(950 * MIB), Some(524_288));
        assert_eq!(max(64 * MIB), Some(65_536), "at least");
        assert_eq!(max(1 << 40), Some(4_194_304), "at most");
        let auto = k.conntrack(434 * MIB);
        assert_eq!(auto.buckets, auto.max);
        assert_eq!(
            (
                auto.tcp_established,
                auto.tcp_time_wait,
                auto.udp,
                auto.udp_stream
            ),
            (7440, 120, 30, 120)
        );
        let c = parse(
            "[kernel]\nconntrack_max = 1000000\nconntrack_buckets = 0\nudp_timeout = \"1m\"\nudp_timeout_stream = \"5m50s\"",
        )
        .unwrap();
        let given = c.kernel.conntrack(434 * MIB);
        assert_eq!((given.max, given.buckets), (Some(1_000_000), None));
        assert_eq!((given.udp, given.udp_stream), (60, 350));
        let left = parse("[kernel]\nconntrack_max = 0").unwrap();
        assert_eq!(left.kernel.conntrack(434 * MIB).max, None);
        assert_eq!(
            left.kernel.conntrack(434 * MIB).buckets,
            None,
            "auto follows max"
        );
        for (text, key, says) in [
            (
                "conntrack_max = \"lots\"",
                "kernel.conntrack_max",
                "use \"auto\", a number",
            ),
            ("conntrack_max = -1", "kernel.conntrack_max", "negative"),
            (
                "conntrack_buckets = 1.5",
                "kernel.conntrack_buckets",
                "a number",
            ),
            (
                "udp_timeout = \"500ms\"",
                "kernel.udp_timeout",
                "whole seconds",
            ),
            (
                "tcp_timeout_time_wait = \"1.5s\"",
                "kernel.tcp_timeout_time_wait",
                "whole seconds",
            ),
            (
                "udp_timeout = \"3m\"",
                "kernel.udp_timeout_stream",
                "at least kernel.udp_timeout",
            ),
        ] {
            let err = parse(&format!("[kernel]\n{text}")).unwrap_err();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn snat_defaults_to_one_address_and_the_full_port_range() {
        let c = parse("").unwrap();
        assert_eq!((c.snat.addresses, c.snat.ports), (1, (1024, 65535)));
        let four = parse("[snat]\naddresses = 4\nports = \"32768-60999\"").unwrap();
        assert_eq!((four.snat.addresses, four.snat.ports), (4, (32768, 60999)));
        let one = parse("[snat]\nports = \"4000\"").unwrap();
        assert_eq!(one.snat.ports, (4000, 4000));
    }

    #[test]
    fn cloudwatch_is_off_by_default_and_each_key_is_checked() {
        let c = parse("").unwrap();
        assert!(!c.cloudwatch.enabled);
        assert_eq!(c.cloudwatch.namespace, "hanat");
        assert_eq!(c.cloudwatch.interval, Duration::from_secs(60));
        assert_eq!(c.cloudwatch.metrics, MetricSet::All);
        let on = parse(
            "[cloudwatch]\nenabled = true\nnamespace = \"acme/nat\"\ninterval = \"5s\"\nmetrics = \"alarms\"",
        )
        .unwrap();
        assert!(on.cloudwatch.enabled);
        assert_eq!(on.cloudwatch.metrics, MetricSet::Alarms);
        for (text, key, says) in [
            (
                "namespace = \"AWS/NATGateway\"",
                "cloudwatch.namespace",
                "not starting with AWS/",
            ),
            (
                "namespace = \"\"",
                "cloudwatch.namespace",
                "1-255 characters",
            ),
            (
                "namespace = \"nat!\"",
                "cloudwatch.namespace",
                "letters, digits",
            ),
            (
                "interval = \"500ms\"",
                "cloudwatch.interval",
                "from 1s to 1h",
            ),
            ("interval = \"2h\"", "cloudwatch.interval", "from 1s to 1h"),
            (
                "metrics = \"some\"",
                "cloudwatch.metrics",
                "unknown variant",
            ),
            ("enable = true", "cloudwatch", "unknown field"),
        ] {
            let err = parse(&format!("[cloudwatch]\n{text}")).unwrap_err();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn flow_handoff_and_its_tunnel_port() {
        let c = parse("").unwrap();
        assert_eq!(c.peers.flow_handoff, Duration::from_secs(300));
        assert_eq!(c.peers.tunnel_port(), 7471);
        let off = parse("[peers]\nflow_handoff = \"0s\"").unwrap();
        assert!(off.peers.flow_handoff.is_zero());
        let err = parse("[peers]\nflow_handoff = \"soon\"").unwrap_err();
        assert!(
            err.contains("peers.flow_handoff") && err.contains("not a duration"),
            "{err}"
        );
        let err = parse("[peers]\nport = 65535").unwrap_err();
        assert!(
            err.contains("peers.port") && err.contains("flow hand-off tunnel"),
            "{err}"
        );
    }

    #[test]
    fn heartbeat_key_settings() {
        let c = parse("").unwrap();
        assert_eq!(c.peers.key_secret, None);
        assert!(!c.peers.accept_unauthenticated);
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hanat-peer-key-AbCdEf";
        let c = parse(&format!(
            "[peers]\nkey_secret = \"{arn}\"\naccept_unauthenticated = true"
        ))
        .unwrap();
        assert_eq!(c.peers.key_secret.as_deref(), Some(arn));
        assert!(c.peers.accept_unauthenticated);
        assert_eq!(
            parse("[peers]\nkey_secret = \" \"")
                .unwrap()
                .peers
                .key_secret,
            None
        );
        let err = parse("[peers]\nkey_secret = \"my secret\"").unwrap_err();
        assert!(
            err.contains("peers.key_secret") && err.contains("ARN or name"),
            "{err}"
        );
        let err = parse("[peers]\nstatus_check = \"health\"").unwrap_err();
        assert!(
            err.contains("peers.status_check") && err.contains("asc-"),
            "{err}"
        );
        let arn = "arn:aws:ec2:eu-west-1:123456789012:application-status-check/asc-0a1b2c";
        let c = parse(&format!("[peers]\nstatus_check = \"{arn}\"")).unwrap();
        assert_eq!(
            status_check_id(c.peers.status_check.as_deref().unwrap()),
            Some("asc-0a1b2c")
        );
        let err = parse("[peers]\nstatus_check = \"asc-1\"\n[metrics]\nlisten = \"\"").unwrap_err();
        assert!(
            err.contains("peers.status_check") && err.contains("metrics.listen"),
            "{err}"
        );
        let err = parse("[peers]\naccept_unauthenticated = \"yes\"").unwrap_err();
        assert!(err.contains("peers.accept_unauthenticated"), "{err}");
    }

    #[test]
    fn fallback_nat_gateways_by_az() {
        let c = parse(
            "[peers.fallback_nat_gateway_id]\n\"eu-west-1a\" = \"nat-0abc\"\n\"eu-west-1b\" = \"nat-0def\"",
        )
        .unwrap();
        let ids: Vec<(&str, &str)> = c
            .peers
            .fallback_nat_gateway_id
            .iter()
            .map(|(az, id)| (az.as_str(), id.0.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("eu-west-1a", "nat-0abc"), ("eu-west-1b", "nat-0def")]
        );
        assert!(Config::default().peers.fallback_nat_gateway_id.is_empty());
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "[peers.fallback_nat_gateway_id]\n\"eu-west-1a\" = \"igw-0abc\"",
                "hanat.toml: peers.fallback_nat_gateway_id.eu-west-1a: `igw-0abc` is not a NAT Gateway id",
            ),
            (
                "[heartbeat]\nintervall = \"1s\"",
                "hanat.toml: heartbeat.intervall: unknown field `intervall`, expected one of",
            ),
            (
                "[heartbeat]\ninterval = \"1 parsec\"",
                "hanat.toml: heartbeat.interval: `1 parsec` is not a duration",
            ),
            (
                "[heartbeat]\nfall = 0",
                "heartbeat.fall: must be at least 1",
            ),
            ("[heartbeat]\nfall = -1", "heartbeat.fall: invalid value"),
            (
                "[heartbeat]\ntargets = []",
                "heartbeat.targets: at least one target is required",
            ),
            (
                "[heartbeat]\ntargets = [\"udp://1.2.3.4:53\"]",
                "heartbeat.targets[0]: `udp://1.2.3.4:53`: unsupported target",
            ),
            (
                "[heartbeat]\ntargets = [\"tcp://1.2.3.4\"]",
                "heartbeat.targets[0]: `tcp://1.2.3.4`: a tcp target needs a port",
            ),
            (
                "[heartbeat]\ntimeout = \"2s\"",
                "heartbeat.timeout: must be more than 0 and at most heartbeat.interval (1s)",
            ),
            (
                "[heartbeat]\nprobe_cidr = \"198.19.0.0\"",
                "heartbeat.probe_cidr: `198.19.0.0` is not an IPv4 network",
            ),
            (
                "[heartbeat]\nprobe_namespace = \"a/b\"",
                "heartbeat.probe_namespace: `a/b` must be",
            ),
            (
                "[routes]\nreconcile_interval = \"10ms\"",
                "routes.reconcile_interval: must be at least 1s",
            ),
            (
                "[route]\nreconcile_interval = \"10s\"",
                "hanat.toml: route: unknown field `route`, expected one of `discovery`, `routes`",
            ),
            (
                "[log]\nformat = \"xml\"",
                "log.format: unknown variant `xml`",
            ),
            ("[heartbeat\n", "(file): "),
            (
                "[snat]\naddresses = 9",
                "snat.addresses: must be from 1 to 8",
            ),
            (
                "[snat]\naddresses = 0",
                "snat.addresses: must be from 1 to 8",
            ),
            (
                "[snat]\nports = \"2000-1024\"",
                "snat.ports: `2000-1024` is not a port range",
            ),
            (
                "[snat]\nports = \"0-100\"",
                "snat.ports: `0-100` is not a port range",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert!(
                got.contains(want),
                "for {text:?}\n got: {got}\nwant: {want}"
            );
            assert!(got.starts_with("/etc/hanat/hanat.toml: "), "{got}");
        }
    }

    #[test]
    fn syntax_error_reports_line() {
        let got = parse("[heartbeat]\nfall = 3\nrise = = 2\n").unwrap_err();
        assert!(got.contains("line 3"), "{got}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Config::load(Path::new("/nonexistent/hanat.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/hanat.toml: cannot read config file")
        );
    }

    #[test]
    fn target_display_round_trips() {
        for t in [
            "tcp://203.0.113.10:80",
            "tcp://[2001:db8::1]:443",
            "http://example.com/x",
        ] {
            let p: ProbeTarget = t.parse().unwrap();
            assert_eq!(p.to_string(), t);
        }
    }
}
