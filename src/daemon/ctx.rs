//! What every loop of the daemon shares, in one place instead of long
//! parameter lists: the control plane, who this NAT is, its config, its own
//! verdict, what it knows of its peers, its flow hand-offs, which loops are
//! making progress, and what rarely changes in EC2.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::board::StatusBoard;
use super::flows;
use super::metrics::Metrics;
use super::peers::auth::HeartbeatAuth;
use super::progress::Progress;
use crate::aws::AwsError;
use crate::aws::cloud::Cloud;
use crate::aws::meter::ApiMeter;
use crate::config::Config;
use crate::decide::backoff::{ROUND_CALLS, WATCHDOG_SLACK};
use crate::decide::cover::Moment;
use crate::decide::holder::{self, Holding};
use crate::decide::peers::PeerState;
use crate::decide::routes::Observed;
use crate::domain::{EniId, Identity, RouteTarget, Status};
use crate::kernel::COMMAND_TIMEOUT;

pub struct Ctx {
    pub cloud: Arc<dyn Cloud>,
    pub me: Identity,
    pub config: Config,
    /// The daemon's start: peer times are durations since it.
    pub started: Instant,
    /// This NAT's own verdict: set by the probe loop (and `exiting` by
    /// a planned exit), heard by the other loops and told to the peers.
    pub status: watch::Sender<Status>,
    peers: Mutex<PeerState>,
    /// What the heartbeat wire shares: keys, replays, what to read again.
    pub heartbeats: HeartbeatAuth,
    /// Woken when a peer's status changes, so the peers loop acts at once.
    pub wake: Notify,
    /// Woken when the peer list names an AZ the routes loop has no reading
    /// of, so it reads it now rather than a reconcile interval later (a
    /// peer's AZ read in advance is adopted without reading first).
    pub read_peers: Notify,
    pub flows: flows::Shared,
    /// Connection replication: the copies sent and held
    /// ([`super::replicate`]).
    pub replication: super::replicate::state::Replication,
    /// Which loops are making progress, for the watchdog.
    pub progress: Progress,
    /// What rarely changes, read from EC2 at most every `aws.refresh_interval`.
    pub slow: Mutex<Slow>,
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// This instance's Auto Scaling group once known (`Some(None)`: not in
    /// one): [`Ctx::group`].
    group: Mutex<Option<Option<String>>>,
    /// What the loops record for `/status` ([`Ctx::board`]).
    board: Mutex<StatusBoard>,
    /// The private addresses new connections are translated to, the
    /// primary one first: set by the Elastic IP claim, applied by the
    /// kernel converge ([`Ctx::snat`]).
    snat: Mutex<Vec<Ipv4Addr>>,
}

pub use crate::aws::cloud::Subnets;

/// Readings that change rarely, with when they were made.
#[derive(Debug, Default)]
pub struct Slow {
    /// Per AZ: its tagged subnets (with their networks).
    pub subnets: BTreeMap<String, (Instant, Subnets)>,
    /// When this NAT's source/destination check was last seen off.
    pub check_off_at: Option<Instant>,
    /// Per peer's AZ: its subnets and route tables as the routes loop last
    /// read them, with when that reading began, so covering it needs no
    /// reading first.
    pub ready: BTreeMap<String, (Instant, Observed)>,
}

impl Slow {
    /// `az`'s tagged subnets if read within `max_age`.
    pub fn subnets(&self, az: &str, max_age: Duration) -> Option<Subnets> {
        self.subnets
            .get(az)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, v)| v.clone())
    }

    /// `az` as the routes loop read it within `max_age`.
    pub fn ready(&self, az: &str, max_age: Duration) -> Option<Observed> {
        self.ready
            .get(az)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, o)| o.clone())
    }

    /// `az` as the routes loop read it in a reading begun after `since`.
    pub fn ready_since(&self, az: &str, since: Instant) -> Option<Observed> {
        self.ready
            .get(az)
            .filter(|(at, _)| *at > since)
            .map(|(_, o)| o.clone())
    }

    /// Whether the source/destination check is due to be read again.
    pub fn check_due(&self, max_age: Duration) -> bool {
        self.check_off_at.is_none_or(|at| at.elapsed() >= max_age)
    }
}

