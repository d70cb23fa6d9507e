//! What the daemon shows of itself, served on `metrics.listen` (see
//! [`super::endpoints`]):
//!
//! - `/metrics`: Prometheus metrics (OpenMetrics text to a scraper that
//!   asks for it, the classic text format otherwise; through the
//!   Prometheus project's `prometheus-client`);
//! - `/health`: 200 while this NAT forwards (its own probe passes) and its
//!   loops make progress, else 503; JSON with the reasons either way;
//! - `/status`: this NAT's state in JSON, what `hanat status` prints.
//!
//! Most figures are read from the daemon's shared state when asked for
//! (verdict, peers, hand-offs, routes, conntrack), so a scrape makes no API
//! call and changes nothing; events (probes, rejected heartbeats) are
//! counted as they happen.
//!
//! The health endpoint answers for forwarding only: an AWS API that fails,
//! or routes another NAT holds for a while (an adopter draining), are
//! reported in `/status` but do not make it 503, so a health check wired to
//! replace unhealthy instances never replaces a NAT that forwards.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::aws::meter::ApiMeter;
use crate::domain::{Status, Unit};
use crate::kernel::probe::Round;
use crate::kernel::sysctl;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics, and what the loops record for `/status`.
pub struct Telemetry {
    registry: Registry,
    probes: Family<Labels, Counter>,
    probe_rtt: Family<Labels, Histogram>,
    rejected: Family<Labels, Counter>,
    verdict: Family<Labels, Gauge>,
    verdict_seconds: FloatGauge,
    routes: Family<Labels, Gauge>,
    peer_verdict: Family<Labels, Gauge>,
    peer_silence: Family<Labels, FloatGauge>,
    handoffs: Gauge,
    covering: Family<Labels, Gauge>,
    eip: Gauge,
    eips: Gauge,
    snat_addresses: Gauge,
    conntrack_entries: Gauge,
    conntrack_max: Gauge,
    conntrack_fill: FloatGauge,
    since_reconcile: FloatGauge,
    since_converge: FloatGauge,
    unable_to_probe: FloatGauge,
    kernel_reads: Counter,
    /// The NAT Gateway's counters, from the kernel ([`KERNEL_COUNTERS`]),
    /// with the kernel's value last seen.
    kernel: BTreeMap<&'static str, (Counter, Mutex<u64>)>,
    active: Gauge,
    /// When `active` was last counted; held while a count runs.
    pub active_counted: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// When the kernel's counters were last read; held while a reading runs.
    pub kernel_read_at: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    shed: Counter,
    recorded: Mutex<Recorded>,
}

/// One of the NAT Gateway's counters, as hanat keeps it.
pub struct KernelCounter {
    /// The metric's name after `hanat_` (and before `_total`).
    pub name: &'static str,
    /// The gateway's name for it (`AWS/NATGateway`), what CloudWatch gets.
    pub cloudwatch: &'static str,
    pub unit: Unit,
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    cloudwatch: &'static str,
    unit: Unit,
    help: &'static str,
) -> KernelCounter {
    KernelCounter {
        name,
        cloudwatch,
        unit,
        help,
    }
}

