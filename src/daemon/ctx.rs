//! What every loop of the daemon shares, in one place instead of long
//! parameter lists: the control plane, who this NAT is, its config, its own
//! verdict, what it knows of its peers, and its flow hand-offs.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::flows;
use crate::aws::cloud::Cloud;
use crate::config::Config;
use crate::decide::peers::PeerState;
use crate::domain::{EniId, Identity, RouteTarget, Status};

pub struct Ctx {
    pub cloud: Arc<dyn Cloud>,
    pub me: Identity,
    pub config: Config,
    /// The daemon's start: peer times are durations since it.
    pub started: Instant,
    /// This NAT's own verdict: set by the heartbeat loop (and `exiting` by
    /// a planned exit), heard by the other loops and told to the peers.
    pub status: watch::Sender<Status>,
    peers: Mutex<PeerState>,
    /// Woken when a peer's status changes, so the peers loop acts at once.
    pub wake: Notify,
    pub flows: flows::Shared,
}

impl Ctx {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        me: Identity,
        config: Config,
        flows: flows::FlowHandoff,
    ) -> Arc<Ctx> {
        Arc::new(Ctx {
            cloud,
            me,
            config,
            started: Instant::now(),
            status: watch::channel(Status::Starting).0,
            peers: Mutex::new(PeerState::default()),
            wake: Notify::new(),
            flows: Arc::new(tokio::sync::Mutex::new(flows)),
        })
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
        let (now, fresh) = (self.now(), self.config.peers.dead_after);
        let p = self.peers();
        (p.live_enis(now, fresh), p.dead_targets(now, fresh))
    }

    /// This NAT as a route target.
    pub fn me_target(&self) -> RouteTarget {
        RouteTarget::Eni(self.me.eni.clone())
    }
}
