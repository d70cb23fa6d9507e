//! Peer failover, the I/O side of [`crate::peers`]: find the NATs of the
//! same deployment (Auto Scaling groups sharing our group's `peers.group_tag`
//! value), exchange UDP heartbeats with them, confirm silent ones through
//! EC2, and adopt the private routes of an AZ whose NAT is dead.
//!
//! API use stays low: the peer list is refreshed every
//! `routes.reconcile_interval` (or when an unknown peer speaks, at most
//! every 2 s), EC2 is asked
//! about a silent peer only while it is silent, backing off from 1 s to the
//! reconcile interval while EC2 says it still runs,
//! and a dead peer's AZ is re-read at most once a second until adopted,
//! then once per reconcile interval. Failures are logged and retried; peer
//! failover never stops the daemon.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::log::LogThrottle;
use super::take::{apply, apply_to, observe_az};
use crate::aws::autoscaling::AutoScaling;
use crate::aws::ec2::Ec2;
use crate::config::Config;
use crate::domain::{EniId, Identity, InstanceId, Route, RouteTarget};
use crate::peers::{Arrival, Message, Peer, Status, View, arrival, decide};
use crate::plan::{Observed, plan_to, plan_with};
use crate::{flow_handoff, report};

/// What the peers loop knows, shared with the routes loop (for failback).
#[derive(Debug, Default)]
pub struct PeerShared {
    pub peers: Vec<Peer>,
    pub view: View,
    /// Peers EC2 says are gone, or that left their group.
    pub gone: HashSet<InstanceId>,
    /// A peer we do not know spoke: refresh the list.
    pub refresh_wanted: bool,
    /// Woken when a peer's status changes, so adoption need not wait for
    /// the next round.
    pub wake: Arc<tokio::sync::Notify>,
    /// Connections handed to the NATs routes were taken from.
    pub flows: flow_handoff::Shared,
}

impl PeerShared {
    /// Route targets of peers known to be dead: gone by EC2, or heard
    /// recently saying they fail or leave.
    pub fn dead_targets(&self, now: Duration, fresh: Duration) -> Vec<RouteTarget> {
        self.peers
            .iter()
            .filter(|p| {
                self.gone.contains(&p.instance)
                    || matches!(
                        self.view.fresh(&p.instance, now, fresh),
                        Some(Status::Failing | Status::Exiting)
                    )
            })
            .flat_map(Peer::route_targets)
            .collect()
    }

    /// Whether `p` may still forward the connections it translates (a flow
    /// hand-off to it makes sense): not heard saying it fails, and heard
    /// from recently or not known to be gone. A NAT draining on a planned
    /// exit has left its group but still forwards, and says so.
    pub fn may_forward(&self, p: &Peer, now: Duration) -> bool {
        match self.view.fresh(&p.instance, now, flow_handoff::SILENCE) {
            Some(Status::Failing) => false,
            Some(_) => true,
            None => !self.gone.contains(&p.instance),
        }
    }

    /// Interfaces of peers heard recently saying they forward.
    pub fn live_enis(&self, now: Duration, fresh: Duration) -> Vec<EniId> {
        self.peers
            .iter()
            .filter(|p| {
                !self.gone.contains(&p.instance)
                    && self.view.fresh(&p.instance, now, fresh) == Some(Status::Ok)
            })
            .map(|p| p.eni.clone())
            .collect()
    }
}

