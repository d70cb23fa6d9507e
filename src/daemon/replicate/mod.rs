//! Connection replication, the I/O side of [`crate::decide::replicate`]:
//! copy this NAT's established connections to its peers, keep theirs, and
//! write a peer's into the kernel just before taking its routes, so that
//! connections through a NAT that dies abruptly go on through its adopter.
//!
//! - `watch`: the kernel's conntrack events (and its table at start) feed
//!   the outbox;
//! - `send`: every [`SEND_EVERY`] the new copies and withdrawals go to
//!   every peer, signed with the heartbeat key; everything again to a peer
//!   that appears or asks, and to all every `replication.resync`; a tally
//!   every [`TALLY_EVERY`];
//! - `receive`: a batch counts when it is signed with a key of ours, fresh,
//!   newer than the last from its sender, and sent from the address of the
//!   listed peer it names. Copies stay in memory; a peer whose tally they
//!   do not add up to is asked for everything;
//! - [`before_taking`]: the copies of the routes' previous holder, for the
//!   networks taken, are written into the kernel with their translation,
//!   to this NAT's primary address (its own AZ taken back: its Elastic IP
//!   is there) or to its carry address (a dead peer's AZ adopted: the dead
//!   NAT's Elastic IP is moved there, [`carry`]).
//!
//! Failures are logged and cost only the connections they would have kept:
//! routes move regardless. Nothing here ever stops the daemon.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

pub mod state;

pub use state::Replication;
use state::lock;

use crate::daemon::ctx::Ctx;
use crate::daemon::log::LogThrottle;
use crate::daemon::peers::wire::unix_ms;
use crate::decide::auth::Rejected;
use crate::decide::peers::Peer;
use crate::decide::replicate::{Batch, Changes, Mapping, Part, Sender, TALLY_EVERY, parse_event};
use crate::decide::routes::{Action, Observed, Plan, networks_behind};
use crate::domain::{InstanceId, Ipv4Cidr, RouteTarget};
use crate::kernel::{conntrack, link};

/// How often new copies go out.
pub const SEND_EVERY: Duration = Duration::from_millis(200);
/// How long before `conntrack -E` is started again after it ended, or the
/// key is looked for again.
const RESTART: Duration = Duration::from_secs(1);
/// A NAT that just started says hello this often, for this long, while a
/// peer has not sent it everything.
const HELLO_EVERY: Duration = Duration::from_secs(1);
const HELLO_FOR: Duration = Duration::from_secs(30);
/// The longest a NAT taking its AZ back from a running adopter waits for
/// replication to be on (the heartbeat key read) and the adopter's copies
/// (everything it copies, sent once). The adopter serves the AZ
/// meanwhile: waiting costs nothing, going without them costs every
/// connection it carries.
pub const SYNC_WAIT: Duration = Duration::from_secs(10);

/// Run replication until aborted: wait for the heartbeat key, make sure of
/// the carry address, open the port, and run the three tasks.
pub async fn run(ctx: Arc<Ctx>, iface: String) {
    if ctx.config.snat.addresses > 1 {
        warn!(
            addresses = ctx.config.snat.addresses,
            "replication off: it keeps connections with snat.addresses = 1 only"
        );
        return;
    }
    ctx.replication.started.store(true, Ordering::Relaxed);
    *lock(&ctx.replication.iface) = Some(iface);
    let mut said = false;
    while ctx.heartbeats.policy().keys.is_none() {
        if !std::mem::replace(&mut said, true) {
            info!(
                "replication waits for the heartbeat key (peers.key_secret): copies are never sent unsigned"
            );
        }
        tokio::time::sleep(RESTART).await;
    }
    let port = ctx.config.replication.port;
    let socket = loop {
        match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                warn!(port, error = %e, "cannot open the replication port; retrying");
                tokio::time::sleep(RESTART).await;
            }
        }
    };
    ctx.replication.on.store(true, Ordering::Relaxed);
    carry_address(&ctx).await;
    info!(port, min_age = %crate::domain::human(ctx.config.replication.min_age), "replication on: established connections are copied to the peers");
    let mut tasks = JoinSet::new();
    tasks.spawn(watch(ctx.clone()));
    tasks.spawn(send(socket.clone(), ctx.clone()));
    tasks.spawn(receive(socket, ctx.clone()));
    while tasks.join_next().await.is_some() {}
}

