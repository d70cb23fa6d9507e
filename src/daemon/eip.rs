//! Keeping the group's Elastic IPs on this NAT's interface, so the public
//! addresses external services allow-list survive every replacement: one on
//! the primary private address, and with `snat.addresses = N` one on each of
//! N−1 secondary private addresses, which this NAT assigns itself. Run at
//! the start of each routes pass; failures are logged (once a minute) and
//! the NAT serves with what it holds meanwhile: the kernel translates new
//! connections only to the private addresses that have a public one
//! ([`Ctx::snat`]), so an address that could not be claimed is left out
//! rather than black-holing the connections sent to it.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use super::take::running_instance;
use crate::aws::AwsError;
use crate::aws::cloud::Cloud;
use crate::decide::routes::{AddressAction, plan_addresses};
use crate::domain::{Address, Identity, RouteTarget};

/// The claim's state across passes: when every address was last seen held
/// by this NAT, and whether "not in a group" was said.
#[derive(Debug, Default)]
pub struct EipClaim {
    /// Held since this reading: looked at again after `aws.refresh_interval`.
    held_at: Option<Instant>,
    said_no_group: bool,
}

impl EipClaim {
    /// One claim pass (a no-op with `eip.claim = false`, or while every
    /// address was seen held here within `aws.refresh_interval`: nobody
    /// else takes them from a running instance).
    pub async fn keep(&mut self, ctx: &Ctx, throttle: &mut LogThrottle) {
        let fresh = |t: &Instant| t.elapsed() < ctx.config.aws.refresh_interval;
        if !ctx.config.eip.claim || self.held_at.as_ref().is_some_and(fresh) {
            return;
        }
        self.held_at = None;
        let g = match ctx.group().await {
            Ok(Some(g)) => g,
            Ok(None) => {
                if !std::mem::replace(&mut self.said_no_group, true) {
                    warn!("not in an Auto Scaling group: no Elastic IP to claim");
                }
                return;
            }
            Err(e) => {
                if let Some(n) = throttle.check("eip", &e.to_string(), Instant::now()) {
                    warn!(suppressed = n, error = %e, "cannot find this instance's group; will retry");
                }
                return;
            }
        };
        let wanted = usize::from(ctx.config.snat.addresses);
        // Without its secondary addresses the NAT still claims for the
        // ones it has (the primary one at least).
        let mut problems = Vec::new();
        let privates = match private_addresses(&*ctx.cloud, &ctx.me, wanted).await {
            Ok((have, None)) => have,
            Ok((have, Some(e))) => {
                problems.push(format!("cannot assign secondary private addresses: {e}"));
                have
            }
            Err(e) => {
                problems.push(format!("cannot read this NAT's private addresses: {e}"));
                vec![ctx.me.private_ip]
            }
        };
        let tag_key = &ctx.config.eip.tag_key;
        // A NAT that serves or is starting (a replacement: without its
        // address it may have no public one to prove it forwards with)
        // takes its address back from an adopter; a failing one leaves it
        // with the connections the adopter carries.
        let serving = matches!(
            *ctx.status.borrow(),
            crate::domain::Status::Ok | crate::domain::Status::Starting
        );
        let result = claim(&*ctx.cloud, &ctx.me, tag_key, &g, &privates, serving).await;
        match &result {
            Ok((claims, primary)) => {
                ctx.replication.set_allocation(primary.clone());
                problems.extend(unclaimed(claims, tag_key, &g));
                self.record(ctx, claims, wanted);
            }
            Err(e) => {
                problems.push(format!("cannot claim the Elastic IPs: {e}"));
                // Not known to be held until a claim says so.
                let mut r = ctx.board();
                r.elastic_ip.get_or_insert(false);
                r.elastic_ips.get_or_insert((0, wanted));
            }
        }
        if problems.is_empty() {
            self.held_at = Some(Instant::now());
            throttle.clear("eip");
            return;
        }
        let m = format!(
            "{}; new connections use only the addresses that have one (the primary one always, with the instance's own public address if need be)",
            problems.join("; ")
        );
        if let Some(n) = throttle.check("eip", &m, Instant::now()) {
            warn!(suppressed = n, "{m}");
        }
    }

