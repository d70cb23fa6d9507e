//! Taking an AZ's private routes: the one path from observation to action
//! that the own-AZ pass, adoption of a dead peer's AZ and the NAT Gateway
//! fallback all go through — read the AZ ([`observe_az`]), plan
//! ([`crate::decide::routes`]), hand the connections of the routes taken
//! back to a NAT that still forwards ([`FlowsTo`]), apply ([`apply_to`]).
//!
//! Every mutating call changes one route or one attribute; [`apply_to`]
//! tries every action of a plan and returns the first error, so a failed
//! call never leaves the rest undone and the next pass retries it.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::ctx::{Ctx, Subnets};
use super::replicate::{self, Translate};
use crate::aws::AwsError;
use crate::aws::cloud::{Cloud, TaggedSubnets};
use crate::config::Config;
use crate::decide::cover::Guard;
use crate::decide::peers::Peer;
use crate::decide::routes::{Action, Observed, Plan, plan_to};
use crate::domain::{Identity, InstanceInfo, RouteTarget};

/// Read what the routes loop needs from EC2: our AZ, with our interface's
/// source/destination check.
pub async fn observe(
    cloud: &dyn Cloud,
    identity: &Identity,
    config: &Config,
) -> Result<Observed, AwsError> {
    observe_az(cloud, identity, config, &identity.availability_zone, true).await
}

/// Read the tagged subnets of `az` in our VPC and their route tables, and,
/// if `with_check`, our interface's source/destination check.
pub async fn observe_az(
    cloud: &dyn Cloud,
    identity: &Identity,
    config: &Config,
    az: &str,
    with_check: bool,
) -> Result<Observed, AwsError> {
    let azs = [az.to_owned()];
    let subnets = tagged_subnets(cloud, identity, config, &azs).await?;
    let subnets = subnets.into_values().next().unwrap_or_default();
    observe_with(cloud, identity, subnets, with_check).await
}

async fn tagged_subnets(
    cloud: &dyn Cloud,
    identity: &Identity,
    config: &Config,
    azs: &[String],
) -> Result<TaggedSubnets, AwsError> {
    cloud
        .tagged_subnets(
            &identity.vpc_id,
            azs,
            &config.discovery.tag_key,
            &config.discovery.tag_value,
        )
        .await
}

/// The route tables of `subnets` (and the check, if asked) as they are now.
async fn observe_with(
    cloud: &dyn Cloud,
    identity: &Identity,
    subnets: Subnets,
    with_check: bool,
) -> Result<Observed, AwsError> {
    let read = Observed::of_subnets(&subnets);
    let route_tables = cloud
        .route_tables_for(&identity.vpc_id, &read.tagged_subnets)
        .await?;
    let source_dest_check = match with_check {
        true => Some(cloud.source_dest_check(&identity.eni).await?),
        false => None,
    };
    Ok(Observed {
        route_tables,
        source_dest_check,
        ..read
    })
}

/// [`observe_az`] for the daemon's loops, reading what rarely changes at
/// most every `aws.refresh_interval` ([`super::ctx::Slow`]):
/// the tagged subnets, and (with `with_check`) the source/destination check
/// once seen off. The route tables are read every time.
pub async fn read_az(ctx: &Ctx, az: &str, with_check: bool) -> Result<Observed, AwsError> {
    let mut read = read_azs(ctx, &[az.to_owned()], with_check.then_some(az)).await?;
    Ok(read.remove(az).unwrap_or_default())
}

/// The routes loop's reading: this NAT's AZ as [`read_az`] reads it and,
/// in the same two calls, the AZ of every peer, kept ready
/// ([`super::ctx::Slow::ready`]) so that covering a dead peer's AZ
/// writes at once instead of reading first.
pub async fn read_own_and_peers(ctx: &Ctx) -> Result<Observed, AwsError> {
    let own = ctx.me.availability_zone.clone();
    let mut azs: Vec<String> = ctx.peers().peers().iter().map(|p| p.az.clone()).collect();
    azs.push(own.clone());
    azs.sort();
    azs.dedup();
    let began = Instant::now();
    let mut read = read_azs(ctx, &azs, Some(&own)).await?;
    let mine = read.remove(&own).unwrap_or_default();
    let mut slow = ctx.slow();
    slow.ready = read.into_iter().map(|(az, o)| (az, (began, o))).collect();
    Ok(mine)
}

