//! Planned exits: a NAT that is about to go hands its routes to a peer
//! *before* it stops forwarding, so nobody notices.
//!
//! Triggers, polled from instance metadata every `exit.poll_interval`:
//! `autoscaling/target-lifecycle-state` = `Terminated` (scale-in or instance
//! refresh, held by the templates' termination lifecycle hook) and
//! `spot/instance-action` (the two-minute spot warning); and SIGTERM when
//! `exit.handoff_on_stop` is set. The hand-off: say `exiting` to the peers
//! (one of them adopts the AZ's routes; with none healthy, the routes loop
//! points them at the AZ's fallback NAT Gateway), wait until no route of the AZ points
//! here any more (at most `exit.handoff_timeout`), keep forwarding for
//! `exit.drain`, then complete the lifecycle action. Every step is logged;
//! failures are logged and the exit goes on.

use tokio::time::Instant;
use tracing::{info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use super::take::read_az;
use crate::aws::imds::Imds;
use crate::decide::backoff::{HANDOFF_POLL, IMDS_POLL_TIMEOUT, WATCHDOG_SLACK};
use crate::domain::{RouteTarget, Status};
use crate::report;

/// Why the NAT is leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ScaleIn,
    Spot,
    Stop,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::ScaleIn => "scale-in (lifecycle state Terminated)",
            Reason::Spot => "spot interruption notice",
            Reason::Stop => "stop requested",
        })
    }
}

/// Poll instance metadata until a planned exit shows up. While IMDS fails
/// the watcher says so (once a minute for the same error) and keeps
/// polling: the lifecycle hook holds a scale-in until it is seen, and a
/// spot notice stays up for its two minutes.
pub async fn watch_metadata(ctx: &Ctx, imds: &Imds) -> Reason {
    let mut throttle = LogThrottle::default();
    let bound = IMDS_POLL_TIMEOUT * 2 + WATCHDOG_SLACK;
    loop {
        ctx.progress.beat("exit", bound);
        match poll_once(imds).await {
            Ok(Some(reason)) => return reason,
            Ok(None) => {
                if throttle.clear("imds") {
                    info!("instance metadata answers again; watching for planned exits");
                }
            }
            Err(e) => {
                if let Some(n) = throttle.check("imds", &e, Instant::now()) {
                    warn!(suppressed = n, error = %e, "cannot read instance metadata; a planned exit will be noticed once it answers");
                }
            }
        }
        ctx.progress.done("exit");
        tokio::time::sleep(ctx.config.exit.poll_interval).await;
    }
}

/// One look at the exit triggers, each read bounded by
/// [`IMDS_POLL_TIMEOUT`].
async fn poll_once(imds: &Imds) -> Result<Option<Reason>, String> {
    let read = |path: &'static str| async move {
        match tokio::time::timeout(IMDS_POLL_TIMEOUT, imds.get_optional(path)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(report(&e)),
            Err(_) => Err(format!(
                "{path}: no answer within {}s",
                IMDS_POLL_TIMEOUT.as_secs()
            )),
        }
    };
    if read("autoscaling/target-lifecycle-state")
        .await?
        .is_some_and(|s| s.trim() == "Terminated")
    {
        return Ok(Some(Reason::ScaleIn));
    }
    Ok(read("spot/instance-action").await?.map(|_| Reason::Spot))
}

/// Hand this NAT's routes to a peer and drain. Returns when it is safe to
/// stop forwarding.
pub async fn leave(ctx: &Ctx, reason: Reason) {
    warn!(%reason, "planned exit: handing this AZ's routes to a peer");
    ctx.set_verdict(Status::Exiting);
    let start = Instant::now();
    let moved = wait_for_routes_to_move(ctx, start).await;
    if moved {
        info!(
            took_ms = start.elapsed().as_millis() as u64,
            "this AZ's routes moved (to a peer, or to the fallback NAT Gateway); draining"
        );
    } else {
        warn!(
            timeout = ?ctx.config.exit.handoff_timeout,
            "nothing took this AZ's routes (no healthy peer and no usable fallback NAT Gateway); leaving them"
        );
    }
    tokio::time::sleep(ctx.config.exit.drain).await;
    if reason == Reason::ScaleIn {
        complete_lifecycle_action(ctx).await;
    }
    info!("hand-off done");
}

/// Whether, within `exit.handoff_timeout` of `start`, no route of the AZ
/// points here any more (read every [`HANDOFF_POLL`]).
async fn wait_for_routes_to_move(ctx: &Ctx, start: Instant) -> bool {
    let me = &ctx.me;
    loop {
        match read_az(ctx, &me.availability_zone, false).await {
            Ok(observed) => {
                let still_ours = observed.route_tables.iter().any(|rt| {
                    rt.default_route.as_ref().is_some_and(|r| match &r.target {
                        RouteTarget::Eni(e) => *e == me.eni,
                        RouteTarget::Instance(i) => *i == me.instance_id,
                        _ => false,
                    })
                });
                if !still_ours {
                    return true;
                }
            }
            Err(e) => warn!(error = %e, "cannot read route tables during hand-off"),
        }
        if start.elapsed() >= ctx.config.exit.handoff_timeout {
            return false;
        }
        tokio::time::sleep(HANDOFF_POLL).await;
    }
}

/// Let the group terminate the instance now (the hook's timeout would
/// otherwise); a failure only delays that.
async fn complete_lifecycle_action(ctx: &Ctx) {
    let (cloud, me, hook) = (&ctx.cloud, &ctx.me, &ctx.config.exit.lifecycle_hook);
    let completed = async {
        match ctx.group().await? {
            Some(g) => cloud
                .complete_lifecycle_action(&g, hook, &me.instance_id)
                .await
                .map(|()| true),
            None => Ok(false),
        }
    }
    .await;
    match completed {
        Ok(true) => info!(hook = %hook, "lifecycle action completed"),
        Ok(false) => warn!("not in an Auto Scaling group: no lifecycle action to complete"),
        Err(e) => {
            warn!(error = %e, "could not complete the lifecycle action; the hook's timeout will")
        }
    }
}