/// Run peer failover until aborted.
pub async fn peers_loop(
    ec2: Ec2,
    asg: AutoScaling,
    me: Arc<Identity>,
    config: Arc<Config>,
    mut status: watch::Receiver<Status>,
    shared: Arc<Mutex<PeerShared>>,
    started: Instant,
) {
    let Some(deployment) = deployment(&asg, &me, &config).await else {
        return;
    };
    let flows = lock(&shared).flows.clone();
    // The port may still be held by a predecessor that is shutting down.
    let socket = loop {
        match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.peers.port))).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                error!(port = config.peers.port, error = %e, "cannot open the peer heartbeat port; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    info!(deployment = %deployment, port = config.peers.port, "peer failover on");
    tokio::spawn(receive(
        socket.clone(),
        me.instance_id.clone(),
        shared.clone(),
        started,
    ));

    let interval = config.peers.interval;
    let wake = lock(&shared).wake.clone();
    let mut throttle = LogThrottle::default();
    let mut seq: u64 = 0;
    let mut next_refresh = Instant::now();
    // An unknown sender asks for a refresh; at most this often, so a stream
    // of made-up heartbeats cannot turn into a stream of API calls.
    const ON_DEMAND: Duration = Duration::from_secs(2);
    let mut last_refresh: Option<Instant> = None;
    // Per silent peer: when EC2 may be asked next, and the current backoff.
    let mut checked: HashMap<InstanceId, (Instant, Duration)> = HashMap::new();
    let mut adopted: HashMap<InstanceId, Instant> = HashMap::new();
    let mut known_dead: HashSet<InstanceId> = HashSet::new();
    loop {
        let my_status = *status.borrow_and_update();
        let wanted =
            lock(&shared).refresh_wanted && last_refresh.is_none_or(|t| t.elapsed() >= ON_DEMAND);
        if Instant::now() >= next_refresh || wanted {
            last_refresh = Some(Instant::now());
            match peer_list(&asg, &ec2, &me, &config, &deployment).await {
                Ok((list, departed)) => {
                    let mut s = lock(&shared);
                    let before: Vec<InstanceId> =
                        s.peers.iter().map(|p| p.instance.clone()).collect();
                    // Keep departed peers: their AZ may still need adopting.
                    let mut peers = list;
                    let old = std::mem::take(&mut s.peers);
                    for p in old {
                        if !peers.iter().any(|q| q.instance == p.instance) {
                            s.gone.insert(p.instance.clone());
                            peers.push(p);
                        }
                    }
                    s.gone.extend(departed);
                    // Forget a departed peer once its AZ has a NAT again and
                    // it is silent (one draining on a planned exit still
                    // forwards handed-off flows), so the list does not grow
                    // with every replacement.
                    let gone = s.gone.clone();
                    let live_azs: HashSet<String> = peers
                        .iter()
                        .filter(|p| !gone.contains(&p.instance))
                        .map(|p| p.az.clone())
                        .collect();
                    let now = started.elapsed();
                    peers.retain(|p| {
                        !gone.contains(&p.instance)
                            || !live_azs.contains(&p.az)
                            || s.view
                                .fresh(&p.instance, now, flow_handoff::SILENCE)
                                .is_some()
                    });
                    s.gone.retain(|id| peers.iter().any(|p| &p.instance == id));
                    s.peers = peers;
                    s.refresh_wanted = false;
                    let after: Vec<InstanceId> =
                        s.peers.iter().map(|p| p.instance.clone()).collect();
                    if before != after {
                        let names: Vec<String> = s
                            .peers
                            .iter()
                            .map(|p| format!("{} ({})", p.instance, p.az))
                            .collect();
                        info!(peers = ?names, "peers");
                    }
                    next_refresh = Instant::now() + config.routes.reconcile_interval;
                }
                Err(e) => {
                    if let Some(n) = throttle.check("refresh", &e.to_string(), Instant::now()) {
                        warn!(suppressed = n, error = %e, "cannot list peers; will retry");
                    }
                    next_refresh = Instant::now() + Duration::from_secs(1);
                }
            }
        }

        // Heartbeat to every peer that may still be there.
        seq += 1;
        let msg = Message {
            instance: me.instance_id.clone(),
            az: me.availability_zone.clone(),
            status: my_status,
            seq,
        }
        .encode();
        let targets: Vec<Ipv4Addr> = {
            let s = lock(&shared);
            s.peers
                .iter()
                .filter(|p| !s.gone.contains(&p.instance))
                .map(|p| p.ip)
                .collect()
        };
        for ip in targets {
            let _ = socket
                .send_to(msg.as_bytes(), (ip, config.peers.port))
                .await;
        }

        let (decision, peers_now) = {
            let s = lock(&shared);
            let d = decide(
                &me,
                my_status,
                &s.peers,
                &s.view,
                &s.gone,
                started.elapsed(),
                config.peers.dead_after,
            );
            (d, s.peers.clone())
        };
        // Flow hand-offs last while their previous holder is heard from.
        let heard: HashMap<Ipv4Addr, Status> = {
            let s = lock(&shared);
            let now = started.elapsed();
            s.peers
                .iter()
                .filter_map(|p| {
                    let st = s.view.fresh(&p.instance, now, flow_handoff::SILENCE)?;
                    Some((p.ip, st))
                })
                .collect()
        };
        if let Err(e) = flows
            .lock()
            .await
            .expire(Instant::now(), |ip| heard.get(&ip).copied())
            .await
            && let Some(n) = throttle.check("handoff", &e.to_string(), Instant::now())
        {
            warn!(suppressed = n, error = %report(&e), "cannot update the flow hand-off; will retry");
        }

        for id in &decision.dead {
            if known_dead.insert(id.clone()) {
                warn!(peer = %id, "peer NAT is dead");
            }
        }
        known_dead.retain(|id| decision.dead.contains(id));

        // Silence is only a suspicion: ask EC2. The first question comes at
        // once; while EC2 keeps saying the peer runs (a partition, a peer
        // with failover off), the next waits 1 s, 2 s, 4 s… up to the
        // reconcile interval, so a peer that never speaks costs little.
        checked.retain(|id, _| decision.suspects.contains(id));
        let due: Vec<InstanceId> = decision
            .suspects
            .iter()
            .filter(|id| checked.get(*id).is_none_or(|(at, _)| Instant::now() >= *at))
            .cloned()
            .collect();
        if !due.is_empty() {
            match ec2.instances(&due).await {
                Ok(infos) => {
                    let mut s = lock(&shared);
                    for id in &due {
                        let alive = infos.iter().any(|i| &i.id == id && i.alive);
                        if !alive {
                            info!(peer = %id, "silent peer confirmed gone by EC2");
                            s.gone.insert(id.clone());
                        }
                        let backoff = checked.get(id).map_or(Duration::from_secs(1), |(_, b)| {
                            (*b * 2).min(config.routes.reconcile_interval)
                        });
                        checked.insert(id.clone(), (Instant::now() + backoff, backoff));
                    }
                }
                Err(e) => {
                    if let Some(n) = throttle.check("confirm", &e.to_string(), Instant::now()) {
                        warn!(suppressed = n, error = %e, "cannot confirm silent peers");
                    }
                }
            }
        }

        // Adoptions and fallbacks share one schedule per dead peer: retried
        // after 1 s on error, else looked at again each reconcile interval.
        let covers = (decision.adopt.into_iter().map(|p| (p, Cover::Adopt)))
            .chain(decision.fallback.into_iter().map(|p| (p, Cover::Gateway)));
        for (dead, cover) in covers {
            if adopted
                .get(&dead.instance)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let result = match cover {
                Cover::Adopt => {
                    // A peer on a planned exit still forwards its connections.
                    let leaving = lock(&shared).may_forward(&dead, started.elapsed());
                    adopt(&ec2, &me, &config, &dead, leaving.then_some(&flows)).await
                }
                Cover::Gateway => {
                    let known_dead =
                        lock(&shared).dead_targets(started.elapsed(), config.peers.dead_after);
                    fall_back(&ec2, &me, &config, &dead.az, &known_dead)
                        .await
                        .map(|n| n.unwrap_or(0))
                }
            };
            let retry = match (result, cover) {
                (Ok(0), _) => config.routes.reconcile_interval,
                (Ok(n), Cover::Adopt) => {
                    info!(peer = %dead.instance, az = %dead.az, routes = n, "adopted the private routes of a dead peer's AZ");
                    config.routes.reconcile_interval
                }
                (Ok(n), Cover::Gateway) => {
                    warn!(peer = %dead.instance, az = %dead.az, routes = n, "no healthy NAT instance can adopt a dead peer's AZ: pointed its routes at the AZ's fallback NAT Gateway");
                    config.routes.reconcile_interval
                }
                (Err(e), Cover::Adopt) => {
                    error!(peer = %dead.instance, az = %dead.az, error = %e, "adoption failed; will retry");
                    Duration::from_secs(1)
                }
                (Err(e), Cover::Gateway) => {
                    error!(peer = %dead.instance, az = %dead.az, error = %e, "fallback to the NAT Gateway failed; will retry");
                    Duration::from_secs(1)
                }
            };
            adopted.insert(dead.instance.clone(), Instant::now() + retry);
        }
        adopted.retain(|id, _| peers_now.iter().any(|p| &p.instance == id));

        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
            changed = status.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }
}