    /// Tell the kernel which addresses to translate to (the primary one,
    /// and each secondary one that has a public address) and the metrics
    /// what is held.
    fn record(&self, ctx: &Ctx, claims: &[(Ipv4Addr, AddressAction)], wanted: usize) {
        let held =
            |a: &AddressAction| matches!(a, AddressAction::Keep | AddressAction::Associate { .. });
        let snat: Vec<Ipv4Addr> = claims
            .iter()
            .enumerate()
            .filter(|(i, (_, a))| *i == 0 || held(a))
            .map(|(_, (p, _))| *p)
            .collect();
        ctx.set_snat(snat);
        let mut r = ctx.board();
        r.pool_taken = matches!(
            claims.first(),
            Some((_, AddressAction::HeldByHealthy { .. }))
        );
        r.elastic_ip = claims.first().map(|(_, a)| held(a));
        r.elastic_ips = Some((claims.iter().filter(|(_, a)| held(a)).count(), wanted));
    }
}

/// Why each private address of `claims` holds no Elastic IP.
fn unclaimed(claims: &[(Ipv4Addr, AddressAction)], tag_key: &str, group: &str) -> Vec<String> {
    claims
        .iter()
        .filter_map(|(p, a)| match a {
            AddressAction::Keep | AddressAction::Associate { .. } => None,
            AddressAction::NoAddress => {
                Some(format!("{p}: no free Elastic IP tagged {tag_key}={group}"))
            }
            AddressAction::HeldByHealthy {
                allocation_id,
                holder,
            } => Some(format!(
                "{p}: Elastic IP {allocation_id} is held by running {holder}; not taking it"
            )),
        })
        .collect()
}

/// This NAT's first `wanted` private addresses, the primary one first,
/// assigning the missing secondary ones (EC2 chooses them). With one
/// wanted, just the primary one, without a call. When the assignment
/// fails, the addresses it has, with the error.
pub async fn private_addresses(
    cloud: &dyn Cloud,
    me: &Identity,
    wanted: usize,
) -> Result<(Vec<Ipv4Addr>, Option<AwsError>), AwsError> {
    if wanted <= 1 {
        return Ok((vec![me.private_ip], None));
    }
    let mut have = ordered(me, cloud.interface_addresses(&me.eni).await?);
    let mut failed = None;
    if have.len() < wanted {
        let more = wanted - have.len();
        match cloud.assign_private_addresses(&me.eni, more).await {
            Ok(()) => {
                have = ordered(me, cloud.interface_addresses(&me.eni).await?);
                info!(eni = %me.eni, assigned = more, addresses = ?have, "assigned secondary private addresses");
            }
            Err(e) => failed = Some(e),
        }
    }
    have.truncate(wanted);
    Ok((have, failed))
}

/// The primary address first, whatever EC2 listed.
fn ordered(me: &Identity, mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.retain(|a| *a != me.private_ip);
    v.insert(0, me.private_ip);
    v
}

/// Keep the AZ's Elastic IP on our primary address: take it when it is
/// free or its holder is gone, never from a running instance.
pub async fn claim_address(
    cloud: &dyn Cloud,
    identity: &Identity,
    tag_key: &str,
    group: &str,
) -> Result<AddressAction, AwsError> {
    let mut v = claim_addresses(cloud, identity, tag_key, group, &[identity.private_ip]).await?;
    Ok(v.pop().map_or(AddressAction::NoAddress, |(_, a)| a))
}

/// Give each of `privates` (primary first) one of the group's Elastic
/// IPs, by [`plan_addresses`]; associates what it decides to take. EC2 is
/// asked whether a holder still runs only for as many held addresses as
/// are needed.
pub async fn claim_addresses(
    cloud: &dyn Cloud,
    identity: &Identity,
    tag_key: &str,
    group: &str,
    privates: &[Ipv4Addr],
) -> Result<Vec<(Ipv4Addr, AddressAction)>, AwsError> {
    Ok(claim(cloud, identity, tag_key, group, privates, true)
        .await?
        .0)
}