/// Each of `azs` as it is now: its tagged subnets (at most every
/// `aws.refresh_interval`, one call for those due) and all their route
/// tables in one call; our source/destination check (when due) with
/// `check_in`'s.
async fn read_azs(
    ctx: &Ctx,
    azs: &[String],
    check_in: Option<&str>,
) -> Result<BTreeMap<String, Observed>, AwsError> {
    let max_age = ctx.config.aws.refresh_interval;
    let mut subnets: TaggedSubnets = BTreeMap::new();
    let mut due = Vec::new();
    for az in azs {
        match ctx.slow().subnets(az, max_age) {
            Some(s) => {
                subnets.insert(az.clone(), s);
            }
            None => due.push(az.clone()),
        }
    }
    if !due.is_empty() {
        let fresh = tagged_subnets(&*ctx.cloud, &ctx.me, &ctx.config, &due).await?;
        let mut slow = ctx.slow();
        for (az, s) in fresh {
            slow.subnets.insert(az.clone(), (Instant::now(), s.clone()));
            subnets.insert(az, s);
        }
    }
    let all: Subnets = subnets.values().flatten().cloned().collect();
    let with_check = check_in.is_some() && ctx.slow().check_due(max_age);
    let read = observe_with(&*ctx.cloud, &ctx.me, all, with_check).await?;
    if read.source_dest_check == Some(false) {
        ctx.slow().check_off_at = Some(Instant::now());
    }
    Ok(subnets
        .into_iter()
        .map(|(az, subnets)| {
            let observed = read.part(&subnets, check_in == Some(az.as_str()));
            (az, observed)
        })
        .collect())
}

/// Apply a plan that points routes at this NAT.
pub async fn apply(cloud: &dyn Cloud, identity: &Identity, plan: &Plan) -> Result<(), AwsError> {
    apply_to(
        cloud,
        &RouteTarget::Eni(identity.eni.clone()),
        plan,
        &|| true,
    )
    .await
}

/// Apply one plan, pointing routes at `to`; every action is tried, the
/// first error is returned. The source/destination check goes first (no
/// route may reach this NAT before it forwards), then every route at once:
/// an AZ with several route tables moves in the time of one write.
/// `proceed` is asked before each mutating call: once it says no (what the
/// plan was made on has changed: this NAT's verdict, a peer's), the rest
/// of the plan is dropped for the next pass to plan again.
pub async fn apply_to(
    cloud: &dyn Cloud,
    to: &RouteTarget,
    plan: &Plan,
    proceed: &Proceed<'_>,
) -> Result<(), AwsError> {
    let (checks, routes): (Vec<&Action>, Vec<&Action>) =
        (plan.actions.iter()).partition(|a| matches!(a, Action::DisableSourceDestCheck { .. }));
    let mut results = Vec::new();
    for action in checks {
        results.push(apply_one(cloud, to, action, proceed).await);
    }
    results.extend(join_all(routes.into_iter().map(|a| apply_one(cloud, to, a, proceed))).await);
    results
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(drop)
}

/// One action of a plan, if the plan still holds.
async fn apply_one(
    cloud: &dyn Cloud,
    to: &RouteTarget,
    action: &Action,
    proceed: &Proceed<'_>,
) -> Result<(), AwsError> {
    if !proceed() {
        info!(action = %action, to = %to, "not applied: what this plan was made on has changed; the next pass plans again");
        return Ok(());
    }
    let result = match action {
        Action::CreateRoute { route_table } => {
            match cloud.create_default_route(route_table, to).await {
                // Someone created one since we looked: replace it instead.
                Err(e) if e.code.as_deref() == Some("RouteAlreadyExists") => {
                    cloud.replace_default_route(route_table, to).await
                }
                other => other,
            }
        }
        Action::ReplaceRoute { route_table, .. } => {
            cloud.replace_default_route(route_table, to).await
        }
        Action::DisableSourceDestCheck { eni } => cloud.disable_source_dest_check(eni).await,
    };
    match &result {
        Ok(()) => info!(action = %action, to = %to, "applied"),
        Err(e) => error!(action = %action, error = %e, "failed; will retry"),
    }
    result
}

/// To whom the connections of the routes taken are handed off (flow
/// hand-off: they go on through the NAT that translated them).
pub enum FlowsTo<'a> {
    /// Nobody: the routes go to a NAT Gateway, or their holder is dead.
    Nobody,
    /// This peer, which is leaving and still forwards (adoption at a
    /// planned exit).
    Peer(&'a Peer),
    /// Every holder of a route taken that may still forward, whether the
    /// peer list knows it or EC2 must say who it is (taking our own AZ back
    /// from an adopter).
    Holders,
}

/// Asked before each mutating call: whether the plan still holds.
pub type Proceed<'a> = dyn Fn() -> bool + Sync + 'a;

/// What a take is about: `az`'s routes, pointed at `to`, within what
/// `guard` allows ([`crate::decide::cover`]'s rule table).
pub struct Take<'a> {
    pub az: &'a str,
    pub to: RouteTarget,
    pub guard: Guard,
    /// The AZ as already read in this pass, if it was.
    pub observed: Option<Observed>,
}