/// Feed the outbox from the kernel's events, restarting `conntrack -E`
/// when it ends; the table is listed at each start, for what was
/// established before, and every `replication.resync`, for closings whose
/// events were lost.
async fn watch(ctx: Arc<Ctx>) {
    let mut throttle = LogThrottle::default();
    loop {
        match conntrack::events() {
            Ok((_child, mut lines)) => {
                let mut relist = tokio::time::interval(ctx.config.replication.resync);
                loop {
                    tokio::select! {
                        line = lines.next_line() => match line {
                            Ok(Some(line)) => take(&ctx, &line, ctx.now()),
                            _ => break,
                        },
                        _ = relist.tick() => list(&ctx).await,
                    }
                }
                if let Some(n) = throttle.check("events", "ended", Instant::now()) {
                    warn!(
                        suppressed = n,
                        "conntrack's event stream ended; starting it again"
                    );
                }
            }
            Err(e) => {
                if let Some(n) = throttle.check("events", &e.to_string(), Instant::now()) {
                    warn!(suppressed = n, error = %e, "cannot watch the connection table: connections are not copied to the peers");
                }
            }
        }
        tokio::time::sleep(RESTART).await;
    }
}

/// Take in the kernel's table as listed now: what was established before
/// counts as old enough, and what is no longer established is withdrawn.
async fn list(ctx: &Ctx) {
    let text = match conntrack::list().await {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot list the connection table; will retry");
            return;
        }
    };
    let at = ctx.now().saturating_sub(ctx.config.replication.min_age);
    let mut established = HashSet::new();
    for line in text.lines() {
        if let Some(e) = parse_event(line).filter(|e| e.established()) {
            established.insert(e.conn);
        }
        take(ctx, line, at);
    }
    lock(&ctx.replication.outbox).reconcile(&established);
}

/// Take in one line of the kernel's, seen `at`.
fn take(ctx: &Ctx, line: &str, at: Duration) {
    let Some(e) = parse_event(line) else { return };
    let mut ours = ctx.snat();
    ours.extend(*lock(&ctx.replication.carry));
    lock(&ctx.replication.outbox).on_event(&e, at, |a| ours.contains(&a));
}