/// How a dead peer's AZ is covered.
#[derive(Debug, Clone, Copy)]
enum Cover {
    /// This NAT takes its routes.
    Adopt,
    /// No NAT is healthy: its fallback NAT Gateway does.
    Gateway,
}

/// The value of our group's deployment tag; `None` (with a warning) turns
/// peer failover off.
async fn deployment(asg: &AutoScaling, me: &Identity, config: &Config) -> Option<String> {
    let mut delay = Duration::from_secs(1);
    loop {
        let found = async {
            let Some(group) = asg.group_of(&me.instance_id).await? else {
                return Ok::<_, crate::AwsError>(Err(format!(
                    "{} is not in an Auto Scaling group",
                    me.instance_id
                )));
            };
            Ok(
                match asg.group_tag(&group, &config.peers.group_tag).await? {
                    Some(v) => Ok(v),
                    None => Err(format!(
                        "group {group} has no tag {}",
                        config.peers.group_tag
                    )),
                },
            )
        }
        .await;
        match found {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(why)) => {
                warn!("{why}; peer failover is off");
                return None;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot find this instance's group; will retry");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The live peers, and instances of ours that are no longer alive.
async fn peer_list(
    asg: &AutoScaling,
    ec2: &Ec2,
    me: &Identity,
    config: &Config,
    deployment: &str,
) -> Result<(Vec<Peer>, Vec<InstanceId>), crate::AwsError> {
    let ids: Vec<InstanceId> = asg
        .instances_of_groups_tagged(&config.peers.group_tag, deployment)
        .await?
        .into_iter()
        .filter(|i| *i != me.instance_id)
        .collect();
    let infos = ec2.instances(&ids).await?;
    let mut peers = Vec::new();
    let mut departed = Vec::new();
    for i in infos {
        match (i.alive, i.eni, i.ip) {
            (true, Some(eni), Some(ip)) => peers.push(Peer {
                instance: i.id,
                az: i.az,
                eni,
                ip,
            }),
            _ => departed.push(i.id),
        }
    }
    peers.sort_by(|a, b| a.az.cmp(&b.az).then(a.instance.cmp(&b.instance)));
    Ok((peers, departed))
}

/// Point the dead peer's AZ's private routes at us, taking only routes that
/// point at that peer, are blackholes or are missing. With `flows` (the
/// peer is leaving and still forwards), its connections are handed to it
/// first. Returns how many routes changed.
async fn adopt(
    ec2: &Ec2,
    me: &Identity,
    config: &Config,
    dead: &Peer,
    flows: Option<&flow_handoff::Shared>,
) -> Result<usize, crate::AwsError> {
    let observed = observe_az(ec2, me, config, &dead.az, false).await?;
    let dead_targets = dead.route_targets();
    // A fallback NAT Gateway only stands in until a NAT instance is healthy.
    let fallback = config
        .peers
        .fallback_nat_gateway_id
        .get(&dead.az)
        .map(|n| RouteTarget::NatGateway(n.0.clone()));
    let may_take = |r: &Route| {
        r.blackhole || dead_targets.contains(&r.target) || Some(&r.target) == fallback.as_ref()
    };
    let plan = plan_with(me, &observed, &may_take);
    if let Some(flows) = flows {
        flows
            .lock()
            .await
            .before_taking(dead, &observed, &plan)
            .await;
    }
    apply(ec2, me, &plan).await?;
    Ok(plan.actions.len())
}

/// Point `az`'s private routes at its fallback NAT Gateway, taking only
/// routes that are blackholes or point at this NAT or at a NAT known to be
/// dead (`dead`: it said `failing`/`exiting`, or EC2 says it is gone). A
/// NAT merely not heard from keeps its routes: under a one-way partition a
/// healthy adopter must not be fought. `None` when the AZ has no usable
/// fallback (not configured, or EC2 says it is not an available gateway of
/// our VPC: then routes are left alone, with a warning).
pub async fn fall_back(
    ec2: &Ec2,
    me: &Identity,
    config: &Config,
    az: &str,
    dead: &[RouteTarget],
) -> Result<Option<usize>, crate::AwsError> {
    fall_back_with(ec2, me, config, az, dead, None).await
}

/// [`fall_back`], with the AZ's subnets and route tables already read in
/// this pass (the routes loop has its own AZ's), so they are not read twice.
pub async fn fall_back_with(
    ec2: &Ec2,
    me: &Identity,
    config: &Config,
    az: &str,
    dead: &[RouteTarget],
    observed: Option<&Observed>,
) -> Result<Option<usize>, crate::AwsError> {
    let Some(id) = config.peers.fallback_nat_gateway_id.get(az) else {
        return Ok(None);
    };
    if let Err(what) = usable(ec2, me, &id.0).await? {
        warn!(az, nat_gateway = %id, "peers.fallback_nat_gateway_id: the NAT Gateway {what}; leaving the AZ's routes as they are");
        return Ok(None);
    }
    let observed = match observed {
        // The source/destination check is the routes loop's business.
        Some(o) => Observed {
            source_dest_check: None,
            ..o.clone()
        },
        None => observe_az(ec2, me, config, az, false).await?,
    };
    let (my_eni, my_instance) = (
        RouteTarget::Eni(me.eni.clone()),
        RouteTarget::Instance(me.instance_id.clone()),
    );
    let may_take = |r: &Route| {
        r.blackhole || r.target == my_eni || r.target == my_instance || dead.contains(&r.target)
    };
    let to = RouteTarget::NatGateway(id.0.clone());
    let plan = plan_to(me, &observed, &to, &may_take);
    apply_to(ec2, &to, &plan).await?;
    Ok(Some(plan.actions.len()))
}

/// Whether EC2 says the NAT Gateway is available in our VPC; if not, why.
async fn usable(ec2: &Ec2, me: &Identity, id: &str) -> Result<Result<(), String>, crate::AwsError> {
    Ok(match ec2.nat_gateway(id).await? {
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
pub async fn check_fallbacks(ec2: Ec2, me: Arc<Identity>, config: Arc<Config>) {
    for (id, azs) in shared_fallbacks(&config.peers.fallback_nat_gateway_id) {
        warn!(nat_gateway = %id, azs = ?azs, "peers.fallback_nat_gateway_id: one NAT Gateway stands in for several AZs; traffic from the others crosses AZs (billed per GB, and lost with the gateway's AZ)");
    }
    for (az, id) in &config.peers.fallback_nat_gateway_id {
        let mut attempt = 0;
        let verdict = loop {
            match usable(&ec2, &me, &id.0).await {
                Err(_) if attempt < 5 => {
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
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

/// Gateways named for more than one AZ, with those AZs. Pure.
fn shared_fallbacks(
    by_az: &std::collections::BTreeMap<String, crate::config::NatGatewayId>,
) -> Vec<(String, Vec<String>)> {
    let mut azs_of: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (az, id) in by_az {
        azs_of.entry(id.0.clone()).or_default().push(az.clone());
    }
    azs_of
        .into_iter()
        .filter(|(_, azs)| azs.len() > 1)
        .collect()
}

fn lock(s: &Mutex<PeerShared>) -> std::sync::MutexGuard<'_, PeerShared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn receive(
    socket: Arc<UdpSocket>,
    me: InstanceId,
    shared: Arc<Mutex<PeerShared>>,
    started: Instant,
) {
    let mut buf = [0u8; 256];
    let mut throttle = LogThrottle::default();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(msg) = Message::decode(&buf[..n]) else {
            continue;
        };
        if msg.instance == me {
            continue;
        }
        let from = match from.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => continue,
        };
        let mut s = lock(&shared);
        match arrival(&s.peers, &msg, from) {
            Arrival::Record => {}
            Arrival::Unknown => {
                s.refresh_wanted = true;
                continue;
            }
            Arrival::WrongSender => {
                let what = format!("{} from {from}", msg.instance);
                if let Some(n) = throttle.check("sender", &what, Instant::now()) {
                    warn!(suppressed = n, peer = %msg.instance, from = %from, "ignored a heartbeat naming a peer but not sent from its address");
                }
                continue;
            }
        }
        let now = started.elapsed();
        let before = s.view.fresh(&msg.instance, now, Duration::MAX);
        s.view.record(&msg, now);
        if before != Some(msg.status) {
            s.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_named_for_several_azs_is_found() {
        let id = |s: &str| crate::config::NatGatewayId(s.into());
        let by_az = [("a", "nat-1"), ("b", "nat-1"), ("c", "nat-2")]
            .into_iter()
            .map(|(az, n)| (az.to_owned(), id(n)))
            .collect();
        assert_eq!(
            shared_fallbacks(&by_az),
            vec![("nat-1".to_owned(), vec!["a".to_owned(), "b".to_owned()])]
        );
    }

    #[test]
    fn flows_are_handed_only_to_a_peer_that_may_still_forward() {
        let peer = |id: &str| Peer {
            instance: InstanceId(id.into()),
            az: "eu-west-1a".into(),
            eni: EniId(format!("eni-{id}")),
            ip: Ipv4Addr::new(10, 0, 0, 4),
        };
        let mut s = PeerShared::default();
        let at = Duration::from_secs(100);
        for (id, status) in [
            ("i-exiting", Status::Exiting),
            ("i-ok", Status::Ok),
            ("i-failing", Status::Failing),
            ("i-left-group", Status::Exiting),
        ] {
            s.view.record(
                &Message {
                    instance: InstanceId(id.into()),
                    az: "eu-west-1a".into(),
                    status,
                    seq: 1,
                },
                at,
            );
        }
        // Left its group while draining: gone, but still heard.
        s.gone.insert(InstanceId("i-left-group".into()));
        s.gone.insert(InstanceId("i-terminated".into()));
        let now = at + Duration::from_secs(1);
        assert!(s.may_forward(&peer("i-exiting"), now));
        assert!(s.may_forward(&peer("i-ok"), now));
        assert!(s.may_forward(&peer("i-left-group"), now));
        assert!(!s.may_forward(&peer("i-failing"), now));
        assert!(!s.may_forward(&peer("i-terminated"), now));
        // Not heard yet, not known gone: a fresh peer list, give it a chance.
        assert!(s.may_forward(&peer("i-new"), now));
        // Silent for longer than flow_handoff::SILENCE and gone.
        let later = at + flow_handoff::SILENCE + Duration::from_secs(1);
        assert!(!s.may_forward(&peer("i-left-group"), later));
    }
}
