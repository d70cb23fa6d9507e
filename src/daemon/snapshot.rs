//! The snapshot of the whole daemon that `/status`, `/health`, the metrics
//! and CloudWatch read: its verdict, routes, peers, hand-offs, addresses,
//! conntrack and errors, with the health policy's word on them
//! ([`crate::decide::health`]). Taking one changes nothing.

use std::time::Duration;

use tokio::time::Instant;

use super::ctx::Ctx;
use crate::decide::health::{Facts, health};
use crate::kernel::sysctl;
use crate::status::{CloudWatchView, ErrorView, HandoffView, PeerView, Snapshot};

/// How long a snapshot waits for the hand-offs.
const FLOWS_WAIT: Duration = Duration::from_millis(300);

/// The daemon's state now, with the health policy's verdict on it.
pub async fn snapshot(ctx: &Ctx) -> Snapshot {
    let verdict = *ctx.status.borrow();
    let handoffs = handoffs(ctx).await;
    let peers = peers(ctx);
    let (entries, max) = sysctl::conntrack_fill();
    let stuck = ctx.progress.stuck();
    let snat = ctx.snat();
    let b = ctx.board();
    let errors: Vec<(&str, &str)> = (b.errors.iter())
        .map(|(what, (_, e))| (*what, e.as_str()))
        .collect();
    let (reasons, warnings) = health(&Facts {
        verdict,
        stuck: &stuck,
        routes: b.own_routes.len(),
        routes_elsewhere: b.own_routes.iter().filter(|r| !r.this_nat).count(),
        yielded: b.yielded_to.is_some(),
        elastic_ip: b.elastic_ip,
        elastic_ips: b.elastic_ips,
        snat_addresses: snat.len(),
        status_check: (ctx.config.peers.status_check.as_deref())
            .map(|c| (c, b.status_check.is_some())),
        errors: &errors,
        unable_to_probe: b
            .unable_to_probe
            .as_ref()
            .map(|(d, why)| (*d, why.as_str())),
    });
    let cw = &ctx.config.cloudwatch;
    let ago = |t: Option<Instant>| t.map(|t| t.elapsed().as_secs_f64());
    Snapshot {
        instance: ctx.me.instance_id.to_string(),
        az: ctx.me.availability_zone.clone(),
        verdict: verdict.to_string(),
        verdict_for_s: b.verdict_since.elapsed().as_secs_f64(),
        healthy: reasons.is_empty(),
        reasons,
        warnings,
        routes: b.own_routes.clone(),
        yielded_to: (b.yielded_to.as_ref()).map(|(to, why)| format!("{to} ({why})")),
        peers,
        handoffs,
        elastic_ip_held: b.elastic_ip,
        elastic_ips: b.elastic_ips,
        snat_addresses: snat.iter().map(ToString::to_string).collect(),
        status_check: b.status_check.clone(),
        conntrack_entries: entries,
        conntrack_max: max,
        cloudwatch: cw.enabled.then(|| CloudWatchView {
            namespace: cw.namespace.clone(),
            every_s: cw.interval.as_secs_f64(),
            last_put_s: ago(b.last_publish),
        }),
        since_reconcile_s: ago(b.last_reconcile),
        since_converge_s: ago(b.last_converge),
        errors: (b.errors.iter())
            .map(|(what, (at, e))| ErrorView {
                what: (*what).to_owned(),
                error: e.clone(),
                ago_s: at.elapsed().as_secs_f64(),
            })
            .collect(),
        unable_to_probe: (b.unable_to_probe.as_ref())
            .map(|(d, why)| (d.as_secs_f64(), why.clone())),
    }
}

/// The flow hand-offs in force. A loop may hold them during a kernel
/// command (bounded at 10 s): a snapshot must not wait that long, so they
/// may be unknown (`None`).
async fn handoffs(ctx: &Ctx) -> Option<Vec<HandoffView>> {
    let flows = tokio::time::timeout(FLOWS_WAIT, ctx.flows.lock())
        .await
        .ok()?;
    Some(
        flows
            .in_force()
            .into_iter()
            .map(|h| HandoffView {
                peer: h.peer,
                sources: h.sources.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    )
}

/// The peers as this NAT knows them.
fn peers(ctx: &Ctx) -> Vec<PeerView> {
    let (now, fresh) = (ctx.now(), ctx.config.peers.suspect_after);
    let s = ctx.peers();
    s.peers()
        .iter()
        .map(|p| PeerView {
            instance: p.instance.to_string(),
            az: p.az.clone(),
            ip: p.ip,
            verdict: s
                .view()
                .fresh(&p.instance, now, fresh)
                .map(|v| v.to_string()),
            silent_s: s.view().silence(&p.instance, now).map(|d| d.as_secs_f64()),
            gone: s.is_gone(&p.instance),
        })
        .collect()
}
