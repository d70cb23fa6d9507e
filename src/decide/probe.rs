//! The forwarding probe's decision logic: pure, fed one round result at a time
//! with the time as an argument, so every path is testable without a clock.
//!
//! ```text
//!  Healthy ──fall failures──▶ Reconverged ──1 more failure──▶ Unhealthy (reported)
//!     ▲                           │                              │
//!     └──────── rise successes ───┘◀──── rise successes ─────────┘
//! ```
//! How many failed rounds make `fall` depends on what failed: when the
//! last good round had two or more targets answering and then every
//! target fails at once, `fall` rounds are the verdict (independent paths
//! breaking together point at this NAT); when only one target was still
//! answering (the others already down: a target's own outage, a path the
//! internet lost), its failure is one path's word, and
//! [`SINGLE_PATH_EXTRA`] more rounds are needed. A probe configured with
//! one target only is taken at its `fall`.
//!
//! While starting (the grace period), failures are not counted; the first
//! good round ends the grace period early, because the NAT has proven it
//! forwards. Once the instance has been reported Unhealthy it is not
//! reported again (Auto Scaling is replacing it), but a failed report is
//! retried on the next failing round.
//!
//! A round whose probes could not be sent ([`ProbeState::unsent`]: the
//! daemon is out of descriptors or memory) is no evidence either way: it
//! neither counts as a failure nor clears one. Rounds that stay unsent for
//! `unable_restart` end the daemon ([`Step::Restart`]), so systemd starts
//! a fresh one, while the kernel forwards as before.

use std::time::Duration;

/// Rounds added to `fall` when the failure is of the one target still
/// answering (see the module's header): with 4 % of probes lost at random
/// (2 % each way), four failed rounds in a row of one path happen once in
/// 390,000 rounds, two once in 625.
pub const SINGLE_PATH_EXTRA: u32 = 2;

/// What the daemon must do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Steady,
    /// `fall` rounds failed: re-apply sysctls, rules and the probe namespace.
    Reconverge,
    /// Still failing after reconverging: report the instance Unhealthy.
    MarkUnhealthy,
    /// `rise` good rounds after a failure: the NAT forwards again.
    Recovered,
    /// Probes could not be sent for `unable_restart`: end the daemon so a
    /// fresh one starts (not a verdict on forwarding).
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Within the grace period; no good round seen yet.
    Starting,
    Healthy,
    /// Failed `fall` times; the kernel config was re-applied.
    Reconverged,
    /// Judged not forwarding.
    Unhealthy,
}

#[derive(Debug, Clone)]
pub struct ProbeState {
    fall: u32,
    rise: u32,
    grace_until: Duration,
    phase: Phase,
    failures: u32,
    successes: u32,
    /// The Unhealthy report reached Auto Scaling.
    reported: bool,
    unable_restart: Duration,
    /// Since when every round was unsent.
    unsent_since: Option<Duration>,
    /// How many targets the probe has.
    targets: usize,
    /// How many answered in the last good round.
    last_answered: usize,
}

impl ProbeState {
    /// `started` is the time of start-up on the caller's monotonic clock.
    pub fn new(fall: u32, rise: u32, grace: Duration, started: Duration) -> Self {
        Self {
            fall: fall.max(1),
            rise: rise.max(1),
            grace_until: started + grace,
            phase: Phase::Starting,
            failures: 0,
            successes: 0,
            reported: false,
            unable_restart: Duration::MAX,
            unsent_since: None,
            targets: 1,
            last_answered: 1,
        }
    }

    /// A probe of `n` targets (1 by default): a failure of the only one
    /// still answering needs [`SINGLE_PATH_EXTRA`] more rounds.
    pub fn with_targets(mut self, n: usize) -> Self {
        self.targets = n.max(1);
        self.last_answered = self.targets;
        self
    }

    /// Failed rounds in a row that make the verdict now.
    fn needed(&self) -> u32 {
        match self.targets > 1 && self.last_answered < 2 {
            true => self.fall + SINGLE_PATH_EXTRA,
            false => self.fall,
        }
    }

    /// End the daemon once probes could not be sent for `after`.
    pub fn with_unable_restart(mut self, after: Duration) -> Self {
        self.unable_restart = after;
        self
    }

