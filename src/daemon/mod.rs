//! The daemon: the loops that observe, decide ([`crate::decide`]) and act,
//! and the supervisor that starts, watches and stops them.
//!
//! - [`routes`]: keep this AZ's private routes on this NAT (and its
//!   Elastic IP, [`eip`]);
//! - [`probe`]: probe the NAT path, keep the kernel converged
//!   ([`converge`]), report broken forwarding;
//! - [`peers`]: heartbeats with the other AZs' NATs; cover a dead one's AZ
//!   ([`cover`]);
//! - [`exit`]: planned exits (scale-in, spot, stop with hand-off);
//! - [`witness`]: put this NAT under its application status check;
//! - [`publish`]: CloudWatch metrics, when `cloudwatch.enabled`;
//! - [`endpoints`]: `/metrics`, `/health` and `/status` on
//!   `metrics.listen` ([`metrics`], [`snapshot`], [`readings`]).
//!
//! They share one [`ctx::Ctx`], and every change of routes goes through
//! [`take`]. Each loop is a struct whose `tick()` does one round, so tests
//! can drive it under paused time against a fake cloud.
//!
//! Every task is owned by one `JoinSet`: shutdown (SIGTERM, SIGINT) aborts
//! them all in one place, and a task that panics ends the daemon (exit 70)
//! so systemd restarts it whole. Shutdown leaves routes, sysctls, rules and
//! the probe namespace in place: the kernel keeps forwarding, and the next
//! daemon adopts it all. Errors inside a loop are logged (identical repeats
//! at most once a minute) and retried; they never end the daemon.

pub mod board;
pub mod converge;
pub mod cover;
pub mod ctx;
pub mod dry_run;
pub mod eip;
pub mod endpoints;
pub mod exit;
pub mod flows;
pub mod log;
pub mod metrics;
pub mod peers;
pub mod probe;
pub mod progress;
pub mod publish;
pub mod readings;
pub mod replicate;
pub mod routes;
pub mod snapshot;
pub mod take;
pub mod witness;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{AbortHandle, JoinSet};
use tracing::{Instrument, error, info, info_span, warn};

use self::converge::{converge_kernel, flow_handoff_on};
use self::ctx::Ctx;
use self::flows::FlowHandoff;
use self::peers::PeersLoop;
use self::probe::ProbeLoop;
use self::routes::RoutesLoop;
use crate::aws::cloud::Cloud;
use crate::aws::imds::Imds;
use crate::aws::meter::ApiMeter;
use crate::config::{Config, Failover};
use crate::domain::{Identity, Ipv4Cidr, Status};
use crate::kernel::KernelError;
use crate::notify::Notifier;
use crate::report;

/// Everything the daemon acts on, built by `main` (or a test).
pub struct Deps {
    pub config: Config,
    pub identity: Identity,
    pub cloud: Arc<dyn Cloud>,
    /// Instance metadata, watched for planned exits.
    pub imds: Imds,
    /// The interface to masquerade out of.
    pub interface: String,
    pub notifier: Notifier,
    /// Times the calls of `cloud`, for the metrics.
    pub api_meter: ApiMeter,
}

