//! Covering an AZ whose own NAT cannot serve it: a peer adopts its routes,
//! or, when no NAT instance is healthy, its fallback NAT Gateway stands in.
//! Both are takes ([`super::take`]) within the guards of
//! [`crate::decide::cover`]: a stale decision can never take a route a
//! healthy NAT holds.

use tracing::{info, warn};

use super::ctx::Ctx;
use super::replicate::Translate;
use super::take::{FlowsTo, Take, take};
use crate::aws::AwsError;
use crate::aws::cloud::Cloud;
use crate::config::EVERY_AZ;
use crate::decide::backoff::{FALLBACK_CHECK, FALLBACK_CHECK_ATTEMPTS};
use crate::decide::cover::Guard;
use crate::decide::peers::Peer;
use crate::decide::routes::Observed;
use crate::domain::NatGatewayId;
use crate::domain::{Identity, RouteTarget};

/// Point the dead peer's AZ's private routes at us, taking only routes that
/// point at that peer, are blackholes, are missing, or point at the AZ's
/// fallback NAT Gateway (which only stands in until a NAT instance is
/// healthy). When the peer is `leaving` (a planned exit: it still
/// forwards), its connections are handed to it first. `ready`: the AZ as
/// the routes loop last read it (the writes then go out at once; the
/// caller looks again right after), else it is read first. Returns how
/// many routes changed.
pub async fn adopt(
    ctx: &Ctx,
    dead: &Peer,
    leaving: bool,
    ready: Option<Observed>,
) -> Result<usize, AwsError> {
    let fallback =
        (ctx.config.peers.fallback_for(&dead.az)).map(|n| RouteTarget::NatGateway(n.0.clone()));
    let spec = Take {
        az: &dead.az,
        to: ctx.me_target(),
        guard: Guard::Adopt {
            dead: dead.clone(),
            fallback,
        },
        observed: ready,
    };
    // A leaving peer still forwards and keeps its address: its
    // connections are handed to it. A dead one's are carried here, from
    // the copies replication kept.
    let (hand, how) = match leaving {
        true => (FlowsTo::Peer(dead), Translate::Nothing),
        false => (FlowsTo::Nobody, Translate::Carry(dead)),
    };
    take(ctx, spec, hand, how).await
}

/// Point `az`'s private routes at its fallback NAT Gateway, taking only
/// routes that are blackholes or point at this NAT or at a NAT known to be
/// dead (`dead`: it said `failing`/`exiting`, or EC2 says it is gone). A
/// NAT merely not heard from keeps its routes: under a one-way partition a
/// healthy adopter must not be fought. `observed`: the AZ as already read
/// in this pass. `None` when the AZ has no usable fallback (not configured,
/// or EC2 says it is not an available gateway of our VPC: then routes are
/// left alone, with a warning).
pub async fn fall_back(
    ctx: &Ctx,
    az: &str,
    dead: &[RouteTarget],
    observed: Option<&Observed>,
) -> Result<Option<usize>, AwsError> {
    let Some(id) = ctx.config.peers.fallback_for(az) else {
        return Ok(None);
    };
    if let Err(what) = usable(&*ctx.cloud, &ctx.me, &id.0).await? {
        warn!(az, nat_gateway = %id, "peers.fallback_nat_gateway_id: the NAT Gateway {what}; leaving the AZ's routes as they are");
        return Ok(None);
    }
    let spec = Take {
        az,
        to: RouteTarget::NatGateway(id.0.clone()),
        guard: Guard::FallBack {
            me: [
                RouteTarget::Eni(ctx.me.eni.clone()),
                RouteTarget::Instance(ctx.me.instance_id.clone()),
            ],
            dead: dead.to_vec(),
        },
        // The source/destination check is the routes loop's business.
        observed: observed.map(|o| Observed {
            source_dest_check: None,
            ..o.clone()
        }),
    };
    take(ctx, spec, FlowsTo::Nobody, Translate::Nothing)
        .await
        .map(Some)
}

/// Whether EC2 says the NAT Gateway is available in our VPC; if not, why.
async fn usable(
    cloud: &dyn Cloud,
    me: &Identity,
    id: &str,
) -> Result<Result<(), String>, AwsError> {
    Ok(match cloud.nat_gateway(id).await? {
        Some((state, vpc)) if state == "available" && vpc == me.vpc_id => Ok(()),
        None => Err("does not exist".to_owned()),
        Some((_, vpc)) if vpc != me.vpc_id => {
            Err(format!("is in {vpc}, not in this NAT's {}", me.vpc_id))
        }
        Some((state, _)) => Err(format!("is {state}, not available")),
    })
}

/// At start: say which fallback NAT Gateways are usable, so a typo shows
/// long before an outage needs one.
pub async fn check_fallbacks(ctx: &Ctx) {
    for (id, azs) in shared_fallbacks(&ctx.config.peers.fallback_nat_gateway_id) {
        warn!(nat_gateway = %id, azs = ?azs, "peers.fallback_nat_gateway_id: one NAT Gateway stands in for several AZs; traffic from the others crosses AZs (billed per GB, and lost with the gateway's AZ)");
    }
    for (az, id) in &ctx.config.peers.fallback_nat_gateway_id {
        let mut backoff = FALLBACK_CHECK.backoff();
        let mut attempt = 0;
        let verdict = loop {
            match usable(&*ctx.cloud, &ctx.me, &id.0).await {
                Err(_) if attempt < FALLBACK_CHECK_ATTEMPTS => {
                    tokio::time::sleep(backoff.fail()).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match verdict {
            Ok(Ok(())) => info!(az = %az, nat_gateway = %id, "fallback NAT Gateway available"),
            Ok(Err(what)) => {
                warn!(az = %az, nat_gateway = %id, "peers.fallback_nat_gateway_id: the NAT Gateway {what}; it will not be used while that lasts")
            }
            Err(e) => {
                warn!(az = %az, nat_gateway = %id, error = %e, "cannot check the fallback NAT Gateway")
            }
        }
    }
}

/// Gateways named for more than one AZ, with those AZs (a regional one,
/// named for every AZ by `"*"`, is meant to be). Pure.
fn shared_fallbacks(
    by_az: &std::collections::BTreeMap<String, NatGatewayId>,
) -> Vec<(String, Vec<String>)> {
    let mut azs_of: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let regional = by_az.get(EVERY_AZ);
    for (az, id) in by_az.iter().filter(|(_, id)| Some(*id) != regional) {
        azs_of.entry(id.0.clone()).or_default().push(az.clone());
    }
    azs_of
        .into_iter()
        .filter(|(_, azs)| azs.len() > 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_named_for_several_azs_is_found() {
        let id = |s: &str| NatGatewayId(s.into());
        let by_az = |pairs: &[(&str, &str)]| {
            (pairs.iter())
                .map(|(az, n)| ((*az).to_owned(), id(n)))
                .collect()
        };
        let zonal = by_az(&[("a", "nat-1"), ("b", "nat-1"), ("c", "nat-2")]);
        assert_eq!(
            shared_fallbacks(&zonal),
            vec![("nat-1".to_owned(), vec!["a".to_owned(), "b".to_owned()])]
        );
        // A regional gateway stands in for every AZ by design; naming it
        // again for one AZ is no sharing either.
        let regional = by_az(&[("*", "nat-r"), ("a", "nat-r"), ("c", "nat-2")]);
        assert!(shared_fallbacks(&regional).is_empty());
    }
}
