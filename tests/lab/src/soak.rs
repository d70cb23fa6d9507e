//! `hanat-lab soak`: the lab for a long time with the internet path made
//! unkind, counting what a false alarm would move: route changes,
//! Unhealthy reports, verdict flips. Faster failover defaults ship only
//! when this shows none (docs/benchmarks.md).
//!
//! The unkindness, all at once and for the whole run:
//! - random loss on every NAT's uplink (its `eth0`, both ways: the
//!   internet path, and the heartbeats between NATs with it), by an
//!   nftables table of the lab's own in the NAT's namespace;
//! - delay jitter on every NAT's uplink, out of the NAT (as `netem` on
//!   its `eth0` would: 0–200 ms per frame, frames may overtake one
//!   another), by a delay line ([`DelayLine`]) between the NAT's veth and
//!   its subnet's bridge;
//! - one probe target black-holed (the internet drops what is sent to it)
//!   for `blackhole_for` every `blackhole_every` (the second: the
//!   private hosts' requests go to the first);
//! - the AWS API throttled for `throttle_for` every `throttle_every`.
//!
//! This machine's kernel has neither `sch_netem` nor nftables' `queue`,
//! the kernel's ways to hold a packet back at random: the delay line is a
//! small user-space program on packet sockets (`delay_line.py`), the
//! frames themselves still the kernel's.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::api::{self, Fault, Rule};
use crate::lab::{Lab, LabOptions, SERVERS};

/// What a soak does, besides the lab's own settings.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub lab: LabOptions,
    /// How long the unkind internet lasts.
    pub duration: Duration,
    /// Packets dropped at random on each NAT's uplink, in percent.
    pub loss_percent: u32,
    /// Frames leaving each NAT are held back `delay` ± `jitter`.
    pub delay: Duration,
    pub jitter: Duration,
    pub blackhole_every: Duration,
    pub blackhole_for: Duration,
    pub throttle_every: Duration,
    pub throttle_for: Duration,
    /// One request per private host this often.
    pub every: Duration,
}

impl SoakOptions {
    /// The soak: 2 % loss, 0–200 ms delay, a target black-holed for 3 minutes in
    /// every 6, the API throttled for a minute in every 10.
    pub fn new(lab: LabOptions, duration: Duration) -> Self {
        SoakOptions {
            lab,
            duration,
            loss_percent: 2,
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(100),
            blackhole_every: Duration::from_secs(360),
            blackhole_for: Duration::from_secs(180),
            throttle_every: Duration::from_secs(600),
            throttle_for: Duration::from_secs(60),
            every: Duration::from_millis(200),
        }
    }
}

/// What a soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub duration: Duration,
    /// Route changes of the private route tables, with when (s from start).
    pub route_changes: Vec<(u64, String)>,
    /// `SetInstanceHealth` calls (a NAT reporting itself Unhealthy).
    pub unhealthy_reports: usize,
    /// A NAT saying `failing` (its probe's verdict flipped).
    pub verdict_flips: usize,
    /// Probe rounds in which no target answered (below `fall`: no flip).
    pub failed_rounds: usize,
    /// Probes sent and failed (no answer), over every NAT.
    pub probes: (u64, u64),
    /// A peer heard again after a silence longer than `suspect_after`.
    pub suspicions: usize,
    /// NATs replaced during the run.
    pub replaced: usize,
    /// Per AZ: requests sent and lost.
    pub requests: Vec<(usize, usize)>,
    /// API calls per NAT per minute over the whole run, and how many
    /// were answered with throttling.
    pub api_calls_per_nat_min: f64,
    pub throttled: usize,
    /// Calls by action, most first.
    pub by_action: Vec<(String, usize)>,
    /// The faults in order, s from start.
    pub faults: Vec<(u64, String)>,
    /// Frames each NAT's delay line held back (0: it carried nothing).
    pub delayed: Vec<u64>,
}

impl SoakReport {
    /// A false alarm moved something.
    pub fn clean(&self) -> bool {
        self.route_changes.is_empty() && self.unhealthy_reports == 0 && self.replaced == 0
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "soak of {} min: {} route changes, {} Unhealthy reports, {} verdict flips, {} NATs replaced\n",
            self.duration.as_secs() / 60,
            self.route_changes.len(),
            self.unhealthy_reports,
            self.verdict_flips,
            self.replaced,
        );
        out += &format!(
            "  probes: {} sent, {} unanswered ({:.2} %); failed rounds logged: {}\n",
            self.probes.0,
            self.probes.1,
            100.0 * self.probes.1 as f64 / self.probes.0.max(1) as f64,
            self.failed_rounds,
        );
        out += &format!(
            "  peers heard again after a silence longer than suspect_after: {}\n",
            self.suspicions
        );
        for (i, (sent, lost)) in self.requests.iter().enumerate() {
            let delayed = self.delayed.get(i).copied().unwrap_or_default();
            out += &format!(
                "  az{i}: {lost} of {sent} requests lost; {delayed} frames out of its NAT delayed\n"
            );
        }
        out += &format!(
            "  API: {:.1} calls per NAT per minute, {} answered with throttling\n",
            self.api_calls_per_nat_min, self.throttled
        );
        let actions: Vec<String> = (self.by_action.iter())
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        out += &format!("  API calls by action: {}\n", actions.join(", "));
        for (t, e) in self.route_changes.iter().chain(&self.faults) {
            out += &format!("  +{t} s {e}\n");
        }
        out
    }
}