/// [`claim_addresses`], with the allocation of the Elastic IP on the
/// primary address once claimed (what replication tells the peers to
/// carry if this NAT dies). `from_adopter`: an address an adopter in
/// another AZ carries may be taken back (only a NAT that can serve takes
/// it: the adopter carries connections on it).
async fn claim(
    cloud: &dyn Cloud,
    identity: &Identity,
    tag_key: &str,
    group: &str,
    privates: &[Ipv4Addr],
    from_adopter: bool,
) -> Result<(Vec<(Ipv4Addr, AddressAction)>, Option<String>), AwsError> {
    let pool = cloud.addresses_tagged(tag_key, group).await?;
    let alive = holders_alive(cloud, identity, &pool, privates, from_adopter).await?;
    let plan = plan_addresses(identity, privates, &pool, |a| {
        alive.get(&a.allocation_id).copied().unwrap_or(true)
    });
    for (private_ip, action) in &plan {
        if let AddressAction::Associate {
            allocation_id,
            reassociate,
        } = action
        {
            cloud
                .associate_address(
                    allocation_id,
                    &identity.eni,
                    Some(*private_ip),
                    *reassociate,
                )
                .await?;
            let ip = pool
                .iter()
                .find(|a| a.allocation_id == *allocation_id)
                .map(|a| a.public_ip.clone())
                .unwrap_or_default();
            info!(allocation = %allocation_id, public_ip = %ip, eni = %identity.eni, private_ip = %private_ip, reassociate, "claimed an Elastic IP of the group");
        }
    }
    let primary = match plan.first() {
        Some((_, AddressAction::Associate { allocation_id, .. })) => Some(allocation_id.clone()),
        Some((p, AddressAction::Keep)) => (pool.iter())
            .find(|a| a.is_on(identity) && a.private_ip_of(identity) == *p)
            .map(|a| a.allocation_id.clone()),
        _ => None,
    };
    Ok((plan, primary))
}

/// Whether the holders of the pool's held addresses (not ours) still run,
/// asked until enough addresses are ours, free or orphaned for `privates`
/// (an unasked holder counts as alive): the spares last, so that a NAT
/// replacing a dead one takes back the dead one's address (the one users
/// see first) rather than settle for a free spare.
async fn holders_alive(
    cloud: &dyn Cloud,
    identity: &Identity,
    pool: &[Address],
    privates: &[Ipv4Addr],
    from_adopter: bool,
) -> Result<HashMap<String, bool>, AwsError> {
    let wanted = privates.len();
    let kept = |a: &Address| a.is_on(identity) && privates.contains(&a.private_ip_of(identity));
    let mut usable = pool
        .iter()
        .filter(|a| kept(a) || (!a.is_held() && !a.spare))
        .count();
    let free_spares = pool.iter().filter(|a| !a.is_held() && a.spare).count();
    let mut held: Vec<&Address> = pool
        .iter()
        .filter(|a| a.is_held() && !a.is_on(identity))
        .collect();
    held.sort_by_key(|a| a.spare);
    let mut spares_counted = false;
    let mut alive = HashMap::new();
    for a in held {
        if a.spare && !std::mem::replace(&mut spares_counted, true) {
            usable += free_spares;
        }
        if usable >= wanted {
            break;
        }
        let holder = match (&a.instance, &a.eni) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(e)) => cloud.eni_owner(e).await?,
            (None, None) => continue,
        };
        // A running holder in another AZ is an adopter carrying this AZ's
        // address for the connections it kept (replication): the address
        // comes back with the AZ, to a NAT that can serve it.
        let is_alive = match holder {
            Some(h) => running_instance(cloud, &RouteTarget::Instance(h))
                .await?
                .is_some_and(|i| !from_adopter || i.az == identity.availability_zone),
            None => false,
        };
        if !is_alive {
            usable += 1;
        }
        alive.insert(a.allocation_id.clone(), is_alive);
    }
    Ok(alive)
}
