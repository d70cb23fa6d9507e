//! Every retry schedule and fixed wait of the daemon's loops, named and
//! written down in one place, and the one backoff type that walks them.
//!
//! A [`Schedule`] starts at `first` and doubles after each failure up to
//! `max`; a success resets it. Each wait is drawn between 80% and 100% of
//! its step ([`JITTER`]), never longer than written here, so NATs throttled
//! by the same account at the same moment do not retry in lockstep. Where the cap is a config value (the
//! reconcile interval), the loop caps the schedule with [`Schedule::capped`].
//! The SDK's own per-call retries (`aws.max_attempts`, exponential backoff
//! with jitter) happen inside each call, before any of these.

use std::time::Duration;

/// A retry schedule: `first`, doubling after each failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub max: Duration,
}

impl Schedule {
    /// The same schedule, never above `max`.
    pub fn capped(self, max: Duration) -> Schedule {
        Schedule {
            first: self.first.min(max),
            max: self.max.min(max),
        }
    }

    /// A fresh backoff on this schedule.
    pub fn backoff(self) -> Backoff {
        Backoff {
            schedule: self,
            next: self.first,
        }
    }
}

/// Where a loop is on its [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    schedule: Schedule,
    next: Duration,
}

impl Backoff {
    /// The wait before the next attempt (the current step, jittered); the
    /// step after will be twice as long (up to the cap).
    pub fn fail(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.schedule.max);
        step.mul_f64(1.0 - JITTER * fastrand::f64())
    }

    /// The step [`Backoff::fail`] would jitter now.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the start after a success.
    pub fn reset(&mut self) {
        self.next = self.schedule.first;
    }
}

/// How much sooner than its step a wait may be: 20%.
pub const JITTER: f64 = 0.2;

/// Whether `got` is `step` jittered: within 80–100% of it (for tests).
#[cfg(test)]
pub fn jittered(got: Duration, step: Duration) -> bool {
    got <= step && got >= step.mul_f64(1.0 - JITTER)
}

/// A failed route pass (own AZ) is retried after 1 s, 2 s, 4 s… up to
/// `routes.reconcile_interval`.
pub const ROUTES_RETRY: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::MAX,
};

/// A peer that stays silent while EC2 says it runs (a partition, a peer
/// with failover off) is asked about again after 1 s, 2 s, 4 s… up to
/// `routes.reconcile_interval`, so a peer that never speaks costs little.
pub const PEER_CONFIRM: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::MAX,
};

/// A silent peer's confirmation whose call failed (throttled, say) is
/// asked again after 250 ms, 500 ms, 1 s… up to 4 s. The call itself is
/// tried once: the SDK's own retries wait 1 + 2 + 4 + 8 s, all of it
/// with a dead NAT's AZ dark; this schedule tries as often early on and
/// at most every 4 s later (the peers loop runs every `peers.interval`,
/// 50 ms, which must not become a calling rate).
pub const CONFIRM_RETRY: Schedule = Schedule {
    first: Duration::from_millis(250),
    max: Duration::from_secs(4),
};

/// While a silent peer has been silent for less than [`WITNESS_WINDOW`],
/// EC2 is asked about it at least every 5 s: a status check's verdict
/// (a frozen NAT) then moves its routes within seconds. Later, only on
/// [`PEER_CONFIRM`] (a long partition costs little).
pub const WITNESS_POLL: Duration = Duration::from_secs(5);

/// See [`WITNESS_POLL`]: long enough for an application status check
/// (60 s interval, a few failures) and EC2's own status checks to conclude.
pub const WITNESS_WINDOW: Duration = Duration::from_secs(300);

