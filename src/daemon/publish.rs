//! CloudWatch publishing (`[cloudwatch]`): every `cloudwatch.interval`
//! one `PutMetricData` call with
//!
//! - the NAT Gateway's metrics under the gateway's names (what the
//!   kernel's counters grew by since the last call that succeeded, and
//!   `ActiveConnectionCount`), `ConntrackFillPercent` and `VerdictOk`,
//!   dimensioned by this NAT's Auto Scaling group and AZ;
//! - `ForwardingNat` for every AZ this NAT knows (its own and its peers'),
//!   dimensioned by VPC and AZ: 1 when this NAT forwards that AZ's private
//!   traffic (an AZ it gave back, until its routes are seen gone), else 0. Its maximum over all NATs is 0, or missing, exactly
//!   when an AZ has no NAT that forwards for it: the templates' alarm.
//!
//! A call that fails loses nothing: the counters' growth is carried into
//! the next call. Forwarding never waits for CloudWatch.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use super::readings::{kernel_metrics, refresh};
use crate::aws::AwsError;
use crate::config::MetricSet;
use crate::decide::routes::points_at;
use crate::domain::{Datum, RouteTarget, Status, Unit};
use crate::kernel::counters::GATEWAY_COUNTERS;
use crate::status::Snapshot;

/// Whether an AZ has a NAT that forwards for it, by VPC and AZ.
pub const FORWARDING_NAT: &str = "ForwardingNat";
/// The conntrack table's fill, in percent.
pub const CONNTRACK_FILL: &str = "ConntrackFillPercent";
/// 1 while this NAT's verdict is `ok`.
pub const VERDICT_OK: &str = "VerdictOk";
/// What the templates' alarms watch: `cloudwatch.metrics = "alarms"`
/// publishes only these.
pub const ALARMED: [&str; 3] = [FORWARDING_NAT, "ErrorPortAllocation", CONNTRACK_FILL];

/// What one call publishes, read from the daemon's state.
pub struct Reading<'a> {
    pub snapshot: &'a Snapshot,
    pub vpc: &'a str,
    /// This NAT's Auto Scaling group (`None`: not in one, so its instance
    /// id names it).
    pub group: Option<&'a str>,
    /// The counters' totals now, and at the last call that succeeded.
    pub totals: &'a BTreeMap<&'static str, u64>,
    pub sent: &'a BTreeMap<&'static str, u64>,
    pub active: i64,
    /// The other AZs this NAT covers, and how.
    pub covering: &'a [(String, &'static str)],
}

/// The figures of one call.
pub fn data(r: &Reading, set: MetricSet) -> Vec<Datum> {
    let s = r.snapshot;
    let nat = vec![
        match r.group {
            Some(g) => ("AutoScalingGroupName", g.to_owned()),
            None => ("InstanceId", s.instance.clone()),
        },
        ("AvailabilityZone", s.az.clone()),
    ];
    let figure = |name: &'static str, value: f64, unit: Unit| Datum {
        name,
        dimensions: nat.clone(),
        value,
        unit,
    };
    let mut out: Vec<Datum> = GATEWAY_COUNTERS
        .iter()
        .map(|k| {
            let now = r.totals.get(k.name).copied().unwrap_or(0);
            let then = r.sent.get(k.name).copied().unwrap_or(0);
            figure(k.cloudwatch, now.saturating_sub(then) as f64, k.unit)
        })
        .collect();
    out.push(figure(
        "ActiveConnectionCount",
        r.active as f64,
        Unit::Count,
    ));
    if let Some(fill) = s.conntrack_fill() {
        out.push(figure(CONNTRACK_FILL, 100.0 * fill, Unit::Percent));
    }
    let ok = s.verdict == Status::Ok.to_string();
    out.push(figure(VERDICT_OK, f64::from(u8::from(ok)), Unit::Count));
    let holds_own = !s.routes.is_empty() && s.routes.iter().all(|t| t.this_nat);
    let mut azs: BTreeMap<&str, bool> = BTreeMap::from([(s.az.as_str(), ok && holds_own)]);
    for p in &s.peers {
        azs.entry(p.az.as_str()).or_insert(false);
    }
    for (az, via) in r.covering {
        let forwards = *via == "nat_gateway" || ok;
        azs.insert(az.as_str(), forwards);
    }
    out.extend(azs.into_iter().map(|(az, forwards)| Datum {
        name: FORWARDING_NAT,
        dimensions: vec![("VpcId", r.vpc.to_owned()), ("AvailabilityZone", az.into())],
        value: f64::from(u8::from(forwards)),
        unit: Unit::Count,
    }));
    if set == MetricSet::Alarms {
        out.retain(|d| ALARMED.contains(&d.name));
    }
    out
}

