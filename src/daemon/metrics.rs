//! The daemon's Prometheus metrics (through the Prometheus project's
//! `prometheus-client`), declared in one table (the `metrics!` macro): each
//! field, its type, its name after `hanat_` and its help. `/metrics`
//! serves them (see [`super::endpoints`]); they change as events happen
//! (probes, rejected heartbeats) and from a snapshot of the daemon's state
//! ([`Metrics::show`]) and a reading of the kernel's counters
//! ([`Metrics::kernel`]) when asked. Metric names never change: dashboards
//! and alarms read them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::aws::meter::ApiMeter;
use crate::domain::Status;
use crate::kernel::counters::GATEWAY_COUNTERS;
use crate::kernel::probe::Round;
use crate::status::Snapshot;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type RttFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The metrics table: `field: Type = constructor, "name", "help";`. Each
/// becomes a field of [`Metrics`] registered under `hanat_name`.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $init:expr, $name:literal, $help:literal;)*) => {
        /// The metrics; see the module's table.
        pub struct Metrics {
            registry: Registry,
            /// The NAT Gateway's counters ([`GATEWAY_COUNTERS`]), with the
            /// kernel's value last seen.
            kernel: BTreeMap<&'static str, (Counter, Mutex<u64>)>,
            /// When the kernel's counters were last read; held while a
            /// reading runs.
            pub kernel_read_at: tokio::sync::Mutex<Option<tokio::time::Instant>>,
            /// When the active connections were last counted; held while a
            /// count runs.
            pub active_counted: tokio::sync::Mutex<Option<tokio::time::Instant>>,
            $($field: $ty,)*
        }

        impl Metrics {
            /// The metrics, `meter`'s timed AWS calls among them.
            pub fn new(meter: &ApiMeter) -> Self {
                let mut registry = Registry::with_prefix("hanat");
                $(
                    let $field: $ty = $init;
                    registry.register($name, $help, $field.clone());
                )*
                let mut kernel = BTreeMap::new();
                for k in GATEWAY_COUNTERS {
                    let c = Counter::default();
                    registry.register(k.name, k.help, c.clone());
                    kernel.insert(k.name, (c, Mutex::new(0)));
                }
                registry.register(
                    "aws_call_seconds",
                    "AWS API calls by service, operation and outcome (ok, client_error, server_error, no_response), retries included",
                    meter.calls(),
                );
                Metrics {
                    registry,
                    kernel,
                    kernel_read_at: Default::default(),
                    active_counted: Default::default(),
                    $($field,)*
                }
            }
        }
    };
}