/// Why the daemon could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The probe network overlaps the VPC: probes would be indistinguishable.
    #[error("probe.probe_cidr {probe} overlaps the VPC CIDR {vpc}; choose another /30")]
    ProbeOverlap { probe: Ipv4Cidr, vpc: Ipv4Cidr },
    /// The kernel could not be configured for NAT.
    #[error("cannot configure kernel NAT")]
    Kernel(#[from] KernelError),
    /// A loop panicked (a bug): better a clean restart by systemd than a
    /// daemon with a loop missing.
    #[error("the {task} task panicked: {detail}")]
    Panicked { task: &'static str, detail: String },
    /// The probes could not be sent for `probe.unable_restart`.
    #[error(transparent)]
    UnableToProbe(#[from] probe::UnableToProbe),
}

/// Check that the probe network does not collide with the VPC.
pub fn check_probe_cidr(identity: &Identity, config: &Config) -> Result<(), RunError> {
    let probe = config.probe.probe_cidr;
    match identity.vpc_cidrs.iter().find(|v| v.overlaps(&probe)) {
        Some(vpc) => Err(RunError::ProbeOverlap { probe, vpc: *vpc }),
        None => Ok(()),
    }
}

/// Run until `shutdown` completes. Returns an error if start-up fails or a
/// task panics.
pub async fn run(deps: Deps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let span = info_span!(
        "hanat",
        instance = %deps.identity.instance_id,
        az = %deps.identity.availability_zone
    );
    run_inner(deps, shutdown).instrument(span).await
}

async fn run_inner(deps: Deps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let Deps {
        config,
        identity,
        cloud,
        imds,
        interface,
        notifier,
        api_meter,
    } = deps;
    check_probe_cidr(&identity, &config)?;
    info!(
        vpc = %identity.vpc_id, eni = %identity.eni, interface = %interface,
        vpc_cidrs = ?identity.vpc_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "starting"
    );
    let flows = set_up_kernel(&identity, &config, &interface, &notifier).await?;
    let ctx = Ctx::metered(cloud, identity, config, flows, &api_meter);
    let (mut tasks, exit_watch) = spawn_loops(&ctx, imds, interface);
    let result = supervise(&ctx, &notifier, &mut tasks, shutdown).await;
    exit_watch.abort();
    if result.is_ok() && ctx.config.exit.handoff_on_stop && *ctx.status.borrow() != Status::Exiting
    {
        notifier.status("handing routes to a peer before stopping");
        exit::leave(&ctx, exit::Reason::Stop).await;
    }
    notifier.stopping();
    tasks.set.shutdown().await;
    info!("stopping; routes, rules and sysctls stay in place");
    result
}

/// Converge the kernel NAT (until the Elastic IP claim says which
/// secondary addresses have a public address, new connections take the
/// primary one), tell systemd, and resume the flow hand-offs a previous
/// daemon left.
async fn set_up_kernel(
    identity: &Identity,
    config: &Config,
    interface: &str,
    notifier: &Notifier,
) -> Result<FlowHandoff, RunError> {
    let converged = converge_kernel(identity, config, interface, &[identity.private_ip]).await?;
    for skipped in converged.skipped {
        warn!(error = %report(&skipped), "optional kernel setting not made");
    }
    info!(namespace = %config.probe.probe_namespace, "kernel NAT configured");
    notifier.ready("kernel NAT configured; taking over routes");
    let max = match flow_handoff_on(config) {
        true => config.peers.flow_handoff,
        false => Duration::ZERO,
    };
    let mut flows = FlowHandoff::new(
        interface,
        config.peers.tunnel_port(),
        &identity.vpc_cidrs,
        max,
    );
    flows.resume(tokio::time::Instant::now()).await;
    Ok(flows)
}

/// Start every loop the configuration asks for; returns them, and the
/// planned-exit watch (aborted at shutdown).
fn spawn_loops(ctx: &Arc<Ctx>, imds: Imds, interface: String) -> (Tasks, AbortHandle) {
    let mut tasks = Tasks::default();
    let exit_watch = tasks.spawn("exit", {
        let ctx = ctx.clone();
        async move {
            let reason = exit::watch_metadata(&ctx, &imds).await;
            exit::leave(&ctx, reason).await;
            ctx.progress.done("exit");
        }
    });
    tasks.spawn("fallback", {
        let ctx = ctx.clone();
        async move { cover::check_fallbacks(&ctx).await }
    });
    if ctx.config.peers.status_check.is_some() {
        let ctx = ctx.clone();
        tasks.spawn("witness", async move { witness::associate(&ctx).await });
    }
    if ctx.config.peers.failover == Failover::Peer {
        let ctx = ctx.clone();
        tasks.spawn("peers", async move {
            if let Some(peers) = PeersLoop::start(ctx).await {
                peers.run().await;
            }
        });
    }
    if ctx.config.peers.failover == Failover::Peer && ctx.config.replication.enabled {
        tasks.spawn(
            "replication",
            replicate::run(ctx.clone(), interface.clone()),
        );
    }
    if ctx.config.cloudwatch.enabled {
        let ctx = ctx.clone();
        tasks.spawn("cloudwatch", async move {
            publish::PublishLoop::start(ctx).await.run().await
        });
    }
    if let Some(addr) = ctx.config.metrics.listen {
        tasks.spawn("endpoints", endpoints::serve(ctx.clone(), addr));
    }
    tasks.spawn("routes", RoutesLoop::new(ctx.clone()).run());
    let probe = ProbeLoop::new(ctx.clone(), interface);
    tasks.spawn_fallible(
        "probe",
        async move { probe.run().await.map_err(RunError::from) },
    );
    (tasks, exit_watch)
}

/// Wait for `shutdown`, pinging the systemd watchdog while every loop
/// makes progress ([`progress`]: a loop wedged on any await gets the daemon
/// restarted), and ending at once if a task panics.
async fn supervise(
    ctx: &Ctx,
    notifier: &Notifier,
    tasks: &mut Tasks,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let watchdog_every = notifier.watchdog().map(|w| w / 2);
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                let stuck = ctx.progress.stuck();
                if stuck.is_empty() {
                    notifier.ping();
                } else {
                    let stuck: Vec<String> = stuck
                        .iter()
                        .map(|(name, ran)| format!("{name} ({}s)", ran.as_secs()))
                        .collect();
                    warn!(loops = ?stuck, "a loop is stuck; withholding the watchdog ping so systemd restarts the daemon");
                }
            }
            Some(ended) = tasks.set.join_next_with_id() => {
                if let Some(e) = tasks.ended(ended) {
                    error!(error = %e, "exiting");
                    return Err(e);
                }
            }
        }
    }
}