/// The NAT Gateway's counters and where hanat reads them (see
/// `docs/observability.md`).
pub const KERNEL_COUNTERS: [KernelCounter; 12] = [
    counter(
        "bytes_in_from_source",
        "BytesInFromSource",
        Unit::Bytes,
        "BytesInFromSource: bytes from private hosts, to be forwarded",
    ),
    counter(
        "packets_in_from_source",
        "PacketsInFromSource",
        Unit::Count,
        "PacketsInFromSource",
    ),
    counter(
        "bytes_out_to_destination",
        "BytesOutToDestination",
        Unit::Bytes,
        "BytesOutToDestination: bytes sent on to destinations",
    ),
    counter(
        "packets_out_to_destination",
        "PacketsOutToDestination",
        Unit::Count,
        "PacketsOutToDestination",
    ),
    counter(
        "bytes_in_from_destination",
        "BytesInFromDestination",
        Unit::Bytes,
        "BytesInFromDestination: reply bytes from destinations",
    ),
    counter(
        "packets_in_from_destination",
        "PacketsInFromDestination",
        Unit::Count,
        "PacketsInFromDestination",
    ),
    counter(
        "bytes_out_to_source",
        "BytesOutToSource",
        Unit::Bytes,
        "BytesOutToSource: reply bytes sent on to private hosts",
    ),
    counter(
        "packets_out_to_source",
        "PacketsOutToSource",
        Unit::Count,
        "PacketsOutToSource",
    ),
    counter(
        "connection_attempts",
        "ConnectionAttemptCount",
        Unit::Count,
        "ConnectionAttemptCount: new connections from private hosts (any protocol)",
    ),
    counter(
        "connections_established",
        "ConnectionEstablishedCount",
        Unit::Count,
        "ConnectionEstablishedCount: TCP connections a destination accepted (SYN-ACKs)",
    ),
    counter(
        "port_allocation_errors",
        "ErrorPortAllocation",
        Unit::Count,
        "ErrorPortAllocation: conntrack insert_failed (no free source port for a new connection)",
    ),
    counter(
        "packets_dropped",
        "PacketsDropCount",
        Unit::Count,
        "PacketsDropCount: conntrack drop, early_drop and insert_failed (no source port), and invalid packets",
    ),
];
/// OpenMetrics text as the classic Prometheus text format (0.0.4): a
/// counter's `HELP` and `TYPE` name its `_total` samples, and `UNIT` and
/// the closing `# EOF` go. Everything else this daemon exposes (gauges,
/// histograms, labels, values) is written the same in both.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// What the loops tell telemetry as they go.
#[derive(Debug)]
pub struct Recorded {
    /// When this NAT's verdict last changed.
    pub verdict_since: Instant,
    /// This AZ's route tables in scope and where each default route points
    /// after the last successful pass, and whether that is this NAT.
    pub own_routes: Vec<RouteView>,
    /// The Elastic IP is on this NAT (`None`: claiming is off).
    pub elastic_ip: Option<bool>,
    /// Elastic IPs held of those wanted (`snat.addresses`).
    pub elastic_ips: Option<(usize, usize)>,
    /// The application status check this instance is associated with.
    pub status_check: Option<String>,
    /// The other AZs this NAT covers, and how (`this_nat`, `nat_gateway`),
    /// as the peers loop last decided.
    pub covering: Vec<(String, &'static str)>,
    /// The last `PutMetricData` that succeeded.
    pub last_publish: Option<Instant>,
    pub last_reconcile: Option<Instant>,
    pub last_converge: Option<Instant>,
    /// Per loop, its last error and when (cleared by a success).
    pub errors: BTreeMap<&'static str, (Instant, String)>,
    /// Seconds this daemon has been unable to send its probes, and why.
    pub unable_to_probe: Option<(f64, String)>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

const STATES: [Status; 4] = [
    Status::Starting,
    Status::Ok,
    Status::Failing,
    Status::Exiting,
];

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(&ApiMeter::default())
    }
}