/// The publishing task: counters' totals at the last call that succeeded.
pub struct PublishLoop {
    ctx: Arc<Ctx>,
    sent: BTreeMap<&'static str, u64>,
    throttle: LogThrottle,
}

impl PublishLoop {
    /// Start from the counters as they are: what they grew by before this
    /// daemon started is not this minute's traffic.
    pub async fn start(ctx: Arc<Ctx>) -> Self {
        kernel_metrics(&ctx).await;
        let (sent, _) = ctx.metrics.kernel_totals();
        PublishLoop {
            ctx,
            sent,
            throttle: LogThrottle::default(),
        }
    }

    pub async fn run(mut self) {
        let cw = &self.ctx.config.cloudwatch;
        info!(namespace = %cw.namespace, every = ?cw.interval, "publishing to CloudWatch");
        let mut every = tokio::time::interval_at(Instant::now() + cw.interval, cw.interval);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let result = self.tick().await;
            match &result {
                Ok(_) => {
                    if self.throttle.clear("put") {
                        info!("publishing to CloudWatch again");
                    }
                }
                Err(e) => {
                    if let Some(n) = self.throttle.check("put", &e.to_string(), Instant::now()) {
                        warn!(suppressed = n, error = %e, "cannot publish to CloudWatch; what the counters grew by goes into the next call");
                    }
                }
            }
            self.ctx
                .board()
                .error("cloudwatch", result.err().map(|e| e.to_string()));
        }
    }

    /// One call; the number of figures it put.
    pub async fn tick(&mut self) -> Result<usize, AwsError> {
        let ctx = &self.ctx;
        let snapshot = refresh(ctx).await;
        let group = ctx.group().await?;
        let (totals, active) = ctx.metrics.kernel_totals();
        let covering = forwarding_for(ctx);
        let reading = Reading {
            snapshot: &snapshot,
            vpc: &ctx.me.vpc_id.0,
            group: group.as_deref(),
            totals: &totals,
            sent: &self.sent,
            active,
            covering: &covering,
        };
        let cw = &ctx.config.cloudwatch;
        let data = data(&reading, cw.metrics);
        ctx.cloud.put_metric_data(&cw.namespace, &data).await?;
        ctx.board().last_publish = Some(Instant::now());
        self.sent = totals;
        Ok(data.len())
    }
}

