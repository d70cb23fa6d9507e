//! Peer failover, the I/O side of [`crate::decide::peers`]: find the NATs
//! of the same deployment (Auto Scaling groups sharing our group's
//! `peers.group_tag` value), exchange UDP heartbeats with them, confirm
//! silent ones through EC2, and cover the AZ of a dead one ([`super::cover`]).
//!
//! Heartbeats go out from their own task ([`beacon`]), which awaits nothing
//! but the socket: however slow the AWS API is, peers keep hearing this
//! NAT's verdict every `peers.interval`, and at once when it changes.
//!
//! API use stays low: the peer list is refreshed every `aws.refresh_interval`
//! (or when an unknown peer speaks, at most every [`PEER_LIST_ON_DEMAND`];
//! after a failure on [`PEER_LIST_RETRY`]), EC2 is asked about a silent peer only
//! while it is silent, on [`PEER_CONFIRM`] (every [`WITNESS_POLL`] at most
//! in its first [`WITNESS_WINDOW`], for a status check's verdict), and a dead peer's AZ is looked
//! at again each reconcile interval once covered ([`Cover::next_look`]).
//! Failures are logged and retried; peer failover never stops the daemon.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::cover::{adopt, fall_back};
use super::ctx::Ctx;
use super::log::LogThrottle;
use crate::aws::AwsError;
use crate::decide::auth::{self, Key, Keys, Policy, Rejected, Stamp};
use crate::decide::backoff::{
    Backoff, DEPLOYMENT_LOOKUP, KEY_ON_DEMAND, KEY_READ, PEER_CONFIRM, PEER_LIST_ON_DEMAND,
    PEER_LIST_RETRY, PEER_PORT_RETRY, PEER_RECEIVE_RETRY, Schedule, WITNESS_POLL, WITNESS_WINDOW,
};
use crate::decide::cover::{Cover, Decision, decide};
use crate::decide::peers::{Arrival, Message, Peer};
use crate::domain::{InstanceId, Status};
use crate::report;

pub struct PeersLoop {
    ctx: Arc<Ctx>,
    status: watch::Receiver<Status>,
    deployment: String,
    /// The receiving and sending tasks, aborted with the loop.
    _io: JoinSet<()>,
    throttle: LogThrottle,
    /// When the peer list is read again.
    list: Reread,
    /// Per silent peer: when EC2 may be asked next, its backoff, and since
    /// when it is asked about.
    checked: HashMap<InstanceId, (Instant, Backoff, Instant)>,
    /// Per dead peer: when its AZ is looked at again.
    next_look: HashMap<InstanceId, Instant>,
    known_dead: HashSet<InstanceId>,
    /// When the heartbeat keys are read again.
    keys: Reread,
    /// After a rotation, when to start signing with the new key.
    sign_new_at: Instant,
}