impl Telemetry {
    /// The metrics, `meter`'s timed AWS calls among them.
    pub fn new(meter: &ApiMeter) -> Self {
        let mut registry = Registry::with_prefix("hanat");
        let t = Telemetry {
            probes: Family::default(),
            probe_rtt: Family::new_with_constructor(rtt_histogram as fn() -> Histogram),
            rejected: Family::default(),
            verdict: Family::default(),
            verdict_seconds: FloatGauge::default(),
            routes: Family::default(),
            peer_verdict: Family::default(),
            peer_silence: Family::default(),
            handoffs: Gauge::default(),
            covering: Family::default(),
            eip: Gauge::default(),
            eips: Gauge::default(),
            snat_addresses: Gauge::default(),
            conntrack_entries: Gauge::default(),
            conntrack_max: Gauge::default(),
            conntrack_fill: FloatGauge::default(),
            since_reconcile: FloatGauge::default(),
            since_converge: FloatGauge::default(),
            unable_to_probe: FloatGauge::default(),
            kernel_reads: Counter::default(),
            kernel: KERNEL_COUNTERS
                .iter()
                .map(|k| (k.name, (Counter::default(), Mutex::new(0))))
                .collect(),
            active: Gauge::default(),
            active_counted: tokio::sync::Mutex::new(None),
            kernel_read_at: tokio::sync::Mutex::new(None),
            shed: Counter::default(),
            recorded: Mutex::new(Recorded {
                verdict_since: Instant::now(),
                own_routes: Vec::new(),
                elastic_ip: None,
                elastic_ips: None,
                status_check: None,
                covering: Vec::new(),
                last_publish: None,
                last_reconcile: None,
                last_converge: None,
                errors: BTreeMap::new(),
                unable_to_probe: None,
            }),
            registry: Registry::default(),
        };
        registry.register(
            "probes",
            "Forwarding probes, by target and result (ok; failed: sent, no answer; unsent: this daemon could not send it)",
            t.probes.clone(),
        );
        registry.register(
            "probe_rtt_seconds",
            "Round-trip time of answered forwarding probes, by target",
            t.probe_rtt.clone(),
        );
        registry.register(
            "heartbeats_rejected",
            "Datagrams on the peer heartbeat port not taken as heartbeats, by reason",
            t.rejected.clone(),
        );
        registry.register(
            "verdict",
            "This NAT's verdict: 1 for the current state (starting, ok, failing, exiting)",
            t.verdict.clone(),
        );
        registry.register(
            "verdict_seconds",
            "Time since this NAT's verdict last changed",
            t.verdict_seconds.clone(),
        );
        registry.register(
            "routes",
            "This AZ's private route tables in scope, by where their default route points (this_nat, other, none)",
            t.routes.clone(),
        );
        registry.register(
            "peer_verdict",
            "Each peer NAT's last verdict heard: 1 for its state",
            t.peer_verdict.clone(),
        );
        registry.register(
            "peer_silence_seconds",
            "Time since each peer NAT was last heard",
            t.peer_silence.clone(),
        );
        registry.register(
            "flow_handoffs",
            "Peers this NAT hands connections to through the flow hand-off tunnel",
            t.handoffs.clone(),
        );
        registry.register(
            "covering",
            "Other AZs this NAT covers for a dead peer: via this_nat (adopted: their routes point here) or nat_gateway (pointed at their fallback NAT Gateway)",
            t.covering.clone(),
        );
        registry.register(
            "elastic_ip_held",
            "1 when this AZ's Elastic IP is on this NAT (absent when claiming is off)",
            t.eip.clone(),
        );
        registry.register(
            "elastic_ips_held",
            "Elastic IPs of the group on this NAT's private addresses, of snat.addresses wanted (absent when claiming is off)",
            t.eips.clone(),
        );
        registry.register(
            "snat_addresses",
            "Private addresses new connections are translated to, in turn (each with its own public address)",
            t.snat_addresses.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Connections in the kernel's tracking table (nf_conntrack_count)",
            t.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_max",
            "Size of the kernel's connection tracking table (nf_conntrack_max)",
            t.conntrack_max.clone(),
        );
        registry.register(
            "conntrack_fill_ratio",
            "conntrack_entries / conntrack_max",
            t.conntrack_fill.clone(),
        );
        registry.register(
            "seconds_since_reconcile",
            "Time since the last successful route pass",
            t.since_reconcile.clone(),
        );
        registry.register(
            "seconds_since_converge",
            "Time since the kernel NAT configuration was last converged",
            t.since_converge.clone(),
        );
        registry.register(
            "unable_to_probe_seconds",
            "How long this daemon has been unable to send its probes (out of descriptors or memory); 0 while it can",
            t.unable_to_probe.clone(),
        );
        registry.register(
            "endpoint_connections_shed",
            "Connections to these endpoints closed at once: the endpoint or their address held as many as it may",
            t.shed.clone(),
        );
        registry.register(
            "kernel_readings",
            "Readings of the kernel's traffic counters (one nft process each), at most one per second whatever the scrapes",
            t.kernel_reads.clone(),
        );
        for k in KERNEL_COUNTERS {
            if let Some((c, _)) = t.kernel.get(k.name) {
                registry.register(k.name, k.help, c.clone());
            }
        }
        registry.register(
            "aws_call_seconds",
            "AWS API calls by service, operation and outcome (ok, client_error, server_error, no_response), retries included",
            meter.calls(),
        );
        registry.register(
            "active_connections",
            "ActiveConnectionCount: established TCP connections opened by private hosts",
            t.active.clone(),
        );
        Telemetry { registry, ..t }
    }