/// Run a soak on a fresh lab.
pub async fn run(opts: SoakOptions) -> Result<SoakReport> {
    let lab = Lab::build(opts.lab.clone()).await?;
    lab.start_daemons()?;
    lab.wait_converged(Duration::from_secs(60)).await?;
    let first: Vec<Option<String>> = (0..lab.azs.len())
        .map(|i| lab.nat(i).map(|n| n.instance.id))
        .collect();
    let meters: Vec<_> = (0..lab.azs.len())
        .map(|i| lab.meter(i, opts.every))
        .collect();
    let start = Instant::now();
    let calls_before = lab.api().calls().len();
    let mut faults = Vec::new();
    let at = || start.elapsed().as_secs();
    let mut lines = Vec::new();
    for i in 0..lab.azs.len() {
        lossy_uplink(&lab, i, opts.loss_percent)?;
        lines.push(DelayLine::insert(&lab, i, opts.delay, opts.jitter)?);
    }
    faults.push((
        0,
        format!(
            "{} % loss and {} ± {} ms on every NAT's uplink",
            opts.loss_percent,
            opts.delay.as_millis(),
            opts.jitter.as_millis()
        ),
    ));
    let counter = crate::chaos::RouteWatch::start(&lab);
    let end = start + opts.duration;
    let mut next_blackhole = start + Duration::from_secs(30);
    // Until when the target is black-holed.
    let mut blackholed: Option<Instant> = None;
    let mut next_throttle = start + Duration::from_secs(90);
    while Instant::now() < end {
        let now = Instant::now();
        if blackholed.is_some_and(|until| now >= until) {
            blackhole(&lab, false)?;
            faults.push((at(), format!("target {BLACKHOLED} answers again")));
            blackholed = None;
        }
        if blackholed.is_none() && now >= next_blackhole {
            blackhole(&lab, true)?;
            faults.push((at(), format!("target {BLACKHOLED} black-holed")));
            blackholed = Some(now + opts.blackhole_for);
            next_blackhole = now + opts.blackhole_every;
        }
        if now >= next_throttle {
            lab.api()
                .inject(Rule::all(Fault::Throttle, opts.throttle_for));
            faults.push((
                at(),
                format!("API throttled for {} s", opts.throttle_for.as_secs()),
            ));
            next_throttle = now + opts.throttle_every;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if blackholed.is_some() {
        blackhole(&lab, false)?;
    }
    let delayed: Vec<u64> = lines.iter_mut().map(DelayLine::frames).collect();
    drop(lines);
    let changes = counter.stop().await;
    let probes = (0..lab.azs.len())
        .filter_map(|i| lab.nat_metrics(i, Duration::from_secs(2)).ok())
        .map(|m| probe_counts(&m))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let calls = lab.api().calls();
    let during = &calls[calls_before.min(calls.len())..];
    let logs = lab.all_logs().join("\n");
    let count = |what: &str| logs.lines().filter(|l| l.contains(what)).count();
    let replaced = (0..lab.azs.len())
        .filter(|i| lab.nat(*i).map(|n| n.instance.id) != first[*i])
        .count();
    Ok(SoakReport {
        duration: start.elapsed(),
        route_changes: changes
            .into_iter()
            .map(|(t, e)| (t.saturating_duration_since(start.into_std()).as_secs(), e))
            .collect(),
        unhealthy_reports: during
            .iter()
            .filter(|c| c.action == "SetInstanceHealth")
            .count(),
        verdict_flips: count("forwarding probe failing"),
        failed_rounds: count("probe round failed"),
        probes,
        suspicions: count("heard a peer again after a silence"),
        replaced,
        requests: meters
            .into_iter()
            .map(|m| m.finish())
            .map(|r| (r.sent, r.lost))
            .collect(),
        api_calls_per_nat_min: api::per_nat_min(
            during,
            lab.azs.len(),
            start.into_std(),
            std::time::Instant::now(),
        ),
        throttled: during.iter().filter(|c| c.status == 400).count(),
        by_action: {
            // By name, then most first (a stable sort keeps names in order).
            let mut v = api::by_action(during);
            v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            v
        },
        faults,
        delayed,
    })
}

/// A delay line on AZ `i`'s NAT's uplink: the router's end of the NAT's
/// veth leaves its bridge, and `delay_line.py` carries frames between it
/// and a new veth into the bridge, holding those from the NAT back.
/// Dropped: the NAT's veth goes back into its bridge.
pub struct DelayLine {
    rtr: String,
    link: String,
    bridge: String,
    ours: String,
    child: std::process::Child,
    stats: std::path::PathBuf,
}

impl DelayLine {
    fn insert(lab: &Lab, i: usize, delay: Duration, jitter: Duration) -> Result<DelayLine> {
        let nat = lab
            .nat(i)
            .ok_or_else(|| anyhow::anyhow!("AZ {i} has no NAT"))?;
        let link = nat
            .ns
            .strip_prefix(&format!("{}-", lab.prefix))
            .unwrap_or(&nat.ns)
            .to_owned();
        let rtr = lab.rtr.name.clone();
        let (ours, theirs, bridge) = (format!("dl{i}a"), format!("dl{i}b"), format!("bp{i}"));
        let ip = |cmd: String| crate::netns::ip(&format!("-n {rtr} {cmd}"));
        ip(format!("link add {ours} type veth peer name {theirs}"))?;
        ip(format!("link set {ours} master {bridge} up"))?;
        ip(format!("link set {theirs} up promisc on"))?;
        ip(format!("link set {link} promisc on"))?;
        let script = lab.dir.join("delay_line.py");
        std::fs::write(&script, include_str!("delay_line.py"))?;
        let stats = lab.dir.join(format!("delay_line_{i}.count"));
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &rtr, "python3"])
            .arg(&script)
            .args([&link, &theirs])
            .arg(delay.as_millis().to_string())
            .arg(jitter.as_millis().to_string())
            .arg(&stats)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let line = DelayLine {
            rtr: rtr.clone(),
            link: link.clone(),
            bridge,
            ours,
            child,
            stats,
        };
        // The line reads before the bridge lets go of the NAT.
        std::thread::sleep(Duration::from_millis(500));
        ip(format!("link set {link} nomaster"))?;
        Ok(line)
    }

    /// How many frames from the NAT the line has carried so far.
    fn frames(&mut self) -> u64 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGUSR1,
        );
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(&self.stats)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        let ip = |cmd: String| crate::netns::ip(&format!("-n {} {cmd}", self.rtr));
        let _ = ip(format!("link set {} master {}", self.link, self.bridge));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = ip(format!("link del {}", self.ours));
    }
}

