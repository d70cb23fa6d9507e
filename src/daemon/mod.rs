//! The daemon: observe → plan → apply → record, in two loops.
//!
//! - The **routes loop** reads the tagged subnets, their route tables and
//!   the source/destination check from EC2, plans with [`crate::plan`], and
//!   applies each action as one API call. It runs every
//!   `routes.reconcile_interval` (±10% jitter); after a failed pass it
//!   retries sooner, backing off 1 s, 2 s, 4 s… up to the interval.
//! - The **heartbeat loop** converges the kernel (sysctls, nftables table,
//!   probe namespace) every `kernel.converge_interval`, sends a probe round
//!   every `heartbeat.interval`, and acts on the verdicts of
//!   [`crate::heartbeat::state`]: reconverge once, then report the instance
//!   Unhealthy to Auto Scaling.
//!
//! - The **peers loop** ([`peers`]) and the **planned-exit watcher**
//!   ([`exit`]) run beside them; [`take`] holds the EC2 reads and writes of
//!   routes they all share, [`log`] the rate limit on repeated errors.
//!
//! Shutdown (SIGTERM, SIGINT) stops the loops and leaves routes, sysctls,
//! rules and the probe namespace in place: the kernel keeps forwarding, and
//! the next daemon adopts it all. Errors in a loop are logged (identical
//! repeats at most once a minute) and retried; they never end the daemon.

pub mod exit;
pub mod log;
pub mod peers;
pub mod take;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, warn};

use self::log::LogThrottle;
use self::peers::PeerShared;
use self::take::{apply, observe};
use crate::aws::autoscaling::AutoScaling;
use crate::aws::ec2::Ec2;
use crate::aws::imds::Imds;
use crate::config::Config;
use crate::config::Failover;
use crate::domain::{EniId, InstanceInfo, RouteTarget};
use crate::domain::{Identity, Ipv4Cidr};
use crate::flow_handoff::FlowHandoff;
use crate::heartbeat::probe::Prober;
use crate::heartbeat::state::{Heartbeat, Phase, Verdict};
use crate::kernel::{self, KernelError, nft, probe_ns, sysctl, tunnel};
use crate::notify::Notifier;
use crate::peers::Peer;
use crate::peers::Status;
use crate::plan::{Action, AddressAction, Observed, Plan, plan, plan_address};
use crate::{AwsError, report};