    /// The kernel's counters now (absolute values, by [`KERNEL_COUNTERS`]
    /// name): each metric grows by what its counter grew since last time,
    /// or by the whole value when the kernel's counter was reset (its table
    /// recreated), so the metric never goes down.
    pub fn kernel(&self, values: &[(&str, u64)]) {
        for (name, now) in values {
            if let Some((c, last)) = self.kernel.get(name) {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                c.inc_by(now.checked_sub(*last).unwrap_or(*now));
                *last = *now;
            }
        }
    }

    /// A connection to the endpoints was shed.
    pub fn endpoint_shed(&self) {
        self.shed.inc();
    }

    /// A reading of the kernel's counters was made.
    pub fn kernel_read(&self) {
        self.kernel_reads.inc();
    }

    /// Whether this daemon can send its probes: `None` when it can, else
    /// for how long it could not and why.
    pub fn unable_to_probe(&self, unable: Option<(std::time::Duration, String)>) {
        self.unable_to_probe
            .set(unable.as_ref().map_or(0.0, |(d, _)| d.as_secs_f64()));
        self.recorded().unable_to_probe = unable.map(|(d, why)| (d.as_secs_f64(), why));
    }

    /// The active connections, as last counted.
    pub fn set_active(&self, active: i64) {
        self.active.set(active);
    }

    /// The NAT Gateway's counters as the metrics have them (grown since
    /// this daemon started), by [`KERNEL_COUNTERS`] name, and the active
    /// connections.
    pub fn kernel_totals(&self) -> (BTreeMap<&'static str, u64>, i64) {
        let totals = self
            .kernel
            .iter()
            .map(|(k, (c, _))| (*k, c.get()))
            .collect();
        (totals, self.active.get())
    }

    pub fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A probe round's results.
    pub fn probe_round(&self, round: &Round) {
        for r in &round.results {
            let target = r.target.to_string();
            let result = match &r.outcome {
                Ok(_) => "ok",
                Err(m) if m.sent() => "failed",
                Err(_) => "unsent",
            };
            self.probes
                .get_or_create(&labels(&[("target", &target), ("result", result)]))
                .inc();
            if let Ok(rtt) = r.outcome {
                self.probe_rtt
                    .get_or_create(&labels(&[("target", &target)]))
                    .observe(rtt.as_secs_f64());
            }
        }
    }