    /// Since when probes could not be sent, if the last round's could not.
    pub fn unsent_since(&self) -> Option<Duration> {
        self.unsent_since
    }

    /// A round at `now` whose probes could not be sent: nothing changes
    /// but the time unable to probe, which ends in [`Step::Restart`].
    pub fn unsent(&mut self, now: Duration) -> Step {
        let since = *self.unsent_since.get_or_insert(now);
        match now.saturating_sub(since) >= self.unable_restart {
            true => Step::Restart,
            false => Step::Steady,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The daemon's report to Auto Scaling succeeded.
    pub fn reported_unhealthy(&mut self) {
        self.reported = true;
    }

    /// Feed one round at time `now` in which `answered` targets answered
    /// (the round passes when any did).
    pub fn observe_answers(&mut self, answered: usize, now: Duration) -> Step {
        self.unsent_since = None;
        let ok = answered > 0;
        if ok {
            self.last_answered = answered;
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            return match self.phase {
                Phase::Starting => {
                    self.phase = Phase::Healthy;
                    Step::Steady
                }
                Phase::Healthy => Step::Steady,
                Phase::Reconverged | Phase::Unhealthy if self.successes >= self.rise => {
                    self.phase = Phase::Healthy;
                    Step::Recovered
                }
                Phase::Reconverged | Phase::Unhealthy => Step::Steady,
            };
        }
        self.successes = 0;
        if self.phase == Phase::Starting {
            if now < self.grace_until {
                return Step::Steady;
            }
            self.phase = Phase::Healthy;
        }
        self.failures = self.failures.saturating_add(1);
        match self.phase {
            Phase::Healthy if self.failures >= self.needed() => {
                self.phase = Phase::Reconverged;
                Step::Reconverge
            }
            Phase::Healthy => Step::Steady,
            Phase::Reconverged => {
                self.phase = Phase::Unhealthy;
                Step::MarkUnhealthy
            }
            Phase::Unhealthy if !self.reported => Step::MarkUnhealthy,
            Phase::Unhealthy | Phase::Starting => Step::Steady,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Run a sequence of rounds, one per second from t=0, `+` every target
    /// answering and `-` none, and collect verdicts.
    fn run(hb: &mut ProbeState, start: u64, seq: &str) -> Vec<Step> {
        seq.chars()
            .enumerate()
            .map(|(i, c)| {
                let answered = if c == '+' { hb.targets } else { 0 };
                hb.observe_answers(answered, S * (start as u32 + i as u32))
            })
            .collect()
    }

    use Step::*;

    #[test]
    fn fall_then_reconverge_then_unhealthy() {
        let mut hb = ProbeState::new(3, 2, Duration::ZERO, Duration::ZERO);
        assert_eq!(run(&mut hb, 0, "+--"), vec![Steady, Steady, Steady]);
        assert_eq!(run(&mut hb, 3, "-"), vec![Reconverge]);
        assert_eq!(hb.phase(), Phase::Reconverged);
        assert_eq!(run(&mut hb, 4, "-"), vec![MarkUnhealthy]);
        // Report failed: retried on the next failing round.
        assert_eq!(run(&mut hb, 5, "-"), vec![MarkUnhealthy]);
        hb.reported_unhealthy();
        assert_eq!(run(&mut hb, 6, "--"), vec![Steady, Steady]);
    }

    #[test]
    fn reconverge_that_works_recovers_after_rise() {
        let mut hb = ProbeState::new(2, 2, Duration::ZERO, Duration::ZERO);
        assert_eq!(
            run(&mut hb, 0, "+--++"),
            vec![Steady, Steady, Reconverge, Steady, Recovered]
        );
        assert_eq!(hb.phase(), Phase::Healthy);
        // A fresh failure run needs `fall` again.
        assert_eq!(run(&mut hb, 5, "-+-"), vec![Steady, Steady, Steady]);
    }

    #[test]
    fn flapping_below_fall_never_acts() {
        let mut hb = ProbeState::new(3, 2, Duration::ZERO, Duration::ZERO);
        let v = run(&mut hb, 0, "+--+--+--+--+");
        assert!(v.iter().all(|v| *v == Steady), "{v:?}");
    }

    #[test]
    fn grace_period_ignores_failures_until_first_success_or_timeout() {
        let mut hb = ProbeState::new(1, 1, S * 10, Duration::ZERO);
        assert_eq!(run(&mut hb, 0, "-----"), vec![Steady; 5]);
        assert_eq!(hb.phase(), Phase::Starting);
        // Grace over at t=10: failures count from then on.
        assert_eq!(run(&mut hb, 10, "--"), vec![Reconverge, MarkUnhealthy]);

        let mut hb = ProbeState::new(1, 1, S * 10, Duration::ZERO);
        assert_eq!(run(&mut hb, 0, "+-"), vec![Steady, Reconverge]);
    }

    #[test]
    fn unsent_rounds_neither_fail_nor_pass_and_end_the_daemon_after_a_while() {
        let mut hb =
            ProbeState::new(2, 1, Duration::ZERO, Duration::ZERO).with_unable_restart(S * 10);
        assert_eq!(run(&mut hb, 0, "+-"), vec![Steady, Steady]);
        // Unsent rounds for 9 s: no failure counted, none cleared.
        for t in 2..=11 {
            assert_eq!(hb.unsent(S * t), Steady, "t={t}");
        }
        assert_eq!(hb.consecutive_failures(), 1);
        assert_eq!(hb.phase(), Phase::Healthy);
        assert_eq!(hb.unsent_since(), Some(S * 2));
        // 10 s unable to probe: restart, and again until it happens.
        assert_eq!(hb.unsent(S * 12), Restart);
        assert_eq!(hb.unsent(S * 13), Restart);
        // A sent round ends the spell: the failure it was on goes on.
        assert_eq!(run(&mut hb, 14, "-"), vec![Reconverge]);
        assert_eq!(hb.unsent_since(), None);
        assert_eq!(hb.unsent(S * 15), Steady);
    }

    #[test]
    fn every_target_failing_at_once_is_the_verdict_in_fall_rounds_the_last_one_in_more() {
        let ms = Duration::from_millis;
        let feed = |hb: &mut ProbeState, answers: &[usize]| -> Vec<Step> {
            (answers.iter().enumerate())
                .map(|(i, a)| hb.observe_answers(*a, ms(250) * i as u32))
                .collect()
        };
        // Three targets, all answering, then none: two rounds.
        let mut hb = ProbeState::new(2, 2, Duration::ZERO, Duration::ZERO).with_targets(3);
        assert_eq!(
            feed(&mut hb, &[3, 3, 0, 0]),
            vec![Steady, Steady, Steady, Reconverge]
        );
        // Two of three answering (one black-holed), then none: still two.
        let mut hb = ProbeState::new(2, 2, Duration::ZERO, Duration::ZERO).with_targets(3);
        assert_eq!(
            feed(&mut hb, &[2, 2, 0, 0]),
            vec![Steady, Steady, Steady, Reconverge]
        );
        // Only one still answering, then that one fails: four rounds.
        let mut hb = ProbeState::new(2, 2, Duration::ZERO, Duration::ZERO).with_targets(2);
        assert_eq!(
            feed(&mut hb, &[1, 1, 0, 0, 0, 0]),
            vec![Steady, Steady, Steady, Steady, Steady, Reconverge]
        );
        // …and a lost probe of that one alone (two rounds) moves nothing.
        let mut hb = ProbeState::new(2, 2, Duration::ZERO, Duration::ZERO).with_targets(2);
        assert!(
            feed(&mut hb, &[1, 0, 0, 1, 0, 0, 0, 1])
                .iter()
                .all(|s| *s == Steady)
        );
        // One target configured: its own fall.
        let mut hb = ProbeState::new(2, 2, Duration::ZERO, Duration::ZERO).with_targets(1);
        assert_eq!(feed(&mut hb, &[1, 0, 0]), vec![Steady, Steady, Reconverge]);
    }

    #[test]
    fn unhealthy_then_recovery_is_reported() {
        let mut hb = ProbeState::new(1, 3, Duration::ZERO, Duration::ZERO);
        assert_eq!(
            run(&mut hb, 0, "+--"),
            vec![Steady, Reconverge, MarkUnhealthy]
        );
        hb.reported_unhealthy();
        assert_eq!(run(&mut hb, 3, "+++"), vec![Steady, Steady, Recovered]);
    }
}