/// Send the copies: what changed every [`SEND_EVERY`]; everything to a
/// peer that appeared or asked (a hello), and to all every
/// `replication.resync` (when the copies not heard again are also
/// forgotten here); a tally every [`TALLY_EVERY`]. For its first
/// [`HELLO_FOR`], while a listed peer that may forward has not sent it
/// everything, a hello every [`HELLO_EVERY`]; a hello to each peer whose
/// tally this NAT's copies did not add up to.
async fn send(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let port = ctx.config.replication.port;
    let (min_age, resync) = (
        ctx.config.replication.min_age,
        ctx.config.replication.resync,
    );
    let mut known: HashSet<Ipv4Addr> = HashSet::new();
    let (started, mut last_full, mut last_hello) = (Instant::now(), Instant::now(), None);
    let mut last_tally = Instant::now();
    let mut seal = Seal::new(unix_ms());
    loop {
        let targets = ctx.peers().heartbeat_targets();
        seal.update(&ctx);
        let mut out = Outgoing::default();
        if started.elapsed() < HELLO_FOR
            && last_hello.is_none_or(|t: Instant| t.elapsed() >= HELLO_EVERY)
            && !unsynced(&ctx).is_empty()
            && let Some(h) = seal.lone(Part::Hello)
        {
            last_hello = Some(Instant::now());
            out.push(&targets, vec![h]);
        }
        let ask: Vec<Ipv4Addr> = std::mem::take(&mut *lock(&ctx.replication.ask));
        for ip in ask.iter().filter(|ip| targets.contains(ip)) {
            out.push(&[*ip], seal.lone(Part::Hello).into_iter().collect());
        }
        let changes = lock(&ctx.replication.outbox).due(ctx.now(), min_age);
        let full = last_full.elapsed() >= resync;
        if full {
            last_full = Instant::now();
            lock(&ctx.replication.replicas).expire(ctx.now(), resync * 3);
        }
        let asked: Vec<Ipv4Addr> = std::mem::take(&mut *lock(&ctx.replication.asked));
        let (fresh, delta_to) = split(&targets, &asked, &known, full);
        if !fresh.is_empty() {
            // Everything is listed only when someone gets it.
            let all = Changes {
                add: lock(&ctx.replication.outbox).all_sent().add,
                remove: changes.remove.clone(),
            };
            out.push(&fresh, seal.changes(&all, true));
        }
        if !delta_to.is_empty() {
            out.push(&delta_to, seal.changes(&changes, false));
        }
        let (_, copied) = lock(&ctx.replication.outbox).counts();
        if last_tally.elapsed() >= TALLY_EVERY
            && let Some(t) = seal.lone(Part::Tally { copied })
        {
            last_tally = Instant::now();
            out.push(&targets, vec![t]);
        }
        let mut sent = 0;
        for (ip, g) in out.0 {
            if socket.send_to(&g, (ip, port)).await.is_ok() {
                sent += g.len();
            }
        }
        known = targets.into_iter().collect();
        ctx.metrics.replication_sent(sent);
        ctx.metrics
            .replication_counts(ctx.replication.held(), copied);
        tokio::time::sleep(SEND_EVERY).await;
    }
}

/// Who gets everything (all `targets` when `full`; else those new since
/// the last send, not `known`, and those that `asked`), and who gets what
/// changed (the other targets).
fn split(
    targets: &[Ipv4Addr],
    asked: &[Ipv4Addr],
    known: &HashSet<Ipv4Addr>,
    full: bool,
) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let fresh: Vec<Ipv4Addr> = (targets.iter().chain(asked))
        .filter(|t| full || !known.contains(*t) || asked.contains(*t))
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let delta_to = (targets.iter())
        .filter(|t| !fresh.contains(*t))
        .copied()
        .collect();
    (fresh, delta_to)
}

/// Seals this NAT's datagrams: who it is, its start epoch, the next
/// sequence number, the key (`None` from each without a key).
struct Seal {
    from: Sender,
    epoch: u64,
    seq: u64,
    policy: crate::decide::auth::Policy,
}

impl Seal {
    fn new(epoch: u64) -> Self {
        let from = Sender {
            instance: InstanceId(String::new()),
            az: String::new(),
            allocation: None,
        };
        let policy = crate::decide::auth::Policy::default();
        Seal {
            from,
            epoch,
            seq: 0,
            policy,
        }
    }

    /// Who this NAT is and its key, as they are now.
    fn update(&mut self, ctx: &Ctx) {
        self.from = Sender {
            instance: ctx.me.instance_id.clone(),
            az: ctx.me.availability_zone.clone(),
            allocation: lock(&ctx.replication.allocation).clone(),
        };
        self.policy = ctx.heartbeats.policy().clone();
    }

    /// A hello or a tally.
    fn lone(&mut self, part: Part) -> Option<Vec<u8>> {
        let (from, epoch, policy) = (&self.from, self.epoch, &self.policy);
        Batch::lone(from, part, epoch, &mut self.seq, unix_ms(), policy)
    }

    fn changes(&mut self, changes: &Changes, full: bool) -> Vec<Vec<u8>> {
        let (from, epoch, policy) = (&self.from, self.epoch, &self.policy);
        Batch::seal_all(from, changes, full, epoch, &mut self.seq, unix_ms(), policy)
            .unwrap_or_default()
    }
}

/// Datagrams to send, each to one address.
#[derive(Default)]
struct Outgoing(Vec<(Ipv4Addr, Vec<u8>)>);

