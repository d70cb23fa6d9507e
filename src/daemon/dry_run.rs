//! `hanat plan`: what `hanat run` would change on this instance — routes,
//! the source/destination check, sysctls, the nftables tables, the probe
//! namespace — read from EC2 and the kernel, changing nothing; and whether
//! the heartbeat key can be read.

use super::converge::conntrack;
use super::take::observe;
use crate::aws::AwsError;
use crate::aws::cloud::Cloud;
use crate::config::{Config, Failover, MetricSet, status_check_id};
use crate::decide::auth::Key;
use crate::decide::routes::plan;
use crate::domain::Identity;
use crate::kernel::{self, KernelError, counters, nft, probe_ns, sysctl};
use crate::report;

/// What `hanat run` would do, as lines for a person, and how many of them
/// are changes.
#[derive(Debug, Default)]
pub struct DryRun {
    pub lines: Vec<String>,
    pub changes: usize,
}

impl DryRun {
    fn say(&mut self, line: String) {
        self.lines.push(line);
    }

    fn change(&mut self, line: String) {
        self.lines.push(line);
        self.changes += 1;
    }
}

/// Read EC2 and the kernel and say what would change. `interface`: the NAT
/// interface, or why it could not be found (said as a note).
pub async fn dry_run(
    cloud: &dyn Cloud,
    identity: &Identity,
    config: &Config,
    interface: Result<String, KernelError>,
) -> Result<DryRun, AwsError> {
    let observed = observe(cloud, identity, config).await?;
    let plan = plan(identity, &observed);
    let mut out = DryRun::default();
    let owned: Vec<String> = plan.owned.iter().map(ToString::to_string).collect();
    out.say(format!(
        "route tables in scope: {}",
        if owned.is_empty() {
            "none".into()
        } else {
            owned.join(", ")
        }
    ));
    for f in &plan.findings {
        out.say(format!("note: {f}"));
    }
    for a in &plan.actions {
        out.change(format!("would {a}"));
    }
    peer_key(&mut out, cloud, config).await;
    status_check(&mut out, config);
    addresses(&mut out, cloud, identity, config).await?;
    cloudwatch(&mut out, config);
    kernel(&mut out, config, interface).await;
    Ok(out)
}

async fn kernel(out: &mut DryRun, config: &Config, interface: Result<String, KernelError>) {
    match interface {
        Ok(iface) => {
            out.say(format!("NAT interface: {iface}"));
            for s in sysctl::desired(&iface, &conntrack(config)) {
                let now = sysctl::read(&s.key).unwrap_or_else(|_| "unreadable".into());
                if now != s.value {
                    out.change(format!("would set {} = {} (now {now})", s.key, s.value));
                }
            }
        }
        Err(e) => out.say(format!("note: {}", report(&e))),
    }
    match nft::table_exists().await {
        Ok(true) => out.say(format!(
            "would replace nftables table ip {} (atomically)",
            nft::TABLE
        )),
        Ok(false) => out.change(format!("would create nftables table ip {}", nft::TABLE)),
        Err(e) => out.say(format!("note: {}", report(&e))),
    }
    if let Ok(false) = kernel::table_exists(counters::TABLE).await {
        out.change(format!(
            "would create nftables table ip {} (traffic counters for the metrics)",
            counters::TABLE
        ));
    }
    let probe = &config.probe.probe_namespace;
    match probe_ns::handle(probe) {
        Ok(probe_ns::Handle::Live) => {}
        Ok(probe_ns::Handle::Missing) => {
            out.change(format!("would create probe namespace {probe}"))
        }
        // Not counted as a change: under systemd this is what a healthy
        // daemon looks like from a shell, and every start makes a new one.
        Ok(probe_ns::Handle::Stale) => out.say(format!(
            "note: {} is not a live namespace from here: a daemon under systemd keeps its probe \
             namespace in its own mount namespace, out of this shell's sight; `hanat run` \
             started here would replace the file with a new namespace",
            probe_ns::netns_path(probe).display()
        )),
        Err(e) => out.say(format!("note: {}", report(&e))),
    }
}

/// The outside witness: which application status check would watch this
/// NAT (a note: associating again is a no-op on EC2's side).
fn status_check(out: &mut DryRun, config: &Config) {
    let check = config
        .peers
        .status_check
        .as_deref()
        .and_then(status_check_id);
    out.say(match (check, config.metrics.listen) {
        (Some(id), Some(listen)) => format!(
            "would put this instance under application status check {id} (GET /health on {listen})"
        ),
        _ => "note: peers.status_check is not set: a NAT that freezes while EC2 says it runs is \
              covered only once EC2's own status checks call it impaired"
            .into(),
    });
}

/// With `snat.addresses` above 1: the secondary private addresses the
/// daemon would assign, and what it would translate to.
async fn addresses(
    out: &mut DryRun,
    cloud: &dyn Cloud,
    identity: &Identity,
    config: &Config,
) -> Result<(), AwsError> {
    let wanted = usize::from(config.snat.addresses);
    if wanted <= 1 {
        return Ok(());
    }
    let have = cloud.interface_addresses(&identity.eni).await?.len().max(1);
    if have < wanted {
        out.change(format!(
            "would assign {} secondary private address(es) to {} (it has {})",
            wanted - have,
            identity.eni,
            have - 1
        ));
    }
    out.say(format!(
        "would spread new connections over {wanted} private addresses, each with an Elastic IP tagged {}=<this instance's group>",
        config.eip.tag_key
    ));
    Ok(())
}

/// What would go to CloudWatch (a note: publishing changes nothing).
fn cloudwatch(out: &mut DryRun, config: &Config) {
    let cw = &config.cloudwatch;
    if !cw.enabled {
        return;
    }
    let what = match cw.metrics {
        MetricSet::All => {
            "the NAT Gateway's metrics, VerdictOk, ConntrackFillPercent and ForwardingNat"
        }
        MetricSet::Alarms => {
            "what the alarms watch (ErrorPortAllocation, ConntrackFillPercent, ForwardingNat)"
        }
    };
    out.say(format!(
        "would publish {what} to CloudWatch namespace {} every {}",
        cw.namespace,
        crate::domain::human(cw.interval)
    ));
}

/// Whether peer failover would have its heartbeat key (a note, never a
/// change: reading it changes nothing).
async fn peer_key(out: &mut DryRun, cloud: &dyn Cloud, config: &Config) {
    if config.peers.failover != Failover::Peer {
        return;
    }
    let Some(secret) = &config.peers.key_secret else {
        out.say(match config.peers.accept_unauthenticated {
            true => {
                "note: peers.key_secret is not set: heartbeats would be unauthenticated (hanat/1)"
                    .into()
            }
            false => "note: peers.key_secret is not set: peer failover would be off".into(),
        });
        return;
    };
    let wait = "peer failover would wait for it";
    out.say(match cloud.secret(secret, "AWSCURRENT").await {
        Ok(Some(value)) => match Key::new(&value) {
            Ok(key) => format!("heartbeat key: readable from {secret} (key {})", key.id()),
            Err(e) => format!("note: the heartbeat key in {secret} {e}: {wait}"),
        },
        Ok(None) => format!("note: {secret} has no current value (does it exist?): {wait}"),
        Err(e) => format!("note: cannot read the heartbeat key: {e}: {wait}"),
    });
}
