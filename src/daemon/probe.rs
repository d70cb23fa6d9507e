//! The probe loop: probe the NAT path every `probe.interval`, keep
//! the kernel converged every `kernel.converge_interval`, and act on the
//! verdicts of [`crate::decide::probe`]: say `failing` to the peers,
//! reconverge once, then report the instance Unhealthy to Auto Scaling.
//! Each round reports its progress for the systemd watchdog.
//!
//! A round whose probes could not be sent (the daemon out of descriptors or
//! memory, [`RoundResult::Unsent`]) moves no verdict: it is said (log,
//! `hanat_unable_to_probe_seconds`, `/health` and `hanat status`) and, if
//! it lasts `probe.unable_restart`, the loop ends the daemon
//! ([`UnableToProbe`], exit 75) so systemd starts a fresh one.
//! Auto Scaling is never asked to replace a NAT for it: the kernel
//! forwards whatever the daemon can or cannot do.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::converge::converge_logged;
use super::ctx::Ctx;
use super::log::LogThrottle;
use crate::decide::probe::{Phase, ProbeState, Step};
use crate::domain::Status;
use crate::kernel::probe::{Miss, Prober, Round, RoundResult};
use crate::kernel::probe_ns;
use crate::report;

/// The probes could not be sent for `probe.unable_restart` (out of
/// descriptors or memory): a fresh daemon is the remedy, not a new
/// instance.
#[derive(Debug, thiserror::Error)]
#[error("could not send probes for {}: {why}", crate::domain::human(*unable_for))]
pub struct UnableToProbe {
    pub unable_for: Duration,
    pub why: String,
}

/// At most this many rounds in flight: a round ends within
/// `probe.timeout` (at most `probe.interval` × this), so only a stuck one
/// holds the next back.
const MAX_IN_FLIGHT: usize = 4;

/// How long the Unhealthy report waits at most for the routes pass that
/// gives the AZ to its fallback NAT Gateway.
const FALLBACK_FIRST: Duration = Duration::from_secs(5);

pub struct ProbeLoop {
    ctx: Arc<Ctx>,
    interface: String,
    prober: Prober,
    state: ProbeState,
    throttle: LogThrottle,
    next_converge: Instant,
    /// The translation addresses last converged ([`Ctx::snat`]): a change
    /// is applied within a round.
    snat: Vec<std::net::Ipv4Addr>,
    /// The last converge failed: what the next one sets is not drift.
    converge_failed: bool,
    /// The kernel config was re-applied after a failed round, and what it
    /// found drifted then: the next passing round says whether a repair
    /// or a transient failure is behind it.
    repairing: Option<Vec<String>>,
    /// When a repair last set drifted kernel state right: rounds started
    /// before then that fail (they were sent while the drift lasted) are
    /// not counted.
    repaired_at: Option<Instant>,
    /// When the instance was first due to be reported Unhealthy, while
    /// the report waits for the fallback ([`Self::fallback_pending`]).
    unhealthy_due: Option<Instant>,
}

impl ProbeLoop {
    pub fn new(ctx: Arc<Ctx>, interface: String) -> Self {
        let hb = &ctx.config.probe;
        let prober = Prober {
            netns: Some(probe_ns::netns_path(&hb.probe_namespace)),
            targets: hb.targets.clone(),
            timeout: hb.timeout,
        };
        let state = ProbeState::new(hb.fall, hb.rise, hb.grace_period, Duration::ZERO)
            .with_unable_restart(hb.unable_restart)
            .with_targets(hb.targets.len());
        let next_converge = Instant::now() + ctx.config.kernel.converge_interval;
        // What start-up converged: the Elastic IP claim has not run yet.
        let snat = ctx.snat();
        ProbeLoop {
            ctx,
            interface,
            prober,
            state,
            throttle: LogThrottle::default(),
            next_converge,
            snat,
            converge_failed: false,
            repairing: None,
            repaired_at: None,
            unhealthy_due: None,
        }
    }

