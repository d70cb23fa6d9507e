//! Flow hand-off, the control side of [`crate::kernel::tunnel`]: to which
//! NATs this one sends mid-flow packets, for which sources, and until when.
//!
//! An entry is added just *before* this NAT takes routes from a NAT that
//! still forwards: by the peers loop when it adopts the AZ of a peer that
//! said `exiting` (a planned exit), and by the routes loop when it takes its
//! own AZ back from a running adopter (failback). The sources are the
//! networks of the subnets behind the routes taken. An entry ends when the
//! previous holder says it is failing or has not been heard from for
//! [`crate::decide::flows::SILENCE`], and at the latest after `peers.flow_handoff`.
//! Once it ends, what is left of those connections is masqueraded here and
//! reset by the far end, as it would have been without hand-off.
//!
//! The state lives in the kernel, and a restarted daemon takes over what it
//! finds there ([`FlowHandoff::resume`]): restarting the daemon does not
//! reset handed-off connections.
//!
//! Kernel errors are returned for the caller to log, and the route change
//! goes ahead regardless: a failed hand-off costs only the connections it
//! would have kept. A failed update is retried on the next expiry check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::decide::flows::keep;
use crate::decide::peers::Peer;
use crate::decide::routes::{Observed, Plan, sources_taken};
use crate::domain::Ipv4Cidr;
use crate::domain::Status;
use crate::kernel::KernelError;
use crate::kernel::tunnel::{self, Handoff};
use crate::report;

/// The flow hand-offs of this NAT, shared by the routes and peers loops.
pub type Shared = Arc<tokio::sync::Mutex<FlowHandoff>>;

#[derive(Debug)]
struct Entry {
    sources: BTreeSet<Ipv4Cidr>,
    since: Instant,
}

/// What this NAT hands over, and the kernel state that does it.
#[derive(Debug)]
pub struct FlowHandoff {
    iface: String,
    port: u16,
    max: Duration,
    /// The VPC's networks: only they may send into the tunnel.
    vpc: Vec<Ipv4Cidr>,
    entries: BTreeMap<Ipv4Addr, Entry>,
    /// The last kernel update failed: redo it.
    stale: bool,
}

impl Default for FlowHandoff {
    /// Off: hands nothing over.
    fn default() -> Self {
        Self::new("", 0, &[], Duration::ZERO)
    }
}

impl FlowHandoff {
    /// Hand-offs for packets arriving on `iface`, through the tunnel on UDP
    /// `port` (open to the `vpc` networks only), each for at most `max`
    /// (zero: never hand off).
    pub fn new(iface: &str, port: u16, vpc: &[Ipv4Cidr], max: Duration) -> Self {
        Self {
            iface: iface.to_owned(),
            port,
            max,
            vpc: vpc.to_vec(),
            entries: BTreeMap::new(),
            stale: true,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// Start sending the packets of `sources` that belong to connections
    /// of `peer` to it. A source handed to another peer before now goes to
    /// this one (the most recent holder has its connections).
    pub async fn hand_to(
        &mut self,
        peer: &Peer,
        sources: &[Ipv4Cidr],
        now: Instant,
    ) -> Result<(), KernelError> {
        if !self.enabled() || sources.is_empty() {
            return Ok(());
        }
        for e in self.entries.values_mut() {
            e.sources.retain(|s| !sources.contains(s));
        }
        let entry = self.entries.entry(peer.ip).or_insert_with(|| Entry {
            sources: BTreeSet::new(),
            since: now,
        });
        entry.since = now;
        entry.sources.extend(sources.iter().copied());
        self.entries.retain(|_, e| !e.sources.is_empty());
        let list: Vec<String> = sources.iter().map(ToString::to_string).collect();
        info!(peer = %peer.instance, ip = %peer.ip, sources = ?list, "flow hand-off: mid-flow packets from these sources go to the previous holder");
        self.converge().await
    }

    /// Before `plan` (made from `observed`) takes routes from `peer`, which
    /// may still forward: hand it the connections of the subnets behind
    /// those routes. A failure is logged; the routes move regardless.
    pub async fn before_taking(&mut self, peer: &Peer, observed: &Observed, plan: &Plan) {
        let sources = sources_taken(observed, plan, &peer.route_targets());
        if let Err(e) = self.hand_to(peer, &sources, Instant::now()).await {
            warn!(peer = %peer.instance, error = %report(&e), "cannot hand the previous holder's connections back to it; they will be reset");
        }
    }

    /// The hand-offs in force: each previous holder and its sources.
    pub fn in_force(&self) -> Vec<Handoff> {
        self.entries
            .iter()
            .map(|(ip, e)| Handoff {
                peer: *ip,
                sources: e.sources.iter().copied().collect(),
            })
            .collect()
    }

    /// Take over the hand-offs an earlier daemon left in the kernel (a
    /// restart must not reset the connections they carry); each counts as
    /// starting now. Returns how many.
    pub async fn resume(&mut self, now: Instant) -> usize {
        if !self.enabled() {
            return 0;
        }
        for h in tunnel::current().await {
            let list: Vec<String> = h.sources.iter().map(ToString::to_string).collect();
            info!(ip = %h.peer, sources = ?list, "flow hand-off resumed from before the restart");
            self.entries.insert(
                h.peer,
                Entry {
                    sources: h.sources.into_iter().collect(),
                    since: now,
                },
            );
        }
        self.entries.len()
    }

    /// End the hand-offs [`keep`] no longer allows (`heard(ip)` is what the
    /// peer at that address last said within
    /// [`crate::decide::flows::SILENCE`]).
    pub async fn expire(
        &mut self,
        now: Instant,
        heard: impl Fn(Ipv4Addr) -> Option<Status>,
    ) -> Result<(), KernelError> {
        if !self.enabled() {
            return Ok(());
        }
        let before = self.entries.len();
        let max = self.max;
        self.entries.retain(|ip, e| {
            let go_on = keep(now.duration_since(e.since), heard(*ip), max);
            if !go_on {
                info!(ip = %ip, "flow hand-off ended");
            }
            go_on
        });
        if self.entries.len() != before || self.stale {
            self.converge().await?;
        }
        Ok(())
    }

    /// Put the hand-offs in force, and the tunnel's filters, back into the
    /// kernel if something removed them (a flushed ruleset, a deleted
    /// device): run with every kernel converge. Without hand-offs that is
    /// one `nft list` while the table is there. The tunnel's converge
    /// changes nothing that is in place.
    pub async fn reassert(&mut self) -> Result<(), KernelError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.entries.is_empty() && !self.stale && tunnel::table_exists().await? {
            return Ok(());
        }
        self.converge().await
    }

    async fn converge(&mut self) -> Result<(), KernelError> {
        let handoffs: Vec<Handoff> = self
            .entries
            .iter()
            .map(|(ip, e)| Handoff {
                peer: *ip,
                sources: e.sources.iter().copied().collect(),
            })
            .collect();
        let result = tunnel::converge(&self.iface, self.port, &self.vpc, &handoffs).await;
        self.stale = result.is_err();
        result
    }
}
