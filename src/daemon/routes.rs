//! The routes loop: keep this AZ's private routes pointed at this NAT.
//!
//! Each pass claims the Elastic IP ([`super::eip`]), reads the AZ, plans,
//! keeps only the source/destination check while another NAT of the AZ
//! holds it ([`crate::decide::holder`]), lets the failback gate hold what
//! this NAT may not take yet (before its own probe passes, and during
//! `failback = drain:D`), hands connections back to a NAT routes are taken
//! from, and applies. When this NAT fails or leaves and no peer is healthy,
//! it points its AZ at the fallback NAT Gateway instead. It runs every
//! `routes.reconcile_interval` (±10% jitter), at once when this NAT's
//! verdict changes, and after a failed pass on [`ROUTES_RETRY`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::cover;
use super::ctx::Ctx;
use super::eip::EipClaim;
use super::log::LogThrottle;
use super::replicate::Translate;
use super::take::{FlowsTo, Take, hand_off_and_apply, read_and_plan, running_instance};
use crate::aws::AwsError;
use crate::decide::backoff::{Backoff, ROUTES_RETRY};
use crate::decide::cover::{Guard, gate, own_az_falls_back, unvouched_holders};
use crate::decide::holder::Holding;
use crate::decide::routes::{Action, Observed, Plan, points_at};
use crate::domain::{EniId, RouteTableId, RouteTarget, Status};
use crate::status::RouteView;

pub struct RoutesLoop {
    ctx: Arc<Ctx>,
    status: watch::Receiver<Status>,
    throttle: LogThrottle,
    backoff: Backoff,
    eip: EipClaim,
    last_owned: Option<Vec<String>>,
    /// Since when this NAT's verdict has been `ok` without a break.
    healthy_since: Option<Instant>,
}