    /// Probe until the daemon ends, or until probes could not be sent for
    /// `probe.unable_restart` (the error).
    ///
    /// A round starts every `probe.interval` whether or not the last one
    /// has answered: rounds overlap when `probe.timeout` is longer than the
    /// interval, so a NAT that stops forwarding fails `fall` rounds in
    /// about `timeout + (fall − 1) × interval`, not `fall × timeout`.
    /// Results are taken in the order the rounds started.
    pub async fn run(mut self) -> Result<(), UnableToProbe> {
        let interval = self.ctx.config.probe.interval;
        let mut next_round = Instant::now();
        let mut in_flight: VecDeque<(Instant, JoinHandle<Round>)> = VecDeque::new();
        loop {
            let room = in_flight.len() < MAX_IN_FLIGHT;
            let front = async {
                match in_flight.front_mut() {
                    Some((_, round)) => round.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_round), if room => {
                    next_round = Instant::now() + interval;
                    self.ctx.progress.beat("probe", self.ctx.round_bound());
                    if Instant::now() >= self.next_converge || self.snat != self.ctx.snat() {
                        self.converge().await;
                    }
                    let prober = self.prober.clone();
                    let round = tokio::spawn(async move { prober.round().await });
                    in_flight.push_back((Instant::now(), round));
                }
                round = front => {
                    let started = in_flight.pop_front().map_or_else(Instant::now, |(t, _)| t);
                    self.ctx.progress.beat("probe", self.ctx.round_bound());
                    let round = round.unwrap_or_else(|e| {
                        self.prober.fail_all(Miss::Unsent(format!("probe task ended: {e}")))
                    });
                    self.take(round, started).await?;
                }
            }
            // The watchdog watches the oldest round in flight: one that
            // never ends gets the daemon restarted.
            match in_flight.front() {
                Some((at, _)) => {
                    (self.ctx.progress).beat_since("probe", *at, self.ctx.round_bound())
                }
                None => self.ctx.progress.done("probe"),
            }
        }
    }

    /// Act on one round's result (of a round started at `started`).
    pub async fn take(&mut self, round: Round, started: Instant) -> Result<(), UnableToProbe> {
        self.ctx.metrics.probe_round(&round);
        if round.result() == RoundResult::Unsent {
            return self.unsent(&round);
        }
        if self.state.unsent_since().is_some() {
            info!("probes can be sent again");
            self.ctx.unable_to_probe(None);
        }
        let ok = round.ok();
        // Sent into a kernel repaired since: no evidence about the repaired one.
        if !ok && self.repaired_at.is_some_and(|at| started < at) {
            return Ok(());
        }
        self.log_round(&round);
        self.repair(ok).await;
        let verdict = self.state.observe_answers(round.answered(), self.ctx.now());
        self.tell(match self.state.phase() {
            Phase::Starting => Status::Starting,
            Phase::Healthy => Status::Ok,
            Phase::Reconverged | Phase::Unhealthy => Status::Failing,
        });
        self.act(verdict, &round).await;
        Ok(())
    }

    /// A round whose probes could not be sent: say so, change no verdict,
    /// and end the daemon once it has lasted `probe.unable_restart`.
    fn unsent(&mut self, round: &Round) -> Result<(), UnableToProbe> {
        let why = round.failures();
        let verdict = self.state.unsent(self.ctx.now());
        let since = self.state.unsent_since().unwrap_or_default();
        let unable_for = self.ctx.now().saturating_sub(since);
        self.ctx.unable_to_probe(Some((unable_for, why.clone())));
        if let Some(n) = self.throttle.check("unsent", &why, Instant::now()) {
            warn!(
                suppressed = n,
                failures = %why,
                restart_after = %crate::domain::human(self.ctx.config.probe.unable_restart),
                "cannot send probes: this daemon is short of a local resource, which says nothing about forwarding; the verdict stays as it was"
            );
        }
        match verdict {
            Step::Restart => {
                error!(failures = %why, "probes could not be sent for probe.unable_restart; ending the daemon so systemd starts a fresh one (the kernel forwards meanwhile)");
                Err(UnableToProbe { unable_for, why })
            }
            _ => Ok(()),
        }
    }

    /// Drift this daemon can repair (a sysctl reset, its table flushed, a
    /// device deleted) must not look like a failed NAT: the first failed
    /// round re-applies the kernel config at once, so the rounds that
    /// follow (within `fall`) pass again and nothing moves; rounds already
    /// in flight when something was found drifted do not count. A real
    /// failure (nothing drifted) goes on failing and is handed over as
    /// before, its rounds in flight counting.
    /// A round that failed with nothing drifted (a loaded host, a lost
    /// probe) and then passes is said to be transient, not a repair.
    async fn repair(&mut self, ok: bool) {
        if ok {
            match self.repairing.take() {
                None => {}
                Some(drifted) if drifted.is_empty() => info!(
                    "forwarding passes again; nothing hanat sets in the kernel had drifted, so the failed round was transient"
                ),
                Some(drifted) => info!(
                    drifted = %drifted.join(", "),
                    "forwarding passes again after re-applying the kernel NAT config: drift repaired"
                ),
            }
        } else if self.state.consecutive_failures() == 0 && self.repairing.is_none() {
            warn!(
                "probe round failed; re-applying the kernel NAT config at once in case it drifted"
            );
            let drifted = self.converge().await;
            if !drifted.is_empty() {
                self.repaired_at = Some(Instant::now());
            }
            self.repairing = Some(drifted);
        }
    }