/// Drop `percent` % of the packets leaving and entering AZ `i`'s NAT on
/// its uplink, at random (a table of the lab's own: the daemon leaves
/// tables it did not create alone).
fn lossy_uplink(lab: &Lab, i: usize, percent: u32) -> Result<()> {
    let rules = format!(
        "add table inet soak; \
         add chain inet soak out {{ type filter hook postrouting priority -300; }}; \
         add chain inet soak in {{ type filter hook prerouting priority -300; }}; \
         add rule inet soak out oifname \"eth0\" numgen random mod 100 < {percent} drop; \
         add rule inet soak in iifname \"eth0\" numgen random mod 100 < {percent} drop"
    );
    lab.nat_exec(i, "nft", &[&rules]).map(drop)
}

/// The probe target the soak black-holes: the second (the private hosts'
/// requests go to the first).
const BLACKHOLED: std::net::Ipv4Addr = SERVERS[1];

/// The internet drops (or no longer drops) what is sent to
/// [`BLACKHOLED`]: a server that stops answering, nothing else changed.
fn blackhole(lab: &Lab, on: bool) -> Result<()> {
    let rules = match on {
        true => format!(
            "add table ip soak_blackhole; \
             add chain ip soak_blackhole in {{ type filter hook prerouting priority -300; }}; \
             add rule ip soak_blackhole in ip daddr {BLACKHOLED} drop"
        ),
        false => "delete table ip soak_blackhole".to_owned(),
    };
    lab.inet.exec("nft", &[&rules]).map(drop)
}

/// Probes sent and probes unanswered, from a NAT's metrics exposition.
fn probe_counts(metrics: &str) -> (u64, u64) {
    let mut out = (0, 0);
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("hanat_probes_total{"))
    {
        let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        out.0 += n as u64;
        if line.contains("result=\"failed\"") {
            out.1 += n as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_counts_add_every_target_and_split_the_failed() {
        let m = "# TYPE hanat_probes counter\n\
                 hanat_probes_total{target=\"a\",result=\"ok\"} 90\n\
                 hanat_probes_total{target=\"a\",result=\"failed\"} 3\n\
                 hanat_probes_total{target=\"b\",result=\"ok\"} 93\n\
                 hanat_probe_rtt_seconds_count{target=\"a\"} 90\n";
        assert_eq!(probe_counts(m), (186, 3));
    }
}