impl Ctx {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        me: Identity,
        config: Config,
        flows: flows::FlowHandoff,
    ) -> Arc<Ctx> {
        Self::metered(cloud, me, config, flows, &ApiMeter::default())
    }

    /// With `meter`'s timed AWS calls in the metrics.
    pub fn metered(
        cloud: Arc<dyn Cloud>,
        me: Identity,
        config: Config,
        flows: flows::FlowHandoff,
        meter: &ApiMeter,
    ) -> Arc<Ctx> {
        Arc::new(Ctx {
            cloud,
            config,
            started: Instant::now(),
            status: watch::channel(Status::Starting).0,
            peers: Mutex::new(PeerState::default()),
            heartbeats: HeartbeatAuth::default(),
            wake: Notify::new(),
            read_peers: Notify::new(),
            flows: Arc::new(tokio::sync::Mutex::new(flows)),
            replication: Default::default(),
            progress: Progress::default(),
            slow: Mutex::new(Slow::default()),
            snat: Mutex::new(vec![me.private_ip]),
            me,
            metrics: Metrics::new(meter),
            board: Mutex::new(StatusBoard::default()),
            group: Mutex::new(None),
        })
    }

    /// What the loops record for `/status`.
    pub fn board(&self) -> MutexGuard<'_, StatusBoard> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This instance's Auto Scaling group (`None`: not in one), asked of
    /// Auto Scaling once and kept.
    pub async fn group(&self) -> Result<Option<String>, AwsError> {
        if let Some(g) = self.group.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(g);
        }
        let g = self.cloud.group_of(&self.me.instance_id).await?;
        *self.group.lock().unwrap_or_else(|p| p.into_inner()) = Some(g.clone());
        Ok(g)
    }

    /// Whether this daemon can send its probes: `None` when it can, else
    /// for how long it could not and why (board and metric).
    pub fn unable_to_probe(&self, unable: Option<(Duration, String)>) {
        self.metrics
            .unable_to_probe(unable.as_ref().map(|(d, _)| *d));
        self.board().unable_to_probe = unable;
    }

    /// The other AZs this NAT covers now, each with how (`this_nat`,
    /// `nat_gateway`) (board and metric).
    pub fn covering(&self, azs: Vec<(String, &'static str)>) {
        self.metrics.covering(&azs);
        self.board().cover(azs);
    }

    /// The private addresses new connections are translated to, the
    /// primary one first (just it until the Elastic IP claim says more).
    pub fn snat(&self) -> Vec<Ipv4Addr> {
        self.snat.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Set what [`Ctx::snat`] says; the probe loop applies a change
    /// within a round.
    pub fn set_snat(&self, addresses: Vec<Ipv4Addr>) {
        *self.snat.lock().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    pub fn slow(&self) -> MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The longest a round of a loop that talks to AWS and the kernel may
    /// take before the watchdog calls it stuck: every call and command
    /// bounded by its timeout, [`ROUND_CALLS`] of each.
    pub fn round_bound(&self) -> Duration {
        (self.config.aws.call_timeout + COMMAND_TIMEOUT) * ROUND_CALLS + WATCHDOG_SLACK
    }

    /// Change this NAT's verdict to `to`, unless a planned exit is under
    /// way (`exiting` stays), noting when for `/status`. Whether it
    /// changed.
    pub fn set_verdict(&self, to: Status) -> bool {
        let changed = self.status.send_if_modified(|s| {
            let change = *s != to && *s != Status::Exiting;
            if change {
                *s = to;
            }
            change
        });
        if changed {
            self.board().verdict_since = Instant::now();
        }
        changed
    }

    /// Time since start, the clock of [`PeerState`].
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// What this daemon knows of its peers (never poisoned: a panic while
    /// holding it leaves a state that is still consistent enough to read).
    pub fn peers(&self) -> MutexGuard<'_, PeerState> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peers heard saying `ok` (their interfaces), and route targets of
    /// peers known dead, now.
    pub fn liveness(&self) -> (Vec<EniId>, Vec<RouteTarget>) {
        let (now, fresh) = (self.now(), self.config.peers.suspect_after);
        let p = self.peers();
        (p.live_enis(now, fresh), p.dead_targets(now, fresh))
    }

    /// What the cover guards read before a write: this NAT's verdict and
    /// the peers heard saying `ok`, now.
    pub fn moment(&self) -> Moment {
        let (now, fresh) = (self.now(), self.config.peers.suspect_after);
        let live_azs = self.peers().live_azs(now, fresh);
        Moment {
            status: *self.status.borrow(),
            live: self.liveness().0,
            live_azs,
            holds_az: self.holding() == Holding::Hold,
        }
    }

    /// Which of this AZ's NATs holds its routes, now
    /// ([`crate::decide::holder`]).
    pub fn holding(&self) -> Holding {
        let has_address = !self.board().pool_taken;
        let p = self.peers();
        holder::own_az(
            &self.me,
            p.launched(),
            has_address,
            p.peers(),
            p.view(),
            p.gone(),
        )
    }

    /// This NAT as a route target.
    pub fn me_target(&self) -> RouteTarget {
        RouteTarget::Eni(self.me.eni.clone())
    }
}
