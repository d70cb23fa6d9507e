//! What replication shares between its tasks and the routes' takes
//! (held in `Ctx::replication`), apart from the tasks so that the context
//! can hold it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::decide::auth::Replay;
use crate::decide::peers::Peer;
use crate::decide::replicate::{Outbox, Replicas};

/// What replication shares between its tasks and the routes' takes. Held
/// in `Ctx::replication`.
#[derive(Debug, Default)]
pub struct Replication {
    pub(super) outbox: Mutex<Outbox>,
    pub(super) replicas: Mutex<Replicas>,
    pub(super) replay: Mutex<Replay>,
    /// This NAT's own Elastic IP allocation, as its claim last found it.
    pub(super) allocation: Mutex<Option<String>>,
    /// The interface the carry address goes on.
    pub(super) iface: Mutex<Option<String>>,
    /// A secondary private address of this NAT's, for carrying a dead
    /// peer's Elastic IP.
    pub(super) carry: Mutex<Option<Ipv4Addr>>,
    /// Replication's task was started (one address per NAT).
    pub(super) started: AtomicBool,
    /// Replication runs (a key, its port).
    pub(super) on: AtomicBool,
    /// Peers that said hello: they get everything at the next send.
    pub(super) asked: Mutex<Vec<Ipv4Addr>>,
    /// Peers whose tally this NAT's copies of them do not add up to: each
    /// gets a hello (asking for everything) at the next send.
    pub(super) ask: Mutex<Vec<Ipv4Addr>>,
    /// Dead peers whose Elastic IP this NAT carries and which had gone
    /// silent (frozen): each gets its address back when heard again.
    pub(super) carried: Mutex<Vec<(Peer, String)>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replication {
    /// This NAT's Elastic IP allocation (sent with the copies).
    pub fn set_allocation(&self, allocation: Option<String>) {
        *lock(&self.allocation) = allocation;
    }

    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Copies held of the peers' connections.
    pub fn held(&self) -> usize {
        lock(&self.replicas).len()
    }

    /// Replication was started: its task runs (or waits for the key).
    pub(super) fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }
}