/// Associating this instance with its application status check at start:
/// 1 s doubling to 5 minutes, until EC2 accepts.
pub const STATUS_CHECK_ASSOCIATE: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// Finding this instance's group and deployment tag at start of the peers
/// loop: 1 s doubling to 30 s, for as long as it takes.
pub const DEPLOYMENT_LOOKUP: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// Checking the fallback NAT Gateways at start: 1 s doubling, at most
/// [`FALLBACK_CHECK_ATTEMPTS`] retries (1+2+4+8+16 s), then a warning.
pub const FALLBACK_CHECK: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::from_secs(16),
};
/// How many times the fallback check is retried after an error.
pub const FALLBACK_CHECK_ATTEMPTS: u32 = 5;

/// A failed peer-list refresh is tried again after 1 s, 2 s, 4 s… up to
/// a minute.
pub const PEER_LIST_RETRY: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// The round of the peers loop that starts a peer-list read waits at most
/// this long for it; a read that takes longer (retrying inside the SDK
/// under throttling, up to 1 + 2 + 4 + 8 s) goes on while the loop confirms
/// and covers, and a later round takes its answer. Measured in the FIS `ThrottleApi`
/// experiment: a refresh blocking the loop kept a dead peer unconfirmed
/// for 10 s.
pub const PEER_LIST_WAIT: Duration = Duration::from_secs(1);

/// An unknown sender asks for a peer-list refresh at most this often, so a
/// stream of made-up heartbeats cannot turn into a stream of API calls.
pub const PEER_LIST_ON_DEMAND: Duration = Duration::from_secs(2);

/// Reading the heartbeat key (`peers.key_secret`), at start and after a
/// failed re-read: 1 s doubling to a minute, for as long as it takes.
pub const KEY_READ: Schedule = Schedule {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// A heartbeat signed with a key this NAT does not know (a rotation under
/// way, or a forger) has the keys read again at most this often: a forger
/// costs at most two calls a minute.
pub const KEY_ON_DEMAND: Duration = Duration::from_secs(60);

/// The peer heartbeat port may still be held by a predecessor that is
/// shutting down: try to bind it again after this.
pub const PEER_PORT_RETRY: Duration = Duration::from_secs(5);

/// A failed adoption or fallback of a dead peer's AZ is tried again after
/// this; a successful one is looked at again each reconcile interval.
pub const COVER_RETRY: Duration = Duration::from_secs(1);

/// During a planned exit, how often the route tables are read to see
/// whether a peer took the AZ's routes (one call each).
pub const HANDOFF_POLL: Duration = Duration::from_secs(1);

/// One read of instance metadata by the planned-exit watcher gives up
/// after this (IMDS answers in milliseconds when it answers at all).
pub const IMDS_POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed receive on the peer heartbeat socket is tried again after this.
pub const PEER_RECEIVE_RETRY: Duration = Duration::from_millis(100);

/// The systemd watchdog is pinged only while every loop's current round
/// has run no longer than its bound, which includes this slack.
pub const WATCHDOG_SLACK: Duration = Duration::from_secs(10);

/// A round of a loop makes at most this many AWS calls and this many
/// kernel commands one after the other, each bounded by its timeout: a
/// round running longer is stuck (see `daemon::progress`).
pub const ROUND_CALLS: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let s = Duration::from_secs;
        let mut b = ROUTES_RETRY.capped(s(5)).backoff();
        for step in [s(1), s(2), s(4), s(5), s(5)] {
            assert_eq!(b.peek(), step);
            let got = b.fail();
            assert!(jittered(got, step), "{got:?} for a step of {step:?}");
        }
        b.reset();
        assert_eq!(b.peek(), s(1));
        // A cap below the first step caps that too.
        let tight = ROUTES_RETRY.capped(Duration::from_millis(300)).backoff();
        assert_eq!(tight.peek(), Duration::from_millis(300));
        let mut fb = FALLBACK_CHECK.backoff();
        let total: Duration = (0..FALLBACK_CHECK_ATTEMPTS).map(|_| fb.fail()).sum();
        assert!(jittered(total, s(31)), "{total:?}");
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let waits: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| ROUTES_RETRY.backoff().fail()).collect();
        assert!(waits.len() > 1, "{waits:?}");
    }
}