impl RoutesLoop {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let backoff = ROUTES_RETRY
            .capped(ctx.config.routes.reconcile_interval)
            .backoff();
        RoutesLoop {
            status: ctx.status.subscribe(),
            ctx,
            throttle: LogThrottle::default(),
            backoff,
            eip: EipClaim::default(),
            last_owned: None,
            healthy_since: None,
        }
    }

    pub async fn run(mut self) {
        loop {
            self.ctx.progress.beat("routes", self.ctx.round_bound());
            let wait = self.tick().await;
            self.ctx.progress.done("routes");
            // A change of our own verdict (first good probe, recovery) is
            // acted on at once, and a peer's AZ not read yet is read now.
            let ctx = self.ctx.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.read_peers.notified() => {}
                changed = self.status.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    /// One pass; returns how long to wait before the next.
    pub async fn tick(&mut self) -> Duration {
        self.eip.keep(&self.ctx, &mut self.throttle).await;
        let status = *self.status.borrow_and_update();
        match status {
            Status::Ok => {
                self.healthy_since.get_or_insert_with(Instant::now);
            }
            _ => self.healthy_since = None,
        }
        let failback = self.ctx.config.peers.failback;
        let drain_left = self.healthy_since.is_some_and(|t| t.elapsed() < failback);
        let result = self.pass(status, drain_left).await;
        self.ctx
            .board()
            .error("routes", result.as_ref().err().map(ToString::to_string));
        match result {
            Ok(()) => {
                let mut board = self.ctx.board();
                board.last_reconcile = Some(Instant::now());
                board.reconciled_as = Some(status);
                drop(board);
                self.throttle.clear("aws");
                self.backoff.reset();
                let wait = jittered(self.ctx.config.routes.reconcile_interval);
                // Come back when the drain ends rather than a whole interval later.
                match self.healthy_since {
                    Some(t) if drain_left => {
                        wait.min((t + failback).saturating_duration_since(Instant::now()))
                    }
                    _ => wait,
                }
            }
            Err(e) => {
                let wait = self.backoff.fail();
                let msg = e.to_string();
                if let Some(n) = self.throttle.check("aws", &msg, Instant::now()) {
                    error!(suppressed = n, error = %msg, retry_in = %crate::domain::human(wait), "route reconcile failed");
                }
                wait
            }
        }
    }

    async fn pass(&mut self, status: Status, drain_left: bool) -> Result<(), AwsError> {
        let ctx = &*self.ctx.clone();
        let mut spec = Take {
            az: &ctx.me.availability_zone,
            to: ctx.me_target(),
            guard: Guard::OwnAz { planned: status },
            observed: Some(super::take::read_own_and_peers(ctx).await?),
        };
        let (observed, plan) = read_and_plan(ctx, &mut spec).await?;
        self.log_scope(&plan);
        let plan = self.yield_if_not_holder(plan);
        let (live, dead) = ctx.liveness();
        // This NAT cannot serve its AZ and no peer is healthy to adopt it:
        // the AZ's fallback NAT Gateway stands in, if there is one.
        if own_az_falls_back(status, &live) {
            let az = &ctx.me.availability_zone;
            let moved = cover::fall_back(ctx, az, &dead, Some(&observed)).await?;
            if let Some(n) = moved.filter(|n| *n > 0) {
                warn!(routes = n, status = %status, "no healthy peer to take this AZ: pointed its routes at the fallback NAT Gateway");
            }
        }
        let holders = match drain_left && status == Status::Ok {
            true => self.holders(&plan, live, &dead).await?,
            false => live,
        };
        let (plan, held) = gate(plan, status, drain_left, &holders);
        if held > 0 {
            let why = match status {
                Status::Ok => "draining the adopter's connections before taking routes back",
                Status::Starting => {
                    "waiting for this NAT's own forwarding probe to pass before taking routes"
                }
                Status::Failing | Status::Exiting => "not taking routes: this NAT cannot serve",
            };
            if let Some(n) = self.throttle.check("held", why, Instant::now()) {
                info!(suppressed = n, held, status = %status, "{why}");
            }
        }
        // Taking routes back from a NAT that still forwards (the adopter,
        // even one leaving itself): the connections it translates go on
        // through it.
        let proceed = || spec.guard.holds(&ctx.moment());
        hand_off_and_apply(
            ctx,
            &observed,
            &plan,
            &spec.to,
            FlowsTo::Holders,
            Translate::Own,
            &proceed,
        )
        .await?;
        record_routes(ctx, &observed, &plan, &spec.to);
        Ok(())
    }

    /// With another NAT of this AZ holding it ([`crate::decide::holder`]),
    /// keep only the source/destination check of the plan; say so when that
    /// changes.
    fn yield_if_not_holder(&mut self, mut plan: Plan) -> Plan {
        let yielded = match self.ctx.holding() {
            Holding::Hold => None,
            Holding::Yield { to, why } => Some((to, why)),
        };
        let before = std::mem::replace(&mut self.ctx.board().yielded_to, yielded.clone());
        if before != yielded {
            match &yielded {
                Some((to, why)) => {
                    info!(holder = %to, "leaving this AZ's routes to another NAT of the AZ: {why}")
                }
                None if before.is_some() => {
                    info!("this NAT holds its AZ again (no newer NAT of the AZ runs)")
                }
                None => {}
            }
        }
        if yielded.is_some() {
            plan.actions
                .retain(|a| matches!(a, Action::DisableSourceDestCheck { .. }));
        }
        plan
    }

    /// Draining: a route held by a running NAT stays with it for the drain.
    /// Heartbeats say which peers are alive, but a NAT that just started may
    /// not have heard them yet: EC2 is asked about any holder they do not
    /// vouch for.
    async fn holders(
        &self,
        plan: &Plan,
        mut live: Vec<EniId>,
        dead: &[RouteTarget],
    ) -> Result<Vec<EniId>, AwsError> {
        for e in unvouched_holders(plan, &live, dead) {
            if running_instance(&*self.ctx.cloud, &RouteTarget::Eni(e.clone()))
                .await?
                .is_some()
            {
                live.push(e);
            }
        }
        Ok(live)
    }

    fn log_scope(&mut self, plan: &Plan) {
        for f in &plan.findings {
            if let Some(n) = self
                .throttle
                .check("finding", &f.to_string(), Instant::now())
            {
                warn!(suppressed = n, "{f}");
            }
        }
        let owned: Vec<String> = plan.owned.iter().map(ToString::to_string).collect();
        if self.last_owned.as_ref() != Some(&owned) {
            info!(route_tables = ?owned, "route tables in scope");
            self.last_owned = Some(owned);
        }
    }
}

/// Where this AZ's tables point after a pass that applied `plan` (made from
/// `observed`), for `/status` and the metrics.
fn record_routes(ctx: &Ctx, observed: &Observed, plan: &Plan, to: &RouteTarget) {
    let changed = |id: &RouteTableId| {
        plan.actions.iter().any(|a| match a {
            Action::CreateRoute { route_table } | Action::ReplaceRoute { route_table, .. } => {
                route_table == id
            }
            Action::DisableSourceDestCheck { .. } => false,
        })
    };
    let routes = plan
        .owned
        .iter()
        .map(|id| {
            let target = match changed(id) {
                true => Some(to.clone()),
                false => observed
                    .route_tables
                    .iter()
                    .find(|t| &t.id == id)
                    .and_then(|t| t.default_route.as_ref())
                    .map(|r| r.target.clone()),
            };
            RouteView {
                table: id.to_string(),
                this_nat: target.as_ref().is_some_and(|t| points_at(t, to, &ctx.me)),
                target: target.map(|t| t.to_string()),
            }
        })
        .collect();
    ctx.board().own_routes = routes;
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * fastrand::f64())
}