impl Outgoing {
    fn push(&mut self, to: &[Ipv4Addr], grams: Vec<Vec<u8>>) {
        for ip in to {
            self.0.extend(grams.iter().map(|g| (*ip, g.clone())));
        }
    }
}

/// Listed peers that may still forward and have not sent this NAT
/// everything they copy.
fn unsynced(ctx: &Ctx) -> Vec<InstanceId> {
    let (peers, now) = (ctx.peers(), ctx.now());
    let replicas = lock(&ctx.replication.replicas);
    (peers.peers().iter())
        .filter(|p| peers.may_forward(p, now) && !replicas.synced(&p.instance))
        .map(|p| p.instance.clone())
        .collect()
}

/// Take in the peers' copies, until aborted.
async fn receive(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 2048];
    let mut throttle = LogThrottle::default();
    let max = ctx.config.replication.max_per_peer;
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(RESTART).await;
            continue;
        };
        let std::net::IpAddr::V4(from) = from.ip() else {
            continue;
        };
        let policy = ctx.heartbeats.policy().clone();
        let why = match Batch::open(&buf[..n], &policy, unix_ms()) {
            Err(why) => Some(why.label()),
            Ok(b) => take_in(&ctx, &b, from, max, &mut throttle),
        };
        if let Some(why) = why {
            ctx.metrics.replication_rejected(why);
            if let Some(n) = throttle.check(why, why, Instant::now()) {
                warn!(suppressed = n, from = %from, reason = why, "ignored a replication datagram");
            }
        }
    }
}

/// Take in a batch that is signed and fresh; why not, if it is not taken.
/// Copies count only from the address of the listed peer they name; a
/// hello (signed: one of the deployment's NATs, maybe not listed here
/// yet) is answered with everything.
fn take_in(
    ctx: &Ctx,
    b: &Batch,
    from: Ipv4Addr,
    max: usize,
    throttle: &mut LogThrottle,
) -> Option<&'static str> {
    if b.from.instance == ctx.me.instance_id {
        return Some("from this NAT");
    }
    if lock(&ctx.replication.replay).check(&b.from.instance, b.stamp) != Ok(()) {
        return Some(Rejected::Replayed.label());
    }
    if b.part == Part::Hello {
        lock(&ctx.replication.asked).push(from);
        return None;
    }
    let listed =
        (ctx.peers().peers().iter()).any(|p| p.instance == b.from.instance && p.ip == from);
    if !listed {
        return Some("not from the peer it names");
    }
    if let Part::Tally { copied } = b.part {
        if lock(&ctx.replication.replicas).tally(&b.from.instance, copied, ctx.now(), max) {
            lock(&ctx.replication.ask).push(from);
        }
        return None;
    }
    let dropped = lock(&ctx.replication.replicas).apply(b, ctx.now(), max);
    if dropped > 0
        && let Some(n) = throttle.check("full", "full", Instant::now())
    {
        warn!(suppressed = n, peer = %b.from.instance, dropped, max, "a peer's copies exceed replication.max_per_peer; the rest are not kept");
    }
    None
}

/// How a take translates the copies it writes.
pub enum Translate<'a> {
    /// Not at all: the routes go to a NAT Gateway, or to a NAT that still
    /// forwards (a planned exit's flow hand-off keeps its connections).
    Nothing,
    /// To this NAT's primary address, which holds its own AZ's Elastic IP
    /// (taking its AZ back).
    Own,
    /// To the carry address, with the dead peer's Elastic IP moved there.
    Carry(&'a Peer),
}

