//! What the heartbeat wire shares between the peers loop and its sending
//! and receiving tasks: which heartbeats count (the keys, and whether
//! unsigned `hanat/1` does), the newest heartbeat accepted from each peer,
//! and what the receiver asks the loop to read again. Held in
//! [`crate::daemon::ctx::Ctx::heartbeats`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::decide::auth::{self, Message, Opened, Policy, Rejected, Replay, Stamp};
use crate::domain::InstanceId;

#[derive(Debug, Default)]
pub struct HeartbeatAuth {
    policy: Mutex<Policy>,
    replay: Mutex<Replay>,
    /// A peer we do not know spoke: list the peers again.
    list_wanted: AtomicBool,
    /// A heartbeat came signed with a key we do not know: read the keys
    /// again (a rotation may have started).
    keys_wanted: AtomicBool,
}

impl HeartbeatAuth {
    /// Which heartbeats this NAT sends and accepts.
    pub fn policy(&self) -> MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `msg` as it goes on the wire, signed as the policy says.
    pub fn seal(&self, msg: &Message, stamp: Stamp) -> String {
        auth::encode(msg, stamp, &self.policy())
    }

    /// A datagram as a heartbeat, if it counts: signed with a key of ours,
    /// fresh at `now_ms`, and (unless it is `me`'s own) newer than the last
    /// one accepted from its sender. An unknown key asks for the keys to
    /// be read again.
    pub fn open(&self, bytes: &[u8], now_ms: u64, me: &InstanceId) -> Result<Opened, Rejected> {
        let opened = auth::open(bytes, &self.policy(), now_ms).and_then(|o| {
            match (&o.stamp, &o.msg.instance == me) {
                (Some(stamp), false) => self
                    .replay
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check(&o.msg.instance, *stamp)
                    .map(|_| o),
                _ => Ok(o),
            }
        });
        if matches!(opened, Err(Rejected::UnknownKey(_))) {
            self.keys_wanted.store(true, Ordering::Relaxed);
        }
        opened
    }

    /// Forget the heartbeats of peers no longer listed.
    pub fn forget_unless(&self, listed: impl Fn(&InstanceId) -> bool) {
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(listed);
    }

    /// An unknown peer spoke.
    pub fn want_list(&self) {
        self.list_wanted.store(true, Ordering::Relaxed);
    }

    /// Whether the peer list is asked for.
    pub fn list_wanted(&self) -> bool {
        self.list_wanted.load(Ordering::Relaxed)
    }

    /// The peer list was read.
    pub fn list_read(&self) {
        self.list_wanted.store(false, Ordering::Relaxed);
    }

    /// Whether the keys are asked for.
    pub fn keys_wanted(&self) -> bool {
        self.keys_wanted.load(Ordering::Relaxed)
    }

    /// The keys are being read: asking again starts from here.
    pub fn keys_read(&self) {
        self.keys_wanted.store(false, Ordering::Relaxed);
    }

    /// Ask for the keys to be read again (for tests: a heartbeat with an
    /// unknown key does this).
    #[cfg(test)]
    pub fn want_keys(&self) {
        self.keys_wanted.store(true, Ordering::Relaxed);
    }
}
