//! The heartbeat loop: probe the NAT path every `heartbeat.interval`, keep
//! the kernel converged every `kernel.converge_interval`, and act on the
//! verdicts of [`crate::decide::heartbeat`]: say `failing` to the peers,
//! reconverge once, then report the instance Unhealthy to Auto Scaling.
//! Its progress feeds the systemd watchdog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::converge::converge_logged;
use super::ctx::Ctx;
use super::log::LogThrottle;
use crate::decide::backoff::PROBE_RECHECK;
use crate::decide::heartbeat::{Heartbeat, Phase, Verdict};
use crate::domain::Status;
use crate::kernel::probe::{Prober, Round};
use crate::kernel::probe_ns;

pub struct HeartbeatLoop {
    ctx: Arc<Ctx>,
    interface: String,
    prober: Prober,
    state: Heartbeat,
    throttle: LogThrottle,
    next_converge: Instant,
    /// Milliseconds since start of the last round, for the watchdog.
    last_beat: Arc<AtomicU64>,
}

impl HeartbeatLoop {
    pub fn new(ctx: Arc<Ctx>, interface: String, last_beat: Arc<AtomicU64>) -> Self {
        let hb = &ctx.config.heartbeat;
        let prober = Prober {
            netns: Some(probe_ns::netns_path(&hb.probe_namespace)),
            targets: hb.targets.clone(),
            timeout: hb.timeout,
        };
        let state = Heartbeat::new(hb.fall, hb.rise, hb.grace_period, Duration::ZERO);
        let next_converge = Instant::now() + ctx.config.kernel.converge_interval;
        HeartbeatLoop {
            ctx,
            interface,
            prober,
            state,
            throttle: LogThrottle::default(),
            next_converge,
            last_beat,
        }
    }

    pub async fn run(mut self) {
        let mut next_round = Instant::now();
        loop {
            tokio::time::sleep_until(next_round).await;
            next_round = self.tick().await;
        }
    }

    /// One probe round (and a converge when due); returns when the next
    /// round is due. A failed round is confirmed (or cleared) at once
    /// instead of a whole interval later: failing rounds last `timeout`
    /// each, so `fall` failures take about fall × timeout.
    pub async fn tick(&mut self) -> Instant {
        let (interval, fall) = (
            self.ctx.config.heartbeat.interval,
            self.ctx.config.heartbeat.fall,
        );
        let mut next_round = Instant::now() + interval;
        let beat = self.ctx.now().as_millis() as u64;
        self.last_beat.store(beat, Ordering::Relaxed);
        if Instant::now() >= self.next_converge {
            self.converge().await;
        }
        let round = self.prober.round().await;
        let ok = round.ok();
        if !ok && self.state.consecutive_failures() + 1 < fall {
            next_round = Instant::now() + PROBE_RECHECK;
        }
        self.log_round(&round);
        let verdict = self.state.observe(ok, self.ctx.now());
        self.tell(match self.state.phase() {
            Phase::Starting => Status::Starting,
            Phase::Healthy => Status::Ok,
            Phase::Reconverged | Phase::Unhealthy => Status::Failing,
        });
        self.act(verdict, &round).await;
        next_round
    }

    async fn converge(&mut self) {
        let ctx = &*self.ctx;
        converge_logged(&ctx.me, &ctx.config, &self.interface, &mut self.throttle).await;
        self.next_converge = Instant::now() + ctx.config.kernel.converge_interval;
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
        self.ctx.status.send_if_modified(|s| {
            let changed = *s != said && *s != Status::Exiting;
            if changed {
                *s = said;
            }
            changed
        });
        if was == Status::Starting && said == Status::Ok {
            info!("forwarding verified: probes pass through this NAT");
        }
    }

    async fn act(&mut self, verdict: Verdict, round: &Round) {
        match verdict {
            Verdict::Steady => {}
            Verdict::Recovered => info!("forwarding recovered"),
            Verdict::Reconverge => {
                warn!(
                    fall = self.ctx.config.heartbeat.fall,
                    "forwarding probe failing; re-applying kernel NAT config"
                );
                self.converge().await;
            }
            Verdict::MarkUnhealthy => {
                error!(
                    failures = %round.failures(),
                    "packets are not flowing through this NAT even after reconverging; marking instance Unhealthy"
                );
                match self.ctx.cloud.set_unhealthy(&self.ctx.me.instance_id).await {
                    Ok(()) => {
                        self.state.reported_unhealthy();
                        info!("instance reported Unhealthy to Auto Scaling; it will be replaced");
                    }
                    Err(e) => error!(error = %e, "could not report Unhealthy; will retry"),
                }
            }
        }
    }
}
