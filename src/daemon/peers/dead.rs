//! Silent and dead peers: silence is only a suspicion EC2 must confirm;
//! a dead peer's AZ is covered by adoption or by its fallback NAT Gateway
//! ([`crate::daemon::cover`]), as [`crate::decide::cover`] decides.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::PeersLoop;
use crate::daemon::cover::{adopt, fall_back};
use crate::decide::backoff::{CONFIRM_RETRY, PEER_CONFIRM, WITNESS_POLL, WITNESS_WINDOW};
use crate::decide::cover::{Cover, Decision};
use crate::decide::peers::Peer;
use crate::decide::routes::Observed;
use crate::domain::{InstanceId, Status};

impl PeersLoop {
    /// Silence is only a suspicion: ask EC2 whether the peer still runs
    /// and whether a status check calls it impaired (a frozen instance).
    /// The first question comes at once; while EC2 keeps saying the peer
    /// runs and is not impaired, the next waits on [`PEER_CONFIRM`], at
    /// most [`WITNESS_POLL`] in the first [`WITNESS_WINDOW`] of silence.
    /// Returns whether EC2 said any of them is gone or impaired (newly).
    pub(super) async fn confirm(&mut self, suspects: &[InstanceId]) -> bool {
        self.checked.retain(|id, _| suspects.contains(id));
        let due: Vec<InstanceId> = suspects
            .iter()
            .filter(|id| {
                self.checked
                    .get(*id)
                    .is_none_or(|(at, _, _)| Instant::now() >= *at)
            })
            .cloned()
            .collect();
        let retry_at = self.confirm_failed.0;
        if due.is_empty() || retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let health = match self.ctx.cloud.instance_health(&due).await {
            Ok(h) => {
                self.confirm_failed = (None, CONFIRM_RETRY.backoff());
                h
            }
            Err(e) => {
                let wait = self.confirm_failed.1.fail();
                self.confirm_failed.0 = Some(Instant::now() + wait);
                if let Some(n) = self
                    .throttle
                    .check("confirm", &e.to_string(), Instant::now())
                {
                    warn!(suppressed = n, error = %e, retry_in = %crate::domain::human(wait), "cannot confirm silent peers");
                }
                return false;
            }
        };
        let schedule = PEER_CONFIRM.capped(self.ctx.config.routes.reconcile_interval);
        let mut s = self.ctx.peers();
        let mut dead = false;
        for id in &due {
            match health.iter().find(|h| &h.id == id) {
                Some(h) if h.alive && h.impaired.is_empty() => {
                    if s.unimpair(id) {
                        info!(peer = %id, "silent peer no longer impaired by EC2's status checks: silence alone moves nothing");
                    }
                }
                Some(h) if h.alive => {
                    if s.impair(id) {
                        dead = true;
                        warn!(peer = %id, checks = ?h.impaired, "silent peer is impaired by EC2's status checks though running: taking it as dead until it is heard again");
                    }
                }
                _ => {
                    info!(peer = %id, "silent peer confirmed gone by EC2");
                    dead |= !s.is_gone(id);
                    s.confirm_gone(id);
                }
            }
            let (next, backoff, since) = self
                .checked
                .entry(id.clone())
                .or_insert_with(|| (Instant::now(), schedule.backoff(), Instant::now()));
            let mut wait = backoff.fail();
            if since.elapsed() < WITNESS_WINDOW {
                wait = wait.min(WITNESS_POLL);
            }
            *next = Instant::now() + wait;
        }
        dead
    }

    /// Adoptions and fallbacks share one schedule per dead peer.
    pub(super) async fn cover(&mut self, decision: Decision) {
        let covering: Vec<(String, &'static str)> = (decision.adopt.iter())
            .map(|p| (p.az.clone(), "this_nat"))
            .chain(
                decision
                    .fallback
                    .iter()
                    .map(|p| (p.az.clone(), "nat_gateway")),
            )
            .collect();
        self.ctx.covering(covering);
        let covers = (decision.adopt.into_iter().map(|p| (p, Cover::Adopt)))
            .chain(decision.fallback.into_iter().map(|p| (p, Cover::Gateway)));
        for (dead, cover) in covers {
            if self
                .next_look
                .get(&dead.instance)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let reconcile = self.ctx.config.routes.reconcile_interval;
            // The first adoption of a dead NAT's AZ writes from the routes
            // loop's last reading of it; the look right after reads it
            // afresh (a subnet or route changed since is then covered too).
            // Later looks use a reading the routes loop began after the
            // last look ended, which it takes every pass anyway, and read only
            // when there is none (an adopter's reads are not doubled while
            // it covers an AZ, when the account may be throttled).
            // A NAT on a planned exit still forwards, and its connections
            // are handed back to it by the routes the plan takes from it:
            // that plan is made on a fresh reading (nothing is lost by it).
            let planned = self.ctx.peers().view().last(&dead.instance) == Some(Status::Exiting);
            let looked = self.adopted.get(&dead.instance).copied();
            let ready = match cover {
                Cover::Adopt if !planned => match looked {
                    None => self.ctx.slow().ready(&dead.az, reconcile * 2),
                    Some(at) => self.ctx.slow().ready_since(&dead.az, at),
                },
                _ => None,
            };
            let first = ready.is_some() && looked.is_none();
            let ok = self.cover_one(&dead, cover, ready).await;
            if cover == Cover::Adopt && !planned {
                self.adopted.insert(dead.instance.clone(), Instant::now());
            }
            let wait = match ok && first {
                true => Duration::ZERO,
                false => Cover::next_look(ok, reconcile),
            };
            self.next_look
                .insert(dead.instance.clone(), Instant::now() + wait);
        }
        let s = self.ctx.peers();
        self.next_look
            .retain(|id, _| s.peers().iter().any(|p| &p.instance == id));
    }

    /// Cover one dead peer's AZ (`ready`: as last read, for an adoption);
    /// whether that went without an error.
    async fn cover_one(&self, dead: &Peer, cover: Cover, ready: Option<Observed>) -> bool {
        let ctx = &*self.ctx;
        let result = match cover {
            Cover::Adopt => {
                // A peer on a planned exit still forwards its connections.
                let leaving = ctx.peers().may_forward(dead, ctx.now());
                adopt(ctx, dead, leaving, ready).await
            }
            Cover::Gateway => {
                let (_, known_dead) = ctx.liveness();
                fall_back(ctx, &dead.az, &known_dead, None)
                    .await
                    .map(|n| n.unwrap_or(0))
            }
        };
        let (peer, az) = (&dead.instance, &dead.az);
        match (result, cover) {
            (Ok(0), _) => true,
            (Ok(n), Cover::Adopt) => {
                info!(peer = %peer, az = %az, routes = n, "adopted the private routes of a dead peer's AZ");
                true
            }
            (Ok(n), Cover::Gateway) => {
                warn!(peer = %peer, az = %az, routes = n, "no healthy NAT instance can adopt a dead peer's AZ: pointed its routes at the AZ's fallback NAT Gateway");
                true
            }
            (Err(e), Cover::Adopt) => {
                error!(peer = %peer, az = %az, error = %e, "adoption failed; will retry");
                false
            }
            (Err(e), Cover::Gateway) => {
                error!(peer = %peer, az = %az, error = %e, "fallback to the NAT Gateway failed; will retry");
                false
            }
        }
    }
}