    /// Converge the kernel; returns what had drifted since the last
    /// converge (nothing when the translation addresses changed: that is
    /// this daemon's own change) and warns about it.
    async fn converge(&mut self) -> Vec<String> {
        let ctx = &*self.ctx;
        let snat = ctx.snat();
        let result = converge_logged(
            &ctx.me,
            &ctx.config,
            &self.interface,
            &snat,
            &mut self.throttle,
        )
        .await;
        // What this daemon changed itself, or set for the first time after
        // a failed converge, is not drift.
        let ours = snat != self.snat || self.converge_failed;
        // A failed converge is retried at the next due time, not every round.
        self.snat = snat;
        self.converge_failed = result.is_err();
        let drifted = match &result {
            Ok(drifted) if !ours => drifted.clone(),
            _ => Vec::new(),
        };
        if !drifted.is_empty() {
            warn!(drifted = %drifted.join(", "), "the kernel NAT config had drifted from what hanat sets; re-applied");
        }
        if result.is_ok() {
            ctx.board().last_converge = Some(Instant::now());
        }
        ctx.board().error("kernel converge", result.err());
        // The flow hand-offs in force live in the same kernel state.
        if let Err(e) = ctx.flows.lock().await.reassert().await
            && let Some(n) = self
                .throttle
                .check("handoff", &e.to_string(), Instant::now())
        {
            warn!(suppressed = n, error = %report(&e), "cannot restore the flow hand-offs; will retry");
        }
        self.next_converge = Instant::now() + ctx.config.kernel.converge_interval;
        drifted
    }

    fn log_round(&mut self, round: &Round) {
        if round.ok() {
            self.throttle.clear("probe");
        } else if let Some(n) = self
            .throttle
            .check("probe", &round.failures(), Instant::now())
        {
            warn!(
                suppressed = n,
                consecutive = self.state.consecutive_failures() + 1,
                failures = %round.failures(),
                "probe round failed"
            );
        }
    }

    /// Peers hear a new verdict at once: a failing NAT says so before it
    /// reconverges and long before Auto Scaling replaces it. `exiting`
    /// stays, whatever the probes say.
    fn tell(&self, said: Status) {
        let was = *self.ctx.status.borrow();
        self.ctx.set_verdict(said);
        if was == Status::Starting && said == Status::Ok {
            info!("forwarding verified: probes pass through this NAT");
        }
    }

    /// Whether the Unhealthy report waits for the fallback. A NAT whose AZ
    /// has a fallback NAT Gateway points the AZ at it in the routes loop's
    /// first pass under the failing verdict (when no peer is healthy to
    /// adopt it), and Auto Scaling may terminate the instance the moment it
    /// hears Unhealthy: that pass goes first, waited for at most
    /// [`FALLBACK_FIRST`] (a throttled API may fail it).
    fn fallback_pending(&mut self) -> bool {
        let ctx = &self.ctx;
        let az = &ctx.me.availability_zone;
        if ctx.config.peers.fallback_for(az).is_none() {
            return false;
        }
        let due = match self.unhealthy_due {
            Some(due) => due,
            None => {
                info!(az = %az, "reporting Unhealthy once the routes loop has given this AZ to its fallback NAT Gateway (at most {})", crate::domain::human(FALLBACK_FIRST));
                *self.unhealthy_due.insert(Instant::now())
            }
        };
        let b = ctx.board();
        let passed = b.reconciled_as == Some(Status::Failing)
            && b.last_reconcile.is_some_and(|t| t >= b.verdict_since);
        !passed && due.elapsed() < FALLBACK_FIRST
    }

    async fn act(&mut self, verdict: Step, round: &Round) {
        match verdict {
            // Given by `unsent` alone.
            Step::Steady | Step::Restart => {}
            Step::Recovered => {
                self.unhealthy_due = None;
                info!("forwarding recovered");
            }
            Step::Reconverge => {
                // Not drift after all: a recovery now is not a repair.
                self.repairing = None;
                warn!(
                    fall = self.ctx.config.probe.fall,
                    "forwarding probe failing; re-applying kernel NAT config"
                );
                self.converge().await;
            }
            Step::MarkUnhealthy => {
                if self.fallback_pending() {
                    // The next failing round asks again.
                    return;
                }
                error!(
                    failures = %round.failures(),
                    "packets are not flowing through this NAT even after reconverging; marking instance Unhealthy"
                );
                match self.ctx.cloud.set_unhealthy(&self.ctx.me.instance_id).await {
                    Ok(()) => {
                        self.state.reported_unhealthy();
                        self.unhealthy_due = None;
                        info!("instance reported Unhealthy to Auto Scaling; it will be replaced");
                    }
                    Err(e) => error!(error = %e, "could not report Unhealthy; will retry"),
                }
            }
        }
    }
}
