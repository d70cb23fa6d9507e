//! Converging the kernel: the NAT table, the sysctls, the probe namespace
//! and the flow hand-off device, all idempotent (see [`crate::kernel`]).
//! Run once at start (a failure there is fatal: exit 71) and then by the
//! probe loop every `kernel.converge_interval` and when probes fail.

use std::net::Ipv4Addr;

use tokio::time::Instant;
use tracing::{error, warn};

use super::log::LogThrottle;
use crate::config::{Config, Conntrack, Failover};
use crate::domain::{Identity, Ipv4Cidr};
use crate::kernel::{self, KernelError, counters, link, nft, probe_ns, sysctl, tunnel};
use crate::report;

/// The sources that are NATed: the VPC and the probe network.
pub fn nat_sources(identity: &Identity, config: &Config) -> Vec<Ipv4Cidr> {
    let mut v = identity.vpc_cidrs.clone();
    v.push(config.probe.probe_cidr);
    v
}

/// Whether this NAT takes part in flow hand-off (see [`super::flows`]).
pub fn flow_handoff_on(config: &Config) -> bool {
    config.peers.failover == Failover::Peer && !config.peers.flow_handoff.is_zero()
}

/// Conntrack's settings for this instance (`auto` sizes from its memory;
/// unreadable memory counts as the smallest instance, 512 MiB); with
/// replication on, every entry reports its changes.
pub fn conntrack(config: &Config) -> Conntrack {
    Conntrack {
        events: config.peers.failover == Failover::Peer && config.replication.enabled,
        ..config
            .kernel
            .conntrack(sysctl::memory().unwrap_or(512 << 20))
    }
}

/// What one converge did besides succeeding.
#[derive(Debug, Default)]
pub struct Converged {
    /// Optional settings that could not be made (for a warning).
    pub skipped: Vec<KernelError>,
    /// What was found not as this daemon sets it, and set again: a
    /// secondary address missing, the NAT table changed or gone, a sysctl
    /// at another value, the probe namespace gone. On the first converge
    /// that is everything; later, with the same translation addresses, it
    /// is drift.
    pub drifted: Vec<String>,
}

/// Converge every kernel setting once.
///
/// `snat` are the private addresses to translate new connections to, the
/// primary one first ([`super::ctx::Ctx::snat`]); the secondary ones are
/// put on the interface first, as EC2's own agents do, so the replies
/// addressed to them are taken in.
pub async fn converge_kernel(
    identity: &Identity,
    config: &Config,
    interface: &str,
    snat: &[Ipv4Addr],
) -> Result<Converged, KernelError> {
    let mut drifted: Vec<String> = link::ensure_addresses(interface, identity.private_ip, snat)
        .await?
        .iter()
        .map(|a| format!("address {a} on {interface}"))
        .collect();
    // Rules first: loading them loads conntrack, whose sysctls come next.
    let translation = nft::Translation {
        addresses: snat.to_vec(),
        ports: config.snat.ports,
    };
    let ruleset = nft::render(
        interface,
        &nat_sources(identity, config),
        &translation,
        &guard(identity, config),
    )?;
    let before = nft::listing().await;
    kernel::apply_ruleset(&ruleset).await?;
    if before.is_none() || before != nft::listing().await {
        drifted.push(format!("nftables table ip {}", nft::TABLE));
    }
    let sysctls = sysctl::apply(&sysctl::desired(interface, &conntrack(config)))?;
    let mut skipped = sysctls.skipped;
    drifted.extend(sysctls.set.into_iter().map(|s| format!("sysctl {s}")));
    // The metrics' traffic counters: optional, never in forwarding's way.
    let counting = counters::render(interface, &identity.vpc_cidrs)?;
    if let Err(e) = kernel::apply_ruleset(&counting).await {
        skipped.push(e);
    }
    let namespace = &config.probe.probe_namespace;
    if probe_ns::ensure(namespace, &config.probe.probe_cidr).await? {
        drifted.push(format!("probe namespace {namespace}"));
    }
    // Peers hand flows to this NAT whether or not it hands any itself.
    if flow_handoff_on(config)
        && let Err(e) =
            tunnel::ensure_device(identity.private_ip, config.peers.tunnel_port(), interface).await
    {
        skipped.push(e);
    }
    Ok(Converged { skipped, drifted })
}

/// What hanat's input filter guards: the endpoints (for `metrics.allow`)
/// and, with peer failover, the heartbeat port.
pub fn guard(identity: &Identity, config: &Config) -> nft::Guard {
    nft::Guard {
        endpoint: config
            .metrics
            .listen
            .map(|l| (l.port(), config.metrics.allowed(&identity.vpc_cidrs))),
        heartbeat: (config.peers.failover == crate::config::Failover::Peer)
            .then_some(config.peers.port),
    }
}

/// [`converge_kernel`], with what went wrong logged (repeats throttled)
/// and returned; on success, what had drifted.
pub async fn converge_logged(
    identity: &Identity,
    config: &Config,
    interface: &str,
    snat: &[Ipv4Addr],
    throttle: &mut LogThrottle,
) -> Result<Vec<String>, String> {
    match converge_kernel(identity, config, interface, snat).await {
        Ok(done) => {
            throttle.clear("kernel");
            for s in done.skipped {
                if let Some(n) = throttle.check("sysctl", &s.to_string(), Instant::now()) {
                    warn!(suppressed = n, error = %report(&s), "optional kernel setting not made");
                }
            }
            Ok(done.drifted)
        }
        Err(e) => {
            if let Some(n) = throttle.check("kernel", &report(&e), Instant::now()) {
                error!(suppressed = n, error = %report(&e), "kernel converge failed; will retry");
            }
            Err(report(&e))
        }
    }
}