/// What this NAT forwards for other AZs ([`super::board::StatusBoard::forwarding_for`]):
/// an AZ handed back counts until the routes loop's reading of it shows no
/// route here, or for at most three reconcile intervals unread.
fn forwarding_for(ctx: &Ctx) -> Vec<(String, &'static str)> {
    let me = RouteTarget::Eni(ctx.me.eni.clone());
    let readings: BTreeMap<String, (Instant, bool)> = (ctx.slow().ready.iter())
        .map(|(az, (at, o))| {
            let here = (o.route_tables.iter())
                .filter_map(|t| t.default_route.as_ref())
                .any(|r| points_at(&r.target, &me, &ctx.me));
            (az.clone(), (*at, here))
        })
        .collect();
    let still_here = |az: &str, since: Instant| {
        (readings.get(az))
            .filter(|(at, _)| *at > since)
            .map(|(_, here)| *here)
    };
    let cap = ctx.config.routes.reconcile_interval * 3;
    ctx.board().forwarding_for(still_here, cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{PeerView, RouteView};

    fn snapshot(verdict: Status, own_routes_here: bool) -> Snapshot {
        Snapshot {
            instance: "i-a".into(),
            az: "az-a".into(),
            verdict: verdict.to_string(),
            verdict_for_s: 1.0,
            healthy: verdict == Status::Ok,
            reasons: vec![],
            warnings: vec![],
            routes: vec![RouteView {
                table: "rtb-a".into(),
                target: Some("eni-a".into()),
                this_nat: own_routes_here,
            }],
            yielded_to: None,
            peers: ["az-b", "az-c"]
                .iter()
                .map(|az| PeerView {
                    instance: format!("i-{az}"),
                    az: (*az).into(),
                    ip: std::net::Ipv4Addr::LOCALHOST,
                    verdict: None,
                    silent_s: None,
                    gone: false,
                })
                .collect(),
            handoffs: Some(vec![]),
            elastic_ip_held: None,
            elastic_ips: None,
            snat_addresses: Vec::new(),
            status_check: None,
            conntrack_entries: 900,
            conntrack_max: 1000,
            cloudwatch: None,
            since_reconcile_s: None,
            since_converge_s: None,
            errors: vec![],
            unable_to_probe: None,
        }
    }

    fn value(data: &[Datum], name: &str, az: &str) -> Option<f64> {
        data.iter()
            .find(|d| {
                d.name == name
                    && d.dimensions
                        .iter()
                        .any(|(k, v)| *k == "AvailabilityZone" && v == az)
            })
            .map(|d| d.value)
    }

    fn publish(s: &Snapshot, covering: &[(String, &'static str)], set: MetricSet) -> Vec<Datum> {
        let totals = BTreeMap::from([
            ("bytes_out_to_destination", 5000),
            ("port_allocation_errors", 7),
        ]);
        let sent = BTreeMap::from([("bytes_out_to_destination", 1000)]);
        data(
            &Reading {
                snapshot: s,
                vpc: "vpc-1",
                group: Some("nat-a"),
                totals: &totals,
                sent: &sent,
                active: 42,
                covering,
            },
            set,
        )
    }

    #[test]
    fn the_gateways_figures_are_what_the_counters_grew_by_under_its_names() {
        let d = publish(&snapshot(Status::Ok, true), &[], MetricSet::All);
        assert_eq!(value(&d, "BytesOutToDestination", "az-a"), Some(4000.0));
        assert_eq!(value(&d, "ErrorPortAllocation", "az-a"), Some(7.0));
        assert_eq!(value(&d, "PacketsDropCount", "az-a"), Some(0.0));
        assert_eq!(value(&d, "ActiveConnectionCount", "az-a"), Some(42.0));
        assert_eq!(value(&d, CONNTRACK_FILL, "az-a"), Some(90.0));
        assert_eq!(value(&d, VERDICT_OK, "az-a"), Some(1.0));
        let bytes = d.iter().find(|d| d.name == "BytesOutToDestination");
        assert_eq!(
            bytes.map(|d| (d.unit, d.dimensions.clone())),
            Some((
                Unit::Bytes,
                vec![
                    ("AutoScalingGroupName", "nat-a".into()),
                    ("AvailabilityZone", "az-a".into())
                ]
            ))
        );
        assert_eq!(d.len(), 12 + 3 + 3, "12 counters, 3 gauges, 3 AZs");
    }

    #[test]
    fn an_az_is_forwarded_by_its_own_nat_only_while_ok_and_holding_its_routes_and_by_an_adopter() {
        let fwd = |d: &[Datum], az| value(d, FORWARDING_NAT, az);
        let d = publish(&snapshot(Status::Ok, true), &[], MetricSet::All);
        assert_eq!(
            [fwd(&d, "az-a"), fwd(&d, "az-b"), fwd(&d, "az-c")],
            [Some(1.0), Some(0.0), Some(0.0)]
        );
        let forwarding = d.iter().find(|d| d.name == FORWARDING_NAT);
        assert_eq!(
            forwarding.map(|d| d.dimensions.clone()),
            Some(vec![
                ("VpcId", "vpc-1".into()),
                ("AvailabilityZone", "az-a".into())
            ])
        );
        let elsewhere = publish(&snapshot(Status::Ok, false), &[], MetricSet::All);
        assert_eq!(fwd(&elsewhere, "az-a"), Some(0.0));
        let covering = [
            ("az-b".to_owned(), "this_nat"),
            ("az-c".to_owned(), "nat_gateway"),
        ];
        let d = publish(&snapshot(Status::Ok, true), &covering, MetricSet::All);
        assert_eq!([fwd(&d, "az-b"), fwd(&d, "az-c")], [Some(1.0), Some(1.0)]);
        let d = publish(&snapshot(Status::Failing, true), &covering, MetricSet::All);
        assert_eq!(
            [fwd(&d, "az-a"), fwd(&d, "az-b"), fwd(&d, "az-c")],
            [Some(0.0), Some(0.0), Some(1.0)],
            "a failing NAT forwards for no one; a NAT Gateway still does"
        );
        assert_eq!(value(&d, VERDICT_OK, "az-a"), Some(0.0));
    }

    #[test]
    fn the_alarms_set_is_what_the_alarms_watch() {
        let d = publish(&snapshot(Status::Ok, true), &[], MetricSet::Alarms);
        let mut names: Vec<&str> = d.iter().map(|d| d.name).collect();
        names.dedup();
        assert_eq!(
            names,
            ["ErrorPortAllocation", CONNTRACK_FILL, FORWARDING_NAT]
        );
    }
}
