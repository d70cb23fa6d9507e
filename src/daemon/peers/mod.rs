//! Peer failover, the I/O side of [`crate::decide::peers`] and
//! [`crate::decide::cover`]: find the NATs
//! of the same deployment (Auto Scaling groups sharing our group's
//! `peers.group_tag` value), exchange UDP heartbeats with them, confirm
//! silent ones through EC2, and cover the AZ of a dead one ([`super::cover`]).
//!
//! Heartbeats go out from their own task (`wire::beacon`), which awaits nothing
//! but the socket: however slow the AWS API is, peers keep hearing this
//! NAT's verdict every `peers.interval`, and at once when it changes.
//!
//! API use stays low: the peer list is refreshed every `aws.refresh_interval`
//! (or when an unknown peer speaks, at most every [`PEER_LIST_ON_DEMAND`];
//! after a failure on [`PEER_LIST_RETRY`]), EC2 is asked about a silent peer only
//! while it is silent, on [`crate::decide::backoff::PEER_CONFIRM`] (every
//! [`crate::decide::backoff::WITNESS_POLL`] at most in its first
//! [`crate::decide::backoff::WITNESS_WINDOW`], for a status check's
//! verdict), and a dead peer's AZ is looked at again each reconcile
//! interval once covered ([`crate::decide::cover::Cover::next_look`]).
//! Failures are logged and retried; peer failover never stops the daemon.
//!
//! - `discovery`: the deployment and the peer list;
//! - [`keys`]: the heartbeat keys, read and rotated;
//! - [`auth`]: what the wire shares (keys, replays, what to read again);
//! - `wire`: sending and receiving heartbeats;
//! - `dead`: asking EC2 about silent peers, covering dead ones.

pub mod auth;
mod dead;
mod discovery;
pub mod keys;
pub(crate) mod wire;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use crate::aws::AwsError;
use crate::decide::backoff::{
    Backoff, CONFIRM_RETRY, KEY_READ, PEER_LIST_ON_DEMAND, PEER_LIST_RETRY, PEER_LIST_WAIT,
    PEER_PORT_RETRY, Schedule,
};
use crate::decide::cover::decide;
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
    /// After a confirmation call failed: not before when, and the backoff.
    confirm_failed: (Option<Instant>, Backoff),
    /// The peer list being read, if a read is under way.
    listing: Option<tokio::task::JoinHandle<Result<discovery::Listing, AwsError>>>,
    /// Per dead peer: when its AZ is looked at again.
    next_look: HashMap<InstanceId, Instant>,
    /// Dead peers whose AZ was adopted once already, with when the last
    /// look ended: later looks need a reading begun since.
    adopted: HashMap<InstanceId, Instant>,
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
        let deployment = discovery::deployment(&ctx).await?;
        *ctx.heartbeats.policy() = keys::policy(&ctx).await?;
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
        io.spawn(wire::receive(socket.clone(), ctx.clone()));
        io.spawn(wire::beacon(socket, ctx.clone()));
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
            confirm_failed: (None, CONFIRM_RETRY.backoff()),
            listing: None,
            next_look: HashMap::new(),
            adopted: HashMap::new(),
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
            // Silence is noticed when it begins, not up to an interval later.
            let wait = self
                .until_next_silence()
                .map_or(interval, |w| w.min(interval));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
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
    /// holder went quiet, give a thawed peer its Elastic IP back, decide, ask EC2 about silent peers, cover dead
    /// peers' AZs.
    pub async fn tick(&mut self) {
        self.refresh_if_due().await;
        self.read_keys_if_due().await;
        self.expire_flows().await;
        crate::daemon::replicate::give_back(&self.ctx).await;
        // The verdict as of now, after the awaits above.
        let my_status = *self.status.borrow_and_update();
        let decision = self.decide(my_status);
        // Dead only by impairment: asked about still, for as long as EC2's
        // word is all there is.
        let mut suspects = decision.suspects.clone();
        suspects.extend(self.ctx.peers().impaired().cloned());
        // EC2's word on a silent peer is acted on in this round, not the next.
        let decision = match self.confirm(&suspects).await {
            true => {
                let my_status = *self.status.borrow_and_update();
                self.decide(my_status)
            }
            false => decision,
        };
        for id in &decision.dead {
            if self.known_dead.insert(id.clone()) {
                warn!(peer = %id, "peer NAT is dead");
            }
        }
        self.known_dead.retain(|id| decision.dead.contains(id));
        self.adopted.retain(|id, _| decision.dead.contains(id));
        self.cover(decision).await;
    }

    /// Who is alive, dead or suspect, as of now ([`decide`]).
    fn decide(&self, my_status: Status) -> crate::decide::cover::Decision {
        let s = self.ctx.peers();
        decide(
            &self.ctx.me,
            my_status,
            s.peers(),
            s.view(),
            s.gone(),
            self.ctx.now(),
            self.ctx.config.peers.suspect_after,
        )
    }

    /// How long until a peer heard now turns silent, if one will.
    fn until_next_silence(&self) -> Option<Duration> {
        let now = self.ctx.now();
        let suspect_after = self.ctx.config.peers.suspect_after;
        let end = self.ctx.peers().view().next_silence(now, suspect_after)?;
        Some(end.saturating_sub(now))
    }

    /// Read the peer list when due, off the loop: the round that starts
    /// the read waits for it at most [`PEER_LIST_WAIT`] (it answers within
    /// that unless AWS is slow or throttling); after that the read goes on
    /// while the loop confirms silent peers and covers dead ones, and the
    /// first round after it ends takes its answer.
    async fn refresh_if_due(&mut self) {
        let mut wait = Duration::ZERO;
        if self.listing.is_none() {
            let wanted = self.ctx.heartbeats.list_wanted();
            if !self.list.due(wanted, PEER_LIST_ON_DEMAND) {
                return;
            }
            let (ctx, deployment) = (self.ctx.clone(), self.deployment.clone());
            self.listing = Some(tokio::spawn(async move {
                discovery::peer_list(&ctx, &deployment).await
            }));
            wait = PEER_LIST_WAIT;
        }
        let Some(listing) = self.listing.as_mut() else {
            return;
        };
        // (A timeout polls the read before its deadline: zero takes an
        // answer that is there.)
        let Ok(joined) = tokio::time::timeout(wait, listing).await else {
            return;
        };
        self.listing = None;
        let read = match joined {
            Ok(read) => read,
            Err(e) => {
                error!(error = %e, "the peer list's read ended without an answer; will read again");
                self.list.failed();
                return;
            }
        };
        match read {
            Ok((list, departed, launched)) => {
                self.ctx.heartbeats.list_read();
                let mut s = self.ctx.peers();
                s.set_launched(launched);
                let changed = s.merge(list, departed, self.ctx.now());
                let listed = |id: &InstanceId| s.peers().iter().any(|p| &p.instance == id);
                self.ctx.heartbeats.forget_unless(listed);
                if changed {
                    let names: Vec<String> = s
                        .peers()
                        .iter()
                        .map(|p| format!("{} ({})", p.instance, p.az))
                        .collect();
                    info!(peers = ?names, "peers");
                    let azs: Vec<String> = s.peers().iter().map(|p| p.az.clone()).collect();
                    drop(s);
                    let slow = self.ctx.slow();
                    let own = &self.ctx.me.availability_zone;
                    if (azs.iter()).any(|az| az != own && !slow.ready.contains_key(az)) {
                        self.ctx.read_peers.notify_one();
                    }
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
