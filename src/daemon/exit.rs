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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::take::observe;
use crate::aws::autoscaling::AutoScaling;
use crate::aws::ec2::Ec2;
use crate::aws::imds::Imds;
use crate::config::Config;
use crate::domain::Identity;
use crate::domain::RouteTarget;
use crate::peers::Status;

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

/// Poll instance metadata until a planned exit shows up.
pub async fn watch_metadata(imds: &Imds, every: Duration) -> Reason {
    loop {
        if let Ok(Some(state)) = imds
            .get_optional("autoscaling/target-lifecycle-state")
            .await
            && state.trim() == "Terminated"
        {
            return Reason::ScaleIn;
        }
        if let Ok(Some(_)) = imds.get_optional("spot/instance-action").await {
            return Reason::Spot;
        }
        tokio::time::sleep(every).await;
    }
}

/// Hand this NAT's routes to a peer and drain. Returns when it is safe to
/// stop forwarding.
pub async fn hand_off(
    reason: Reason,
    ec2: &Ec2,
    asg: &AutoScaling,
    me: &Identity,
    config: &Config,
    status: &Arc<watch::Sender<Status>>,
) {
    warn!(%reason, "planned exit: handing this AZ's routes to a peer");
    status.send_replace(Status::Exiting);
    let start = Instant::now();
    let moved = loop {
        match observe(ec2, me, config).await {
            Ok(observed) => {
                let still_ours = observed.route_tables.iter().any(|rt| {
                    rt.default_route.as_ref().is_some_and(|r| match &r.target {
                        RouteTarget::Eni(e) => *e == me.eni,
                        RouteTarget::Instance(i) => *i == me.instance_id,
                        _ => false,
                    })
                });
                if !still_ours {
                    break true;
                }
            }
            Err(e) => warn!(error = %e, "cannot read route tables during hand-off"),
        }
        if start.elapsed() >= config.exit.handoff_timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if moved {
        info!(
            took_ms = start.elapsed().as_millis() as u64,
            "this AZ's routes moved (to a peer, or to the fallback NAT Gateway); draining"
        );
    } else {
        warn!(
            timeout = ?config.exit.handoff_timeout,
            "nothing took this AZ's routes (no healthy peer and no usable fallback NAT Gateway); leaving them"
        );
    }
    tokio::time::sleep(config.exit.drain).await;
    if reason == Reason::ScaleIn {
        let completed = async {
            let group = asg.group_of(&me.instance_id).await?;
            match group {
                Some(g) => asg
                    .complete_lifecycle_action(&g, &config.exit.lifecycle_hook, &me.instance_id)
                    .await
                    .map(|()| true),
                None => Ok(false),
            }
        }
        .await;
        match completed {
            Ok(true) => info!(hook = %config.exit.lifecycle_hook, "lifecycle action completed"),
            Ok(false) => warn!("not in an Auto Scaling group: no lifecycle action to complete"),
            Err(e) => {
                warn!(error = %e, "could not complete the lifecycle action; the hook's timeout will")
            }
        }
    }
    info!("hand-off done");
}
