//! Keeping the AZ's Elastic IP on this NAT's interface, so the public
//! address external services allow-list survives every replacement. Run at
//! the start of each routes pass; failures are logged (once a minute) and
//! the NAT serves with its own public address meanwhile.

use std::collections::HashMap;

use tokio::time::Instant;
use tracing::{info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use super::take::running_instance;
use crate::AwsError;
use crate::aws::cloud::Cloud;
use crate::decide::routes::{AddressAction, plan_address};
use crate::domain::{Identity, RouteTarget};

/// The claim's state across passes: this instance's group, once known,
/// and when the address was last seen on this NAT.
#[derive(Debug, Default)]
pub struct EipClaim {
    /// `None` until asked; `Some(None)` when not in a group.
    group: Option<Option<String>>,
    /// Held since this reading: looked at again after `aws.refresh_interval`.
    held_at: Option<Instant>,
}

impl EipClaim {
    /// One claim pass (a no-op with `eip.claim = false`, or while the
    /// address was seen held here within `aws.refresh_interval`: nobody
    /// else takes it from a running instance).
    pub async fn keep(&mut self, ctx: &Ctx, throttle: &mut LogThrottle) {
        let fresh = |t: &Instant| t.elapsed() < ctx.config.aws.refresh_interval;
        if !ctx.config.eip.claim || self.held_at.as_ref().is_some_and(fresh) {
            return;
        }
        self.held_at = None;
        if self.group.is_none() {
            match ctx.cloud.group_of(&ctx.me.instance_id).await {
                Ok(g) => {
                    if g.is_none() {
                        warn!("not in an Auto Scaling group: no Elastic IP to claim");
                    }
                    self.group = Some(g);
                }
                Err(e) => {
                    if let Some(n) = throttle.check("eip", &e.to_string(), Instant::now()) {
                        warn!(suppressed = n, error = %e, "cannot find this instance's group; will retry");
                    }
                }
            }
        }
        let Some(Some(g)) = &self.group else {
            return;
        };
        let tag_key = &ctx.config.eip.tag_key;
        let msg = match claim_address(&*ctx.cloud, &ctx.me, tag_key, g).await {
            Ok(AddressAction::Keep | AddressAction::Associate { .. }) => {
                self.held_at = Some(Instant::now());
                None
            }
            Ok(AddressAction::NoAddress) => Some(format!(
                "no Elastic IP tagged {tag_key}={g}; serving with the instance's own public address"
            )),
            Ok(AddressAction::HeldByHealthy {
                allocation_id,
                holder,
            }) => Some(format!(
                "Elastic IP {allocation_id} is held by running {holder}; not taking it, serving with the instance's own public address"
            )),
            Err(e) => Some(format!("cannot claim the Elastic IP: {e}")),
        };
        ctx.telemetry.recorded().elastic_ip = Some(msg.is_none());
        match msg {
            Some(m) => {
                if let Some(n) = throttle.check("eip", &m, Instant::now()) {
                    warn!(suppressed = n, "{m}");
                }
            }
            None => {
                throttle.clear("eip");
            }
        }
    }
}

/// Keep the AZ's Elastic IP on our interface: take it when it is free or
/// its holder is gone, never from a running instance.
pub async fn claim_address(
    cloud: &dyn Cloud,
    identity: &Identity,
    tag_key: &str,
    group: &str,
) -> Result<AddressAction, AwsError> {
    let pool = cloud.addresses_tagged(tag_key, group).await?;
    let mut alive = HashMap::new();
    for a in pool.iter().take(1) {
        let holder = match (&a.instance, &a.eni) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(e)) if *e != identity.eni => cloud.eni_owner(e).await?,
            _ => None,
        };
        let is_alive = match holder {
            Some(h) if h == identity.instance_id => true,
            Some(h) => running_instance(cloud, &RouteTarget::Instance(h))
                .await?
                .is_some(),
            None => false,
        };
        alive.insert(a.allocation_id.clone(), is_alive);
    }
    let action = plan_address(identity, &pool, |a| {
        alive.get(&a.allocation_id).copied().unwrap_or(true)
    });
    if let AddressAction::Associate {
        allocation_id,
        reassociate,
    } = &action
    {
        cloud
            .associate_address(allocation_id, &identity.eni, *reassociate)
            .await?;
        let ip = pool
            .first()
            .map(|a| a.public_ip.clone())
            .unwrap_or_default();
        info!(allocation = %allocation_id, public_ip = %ip, eni = %identity.eni, reassociate, "claimed the AZ's Elastic IP");
    }
    Ok(action)
}