/// Everything the daemon acts on, built by `main` (or a test).
pub struct Deps {
    pub config: Config,
    pub identity: Identity,
    pub ec2: Ec2,
    pub autoscaling: AutoScaling,
    /// Instance metadata, watched for planned exits.
    pub imds: Imds,
    /// The interface to masquerade out of.
    pub interface: String,
    pub notifier: Notifier,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The probe network overlaps the VPC: probes would be indistinguishable.
    #[error("heartbeat.probe_cidr {probe} overlaps the VPC CIDR {vpc}; choose another /30")]
    ProbeOverlap { probe: Ipv4Cidr, vpc: Ipv4Cidr },
    /// The kernel could not be configured for NAT.
    #[error("cannot configure kernel NAT")]
    Kernel(#[from] KernelError),
}

/// The sources that are NATed: the VPC and the probe network.
pub fn nat_sources(identity: &Identity, config: &Config) -> Vec<Ipv4Cidr> {
    let mut v = identity.vpc_cidrs.clone();
    v.push(config.heartbeat.probe_cidr);
    v
}

/// Check that the probe network does not collide with the VPC.
pub fn check_probe_cidr(identity: &Identity, config: &Config) -> Result<(), StartError> {
    let probe = config.heartbeat.probe_cidr;
    match identity.vpc_cidrs.iter().find(|v| v.overlaps(&probe)) {
        Some(vpc) => Err(StartError::ProbeOverlap { probe, vpc: *vpc }),
        None => Ok(()),
    }
}

/// Whether this NAT takes part in flow hand-off (see [`crate::flow_handoff`]).
pub fn flow_handoff_on(config: &Config) -> bool {
    config.peers.failover == Failover::Peer && !config.peers.flow_handoff.is_zero()
}

/// Converge every kernel setting once. Optional settings that cannot be
/// made (some sysctls, the flow hand-off tunnel) are returned for a warning.
pub async fn converge_kernel(
    identity: &Identity,
    config: &Config,
    interface: &str,
) -> Result<Vec<KernelError>, KernelError> {
    // Rules first: loading them loads conntrack, whose sysctls come next.
    let ruleset = nft::render(interface, &nat_sources(identity, config))?;
    kernel::apply_ruleset(&ruleset).await?;
    let mut skipped = sysctl::apply(&sysctl::desired(interface, config.kernel.conntrack_max))?;
    probe_ns::ensure(
        &config.heartbeat.probe_namespace,
        &config.heartbeat.probe_cidr,
    )
    .await?;
    // Peers hand flows to this NAT whether or not it hands any itself.
    if flow_handoff_on(config)
        && let Err(e) =
            tunnel::ensure_device(identity.private_ip, config.peers.tunnel_port(), interface).await
    {
        skipped.push(e);
    }
    Ok(skipped)
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// Run until `shutdown` completes. Returns an error only if start-up fails.
pub async fn run(deps: Deps, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let span = info_span!(
        "hanat",
        instance = %deps.identity.instance_id,
        az = %deps.identity.availability_zone
    );
    run_inner(deps, shutdown).instrument(span).await
}

async fn run_inner(deps: Deps, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let Deps {
        config,
        identity,
        ec2,
        autoscaling,
        imds,
        interface,
        notifier,
    } = deps;
    check_probe_cidr(&identity, &config)?;
    info!(
        vpc = %identity.vpc_id, eni = %identity.eni, interface = %interface,
        vpc_cidrs = ?identity.vpc_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "starting"
    );
    for skipped in converge_kernel(&identity, &config, &interface).await? {
        warn!(error = %report(&skipped), "optional kernel setting not made");
    }
    info!(namespace = %config.heartbeat.probe_namespace, "kernel NAT configured");
    notifier.ready("kernel NAT configured; taking over routes");

    let identity = Arc::new(identity);
    let config = Arc::new(config);
    let started = Instant::now();
    let last_beat = Arc::new(AtomicU64::new(0));

    let (status_tx, status_rx) = watch::channel(Status::Starting);
    let status_tx = Arc::new(status_tx);
    let planned_exit = {
        let (ec2, asg, me, config, status) = (
            ec2.clone(),
            autoscaling.clone(),
            identity.clone(),
            config.clone(),
            status_tx.clone(),
        );
        tokio::spawn(
            async move {
                let reason = exit::watch_metadata(&imds, config.exit.poll_interval).await;
                exit::hand_off(reason, &ec2, &asg, &me, &config, &status).await;
            }
            .instrument(info_span!("exit")),
        )
    };
    tokio::spawn(
        peers::check_fallbacks(ec2.clone(), identity.clone(), config.clone())
            .instrument(info_span!("fallback")),
    );
    let mut flows = FlowHandoff::new(
        &interface,
        config.peers.tunnel_port(),
        &identity.vpc_cidrs,
        match flow_handoff_on(&config) {
            true => config.peers.flow_handoff,
            false => Duration::ZERO,
        },
    );
    flows.resume(Instant::now()).await;
    let peers = Arc::new(Mutex::new(PeerShared {
        flows: Arc::new(tokio::sync::Mutex::new(flows)),
        ..PeerShared::default()
    }));
    let failover = match config.peers.failover {
        Failover::Peer => Some(tokio::spawn(
            peers::peers_loop(
                ec2.clone(),
                autoscaling.clone(),
                identity.clone(),
                config.clone(),
                status_rx.clone(),
                peers.clone(),
                started,
            )
            .instrument(info_span!("peers")),
        )),
        Failover::None => None,
    };
    let (ec2_for_stop, asg_for_stop) = (ec2.clone(), autoscaling.clone());
    let routes = tokio::spawn(
        routes_loop(
            ec2,
            autoscaling.clone(),
            identity.clone(),
            config.clone(),
            status_rx,
            peers,
            started,
        )
        .instrument(info_span!("routes")),
    );
    let heartbeat = tokio::spawn(
        heartbeat_loop(
            autoscaling,
            identity.clone(),
            config.clone(),
            interface,
            started,
            last_beat.clone(),
            status_tx.clone(),
        )
        .instrument(info_span!("heartbeat")),
    );

    let watchdog_every = notifier.watchdog().map(|w| w / 2);
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    // The heartbeat loop must have made progress recently for us to tell
    // systemd we are alive: a wedged loop gets the daemon restarted.
    let stale_after = (config.heartbeat.interval * 3 + config.heartbeat.timeout)
        .max(watchdog_every.unwrap_or_default())
        .max(config.kernel.converge_interval)
        + Duration::from_secs(10);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                let beat = Duration::from_millis(last_beat.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(beat) < stale_after {
                    notifier.ping();
                } else {
                    warn!("heartbeat loop is stuck; withholding watchdog ping");
                }
            }
        }
    }
    planned_exit.abort();
    if config.exit.handoff_on_stop && *status_tx.borrow() != Status::Exiting {
        notifier.status("handing routes to a peer before stopping");
        exit::hand_off(
            exit::Reason::Stop,
            &ec2_for_stop,
            &asg_for_stop,
            &identity,
            &config,
            &status_tx,
        )
        .await;
    }
    notifier.stopping();
    routes.abort();
    heartbeat.abort();
    if let Some(f) = failover {
        f.abort();
    }
    info!("stopping; routes, rules and sysctls stay in place");
    Ok(())
}