/// Before `plan` takes routes from a peer, write that peer's copies of
/// the connections of the networks taken into the kernel, translated as
/// `how` says. Returns the address the dead peer's Elastic IP is to be
/// moved to (with [`carry`]) once the copies are in.
pub async fn before_taking(
    ctx: &Ctx,
    observed: &Observed,
    plan: &Plan,
    how: &Translate<'_>,
) -> Option<Ipv4Addr> {
    if !ctx.replication.started() {
        return None;
    }
    let (holders, to) = match how {
        Translate::Nothing => return None,
        Translate::Own => {
            let from: Vec<&RouteTarget> = (plan.actions.iter())
                .filter_map(|a| match a {
                    Action::ReplaceRoute { from, .. } => Some(from),
                    _ => None,
                })
                .collect();
            // Only an adopter in another AZ carries this AZ's connections
            // on this AZ's Elastic IP, which this NAT now holds. An older
            // NAT of this AZ keeps its own address while it drains: the
            // flow hand-off keeps its connections going through it.
            let holders: Vec<Peer> = {
                let (peers, now) = (ctx.peers(), ctx.now());
                (peers.peers().iter())
                    .filter(|p| p.route_targets().iter().any(|t| from.contains(&t)))
                    .filter(|p| p.az != ctx.me.availability_zone && peers.may_forward(p, now))
                    .cloned()
                    .collect()
            };
            if holders.is_empty() {
                return None;
            }
            wait_synced(ctx, &holders).await;
            (holders, ctx.me.private_ip)
        }
        Translate::Carry(dead) => (vec![(*dead).clone()], carry_address(ctx).await?),
    };
    if !ctx.replication.is_on() {
        return None;
    }
    let mut written_to = None;
    for holder in &holders {
        let targets = holder.route_targets();
        let from = match how {
            Translate::Carry(_) => None,
            _ => Some(&targets[..]),
        };
        let sources = networks_behind(observed, plan, from);
        if write(ctx, holder, &sources, to).await {
            written_to = Some(to);
        }
    }
    match how {
        Translate::Carry(_) => written_to,
        _ => None,
    }
}

/// Write `holder`'s copies of the connections of `sources` into the
/// kernel, translated to `to`; whether there were any.
async fn write(ctx: &Ctx, holder: &Peer, sources: &[Ipv4Cidr], to: Ipv4Addr) -> bool {
    let copies = lock(&ctx.replication.replicas).to_commit(&holder.instance, sources);
    if copies.is_empty() {
        return false;
    }
    let entries: Vec<_> = (copies.iter())
        .map(|(c, m)| {
            let m = Mapping {
                addr: to,
                port: m.port,
            };
            (*c, m)
        })
        .collect();
    let began = Instant::now();
    let (written, error) = conntrack::insert_all(&entries).await;
    ctx.metrics.replicas_written(written);
    info!(peer = %holder.instance, copies = copies.len(), written, translated_to = %to, took = %crate::domain::human(began.elapsed()), "wrote the previous holder's connections into the kernel before taking its routes");
    if let Some(e) = error {
        warn!(peer = %holder.instance, error = %e, "some of its connections could not be written; they will be reset");
    }
    true
}

/// Taking routes back from running `holders` (an adopter): wait, at most
/// [`SYNC_WAIT`], until replication is on and each holder has sent this
/// NAT everything it copies, so that the connections it carries for this
/// AZ are written here before the routes move.
async fn wait_synced(ctx: &Ctx, holders: &[Peer]) {
    let began = Instant::now();
    let waiting = || {
        let unsynced = unsynced(ctx);
        !ctx.replication.is_on() || (holders.iter()).any(|h| unsynced.contains(&h.instance))
    };
    if !waiting() {
        return;
    }
    while waiting() && began.elapsed() < SYNC_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match waiting() {
        true => {
            warn!(waited = %crate::domain::human(began.elapsed()), "the adopter's connection copies did not come in time; taking routes back without them")
        }
        false => {
            info!(waited = %crate::domain::human(began.elapsed()), "the adopter's connection copies are in")
        }
    }
}