/// Read (unless given: the reading is taken out of `take`) and plan.
pub async fn read_and_plan(ctx: &Ctx, take: &mut Take<'_>) -> Result<(Observed, Plan), AwsError> {
    let observed = match take.observed.take() {
        Some(o) => o,
        None => read_az(ctx, take.az, false).await?,
    };
    let guard = &take.guard;
    let plan = plan_to(&ctx.me, &observed, &take.to, &|r| guard.may_take(r));
    Ok((observed, plan))
}

/// Hand off the connections of the routes `plan` takes (to `hand`), then
/// apply.
/// Returns how many actions were applied.
pub async fn hand_off_and_apply(
    ctx: &Ctx,
    observed: &Observed,
    plan: &Plan,
    to: &RouteTarget,
    hand: FlowsTo<'_>,
    how: Translate<'_>,
    proceed: &Proceed<'_>,
) -> Result<usize, AwsError> {
    if plan.actions.is_empty() || !proceed() {
        return Ok(0);
    }
    match hand {
        FlowsTo::Nobody => {}
        FlowsTo::Peer(peer) => {
            ctx.flows
                .lock()
                .await
                .before_taking(peer, observed, plan)
                .await;
        }
        FlowsTo::Holders => hand_off_to_holders(ctx, observed, plan).await,
    }
    // The previous holder's connections, copied by replication, go into
    // the kernel before any route moves; a dead peer's Elastic IP moves
    // to the carry address while the routes do.
    let carry_to = replicate::before_taking(ctx, observed, plan, &how).await;
    match (carry_to, &how) {
        (Some(addr), Translate::Carry(dead)) => {
            let (_, applied) = tokio::join!(
                replicate::carry(ctx, dead, addr),
                apply_to(&*ctx.cloud, to, plan, proceed)
            );
            applied?;
        }
        _ => apply_to(&*ctx.cloud, to, plan, proceed).await?,
    }
    Ok(plan.actions.len())
}

/// The whole path: read, plan, hand over, apply, each write only while the
/// guard holds.
pub async fn take(
    ctx: &Ctx,
    mut take: Take<'_>,
    hand: FlowsTo<'_>,
    how: Translate<'_>,
) -> Result<usize, AwsError> {
    let (observed, plan) = read_and_plan(ctx, &mut take).await?;
    let proceed = || take.guard.holds(&ctx.moment());
    hand_off_and_apply(ctx, &observed, &plan, &take.to, hand, how, &proceed).await
}

/// The instance a route points at (by interface or instance id), if EC2
/// says it is pending or running.
pub async fn running_instance(
    cloud: &dyn Cloud,
    target: &RouteTarget,
) -> Result<Option<InstanceInfo>, AwsError> {
    let id = match target {
        RouteTarget::Instance(i) => i.clone(),
        RouteTarget::Eni(e) => match cloud.eni_owner(e).await? {
            Some(i) => i,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let infos = cloud.instances(std::slice::from_ref(&id)).await?;
    Ok(infos.into_iter().find(|i| i.id == id && i.alive))
}

/// Before `plan` takes routes from NATs that may still forward, hand the
/// connections they translate back to them (see [`super::flows`]). A
/// holder the peer list does not have (it may not be loaded yet, this
/// daemon having just started) is looked up in EC2. Failures are logged:
/// the routes move regardless.
async fn hand_off_to_holders(ctx: &Ctx, observed: &Observed, plan: &Plan) {
    if !ctx.flows.lock().await.enabled() {
        return;
    }
    let (mut forwarding, known): (Vec<Peer>, Vec<RouteTarget>) = {
        let (s, now) = (ctx.peers(), ctx.now());
        let forwarding = s
            .peers()
            .iter()
            .filter(|p| s.may_forward(p, now))
            .cloned()
            .collect();
        (
            forwarding,
            s.peers().iter().flat_map(Peer::route_targets).collect(),
        )
    };
    for action in &plan.actions {
        if let Action::ReplaceRoute {
            from,
            blackhole: false,
            ..
        } = action
            && matches!(from, RouteTarget::Eni(_) | RouteTarget::Instance(_))
            && !known.contains(from)
        {
            match running_instance(&*ctx.cloud, from).await {
                Ok(Some(InstanceInfo {
                    id,
                    az,
                    eni: Some(eni),
                    ip: Some(ip),
                    launched,
                    ..
                })) => forwarding.push(Peer {
                    instance: id,
                    az,
                    eni,
                    ip,
                    launched,
                }),
                Ok(_) => {}
                Err(e) => {
                    warn!(holder = %from, error = %e, "cannot look up the route's holder; its connections will not be handed back to it")
                }
            }
        }
    }
    for p in &forwarding {
        ctx.flows
            .lock()
            .await
            .before_taking(p, observed, plan)
            .await;
    }
}