/// Keep only what this NAT may do now: nothing but the source/destination
/// check until its own forwarding is proven (`Ok`); and with
/// `failback = drain:D`, routes held by a running NAT (`holders`) or a
/// fallback NAT Gateway only `D` after that.
fn gate(mut plan: Plan, status: Status, drain_left: bool, holders: &[EniId]) -> (Plan, usize) {
    let before = plan.actions.len();
    plan.actions.retain(|a| match a {
        Action::DisableSourceDestCheck { .. } => true,
        _ if status != Status::Ok => false,
        Action::ReplaceRoute {
            from: RouteTarget::Eni(e),
            blackhole: false,
            ..
        } if drain_left => !holders.contains(e),
        Action::ReplaceRoute {
            from: RouteTarget::NatGateway(_),
            blackhole: false,
            ..
        } => !drain_left,
        _ => true,
    });
    let held = before - plan.actions.len();
    (plan, held)
}

/// The instance a route points at (by interface or instance id), if EC2
/// says it is pending or running.
async fn running_instance(
    ec2: &Ec2,
    target: &RouteTarget,
) -> Result<Option<InstanceInfo>, AwsError> {
    let id = match target {
        RouteTarget::Instance(i) => i.clone(),
        RouteTarget::Eni(e) => match ec2.eni_owner(e).await? {
            Some(i) => i,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let infos = ec2.instances(std::slice::from_ref(&id)).await?;
    Ok(infos.into_iter().find(|i| i.id == id && i.alive))
}

/// Before `plan` takes routes from NATs that may still forward, hand the
/// connections they translate back to them (see [`crate::flow_handoff`]).
/// A holder the peer list does not have (it may not be loaded yet, this
/// daemon having just started) is looked up in EC2. Failures are logged:
/// the routes move regardless.
async fn hand_back(
    ec2: &Ec2,
    peers: &Mutex<PeerShared>,
    flows: &crate::flow_handoff::Shared,
    observed: &Observed,
    plan: &Plan,
    now: Duration,
) {
    if !flows.lock().await.enabled() {
        return;
    }
    let (mut forwarding, known): (Vec<Peer>, Vec<RouteTarget>) = peers
        .lock()
        .map(|s| {
            let forwarding = s
                .peers
                .iter()
                .filter(|p| s.may_forward(p, now))
                .cloned()
                .collect();
            let known = s.peers.iter().flat_map(Peer::route_targets).collect();
            (forwarding, known)
        })
        .unwrap_or_default();
    for action in &plan.actions {
        if let Action::ReplaceRoute {
            from,
            blackhole: false,
            ..
        } = action
            && matches!(from, RouteTarget::Eni(_) | RouteTarget::Instance(_))
            && !known.contains(from)
        {
            match running_instance(ec2, from).await {
                Ok(Some(i)) => {
                    if let (Some(eni), Some(ip)) = (i.eni, i.ip) {
                        forwarding.push(Peer {
                            instance: i.id,
                            az: i.az,
                            eni,
                            ip,
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(holder = %from, error = %e, "cannot look up the route's holder; its connections will not be handed back to it")
                }
            }
        }
    }
    for p in &forwarding {
        flows.lock().await.before_taking(p, observed, plan).await;
    }
}

/// Keep the AZ's Elastic IP on our interface: take it when it is free or
/// its holder is gone, never from a running instance.
pub async fn claim_address(
    ec2: &Ec2,
    identity: &Identity,
    tag_key: &str,
    group: &str,
) -> Result<AddressAction, AwsError> {
    let pool = ec2.addresses_tagged(tag_key, group).await?;
    let mut alive = HashMap::new();
    for a in pool.iter().take(1) {
        let holder = match (&a.instance, &a.eni) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(e)) if *e != identity.eni => ec2.eni_owner(e).await?,
            _ => None,
        };
        let is_alive = match holder {
            Some(h) if h == identity.instance_id => true,
            Some(h) => running_instance(ec2, &RouteTarget::Instance(h))
                .await?
                .is_some(),
            None => false,
        };
        alive.insert(a.allocation_id.clone(), is_alive);
    }
    let action = plan_address(identity, &pool, |a| {
        alive.get(&a.allocation_id).copied().unwrap_or(true)
    });
    if let AddressAction::Associate {
        allocation_id,
        reassociate,
    } = &action
    {
        ec2.associate_address(allocation_id, &identity.eni, *reassociate)
            .await?;
        let ip = pool
            .first()
            .map(|a| a.public_ip.clone())
            .unwrap_or_default();
        info!(allocation = %allocation_id, public_ip = %ip, eni = %identity.eni, reassociate, "claimed the AZ's Elastic IP");
    }
    Ok(action)
}

async fn routes_loop(
    ec2: Ec2,
    asg: AutoScaling,
    identity: Arc<Identity>,
    config: Arc<Config>,
    mut status: watch::Receiver<Status>,
    peers: Arc<Mutex<PeerShared>>,
    started: Instant,
) {
    let interval = config.routes.reconcile_interval;
    let flows = peers.lock().map(|p| p.flows.clone()).unwrap_or_default();
    let mut throttle = LogThrottle::default();
    let mut backoff = Duration::from_secs(1);
    let mut last_owned: Option<Vec<String>> = None;
    let mut healthy_since: Option<Instant> = None;
    // This instance's Auto Scaling group: None until known.
    let mut group: Option<Option<String>> = None;
    loop {
        if config.eip.claim {
            if group.is_none() {
                match asg.group_of(&identity.instance_id).await {
                    Ok(g) => {
                        if g.is_none() {
                            warn!("not in an Auto Scaling group: no Elastic IP to claim");
                        }
                        group = Some(g);
                    }
                    Err(e) => {
                        if let Some(n) = throttle.check("eip", &e.to_string(), Instant::now()) {
                            warn!(suppressed = n, error = %e, "cannot find this instance's group; will retry");
                        }
                    }
                }
            }
            if let Some(Some(g)) = &group {
                let msg = match claim_address(&ec2, &identity, &config.eip.tag_key, g).await {
                    Ok(AddressAction::Keep | AddressAction::Associate { .. }) => None,
                    Ok(AddressAction::NoAddress) => Some(format!(
                        "no Elastic IP tagged {}={g}; serving with the instance's own public address",
                        config.eip.tag_key
                    )),
                    Ok(AddressAction::HeldByHealthy {
                        allocation_id,
                        holder,
                    }) => Some(format!(
                        "Elastic IP {allocation_id} is held by running {holder}; not taking it, serving with the instance's own public address"
                    )),
                    Err(e) => Some(format!("cannot claim the Elastic IP: {e}")),
                };
                match msg {
                    Some(m) => {
                        if let Some(n) = throttle.check("eip", &m, Instant::now()) {
                            warn!(suppressed = n, "{m}");
                        }
                    }
                    None => throttle.clear("eip"),
                }
            }
        }
        let now_status = *status.borrow_and_update();
        match now_status {
            Status::Ok => {
                healthy_since.get_or_insert_with(Instant::now);
            }
            _ => healthy_since = None,
        }
        let drain_left = healthy_since.is_some_and(|t| t.elapsed() < config.peers.failback);
        let result = async {
            let observed = observe(&ec2, &identity, &config).await?;
            let plan = plan(&identity, &observed);
            for f in &plan.findings {
                if let Some(n) = throttle.check("finding", &f.to_string(), Instant::now()) {
                    warn!(suppressed = n, "{f}");
                }
            }
            let owned: Vec<String> = plan.owned.iter().map(ToString::to_string).collect();
            if last_owned.as_ref() != Some(&owned) {
                info!(route_tables = ?owned, "route tables in scope");
                last_owned = Some(owned);
            }
            let (live, dead) = peers
                .lock()
                .map(|p| {
                    let now = started.elapsed();
                    (
                        p.live_enis(now, config.peers.dead_after),
                        p.dead_targets(now, config.peers.dead_after),
                    )
                })
                .unwrap_or_default();
            // This NAT cannot serve its AZ and no peer is healthy to adopt
            // it: the AZ's fallback NAT Gateway stands in, if there is one.
            if matches!(now_status, Status::Failing | Status::Exiting) && live.is_empty() {
                let az = &identity.availability_zone;
                let moved =
                    peers::fall_back_with(&ec2, &identity, &config, az, &dead, Some(&observed))
                        .await?;
                if let Some(n) = moved.filter(|n| *n > 0) {
                    warn!(routes = n, status = %now_status, "no healthy peer to take this AZ: pointed its routes at the fallback NAT Gateway");
                }
            }
            // Draining: a route held by a running NAT stays with it for the
            // drain. Heartbeats say which peers are alive, but a NAT that
            // just started may not have heard them yet: ask EC2 about any
            // holder they do not vouch for (only while draining).
            let mut holders = live;
            if drain_left && now_status == Status::Ok {
                for action in &plan.actions {
                    if let Action::ReplaceRoute {
                        from: RouteTarget::Eni(e),
                        blackhole: false,
                        ..
                    } = action
                        && !holders.contains(e)
                        && !dead.contains(&RouteTarget::Eni(e.clone()))
                        && running_instance(&ec2, &RouteTarget::Eni(e.clone()))
                            .await?
                            .is_some()
                    {
                        holders.push(e.clone());
                    }
                }
            }
            let (plan, held) = gate(plan, now_status, drain_left, &holders);
            if held > 0 {
                let why = if now_status == Status::Ok {
                    "draining the adopter's connections before taking routes back"
                } else {
                    "waiting for this NAT's own forwarding probe to pass before taking routes"
                };
                if let Some(n) = throttle.check("held", why, Instant::now()) {
                    info!(suppressed = n, held, status = %now_status, "{why}");
                }
            }
            // Taking routes back from a NAT that still forwards (the
            // adopter, even one leaving itself): the connections it
            // translates go on through it.
            hand_back(&ec2, &peers, &flows, &observed, &plan, started.elapsed()).await;
            apply(&ec2, &identity, &plan).await
        }
        .await;
        let wait = match result {
            Ok(()) => {
                throttle.clear("aws");
                backoff = Duration::from_secs(1);
                let wait = jittered(interval);
                // Come back when the drain ends rather than a whole interval later.
                match healthy_since {
                    Some(t) if drain_left => wait
                        .min((t + config.peers.failback).saturating_duration_since(Instant::now())),
                    _ => wait,
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if let Some(n) = throttle.check("aws", &msg, Instant::now()) {
                    error!(suppressed = n, error = %msg, retry_in = ?backoff.min(interval), "route reconcile failed");
                }
                let wait = backoff.min(interval);
                backoff = (backoff * 2).min(interval);
                wait
            }
        };
        // A change of our own forwarding verdict (first good probe,
        // recovery) is acted on at once.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = status.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

async fn heartbeat_loop(
    autoscaling: AutoScaling,
    identity: Arc<Identity>,
    config: Arc<Config>,
    interface: String,
    started: Instant,
    last_beat: Arc<AtomicU64>,
    status: Arc<watch::Sender<Status>>,
) {
    let hb_cfg = &config.heartbeat;
    let prober = Prober {
        netns: Some(probe_ns::netns_path(&hb_cfg.probe_namespace)),
        targets: hb_cfg.targets.clone(),
        timeout: hb_cfg.timeout,
    };
    let mut state = Heartbeat::new(
        hb_cfg.fall,
        hb_cfg.rise,
        hb_cfg.grace_period,
        Duration::ZERO,
    );
    let mut throttle = LogThrottle::default();
    let mut next_converge = Instant::now() + config.kernel.converge_interval;
    let mut next_round = Instant::now();
    loop {
        tokio::time::sleep_until(next_round).await;
        // A failed round is confirmed (or cleared) at once instead of a whole
        // interval later: failing rounds last `timeout` each, so `fall`
        // failures take about fall × timeout, not fall × interval.
        next_round = Instant::now() + hb_cfg.interval;
        last_beat.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if Instant::now() >= next_converge {
            converge_logged(&identity, &config, &interface, &mut throttle).await;
            next_converge = Instant::now() + config.kernel.converge_interval;
        }
        let round = prober.round().await;
        let ok = round.ok();
        if !ok && state.consecutive_failures() + 1 < hb_cfg.fall {
            next_round = Instant::now() + Duration::from_millis(50);
        }
        if !ok {
            if let Some(n) = throttle.check("probe", &round.failures(), Instant::now()) {
                warn!(
                    suppressed = n,
                    consecutive = state.consecutive_failures() + 1,
                    failures = %round.failures(),
                    "probe round failed"
                );
            }
        } else {
            throttle.clear("probe");
        }
        let verdict = state.observe(ok, started.elapsed());
        let said = match state.phase() {
            Phase::Starting => Status::Starting,
            Phase::Healthy => Status::Ok,
            Phase::Reconverged | Phase::Unhealthy => Status::Failing,
        };
        // Peers hear it at once: a failing NAT says so before it reconverges
        // and long before Auto Scaling replaces it.
        let was = *status.borrow();
        status.send_if_modified(|s| {
            let changed = *s != said && *s != Status::Exiting;
            if changed {
                *s = said;
            }
            changed
        });
        if was == Status::Starting && said == Status::Ok {
            info!("forwarding verified: probes pass through this NAT");
        }
        match verdict {
            Verdict::Steady => {}
            Verdict::Recovered => info!("forwarding recovered"),
            Verdict::Reconverge => {
                warn!(
                    fall = hb_cfg.fall,
                    "forwarding probe failing; re-applying kernel NAT config"
                );
                converge_logged(&identity, &config, &interface, &mut throttle).await;
                next_converge = Instant::now() + config.kernel.converge_interval;
            }
            Verdict::MarkUnhealthy => {
                error!(
                    failures = %round.failures(),
                    "packets are not flowing through this NAT even after reconverging; marking instance Unhealthy"
                );
                match autoscaling.set_unhealthy(&identity.instance_id).await {
                    Ok(()) => {
                        state.reported_unhealthy();
                        info!("instance reported Unhealthy to Auto Scaling; it will be replaced");
                    }
                    Err(e) => error!(error = %e, "could not report Unhealthy; will retry"),
                }
            }
        }
    }
}

async fn converge_logged(
    identity: &Identity,
    config: &Config,
    interface: &str,
    throttle: &mut LogThrottle,
) {
    match converge_kernel(identity, config, interface).await {
        Ok(skipped) => {
            throttle.clear("kernel");
            for s in skipped {
                if let Some(n) = throttle.check("sysctl", &s.to_string(), Instant::now()) {
                    warn!(suppressed = n, error = %report(&s), "optional kernel setting not made");
                }
            }
        }
        Err(e) => {
            if let Some(n) = throttle.check("kernel", &report(&e), Instant::now()) {
                error!(suppressed = n, error = %report(&e), "kernel converge failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_wait_for_own_forwarding_and_for_the_drain() {
        use crate::domain::RouteTableId;
        let rt = || RouteTableId("rtb-1".into());
        let from_peer = Action::ReplaceRoute {
            route_table: rt(),
            from: RouteTarget::Eni(EniId("eni-peer".into())),
            blackhole: false,
        };
        let from_dead = Action::ReplaceRoute {
            route_table: rt(),
            from: RouteTarget::Eni(EniId("eni-dead".into())),
            blackhole: false,
        };
        let create = Action::CreateRoute { route_table: rt() };
        let sdc = Action::DisableSourceDestCheck {
            eni: EniId("eni-me".into()),
        };
        let plan = Plan {
            owned: vec![rt()],
            actions: vec![
                from_peer.clone(),
                from_dead.clone(),
                create.clone(),
                sdc.clone(),
            ],
            findings: vec![],
        };
        let from_gateway = Action::ReplaceRoute {
            route_table: rt(),
            from: RouteTarget::NatGateway("nat-1".into()),
            blackhole: false,
        };
        let plan = Plan {
            actions: [plan.actions, vec![from_gateway.clone()]].concat(),
            ..plan
        };
        let live = [EniId("eni-peer".into())];
        // Not proven yet: only the source/destination check.
        for status in [Status::Starting, Status::Failing, Status::Exiting] {
            let (p, held) = gate(plan.clone(), status, false, &live);
            assert_eq!(p.actions, vec![sdc.clone()], "{status}");
            assert_eq!(held, 4);
        }
        // Proven, draining: everything but the routes a live peer or the
        // fallback NAT Gateway holds.
        let (p, held) = gate(plan.clone(), Status::Ok, true, &live);
        assert_eq!(
            p.actions,
            vec![from_dead.clone(), create.clone(), sdc.clone()]
        );
        assert_eq!(held, 2);
        // Proven, drain over (or immediate failback): everything.
        let (p, held) = gate(plan.clone(), Status::Ok, false, &live);
        assert_eq!(p.actions, plan.actions);
        assert_eq!(held, 0);
    }

    #[test]
    fn probe_cidr_must_not_overlap_vpc() {
        let id = crate::plan::test_identity("i-1", "eni-1", "vpc-1");
        let mut config = Config::default();
        assert!(check_probe_cidr(&id, &config).is_ok());
        config.heartbeat.probe_cidr = "10.0.200.0/30".parse().unwrap();
        let e = check_probe_cidr(&id, &config).unwrap_err();
        assert_eq!(
            e.to_string(),
            "heartbeat.probe_cidr 10.0.200.0/30 overlaps the VPC CIDR 10.0.0.0/16; choose another /30"
        );
    }
}