/// Move `dead`'s Elastic IP to `to` (the carry address), so that the
/// connections written for it leave through the address their far ends
/// know. Taken even from a frozen instance that EC2 still calls running:
/// the routes are being taken from it.
pub async fn carry(ctx: &Ctx, dead: &Peer, to: Ipv4Addr) {
    let allocation = lock(&ctx.replication.replicas)
        .allocation(&dead.instance)
        .map(str::to_owned);
    let Some(allocation) = allocation else {
        warn!(peer = %dead.instance, "the dead peer never said its Elastic IP: its connections leave through another address and are reset");
        return;
    };
    let silent = {
        let (s, now) = (ctx.peers(), ctx.now());
        (s.view().silence(&dead.instance, now)).is_none_or(|d| d >= ctx.config.peers.suspect_after)
    };
    match ctx
        .cloud
        .associate_address(&allocation, &ctx.me.eni, Some(to), true)
        .await
    {
        Ok(()) => {
            info!(peer = %dead.instance, allocation = %allocation, private_ip = %to, "carrying the dead peer's Elastic IP for its connections");
            if silent {
                lock(&ctx.replication.carried).push((dead.clone(), allocation));
            }
        }
        Err(e) => {
            warn!(peer = %dead.instance, allocation = %allocation, error = %e, "cannot carry the dead peer's Elastic IP: its connections are reset")
        }
    }
}

/// Give its Elastic IP back to a peer that was silent when this NAT took
/// it (frozen) and is heard again (thawed): without it, the peer cannot
/// serve, and so could never take its AZ back. Its AZ's connections this
/// NAT carries go on once it has taken its routes back (with this NAT's
/// copies of them). Peers no longer listed are forgotten.
pub async fn give_back(ctx: &Ctx) {
    let back: Vec<(Peer, String)> = {
        let (s, now) = (ctx.peers(), ctx.now());
        let fresh = ctx.config.peers.suspect_after;
        let mut carried = lock(&ctx.replication.carried);
        carried.retain(|(p, _)| s.peers().iter().any(|l| l.instance == p.instance));
        (carried.iter())
            .filter(|(p, _)| (s.view().silence(&p.instance, now)).is_some_and(|d| d < fresh))
            .cloned()
            .collect()
    };
    for (peer, allocation) in back {
        match (ctx.cloud)
            .associate_address(&allocation, &peer.eni, Some(peer.ip), true)
            .await
        {
            Ok(()) => {
                info!(peer = %peer.instance, allocation = %allocation, "gave a peer heard again its Elastic IP back");
                lock(&ctx.replication.carried).retain(|(p, _)| p.instance != peer.instance);
            }
            Err(e) => {
                warn!(peer = %peer.instance, error = %e, "cannot give a peer heard again its Elastic IP back; will retry")
            }
        }
    }
}

/// This NAT's carry address: a secondary private address of its own
/// (assigned once, EC2 choosing it) on its interface. `None` (logged)
/// when it cannot have one now; asked again at the next adoption.
async fn carry_address(ctx: &Ctx) -> Option<Ipv4Addr> {
    if let Some(a) = *lock(&ctx.replication.carry) {
        return Some(a);
    }
    let iface = lock(&ctx.replication.iface).clone()?;
    let me = &ctx.me;
    let secondary = |v: Vec<Ipv4Addr>| v.into_iter().find(|a| *a != me.private_ip);
    let result = async {
        let mut have = secondary(ctx.cloud.interface_addresses(&me.eni).await?);
        if have.is_none() {
            ctx.cloud.assign_private_addresses(&me.eni, 1).await?;
            have = secondary(ctx.cloud.interface_addresses(&me.eni).await?);
        }
        Ok::<_, crate::aws::AwsError>(have)
    }
    .await;
    let addr = match result {
        Ok(Some(a)) => a,
        Ok(None) => {
            warn!(
                "EC2 assigned no secondary private address: a dead peer's connections cannot be carried"
            );
            return None;
        }
        Err(e) => {
            warn!(error = %e, "cannot have a secondary private address for carrying a dead peer's Elastic IP; will retry at the next adoption");
            return None;
        }
    };
    if let Err(e) = link::ensure_addresses(&iface, me.private_ip, &[addr]).await {
        warn!(error = %e, address = %addr, "cannot put the carry address on the interface");
        return None;
    }
    info!(address = %addr, "carry address ready: a dead peer's Elastic IP goes here while its connections are kept");
    *lock(&ctx.replication.carry) = Some(addr);
    Some(addr)
}