metrics! {
    probes: Family<Labels, Counter> = Family::default(), "probes",
        "Forwarding probes, by target and result (ok; failed: sent, no answer; unsent: this daemon could not send it)";
    probe_rtt: RttFamily = Family::new_with_constructor(rtt_histogram as fn() -> Histogram), "probe_rtt_seconds",
        "Round-trip time of answered forwarding probes, by target";
    rejected: Family<Labels, Counter> = Family::default(), "heartbeats_rejected",
        "Datagrams on the peer heartbeat port not taken as heartbeats, by reason";
    verdict: Family<Labels, Gauge> = Family::default(), "verdict",
        "This NAT's verdict: 1 for the current state (starting, ok, failing, exiting)";
    verdict_seconds: FloatGauge = FloatGauge::default(), "verdict_seconds",
        "Time since this NAT's verdict last changed";
    routes: Family<Labels, Gauge> = Family::default(), "routes",
        "This AZ's private route tables in scope, by where their default route points (this_nat, other, none)";
    peer_verdict: Family<Labels, Gauge> = Family::default(), "peer_verdict",
        "Each peer NAT's last verdict heard: 1 for its state";
    peer_silence: Family<Labels, FloatGauge> = Family::default(), "peer_silence_seconds",
        "Time since each peer NAT was last heard";
    handoffs: Gauge = Gauge::default(), "flow_handoffs",
        "Peers this NAT hands connections to through the flow hand-off tunnel";
    covering: Family<Labels, Gauge> = Family::default(), "covering",
        "Other AZs this NAT covers for a dead peer: via this_nat (adopted: their routes point here) or nat_gateway (pointed at their fallback NAT Gateway)";
    eip: Gauge = Gauge::default(), "elastic_ip_held",
        "1 when this AZ's Elastic IP is on this NAT (absent when claiming is off)";
    eips: Gauge = Gauge::default(), "elastic_ips_held",
        "Elastic IPs of the group on this NAT's private addresses, of snat.addresses wanted (absent when claiming is off)";
    snat_addresses: Gauge = Gauge::default(), "snat_addresses",
        "Private addresses new connections are translated to, in turn (each with its own public address)";
    conntrack_entries: Gauge = Gauge::default(), "conntrack_entries",
        "Connections in the kernel's tracking table (nf_conntrack_count)";
    conntrack_max: Gauge = Gauge::default(), "conntrack_max",
        "Size of the kernel's connection tracking table (nf_conntrack_max)";
    conntrack_fill: FloatGauge = FloatGauge::default(), "conntrack_fill_ratio",
        "conntrack_entries / conntrack_max";
    since_reconcile: FloatGauge = FloatGauge::default(), "seconds_since_reconcile",
        "Time since the last successful route pass";
    since_converge: FloatGauge = FloatGauge::default(), "seconds_since_converge",
        "Time since the kernel NAT configuration was last converged";
    unable_to_probe: FloatGauge = FloatGauge::default(), "unable_to_probe_seconds",
        "How long this daemon has been unable to send its probes (out of descriptors or memory); 0 while it can";
    shed: Counter = Counter::default(), "endpoint_connections_shed",
        "Connections to these endpoints closed at once: the endpoint or their address held as many as it may";
    kernel_reads: Counter = Counter::default(), "kernel_readings",
        "Readings of the kernel's traffic counters (one nft process each), at most one per second whatever the scrapes";
    replication_sent: Counter = Counter::default(), "replication_sent_bytes",
        "Bytes of connection copies sent to the peers (UDP payload, each peer counted)";
    replication_rejected: Family<Labels, Counter> = Family::default(), "replication_rejected",
        "Datagrams on the replication port not taken as connection copies, by reason";
    replicas: Gauge = Gauge::default(), "replicas",
        "Copies of the peers' connections this NAT holds (in memory, until it adopts their AZ)";
    replicated: Gauge = Gauge::default(), "replicated_connections",
        "This NAT's connections its peers hold a copy of";
    replicas_written: Counter = Counter::default(), "replicas_written",
        "Copies of a peer's connections written into this NAT's kernel before taking its routes";
    active: Gauge = Gauge::default(), "active_connections",
        "ActiveConnectionCount: established TCP connections opened by private hosts";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&ApiMeter::default())
    }
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

/// Round-trip-time buckets: 1 ms doubling to about 2 s.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 12))
}

impl Metrics {
    /// The kernel's counters now (absolute values, by [`GATEWAY_COUNTERS`]
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

    /// The active connections, as last counted.
    pub fn set_active(&self, active: i64) {
        self.active.set(active);
    }

    /// The NAT Gateway's counters as the metrics have them (grown since
    /// this daemon started), by [`GATEWAY_COUNTERS`] name, and the active
    /// connections.
    pub fn kernel_totals(&self) -> (BTreeMap<&'static str, u64>, i64) {
        let totals = self
            .kernel
            .iter()
            .map(|(k, (c, _))| (*k, c.get()))
            .collect();
        (totals, self.active.get())
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

    /// A datagram on the heartbeat port was not taken, for `reason`.
    pub fn heartbeat_rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// A datagram on the replication port was not taken, for `reason`.
    pub fn replication_rejected(&self, reason: &str) {
        self.replication_rejected
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// `bytes` of copies went out.
    pub fn replication_sent(&self, bytes: usize) {
        self.replication_sent.inc_by(bytes as u64);
    }

    /// Copies held of the peers' connections, and of this NAT's own
    /// connections held by its peers.
    pub fn replication_counts(&self, held: usize, copied: usize) {
        self.replicas.set(held as i64);
        self.replicated.set(copied as i64);
    }

    /// `n` copies were written into the kernel.
    pub fn replicas_written(&self, n: usize) {
        self.replicas_written.inc_by(n as u64);
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

    /// How long this daemon has been unable to send its probes (`None`:
    /// it can).
    pub fn unable_to_probe(&self, unable: Option<std::time::Duration>) {
        self.unable_to_probe
            .set(unable.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// The AZs this NAT covers now, each with how (`this_nat`,
    /// `nat_gateway`).
    pub fn covering(&self, azs: &[(String, &'static str)]) {
        self.covering.clear();
        for (az, via) in azs {
            self.covering
                .get_or_create(&labels(&[("az", az), ("via", via)]))
                .set(1);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_only_grow() {
        let t = Metrics::default();
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
        let t = Metrics::default();
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
}