/// The daemon's tasks, by name.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Result<(), RunError>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> AbortHandle {
        self.spawn_fallible(name, async move {
            task.await;
            Ok(())
        })
    }

    /// A task whose error ends the daemon.
    fn spawn_fallible(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), RunError>> + Send + 'static,
    ) -> AbortHandle {
        let handle = self.set.spawn(task.instrument(info_span!("task", name)));
        self.names.insert(handle.id(), name);
        handle
    }

    /// A task ended: fine when it was done (the exit watcher after a
    /// hand-off, the fallback check, a peers loop with failover off), an
    /// error when it panicked or returned one.
    fn ended(
        &mut self,
        ended: Result<(tokio::task::Id, Result<(), RunError>), tokio::task::JoinError>,
    ) -> Option<RunError> {
        let (id, result) = match ended {
            Ok((id, Ok(()))) => (id, None),
            Ok((id, Err(e))) => (id, Some(Ok(e))),
            Err(e) if e.is_panic() => (e.id(), Some(Err(e.to_string()))),
            Err(e) => (e.id(), None),
        };
        let task = self.names.remove(&id).unwrap_or("unknown");
        match result {
            Some(Ok(e)) => Some(e),
            Some(Err(detail)) => Some(RunError::Panicked { task, detail }),
            None => {
                info!(task, "task finished");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod start_tests {
    use super::*;

    #[test]
    fn probe_cidr_must_not_overlap_vpc() {
        let id = crate::domain::Identity::example("i-1", "eni-1", "vpc-1");
        let mut config = Config::default();
        assert!(check_probe_cidr(&id, &config).is_ok());
        config.probe.probe_cidr = "10.0.200.0/30".parse().unwrap();
        let e = check_probe_cidr(&id, &config).unwrap_err();
        assert_eq!(
            e.to_string(),
            "probe.probe_cidr 10.0.200.0/30 overlaps the VPC CIDR 10.0.0.0/16; choose another /30"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_named_and_ends_the_daemon() {
        let mut tasks = Tasks::default();
        tasks.spawn("fallback", async {});
        tasks.spawn("routes", async { panic!("boom") });
        let mut errors = Vec::new();
        while let Some(ended) = tasks.set.join_next_with_id().await {
            errors.extend(tasks.ended(ended).map(|e| e.to_string()));
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("the routes task panicked"),
            "{errors:?}"
        );
    }
}