    /// The AZs this NAT covers now, each with how (`this_nat`,
    /// `nat_gateway`).
    pub fn covering(&self, azs: &[(&str, &'static str)]) {
        self.recorded().covering = azs
            .iter()
            .map(|(az, via)| ((*az).to_owned(), *via))
            .collect();
        self.covering.clear();
        for (az, via) in azs {
            self.covering
                .get_or_create(&labels(&[("az", az), ("via", via)]))
                .set(1);
        }
    }

    /// A datagram on the heartbeat port was not taken, for `reason`.
    pub fn heartbeat_rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// Set the gauges from a snapshot of the daemon's state.
    pub fn show(&self, s: &Snapshot) {
        let t = self;
        for state in STATES {
            let v = i64::from(state.to_string() == s.verdict);
            t.verdict
                .get_or_create(&labels(&[("state", &state.to_string())]))
                .set(v);
        }
        t.verdict_seconds.set(s.verdict_for_s);
        t.routes.clear();
        for r in &s.routes {
            let kind = match (&r.target, r.this_nat) {
                (_, true) => "this_nat",
                (Some(_), false) => "other",
                (None, false) => "none",
            };
            t.routes
                .get_or_create(&labels(&[("points_at", kind)]))
                .inc();
        }
        t.peer_verdict.clear();
        t.peer_silence.clear();
        for p in &s.peers {
            let id = [("peer", p.instance.as_str()), ("az", p.az.as_str())];
            if let Some(v) = &p.verdict {
                let mut l = labels(&id);
                l.push(("state", v.clone()));
                t.peer_verdict.get_or_create(&l).set(1);
            }
            if let Some(silent) = p.silent_s {
                t.peer_silence.get_or_create(&labels(&id)).set(silent);
            }
        }
        if let Some(h) = &s.handoffs {
            t.handoffs.set(h.len() as i64);
        }
        if let Some(held) = s.elastic_ip_held {
            t.eip.set(i64::from(held));
        }
        if let Some((held, _)) = s.elastic_ips {
            t.eips.set(held as i64);
        }
        t.snat_addresses.set(s.snat_addresses.len() as i64);
        t.conntrack_entries.set(s.conntrack_entries);
        t.conntrack_max.set(s.conntrack_max);
        if let Some(fill) = s.conntrack_fill() {
            t.conntrack_fill.set(fill);
        }
        if let Some(v) = s.since_reconcile_s {
            t.since_reconcile.set(v);
        }
        if let Some(v) = s.since_converge_s {
            t.since_converge.set(v);
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The same metrics in Prometheus's classic text format (0.0.4), for
    /// scrapers and tools that do not ask for OpenMetrics (`curl`,
    /// `promtool check metrics`): see [`classic_text`].
    pub fn encode_classic(&self) -> Result<String, std::fmt::Error> {
        self.encode().map(|t| classic_text(&t))
    }

    /// `name`'s last round failed with `error`, or (`None`) succeeded.
    pub fn error(&self, name: &'static str, error: Option<String>) {
        let mut r = self.recorded();
        match error {
            Some(e) => {
                r.errors.insert(name, (Instant::now(), e));
            }
            None => {
                r.errors.remove(name);
            }
        }
    }
}

/// Round-trip-time buckets: 1 ms doubling to about 2 s.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 12))
}

/// Conntrack's table fill, from its sysctls (zeros where unreadable).
pub fn conntrack() -> (i64, i64) {
    let read = |key: &str| {
        sysctl::read(key)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0)
    };
    (
        read("net.netfilter.nf_conntrack_count"),
        read("net.netfilter.nf_conntrack_max"),
    )
}

/// This NAT as `/status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub instance: String,
    pub az: String,
    pub verdict: String,
    pub verdict_for_s: f64,
    pub healthy: bool,
    /// Why it is not healthy (empty when it is).
    pub reasons: Vec<String>,
    /// What is wrong that does not make it unhealthy.
    pub warnings: Vec<String>,
    pub routes: Vec<RouteView>,
    pub peers: Vec<PeerView>,
    /// `None`: busy (a loop held them for a kernel command just then).
    pub handoffs: Option<Vec<HandoffView>>,
    pub elastic_ip_held: Option<bool>,
    /// Elastic IPs held, of those wanted (`snat.addresses`).
    #[serde(default)]
    pub elastic_ips: Option<(usize, usize)>,
    /// The private addresses new connections are translated to.
    #[serde(default)]
    pub snat_addresses: Vec<String>,
    /// The application status check watching this NAT's `/health`, once
    /// this instance is associated with it (`peers.status_check`).
    #[serde(default)]
    pub status_check: Option<String>,
    pub conntrack_entries: i64,
    pub conntrack_max: i64,
    /// Publishing to CloudWatch, when on (`[cloudwatch]`).
    #[serde(default)]
    pub cloudwatch: Option<CloudWatchView>,
    pub since_reconcile_s: Option<f64>,
    pub since_converge_s: Option<f64>,
    pub errors: Vec<ErrorView>,
    /// The daemon cannot send its probes (no evidence about forwarding):
    /// for how long and why.
    #[serde(default)]
    pub unable_to_probe: Option<(f64, String)>,
}

impl Snapshot {
    /// The conntrack table's fill, 0 to 1 (`None`: its size is unknown).
    pub fn conntrack_fill(&self) -> Option<f64> {
        (self.conntrack_max > 0).then(|| self.conntrack_entries as f64 / self.conntrack_max as f64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudWatchView {
    pub namespace: String,
    pub every_s: f64,
    /// Since the last call that succeeded (`None`: none yet).
    pub last_put_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub table: String,
    /// Where its default route points; `None`: nowhere.
    pub target: Option<String>,
    pub this_nat: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerView {
    pub instance: String,
    pub az: String,
    pub ip: Ipv4Addr,
    /// Its last word, if heard within `peers.dead_after`.
    pub verdict: Option<String>,
    pub silent_s: Option<f64>,
    /// EC2 says it is gone, or it left its group.
    pub gone: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandoffView {
    pub peer: Ipv4Addr,
    pub sources: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorView {
    pub what: String,
    pub error: String,
    pub ago_s: f64,
}

/// Seconds as a person reads them ([`crate::domain::human`]).
pub fn human(secs: f64) -> String {
    crate::domain::human(std::time::Duration::from_secs_f64(secs.max(0.0)))
}

/// What `hanat status` prints: one screen.
pub fn render(s: &Snapshot) -> String {
    let mut out = format!(
        "{} ({}): {} for {} — {}\n",
        s.instance,
        s.az,
        s.verdict,
        human(s.verdict_for_s),
        match s.healthy {
            true => "healthy".to_owned(),
            false => format!("UNHEALTHY: {}", s.reasons.join("; ")),
        }
    );
    let line = |out: &mut String, head: &str, text: &str| {
        out.push_str(&format!("  {head:<11}{text}\n"));
    };
    if s.routes.is_empty() {
        line(&mut out, "routes", "none in scope yet");
    }
    for r in &s.routes {
        let to = match (&r.target, r.this_nat) {
            (_, true) => "this NAT".to_owned(),
            (Some(t), false) => t.clone(),
            (None, false) => "no default route".to_owned(),
        };
        line(&mut out, "routes", &format!("{} → {to}", r.table));
    }
    if s.peers.is_empty() {
        line(&mut out, "peers", "none");
    }
    for p in &s.peers {
        let said = match (&p.verdict, p.silent_s) {
            (Some(v), Some(t)) => format!("{v} (heard {} ago)", human(t)),
            (None, Some(t)) => format!("silent for {}", human(t)),
            (_, None) => "never heard".to_owned(),
        };
        let gone = if p.gone { ", gone" } else { "" };
        line(
            &mut out,
            "peer",
            &format!("{} {} {}: {said}{gone}", p.instance, p.az, p.ip),
        );
    }
    match s.handoffs.as_deref() {
        None => line(&mut out, "hand-offs", "(busy, ask again)"),
        Some([]) => line(&mut out, "hand-offs", "none"),
        Some(_) => {}
    }
    for h in s.handoffs.iter().flatten() {
        line(
            &mut out,
            "hand-off",
            &format!("{} ← {}", h.peer, h.sources.join(", ")),
        );
    }
    let eip = match s.elastic_ip_held {
        Some(true) => "held",
        Some(false) => "NOT held",
        None => "not claimed (eip.claim = false)",
    };
    line(&mut out, "Elastic IP", eip);
    if let Some((held, wanted)) = s.elastic_ips.filter(|(_, w)| *w > 1) {
        line(
            &mut out,
            "addresses",
            &format!(
                "{held} of {wanted} Elastic IPs held; new connections spread over {}",
                s.snat_addresses.join(", ")
            ),
        );
    }
    if let Some(check) = &s.status_check {
        line(
            &mut out,
            "witness",
            &format!("application status check {check} watches /health"),
        );
    }
    let fill = s
        .conntrack_fill()
        .map(|f| format!(" ({:.1}%)", 100.0 * f))
        .unwrap_or_default();
    line(
        &mut out,
        "conntrack",
        &format!("{} of {}{fill}", s.conntrack_entries, s.conntrack_max),
    );
    let ago = |v: Option<f64>| v.map_or("not yet".to_owned(), |t| format!("{} ago", human(t)));
    if let Some(cw) = &s.cloudwatch {
        line(
            &mut out,
            "cloudwatch",
            &format!(
                "namespace {} every {}, last put {}",
                cw.namespace,
                human(cw.every_s),
                ago(cw.last_put_s)
            ),
        );
    }
    line(
        &mut out,
        "last",
        &format!(
            "route pass {}, kernel converge {}",
            ago(s.since_reconcile_s),
            ago(s.since_converge_s)
        ),
    );
    if let Some((unable_s, why)) = &s.unable_to_probe {
        line(
            &mut out,
            "probes",
            &format!(
                "cannot be sent for {} ({why}); the verdict stays as it was",
                human(*unable_s)
            ),
        );
    }
    if s.errors.is_empty() {
        line(&mut out, "errors", "none");
    }
    for e in &s.errors {
        line(
            &mut out,
            "error",
            &format!("{}: {} ({} ago)", e.what, e.error, human(e.ago_s)),
        );
    }
    for w in s
        .warnings
        .iter()
        .filter(|w| !s.errors.iter().any(|e| w.ends_with(&e.error)))
    {
        line(&mut out, "warning", w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_only_grow() {
        let t = Telemetry::default();
        t.kernel(&[("bytes_in_from_source", 100)]);
        t.kernel(&[("bytes_in_from_source", 250)]);
        // The table was recreated: its counter starts again from zero.
        t.kernel(&[("bytes_in_from_source", 40)]);
        t.set_active(3);
        t.set_active(2);
        let text = t.encode().unwrap();
        assert!(
            text.contains("hanat_bytes_in_from_source_total 290\n"),
            "{text}"
        );
        assert!(text.contains("hanat_active_connections 2\n"), "{text}");
        assert!(
            text.contains("# HELP hanat_port_allocation_errors ErrorPortAllocation"),
            "{text}"
        );
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let t = Telemetry::default();
        t.heartbeat_rejected("stale");
        let om = t.encode().unwrap();
        let classic = classic_text(&om);
        assert!(
            om.ends_with("# EOF\n") && !classic.contains("# EOF"),
            "{classic}"
        );
        for line in [
            "# HELP hanat_heartbeats_rejected_total Datagrams",
            "# TYPE hanat_heartbeats_rejected_total counter",
            "hanat_heartbeats_rejected_total{reason=\"stale\"} 1",
            "# TYPE hanat_verdict_seconds gauge",
        ] {
            assert!(
                classic.lines().any(|l| l.starts_with(line)),
                "{line}\n{classic}"
            );
        }
        // Samples are untouched: only HELP, TYPE, UNIT and EOF lines change.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&om), samples(&classic));
    }

    #[test]
    fn seconds_read_as_a_person_reads_them() {
        assert_eq!(human(0.26), "260ms");
        assert_eq!(human(3.04), "3s");
        assert_eq!(human(252.0), "4m 12s");
        assert_eq!(human(-1.0), "0ms");
    }

    #[test]
    fn a_status_screen_says_what_is_wrong() {
        let s = Snapshot {
            instance: "i-0a".into(),
            az: "eu-west-1a".into(),
            verdict: "failing".into(),
            verdict_for_s: 3.0,
            healthy: false,
            reasons: vec!["failing: its forwarding probes fail".into()],
            warnings: vec!["routes: DescribeRouteTables: throttled".into()],
            routes: vec![RouteView {
                table: "rtb-1".into(),
                target: Some("eni-9".into()),
                this_nat: false,
            }],
            peers: vec![PeerView {
                instance: "i-0b".into(),
                az: "eu-west-1b".into(),
                ip: Ipv4Addr::new(10, 0, 2, 4),
                verdict: Some("ok".into()),
                silent_s: Some(0.2),
                gone: false,
            }],
            handoffs: Some(vec![]),
            elastic_ip_held: Some(true),
            elastic_ips: Some((1, 1)),
            snat_addresses: vec!["10.0.0.10".into()],
            status_check: Some("asc-0a".into()),
            conntrack_entries: 1_000,
            conntrack_max: 262_144,
            cloudwatch: Some(CloudWatchView {
                namespace: "hanat".into(),
                every_s: 60.0,
                last_put_s: Some(75.0),
            }),
            since_reconcile_s: Some(12.0),
            since_converge_s: None,
            errors: vec![ErrorView {
                what: "routes".into(),
                error: "DescribeRouteTables: throttled".into(),
                ago_s: 4.0,
            }],
            unable_to_probe: Some((3.2, "not sent: Too many open files (os error 24)".into())),
        };
        let text = render(&s);
        for want in [
            "i-0a (eu-west-1a): failing for 3s — UNHEALTHY: failing: its forwarding probes fail",
            "rtb-1 → eni-9",
            "i-0b eu-west-1b 10.0.2.4: ok (heard 200ms ago)",
            "1000 of 262144 (0.4%)",
            "witness    application status check asc-0a watches /health",
            "route pass 12s ago, kernel converge not yet",
            "cloudwatch namespace hanat every 1m 0s, last put 1m 15s ago",
            "routes: DescribeRouteTables: throttled (4s ago)",
            "probes     cannot be sent for 3.2s (not sent: Too many open files (os error 24)); the verdict stays as it was",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(
            !text.contains("warning"),
            "the error is not repeated:\n{text}"
        );
    }
}