impl PeersLoop {
    /// Find the deployment, read the heartbeat key and open the heartbeat
    /// port; `None` (with a warning) when failover cannot be on: this
    /// instance has no deployment, or no key and unauthenticated
    /// heartbeats are not accepted. A key that cannot be read is waited for
    /// (failover stays off until then, forwarding goes on).
    pub async fn start(ctx: Arc<Ctx>) -> Option<PeersLoop> {
        let deployment = deployment(&ctx).await?;
        ctx.peers().auth = policy(&ctx).await?;
        let port = ctx.config.peers.port;
        let socket = loop {
            match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
                Ok(s) => break Arc::new(s),
                Err(e) => {
                    error!(port, error = %e, retry_in = %crate::domain::human(PEER_PORT_RETRY), "cannot open the peer heartbeat port (a predecessor may still hold it); retrying");
                    tokio::time::sleep(PEER_PORT_RETRY).await;
                }
            }
        };
        info!(deployment = %deployment, port, "peer failover on");
        let mut io = JoinSet::new();
        io.spawn(receive(socket.clone(), ctx.clone()));
        io.spawn(beacon(socket, ctx.clone()));
        Some(PeersLoop::new(ctx, deployment, io))
    }

    fn new(ctx: Arc<Ctx>, deployment: String, io: JoinSet<()>) -> PeersLoop {
        let refresh = ctx.config.aws.refresh_interval;
        PeersLoop {
            status: ctx.status.subscribe(),
            ctx,
            deployment,
            _io: io,
            throttle: LogThrottle::default(),
            list: Reread::new(Instant::now(), PEER_LIST_RETRY),
            checked: HashMap::new(),
            next_look: HashMap::new(),
            known_dead: HashSet::new(),
            keys: Reread::new(Instant::now() + refresh, KEY_READ),
            sign_new_at: Instant::now(),
        }
    }

    /// A loop that sends no heartbeats and receives none (its peers' words
    /// are recorded straight into the shared state): for tests.
    #[cfg(test)]
    pub fn without_socket(ctx: Arc<Ctx>, deployment: &str) -> PeersLoop {
        PeersLoop::new(ctx, deployment.to_owned(), JoinSet::new())
    }

    pub async fn run(mut self) {
        let interval = self.ctx.config.peers.interval;
        loop {
            self.ctx.progress.beat("peers", self.ctx.round_bound());
            self.tick().await;
            self.ctx.progress.done("peers");
            let ctx = self.ctx.clone();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = ctx.wake.notified() => {}
                changed = self.status.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(interval).await;
                    }
                }
            }
        }
    }

    /// One round: refresh the peer list when due, end flow hand-offs whose
    /// holder went quiet, decide, ask EC2 about silent peers, cover dead
    /// peers' AZs.
    pub async fn tick(&mut self) {
        self.refresh_if_due().await;
        self.read_keys_if_due().await;
        self.expire_flows().await;
        // The verdict as of now, after the awaits above.
        let my_status = *self.status.borrow_and_update();
        let decision = {
            let s = self.ctx.peers();
            decide(
                &self.ctx.me,
                my_status,
                &s.peers,
                &s.view,
                &s.gone,
                self.ctx.now(),
                self.ctx.config.peers.suspect_after,
            )
        };
        for id in &decision.dead {
            if self.known_dead.insert(id.clone()) {
                warn!(peer = %id, "peer NAT is dead");
            }
        }
        self.known_dead.retain(|id| decision.dead.contains(id));
        // Dead only by impairment: asked about still, for as long as EC2's
        // word is all there is.
        let mut suspects = decision.suspects.clone();
        suspects.extend(self.ctx.peers().impaired.iter().cloned());
        self.confirm(&suspects).await;
        self.cover(decision).await;
    }

    async fn refresh_if_due(&mut self) {
        let wanted = self.ctx.peers().refresh_wanted;
        if !self.list.due(wanted, PEER_LIST_ON_DEMAND) {
            return;
        }
        match peer_list(&self.ctx, &self.deployment).await {
            Ok((list, departed)) => {
                let mut s = self.ctx.peers();
                if s.merge(list, departed, self.ctx.now()) {
                    let names: Vec<String> = s
                        .peers
                        .iter()
                        .map(|p| format!("{} ({})", p.instance, p.az))
                        .collect();
                    info!(peers = ?names, "peers");
                }
                self.list.succeeded(self.ctx.config.aws.refresh_interval);
            }
            Err(e) => {
                let wait = self.list.failed();
                if let Some(n) = self
                    .throttle
                    .check("refresh", &e.to_string(), Instant::now())
                {
                    warn!(suppressed = n, error = %e, retry_in = %crate::domain::human(wait), "cannot list peers; will retry");
                }
            }
        }
    }

    /// Read the heartbeat keys again every `aws.refresh_interval`, or sooner
    /// (at most every [`KEY_ON_DEMAND`]) when a heartbeat came signed with
    /// a key we do not know. A failed read keeps the keys we have.
    async fn read_keys_if_due(&mut self) {
        let Some(secret) = self.ctx.config.peers.key_secret.clone() else {
            return;
        };
        {
            let mut s = self.ctx.peers();
            if s.auth.sign_with_previous && Instant::now() >= self.sign_new_at {
                s.auth.sign_with_previous = false;
                let key = s.auth.keys.as_ref().map(|k| k.current.id().to_owned());
                info!(key = ?key, "signing heartbeats with the new key");
            }
        }
        let wanted = self.ctx.peers().key_wanted;
        if !self.keys.due(wanted, KEY_ON_DEMAND) {
            return;
        }
        self.ctx.peers().key_wanted = false;
        match read_keys(&self.ctx, &secret).await {
            Ok(keys) => {
                let mut s = self.ctx.peers();
                if s.auth.keys.as_ref() != Some(&keys) {
                    // A rotation: the key we signed with is now the previous
                    // one. Keep signing with it until every peer has had a
                    // refresh interval to read the new one.
                    let rotated =
                        s.auth.keys.as_ref().map(|k| &k.current) == keys.previous.as_ref();
                    info!(secret = %secret, key = keys.current.id(), previous = ?keys.previous.as_ref().map(|k| k.id()), "heartbeat keys changed");
                    s.auth.keys = Some(keys);
                    s.auth.sign_with_previous = rotated;
                    self.sign_new_at = Instant::now() + self.ctx.config.aws.refresh_interval;
                }
                self.keys.succeeded(self.ctx.config.aws.refresh_interval);
            }
            Err(e) => {
                let wait = self.keys.failed();
                if let Some(n) = self.throttle.check("keys", &e, Instant::now()) {
                    warn!(suppressed = n, secret = %secret, error = %e, retry_in = %crate::domain::human(wait), "cannot read the heartbeat keys again; keeping the ones read before");
                }
            }
        }
    }

    /// Flow hand-offs last while their previous holder is heard from.
    async fn expire_flows(&mut self) {
        let heard = self.ctx.peers().heard_by_ip(self.ctx.now());
        let result = self
            .ctx
            .flows
            .lock()
            .await
            .expire(Instant::now(), |ip| heard.get(&ip).copied())
            .await;
        if let Err(e) = result
            && let Some(n) = self
                .throttle
                .check("handoff", &e.to_string(), Instant::now())
        {
            warn!(suppressed = n, error = %report(&e), "cannot update the flow hand-off; will retry");
        }
    }

    /// Silence is only a suspicion: ask EC2 whether the peer still runs
    /// and whether a status check calls it impaired (a frozen instance).
    /// The first question comes at once; while EC2 keeps saying the peer
    /// runs and is not impaired, the next waits on [`PEER_CONFIRM`], at
    /// most [`WITNESS_POLL`] in the first [`WITNESS_WINDOW`] of silence.
    async fn confirm(&mut self, suspects: &[InstanceId]) {
        self.checked.retain(|id, _| suspects.contains(id));
        let due: Vec<InstanceId> = suspects
            .iter()
            .filter(|id| {
                self.checked
                    .get(*id)
                    .is_none_or(|(at, _, _)| Instant::now() >= *at)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let health = match self.ctx.cloud.instance_health(&due).await {
            Ok(h) => h,
            Err(e) => {
                if let Some(n) = self
                    .throttle
                    .check("confirm", &e.to_string(), Instant::now())
                {
                    warn!(suppressed = n, error = %e, "cannot confirm silent peers");
                }
                return;
            }
        };
        let schedule = PEER_CONFIRM.capped(self.ctx.config.routes.reconcile_interval);
        let mut s = self.ctx.peers();
        for id in &due {
            match health.iter().find(|h| &h.id == id) {
                Some(h) if h.alive && h.impaired.is_empty() => {
                    if s.unimpair(id) {
                        info!(peer = %id, "silent peer no longer impaired by EC2's status checks: silence alone moves nothing");
                    }
                }
                Some(h) if h.alive => {
                    if s.impair(id) {
                        warn!(peer = %id, checks = ?h.impaired, "silent peer is impaired by EC2's status checks though running: taking it as dead until it is heard again");
                    }
                }
                _ => {
                    info!(peer = %id, "silent peer confirmed gone by EC2");
                    s.gone.insert(id.clone());
                }
            }
            let (next, backoff, since) = self
                .checked
                .entry(id.clone())
                .or_insert_with(|| (Instant::now(), schedule.backoff(), Instant::now()));
            let mut wait = backoff.fail();
            if since.elapsed() < WITNESS_WINDOW {
                wait = wait.min(WITNESS_POLL);
            }
            *next = Instant::now() + wait;
        }
    }

    /// Adoptions and fallbacks share one schedule per dead peer.
    async fn cover(&mut self, decision: Decision) {
        let covering: Vec<(String, &'static str)> = (decision.adopt.iter())
            .map(|p| (p.az.clone(), "this_nat"))
            .chain(
                decision
                    .fallback
                    .iter()
                    .map(|p| (p.az.clone(), "nat_gateway")),
            )
            .collect();
        self.ctx.covering(covering);
        let covers = (decision.adopt.into_iter().map(|p| (p, Cover::Adopt)))
            .chain(decision.fallback.into_iter().map(|p| (p, Cover::Gateway)));
        for (dead, cover) in covers {
            if self
                .next_look
                .get(&dead.instance)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let ok = self.cover_one(&dead, cover).await;
            let reconcile = self.ctx.config.routes.reconcile_interval;
            self.next_look.insert(
                dead.instance.clone(),
                Instant::now() + Cover::next_look(ok, reconcile),
            );
        }
        let s = self.ctx.peers();
        self.next_look
            .retain(|id, _| s.peers.iter().any(|p| &p.instance == id));
    }

    /// Cover one dead peer's AZ; whether that went without an error.
    async fn cover_one(&self, dead: &Peer, cover: Cover) -> bool {
        let ctx = &*self.ctx;
        let result = match cover {
            Cover::Adopt => {
                // A peer on a planned exit still forwards its connections.
                let leaving = ctx.peers().may_forward(dead, ctx.now());
                adopt(ctx, dead, leaving).await
            }
            Cover::Gateway => {
                let (_, known_dead) = ctx.liveness();
                fall_back(ctx, &dead.az, &known_dead, None)
                    .await
                    .map(|n| n.unwrap_or(0))
            }
        };
        let (peer, az) = (&dead.instance, &dead.az);
        match (result, cover) {
            (Ok(0), _) => true,
            (Ok(n), Cover::Adopt) => {
                info!(peer = %peer, az = %az, routes = n, "adopted the private routes of a dead peer's AZ");
                true
            }
            (Ok(n), Cover::Gateway) => {
                warn!(peer = %peer, az = %az, routes = n, "no healthy NAT instance can adopt a dead peer's AZ: pointed its routes at the AZ's fallback NAT Gateway");
                true
            }
            (Err(e), Cover::Adopt) => {
                error!(peer = %peer, az = %az, error = %e, "adoption failed; will retry");
                false
            }
            (Err(e), Cover::Gateway) => {
                error!(peer = %peer, az = %az, error = %e, "fallback to the NAT Gateway failed; will retry");
                false
            }
        }
    }
}

/// When something read from AWS is read again: when due (`every` after a
/// success, on its retry schedule after a failure), or sooner when asked
/// for, but never twice within the asking's minimum gap, so a stream of
/// requests (heartbeats from unknown senders or keys) cannot become a
/// stream of API calls.
struct Reread {
    next: Instant,
    last: Option<Instant>,
    backoff: Backoff,
}

impl Reread {
    fn new(first: Instant, retry: Schedule) -> Self {
        Reread {
            next: first,
            last: None,
            backoff: retry.backoff(),
        }
    }

    /// Whether to read now (`wanted`: asked for, at most every `min_gap`);
    /// if so, the read counts as started.
    fn due(&mut self, wanted: bool, min_gap: Duration) -> bool {
        let asked = wanted && self.last.is_none_or(|t| t.elapsed() >= min_gap);
        if Instant::now() < self.next && !asked {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }

    /// The read succeeded: next one after `every`.
    fn succeeded(&mut self, every: Duration) {
        self.backoff.reset();
        self.next = Instant::now() + every;
    }

    /// The read failed: how long until it is tried again.
    fn failed(&mut self) -> Duration {
        let wait = self.backoff.fail();
        self.next = Instant::now() + wait;
        wait
    }
}

/// The value of our group's deployment tag; `None` (with a warning) turns
/// peer failover off. Lookup errors are retried on [`DEPLOYMENT_LOOKUP`].
async fn deployment(ctx: &Ctx) -> Option<String> {
    let mut backoff = DEPLOYMENT_LOOKUP.backoff();
    let tag = &ctx.config.peers.group_tag;
    loop {
        let found = async {
            let Some(group) = ctx.group().await? else {
                let why = format!("{} is not in an Auto Scaling group", ctx.me.instance_id);
                return Ok::<_, AwsError>(Err(why));
            };
            Ok(match ctx.cloud.group_tag(&group, tag).await? {
                Some(v) => Ok(v),
                None => Err(format!("group {group} has no tag {tag}")),
            })
        }
        .await;
        match found {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(why)) => {
                warn!("{why}; peer failover is off");
                return None;
            }
            Err(e) => {
                let wait = backoff.fail();
                warn!(error = %e, retry_in = %crate::domain::human(wait), "cannot find this instance's group; will retry");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Which heartbeats this NAT sends and accepts: signed with the key of
/// `peers.key_secret`, read before failover starts (retried on
/// [`KEY_READ`] for as long as it takes); without one, unauthenticated
/// only if `peers.accept_unauthenticated`, else `None`: failover is off.
pub(super) async fn policy(ctx: &Ctx) -> Option<Policy> {
    let accept_unauthenticated = ctx.config.peers.accept_unauthenticated;
    let Some(secret) = &ctx.config.peers.key_secret else {
        if accept_unauthenticated {
            warn!(
                "peers.key_secret is not set: heartbeats are unauthenticated (hanat/1), and any host that can forge a NAT's address can fake its verdict"
            );
            return Some(Policy {
                accept_unauthenticated,
                ..Policy::default()
            });
        }
        warn!(
            "peers.key_secret is not set: peer failover is off (set it to the secret holding the heartbeat key; peers.accept_unauthenticated = true only during an upgrade from a version without keys)"
        );
        return None;
    };
    let mut backoff = KEY_READ.backoff();
    loop {
        match read_keys(ctx, secret).await {
            Ok(keys) => {
                info!(secret = %secret, key = keys.current.id(), previous = ?keys.previous.as_ref().map(|k| k.id()), unauthenticated_accepted = accept_unauthenticated, "heartbeat keys read");
                return Some(Policy {
                    keys: Some(keys),
                    accept_unauthenticated,
                    sign_with_previous: false,
                });
            }
            Err(e) => {
                let wait = backoff.fail();
                warn!(secret = %secret, error = %e, retry_in = %crate::domain::human(wait), "cannot read the heartbeat key: peer failover waits for it (this NAT keeps forwarding its own AZ)");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The current key of `secret` and the one it replaced, if any; an error
/// says what is wrong without showing a key.
async fn read_keys(ctx: &Ctx, secret: &str) -> Result<Keys, String> {
    let current = ctx
        .cloud
        .secret(secret, "AWSCURRENT")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such secret, or it has no current value")?;
    let current = Key::new(&current).map_err(|e| format!("its current value {e}"))?;
    let previous = match ctx.cloud.secret(secret, "AWSPREVIOUS").await {
        Ok(v) => v.and_then(|v| Key::new(&v).ok()),
        // The previous key only widens what is accepted: do without it.
        Err(_) => None,
    };
    Ok(Keys { current, previous })
}

/// Milliseconds since the Unix epoch, the clock heartbeats are stamped with.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The live peers, and instances of ours that are no longer alive.
async fn peer_list(ctx: &Ctx, deployment: &str) -> Result<(Vec<Peer>, Vec<InstanceId>), AwsError> {
    let ids: Vec<InstanceId> = ctx
        .cloud
        .instances_of_groups_tagged(&ctx.config.peers.group_tag, deployment)
        .await?
        .into_iter()
        .filter(|i| *i != ctx.me.instance_id)
        .collect();
    let infos = ctx.cloud.instances(&ids).await?;
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

/// Send this NAT's verdict to every peer that may still be there, every
/// `peers.interval` and at once when it changes, until aborted. Awaits
/// nothing but the socket.
async fn beacon(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut status = ctx.status.subscribe();
    let (interval, port) = (ctx.config.peers.interval, ctx.config.peers.port);
    let epoch = unix_ms();
    let mut seq = 0;
    loop {
        seq += 1;
        let msg = Message {
            instance: ctx.me.instance_id.clone(),
            az: ctx.me.availability_zone.clone(),
            status: *status.borrow_and_update(),
            seq,
        };
        let stamp = Stamp {
            epoch,
            seq,
            sent_ms: unix_ms(),
        };
        let (msg, targets) = {
            let s = ctx.peers();
            (auth::encode(&msg, stamp, &s.auth), s.heartbeat_targets())
        };
        for ip in targets {
            let _ = socket.send_to(msg.as_bytes(), (ip, port)).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = status.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }
}

/// Receive heartbeats until aborted. A heartbeat counts when [`auth`]
/// accepts it (signed with a key of ours, fresh, newer than the last one
/// from the same peer) and it comes from the address of the peer it names.
async fn receive(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = [0u8; 512];
    let mut throttle = LogThrottle::default();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(PEER_RECEIVE_RETRY).await;
            continue;
        };
        let std::net::IpAddr::V4(from) = from.ip() else {
            continue;
        };
        let opened = {
            let mut s = ctx.peers();
            auth::open(&buf[..n], &s.auth, unix_ms()).and_then(|o| {
                match (&o.stamp, o.msg.instance == ctx.me.instance_id) {
                    (Some(stamp), false) => s.replay.check(&o.msg.instance, *stamp).map(|_| o),
                    _ => Ok(o),
                }
            })
        };
        let msg = match opened {
            Ok(o) => o.msg,
            Err(Rejected::Malformed) => continue,
            Err(why) => {
                ctx.metrics.heartbeat_rejected(why.label());
                if matches!(why, Rejected::UnknownKey(_)) {
                    ctx.peers().key_wanted = true;
                }
                if let Some(n) = throttle.check(why.label(), why.label(), Instant::now()) {
                    warn!(suppressed = n, from = %from, reason = %why, "ignored a heartbeat");
                }
                continue;
            }
        };
        if msg.instance == ctx.me.instance_id {
            continue;
        }
        let (what, changed, silence) = {
            let mut s = ctx.peers();
            let silence = s.view.silence(&msg.instance, ctx.now());
            let (what, changed) = s.hear(&msg, from, ctx.now());
            (what, changed, silence.filter(|_| what == Arrival::Record))
        };
        if let Some(gap) = silence.filter(|g| *g >= ctx.config.peers.suspect_after) {
            warn!(peer = %msg.instance, silent_ms = gap.as_millis() as u64, status = %msg.status, "heard a peer again after a silence longer than peers.dead_after");
        }
        if what == Arrival::WrongSender {
            let key = format!("{} from {from}", msg.instance);
            if let Some(n) = throttle.check("sender", &key, Instant::now()) {
                warn!(suppressed = n, peer = %msg.instance, from = %from, "ignored a heartbeat naming a peer but not sent from its address");
            }
        }
        if changed {
            ctx.wake.notify_one();
        }
    }
}
