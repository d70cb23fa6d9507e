//! Chaos scenarios: build a lab, wait for convergence, inject one failure in
//! AZ 0, measure what every private host feels until the lab has recovered
//! (or a timeout), and report.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::api::{self, Fault, Rule};
use crate::cloud::DefaultTarget;
use crate::imds::ImdsFault;
use crate::lab::{Lab, LabOptions, MeterReport, SessionsReport, abuse, forge};

/// The failures the lab can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Nothing: the baseline.
    None,
    /// `kill -9` the daemon (the lab's systemd restarts it).
    KillDaemon,
    /// The instance vanishes; Auto Scaling replaces it.
    TerminateInstance,
    /// The kernel stops forwarding (a foreign nftables table drops
    /// everything) while the daemon lives.
    StopForwarding,
    /// Someone points the AZ's private route table elsewhere.
    HijackRoute,
    /// Auto Scaling scales the NAT in (termination lifecycle hook).
    ScaleIn,
    /// A spot interruption notice.
    SpotInterruption,
    /// Every NAT replaced, one AZ after the other, by scale-in.
    InstanceRefresh,
    /// The NATs cannot hear each other for 8 s; all stay healthy.
    Partition,
    /// AZ 0 is lost: its NAT vanishes and nothing launches there for 10 s.
    AzOutage,
    /// Every AWS call takes 5 s longer for 60 s while AZ 0 stops forwarding.
    ApiSlow,
    /// The account's EC2 buckets are empty for 30 s (most calls throttled)
    /// while AZ 0's instance is terminated.
    ApiThrottle,
    /// Every AWS call fails (503) for 60 s; nothing else happens.
    ApiDown,
    /// AZ 0's instance metadata is down for 30 s, and a scale-in starts
    /// 10 s into it.
    ImdsDown,
    /// `ip_forward` is set to 0 on AZ 0's NAT, a drift hanat repairs.
    KernelDrift,
    /// AZ 0's NAT is put into Standby.
    Standby,
    /// For 15 s, a private host of AZ 1 wraps heartbeats saying AZ 0's NAT
    /// is `failing` in VXLAN and sends them to AZ 1's NAT's flow hand-off
    /// tunnel (unauthenticated ones, and ones signed with a wrong key).
    ForgeTunnel,
    /// AZ 0's instance is terminated while a private host tunnels
    /// heartbeats to AZ 1's NAT saying it is `ok`, for 40 s.
    ForgeTunnelOk,
    /// For 15 s, a host with the source/destination check off sends AZ 1's
    /// NAT heartbeats from AZ 0's NAT's address saying it is `failing`
    /// (unauthenticated ones, and ones signed with a wrong key).
    ForgeSpoof,
    /// For 20 s, the same host sends AZ 1's NAT, at its replication port,
    /// connection copies with AZ 0's NAT's source address (signed with a
    /// wrong key, and with no valid signature) naming a connection of AZ
    /// 0's private host; 3 s in, AZ 0's instance is terminated. The forged
    /// connection must not reach the adopter's kernel.
    ForgeReplication,
    /// AZ 0's NAT's genuine heartbeats to AZ 1's, captured for 3 s on the
    /// VPC's router, are sent again by that host at once and 12 s later.
    Replay,
    /// AZ 0's NAT freezes while EC2 still says it runs: every packet on its
    /// interface is dropped and its daemon is stopped (`SIGSTOP`), until
    /// Auto Scaling replaces it.
    Freeze,
    /// For 30 s, AZ 0 (its NAT and hosts) and the other AZs cannot reach
    /// each other; all still reach the AWS API and the internet.
    AzIsolation,
    /// For 20 s, AZ 0's private host tries to hold 2,000 connections to its NAT's
    /// endpoints with unfinished requests (more than the 1,024 descriptors
    /// systemd gives a service by default) and 4 threads scrape
    /// `/metrics` as fast as they are answered; `/health` is asked from
    /// the router meanwhile.
    EndpointFlood,
    /// AZ 1's private host floods AZ 1's NAT's heartbeat port (junk and
    /// unsigned heartbeats) for 25 s; 3 s into it, AZ 0's instance is
    /// terminated, so AZ 1's NAT must hear the silence through the flood.
    HeartbeatFlood,
    /// AZ 0's daemon's open-file limit is lowered to what it holds (it can
    /// open nothing more): it cannot probe, says so, and restarts itself.
    FdExhaustion,
    /// An instance refresh that launches before it terminates: a second
    /// NAT boots in AZ 0 while the first serves, then the first is
    /// terminated through its group (lifecycle hook). A TCP session from
    /// AZ 0 stays open across the switch.
    RefreshLaunchFirst,
    /// AZ 0's NAT enters Standby without decrement; the group launches a
    /// replacement beside it; later the Standby one is terminated through
    /// the group.
    StandbyNoDecrement,
    /// AZ 0's group runs two NATs for 30 s (desired capacity 2), then
    /// terminates the older one (the templates' `OldestInstance`).
    TwoInAz,
    /// Every AZ's NAT replaced by one launched beside it, one AZ after the
    /// other (a rolling update or instance refresh that launches first),
    /// with `--upgrade-to`'s binary if given: during the roll, NATs of both
    /// versions must hear each other.
    RollingUpgrade,
    /// `existing-vpc.yaml`'s NATs in public subnets that map no public
    /// address on launch (as subnets a user creates), reaching the AWS API
    /// as on AWS: through the VPC and its internet gateway. Nothing is
    /// injected: the lab must converge, each NAT reaching AWS before it
    /// holds its Elastic IP.
    NoPublicAddress,
    /// The same with the stack's `InterfaceEndpoints`: the NATs launch with
    /// no public address at all and reach the API through the endpoints,
    /// inside the VPC.
    NoPublicAddressEndpoints,
}

impl Scenario {
    pub const ALL: [Scenario; 32] = [
        Scenario::None,
        Scenario::KillDaemon,
        Scenario::TerminateInstance,
        Scenario::StopForwarding,
        Scenario::HijackRoute,
        Scenario::ScaleIn,
        Scenario::SpotInterruption,
        Scenario::InstanceRefresh,
        Scenario::Partition,
        Scenario::AzOutage,
        Scenario::ApiSlow,
        Scenario::ApiThrottle,
        Scenario::ApiDown,
        Scenario::ImdsDown,
        Scenario::KernelDrift,
        Scenario::Standby,
        Scenario::ForgeTunnel,
        Scenario::ForgeTunnelOk,
        Scenario::ForgeSpoof,
        Scenario::ForgeReplication,
        Scenario::Replay,
        Scenario::Freeze,
        Scenario::AzIsolation,
        Scenario::EndpointFlood,
        Scenario::HeartbeatFlood,
        Scenario::FdExhaustion,
        Scenario::RefreshLaunchFirst,
        Scenario::StandbyNoDecrement,
        Scenario::TwoInAz,
        Scenario::RollingUpgrade,
        Scenario::NoPublicAddress,
        Scenario::NoPublicAddressEndpoints,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::KillDaemon => "kill-daemon",
            Scenario::TerminateInstance => "terminate-instance",
            Scenario::StopForwarding => "stop-forwarding",
            Scenario::HijackRoute => "hijack-route",
            Scenario::ScaleIn => "scale-in",
            Scenario::SpotInterruption => "spot-interruption",
            Scenario::InstanceRefresh => "instance-refresh",
            Scenario::Partition => "partition",
            Scenario::AzOutage => "az-outage",
            Scenario::ApiSlow => "api-slow",
            Scenario::ApiThrottle => "api-throttle",
            Scenario::ApiDown => "api-down",
            Scenario::ImdsDown => "imds-down",
            Scenario::KernelDrift => "kernel-drift",
            Scenario::Standby => "standby",
            Scenario::ForgeTunnel => "forge-tunnel",
            Scenario::ForgeTunnelOk => "forge-tunnel-ok",
            Scenario::ForgeSpoof => "forge-spoof",
            Scenario::ForgeReplication => "forge-replication",
            Scenario::Replay => "replay",
            Scenario::Freeze => "freeze",
            Scenario::AzIsolation => "az-isolation",
            Scenario::EndpointFlood => "endpoint-flood",
            Scenario::HeartbeatFlood => "heartbeat-flood",
            Scenario::FdExhaustion => "fd-exhaustion",
            Scenario::RefreshLaunchFirst => "refresh-launch-first",
            Scenario::StandbyNoDecrement => "standby-no-decrement",
            Scenario::TwoInAz => "two-in-az",
            Scenario::RollingUpgrade => "rolling-upgrade",
            Scenario::NoPublicAddress => "no-public-address",
            Scenario::NoPublicAddressEndpoints => "no-public-address-endpoints",
        }
    }

    pub fn parse(s: &str) -> Result<Scenario> {
        match Scenario::ALL.iter().find(|x| x.name() == s) {
            Some(x) => Ok(*x),
            None => {
                let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
                bail!(
                    "unknown scenario `{s}`; choose one of: {}",
                    names.join(", ")
                )
            }
        }
    }
}

/// What one scenario run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name, or `fis:` and the experiment's.
    pub name: String,
    pub azs: usize,
    pub recovered: bool,
    /// Longest time without an answer any private host saw, an outage
    /// still open at the end of the measurement included.
    pub outage_ms: u64,
    /// From the fault being in place to the end of the measurement.
    pub measured_ms: u64,
    /// Some host was still failing when the measurement ended.
    pub ended_in_outage: bool,
    /// Requests lost, all hosts.
    pub lost: usize,
    pub sent: usize,
    /// From injection to the first answer after the last failure in the
    /// affected AZ (0 when nothing failed).
    pub recovery_ms: u64,
    /// How often the source address seen by the internet changed.
    pub source_ip_changes: usize,
    /// How often any private route's target changed in the control plane.
    pub route_changes: usize,
    /// Source addresses the internet saw from AZ 0, in the order first seen.
    pub sources: Vec<std::net::Ipv4Addr>,
    /// Calls per NAT per minute in the steady part before the injection.
    pub api_calls_per_nat_min: f64,
    /// Every call the daemons made, for tests that look closer.
    pub calls: Vec<api::Call>,
    /// When the fault was injected.
    pub injected: Instant,
    /// The log of every daemon that ran in the lab, replaced NATs' too.
    pub logs: Vec<String>,
    pub events: Vec<String>,
    /// The same events, in seconds from the injection, for [`crate::plot`].
    pub event_times: Vec<(f64, String)>,
    /// Per AZ, every metered request: seconds from the injection (negative
    /// before it), and whether it was answered.
    pub timelines: Vec<Vec<(f64, bool)>>,
    /// An experiment stopped by its stop condition: the alarm that did.
    pub stopped_by: Option<String>,
    /// Long-lived TCP sessions from AZ 0's private host: kept, reset or
    /// left hanging by the fault.
    pub sessions: SessionsReport,
}

impl Report {
    /// The daemons' AWS calls from injection to the end, by action.
    pub fn api_calls(&self) -> Vec<(String, usize)> {
        let after: Vec<api::Call> = self
            .calls
            .iter()
            .filter(|c| c.at >= self.injected)
            .cloned()
            .collect();
        api::by_action(&after)
    }

    /// Lines of every daemon log containing `what`.
    pub fn logged(&self, what: &str) -> Vec<String> {
        self.logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect()
    }

    pub fn json(&self) -> String {
        let events: Vec<String> = self.events.iter().map(|e| json_string(e)).collect();
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|s| json_string(&s.to_string()))
            .collect();
        let stalls: Vec<String> = (self.sessions.longest_stalls.iter())
            .map(|d| d.as_millis().to_string())
            .collect();
        let stream_seen: Vec<String> = (self.sessions.stream.iter())
            .flat_map(|s| s.seen.iter().map(|a| json_string(&a.to_string())))
            .collect();
        let calls: Vec<String> = self
            .api_calls()
            .iter()
            .map(|(a, n)| format!("{}:{n}", json_string(a)))
            .collect();
        format!(
            "{{\"scenario\":{},\"azs\":{},\"recovered\":{},\"stopped_by\":{},\"outage_ms\":{},\"measured_ms\":{},\
             \"ended_in_outage\":{},\"lost\":{},\"sent\":{},\
             \"recovery_ms\":{},\"source_ip_changes\":{},\"route_changes\":{},\"sources\":[{}],\
             \"sessions\":{},\"sessions_kept\":{},\"sessions_reset\":{},\"sessions_stalled\":{},\
             \"session_reconnects\":{},\"session_stalls_ms\":[{}],\
             \"udp_stream_kept\":{},\"udp_stream_seen\":[{}],\"udp_stream_longest_gap_ms\":{},\
             \"api_calls\":{{{}}},\"api_calls_per_nat_min\":{:.1},\"events\":[{}]}}",
            json_string(&self.name),
            self.azs,
            self.recovered,
            self.stopped_by
                .as_deref()
                .map_or("null".to_owned(), json_string),
            self.outage_ms,
            self.measured_ms,
            self.ended_in_outage,
            self.lost,
            self.sent,
            self.recovery_ms,
            self.source_ip_changes,
            self.route_changes,
            sources.join(","),
            self.sessions.sessions,
            self.sessions.kept,
            self.sessions.reset,
            self.sessions.stalled,
            self.sessions.reconnects,
            stalls.join(","),
            (self.sessions.stream.as_ref()).map_or("null".into(), |s| s.kept().to_string()),
            stream_seen.join(","),
            (self.sessions.stream.as_ref())
                .map_or("null".into(), |s| s.longest_gap.as_millis().to_string()),
            calls.join(","),
            self.api_calls_per_nat_min,
            events.join(",")
        )
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "scenario {}: {}{} — longest gap {} ms{}, {} of {} requests lost, recovery {} ms, \
             source IP changes {}, route changes {}\n",
            self.name,
            if self.recovered {
                "recovered"
            } else {
                "NOT recovered"
            },
            match &self.stopped_by {
                Some(alarm) => format!(", STOPPED by alarm {alarm}"),
                None => String::new(),
            },
            self.outage_ms,
            if self.ended_in_outage {
                " (still open when the measurement ended)"
            } else {
                ""
            },
            self.lost,
            self.sent,
            self.recovery_ms,
            self.source_ip_changes,
            self.route_changes
        );
        let sources: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
        s.push_str(&format!("  AZ 0 seen as: {}\n", sources.join(" then ")));
        // When each lost request was sent, to set beside the events.
        let lost: Vec<String> = (self.timelines.iter().enumerate())
            .flat_map(|(az, t)| {
                (t.iter().filter(|(_, answered)| !answered))
                    .map(move |(at, _)| format!("AZ {az} at {:+.0} ms", at * 1000.0))
            })
            .take(10)
            .collect();
        if !lost.is_empty() {
            s.push_str(&format!("  requests lost, sent: {}\n", lost.join(", ")));
        }
        let t = &self.sessions;
        if t.sessions > 0 {
            let stalls: Vec<u64> = (t.longest_stalls.iter())
                .map(|d| d.as_millis() as u64)
                .collect();
            s.push_str(&format!(
                "  sessions from AZ 0: {} kept, {} reset, {} left hanging, {} reconnects; \
                 longest wait per session p50 {} ms, max {} ms\n",
                t.kept_of(),
                t.reset,
                t.stalled,
                t.reconnects,
                percentile(&stalls, 50),
                percentile(&stalls, 100)
            ));
        }
        if let Some(u) = &t.stream {
            let seen: Vec<String> = u.seen.iter().map(ToString::to_string).collect();
            s.push_str(&format!(
                "  UDP stream from AZ 0: {}, seen as {}, longest gap {} ms\n",
                match (u.kept(), u.answering) {
                    (true, _) => "kept",
                    (false, true) => "translated afresh",
                    (false, false) => "not answered at the end",
                },
                seen.join(" then "),
                u.longest_gap.as_millis()
            ));
        }
        for e in &self.events {
            s.push_str(&format!("  {e}\n"));
        }
        s
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Settings of a chaos run besides the lab's own.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub lab: LabOptions,
    /// Give up waiting for recovery after this long.
    pub timeout: Duration,
    /// Requests per host: one every this long (20/s by default).
    pub every: Duration,
    /// Steady state watched before the injection (where
    /// `api_calls_per_nat_min` is measured).
    pub steady: Duration,
    /// Long-lived TCP sessions from AZ 0's private host (20 by default),
    /// each asking again [`SESSION_EVERY`] after its last answer.
    pub sessions: usize,
}

/// The pause between a session's answer and its next question.
pub const SESSION_EVERY: Duration = Duration::from_millis(200);

impl ChaosOptions {
    /// A run of `lab` giving up after `timeout`, with 20 requests/s per host
    /// and 2 s of steady state before the fault.
    pub fn new(lab: LabOptions, timeout: Duration) -> Self {
        ChaosOptions {
            lab,
            timeout,
            every: Duration::from_millis(50),
            steady: Duration::from_secs(2),
            sessions: 20,
        }
    }
}

/// Run one scenario end to end on a fresh lab.
pub async fn run(scenario: Scenario, mut opts: ChaosOptions) -> Result<Report> {
    if matches!(
        scenario,
        Scenario::NoPublicAddress | Scenario::NoPublicAddressEndpoints
    ) {
        opts.lab.api_through_vpc = true;
        opts.lab.map_public_ip = false;
        opts.lab.existing_vpc = true;
        opts.lab.cloudwatch = None;
        opts.lab.interface_endpoints = scenario == Scenario::NoPublicAddressEndpoints;
    }
    // Scenarios that end with AZ 0's instance replaced have not recovered
    // before that has happened.
    let replaced_by_end = matches!(
        scenario,
        Scenario::TerminateInstance
            | Scenario::StopForwarding
            | Scenario::ScaleIn
            | Scenario::SpotInterruption
            | Scenario::InstanceRefresh
            | Scenario::AzOutage
            | Scenario::ApiSlow
            | Scenario::ApiThrottle
            | Scenario::ImdsDown
            | Scenario::ForgeTunnelOk
            | Scenario::ForgeReplication
            | Scenario::Freeze
            | Scenario::HeartbeatFlood
            | Scenario::RefreshLaunchFirst
            | Scenario::StandbyNoDecrement
            | Scenario::TwoInAz
            | Scenario::RollingUpgrade
    );
    let timeout = opts.timeout;
    let run = run_fault(scenario.name(), opts, replaced_by_end, async |lab: &Lab| {
        inject(lab, scenario, timeout).await.map(|()| None)
    });
    run.await
}

/// With replication on, let the sessions be long-lived by the NAT's
/// measure too (`replication.min_age`): wait, at most [`COPIED_WITHIN`],
/// until AZ 0's NAT says it sent copies of `n` connections and every
/// other NAT says it holds that many. A scrape that fails (a busy daemon)
/// is no answer; a NAT that says nothing of copies (a hanat without
/// replication) is not waited for. When the wait ends first, the report
/// says so. The counts include whatever else the NAT copied (a probe's
/// connection that lingered), so the UDP stream, started with the sessions
/// at `started`, is also given the time it takes: the kernel calls it a
/// stream 2 s after its first answer, and it is copied `min_age` later.
async fn wait_copied(lab: &Lab, n: usize, started: Instant) {
    use crate::lab::abuse::{metrics, series_in};
    let began = Instant::now();
    let counts = || {
        tokio::task::block_in_place(|| {
            (0..lab.azs.len())
                .map(|i| {
                    let series = match i {
                        0 => "hanat_replicated_connections",
                        _ => "hanat_replicas",
                    };
                    // None: no answer; Some(None): no such series.
                    metrics(lab, i).map(|t| series_in(&t, series))
                })
                .collect::<Vec<_>>()
        })
    };
    loop {
        let now = counts();
        let done = |c: &Option<Option<u64>>| match c {
            None => false,
            Some(None) => true,
            Some(Some(c)) => *c >= n as u64,
        };
        if now.iter().all(done) && started.elapsed() >= STREAM_COPIED_AFTER {
            return;
        }
        if began.elapsed() >= COPIED_WITHIN {
            let said: Vec<String> = (now.iter().enumerate())
                .map(|(i, c)| match c {
                    None => format!("az{i} no answer"),
                    Some(None) => format!("az{i} -"),
                    Some(Some(c)) => format!("az{i} {c}"),
                })
                .collect();
            lab.note(format!(
                "connection copies not all made before the fault (sent by AZ 0, held by the others): {}",
                said.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a recovery, the shortest time sessions still waiting for an
/// answer are given (TCP's retransmission backoff reaches 3.2 s after 3 s
/// of silence), and the longest (Linux's `TCP_RTO_MAX`).
const SESSIONS_SETTLE: Duration = Duration::from_secs(8);
const TCP_RTO_MAX: Duration = Duration::from_secs(120);

/// When a UDP stream started with the sessions is copied: a stream 2 s
/// after its first answer, copied `replication.min_age` (2 s) and at most
/// one send (0.2 s) later.
const STREAM_COPIED_AFTER: Duration = Duration::from_millis(4_500);

/// A packet capture (`tcpdump`) in a namespace of the lab, stopped when
/// dropped.
struct Capture(std::process::Child);

impl Capture {
    fn start(ns: &str, file: &str, filter: &str) -> Option<Capture> {
        let args = [
            "netns", "exec", ns, "tcpdump", "-i", "any", "-n", "-w", file, filter,
        ];
        (std::process::Command::new("ip").args(args))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
            .map(Capture)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The longest [`wait_copied`] waits.
const COPIED_WITHIN: Duration = Duration::from_secs(10);

/// Build a lab, wait for convergence, run `inject` (which may say that a
/// stop condition ended it: the alarm's name), measure until the lab has
/// recovered, and report as `name`. `replaced_by_end`: the fault ends with
/// AZ 0's instance replaced, so there is no recovery before that.
pub async fn run_fault(
    name: &str,
    opts: ChaosOptions,
    replaced_by_end: bool,
    inject: impl AsyncFnOnce(&Lab) -> Result<Option<String>>,
) -> Result<Report> {
    let lab = Lab::build(opts.lab.clone()).await?;
    lab.start_daemons()?;
    lab.wait_converged(Duration::from_secs(60)).await?;
    let meters: Vec<_> = (0..lab.azs.len())
        .map(|i| lab.meter(i, opts.every))
        .collect();
    // With HANAT_LAB_DEBUG_CT: the sessions and the stream at the
    // internet gateway and the internet, the copies at the VPC router.
    let _captures: Vec<Capture> = match std::env::var_os("HANAT_LAB_DEBUG_CT") {
        None => Vec::new(),
        Some(_) => [
            (&lab.igw.name, "/tmp/igw.pcap", "port 7"),
            (&lab.inet.name, "/tmp/inet.pcap", "port 7"),
            (&lab.rtr.name, "/tmp/rtr.pcap", "udp port 7473"),
        ]
        .into_iter()
        .filter_map(|(ns, file, filter)| Capture::start(ns, file, filter))
        .collect(),
    };
    let sessions = lab.sessions(0, opts.sessions, SESSION_EVERY);
    let steady_from = Instant::now();
    tokio::time::sleep(opts.steady).await;
    let opening = Instant::now();
    while !sessions.all_open() && opening.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if opts.lab.replication && opts.sessions > 0 {
        // The sessions and the UDP stream beside them.
        wait_copied(&lab, opts.sessions + 1, steady_from).await;
    }

    let before = lab.nat(0).map(|n| n.instance.id);
    let injected = Instant::now();
    let since_start = injected.duration_since(meters[0].started);
    let counter = RouteWatch::start(&lab);
    let stopped_by = inject(&lab).await?;
    // The fault is in place (an nft table applied, a daemon killed…).
    let in_place = Instant::now();
    let replaced = || !replaced_by_end || lab.nat(0).map(|n| n.instance.id) != before;
    // The timeout runs from the fault being in place.
    let timeout = opts.timeout + in_place.duration_since(injected);
    let recovered = wait_recovered(&lab, &meters[0], injected, timeout, &replaced).await;
    // A little more steady state, so a relapse would show; and sessions
    // still waiting get their time to answer: TCP's next retransmission
    // comes within about as long as the host has waited already (its
    // timeout doubles each time), so a session that waited through a long
    // outage is given as long again, up to Linux's longest retransmission
    // timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settling = Instant::now();
    let settle = sessions.longest_wait().clamp(SESSIONS_SETTLE, TCP_RTO_MAX);
    while recovered && sessions.waiting() && settling.elapsed() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changed = counter.stop().await;
    let route_changes = changed.len();
    if std::env::var_os("HANAT_LAB_DEBUG_CT").is_some() {
        for i in 0..lab.azs.len() {
            let ct = lab
                .nat_exec(i, "conntrack", &["-L", "-o", "extended"])
                .unwrap_or_default();
            let nft = lab
                .nat_exec(i, "nft", &["list", "ruleset"])
                .unwrap_or_default();
            let _ = std::fs::write(format!("/tmp/debug-ct-{i}.txt"), format!("{ct}\n{nft}"));
        }
    }

    let measured_ms = in_place.elapsed().as_millis() as u64;
    let starts: Vec<Instant> = meters.iter().map(|m| m.started).collect();
    let reports: Vec<MeterReport> = meters.into_iter().map(|m| m.finish()).collect();
    let sessions = sessions.finish();
    let timelines = reports
        .iter()
        .zip(&starts)
        .map(|(r, start)| {
            let offset = injected.saturating_duration_since(*start).as_secs_f64();
            r.samples
                .iter()
                .map(|s| (s.at.as_secs_f64() - offset, s.seen.is_some()))
                .collect()
        })
        .collect();
    let affected = &reports[0];
    let recovery_ms = match affected.first_success_after_last_failure {
        Some(t) if affected.lost > 0 => t.saturating_sub(since_start).as_millis() as u64,
        _ => 0,
    };
    let lab_events: Vec<(Instant, String)> = lab
        .events()
        .into_iter()
        .filter(|(t, _)| *t >= injected)
        .collect();
    let events = lab_events
        .iter()
        .map(|(t, e)| format!("+{} ms {e}", t.duration_since(injected).as_millis()))
        .collect();
    let mut event_times: Vec<(f64, String)> = lab_events
        .iter()
        .chain(&changed)
        .map(|(t, e)| (t.duration_since(injected).as_secs_f64(), e.clone()))
        .collect();
    event_times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let calls = lab.api().calls();
    Ok(Report {
        name: name.to_owned(),
        azs: lab.azs.len(),
        recovered: recovered && lab_ok(&lab).await,
        outage_ms: reports
            .iter()
            .map(|r| r.longest_gap.as_millis() as u64)
            .max()
            .unwrap_or(0),
        measured_ms,
        ended_in_outage: reports.iter().any(|r| r.ended_failing),
        lost: reports.iter().map(|r| r.lost).sum(),
        sent: reports.iter().map(|r| r.sent).sum(),
        recovery_ms,
        source_ip_changes: reports.iter().map(|r| r.source_changes).sum(),
        route_changes,
        sources: affected.sources.clone(),
        api_calls_per_nat_min: api::per_nat_min(&calls, lab.azs.len(), steady_from, injected),
        calls,
        injected,
        logs: lab.all_logs(),
        events,
        event_times,
        timelines,
        stopped_by,
        sessions,
    })
}

/// Watching the private routes' targets of a lab from its start until
/// [`RouteWatch::stop`].
pub struct RouteWatch {
    watching: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, String)>>,
}

impl RouteWatch {
    pub fn start(lab: &Lab) -> RouteWatch {
        let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let tables = (lab.azs.iter())
            .map(|a| a.private_route_table.clone())
            .collect();
        let task = tokio::spawn(count_route_changes(
            lab.cloud.clone(),
            tables,
            watching.clone(),
        ));
        RouteWatch { watching, task }
    }

    /// Each change seen: when, and which AZ's route now points where.
    pub async fn stop(self) -> Vec<(Instant, String)> {
        (self.watching).store(false, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Each change of the private routes' targets until `watching` ends: when,
/// and which AZ's route now points where.
async fn count_route_changes(
    cloud: crate::cloud::Cloud,
    tables: Vec<String>,
    watching: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(Instant, String)> {
    let mut last: Vec<Option<String>> = vec![None; tables.len()];
    let mut changes = Vec::new();
    let mut first = true;
    while watching.load(std::sync::atomic::Ordering::Relaxed) {
        for (i, rt) in tables.iter().enumerate() {
            if let Ok(route) = cloud.default_route(rt).await {
                let target = route.map(|(t, state)| format!("{t} {state}"));
                if !first && target != last[i] {
                    let to = target.as_deref().unwrap_or("nothing");
                    changes.push((Instant::now(), format!("az{i}: route → {to}")));
                }
                last[i] = target;
            }
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    changes
}

async fn inject(lab: &Lab, scenario: Scenario, timeout: Duration) -> Result<()> {
    let hook_timeout = Duration::from_secs(60);
    match scenario {
        Scenario::None => Ok(()),
        Scenario::KillDaemon => lab.kill_daemon(0),
        Scenario::TerminateInstance => lab.terminate_instance(0).await.map(drop),
        Scenario::StopForwarding => stop_forwarding(lab),
        Scenario::HijackRoute => {
            lab.cloud
                .set_default_route(
                    &lab.azs[0].private_route_table,
                    DefaultTarget::Gateway(&lab.igw_id),
                )
                .await
        }
        Scenario::ScaleIn => lab.scale_in(0, hook_timeout),
        Scenario::SpotInterruption => lab.spot_interruption(0, Duration::from_secs(120)),
        Scenario::InstanceRefresh => {
            for i in 0..lab.azs.len() {
                let old = lab.nat(i).map(|n| n.instance.id);
                lab.scale_in(i, hook_timeout)?;
                lab.wait_for("the refreshed NAT to serve its AZ", timeout, || async {
                    Ok(lab.nat(i).map(|n| n.instance.id) != old && lab.az_ok(i).await)
                })
                .await?;
            }
            Ok(())
        }
        Scenario::Freeze => lab.freeze(0, true),
        Scenario::AzIsolation => {
            lab.isolate_az(0, true)?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            lab.isolate_az(0, false)
        }
        Scenario::Partition => {
            lab.partition(true)?;
            tokio::time::sleep(Duration::from_secs(8)).await;
            lab.partition(false)
        }
        Scenario::AzOutage => lab.az_outage(0, Duration::from_secs(10)).await,
        Scenario::ApiSlow => {
            let slow = Fault::Delay(Duration::from_secs(5));
            lab.api().inject(Rule::all(slow, Duration::from_secs(60)));
            stop_forwarding(lab)
        }
        Scenario::ApiThrottle => {
            lab.api().drain(Duration::from_secs(30), 0.5);
            lab.terminate_instance(0).await.map(drop)
        }
        Scenario::ApiDown => {
            lab.api()
                .inject(Rule::all(Fault::Error(503), Duration::from_secs(60)));
            // Nothing breaks: the run is the fault and a little after.
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        Scenario::ImdsDown => {
            lab.imds_fault(0, ImdsFault::Error(503), Duration::from_secs(30))?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            lab.scale_in(0, hook_timeout)
        }
        Scenario::KernelDrift => lab
            .nat_exec(0, "sysctl", &["-qw", "net.ipv4.ip_forward=0"])
            .map(drop),
        Scenario::Standby => {
            lab.standby(0).await?;
            // Long enough for a peer-list refresh to have seen it.
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok(())
        }
        Scenario::ForgeTunnel => {
            let forger = forge_tunnel(lab, "failing", Duration::from_secs(15))?;
            let sent = tokio::task::spawn_blocking(move || forger.join().unwrap_or(0)).await?;
            lab.note(format!("forged {sent} tunnelled heartbeats"));
            Ok(())
        }
        Scenario::ForgeTunnelOk => {
            // Runs on while the lab recovers (or not).
            let _forger = forge_tunnel(lab, "ok", Duration::from_secs(40))?;
            lab.terminate_instance(0).await.map(drop)
        }
        Scenario::ForgeSpoof => {
            let (claim, a, b) = claim_on_az0(lab, "failing")?;
            let rogue = forge::rogue_host(lab)?;
            let path = rogue.path();
            let forger = forge::repeat(
                Duration::from_secs(15),
                Duration::from_millis(100),
                move |seq| {
                    let p =
                        |m: Vec<u8>| forge::ipv4_udp(a, b, forge::PEER_PORT, forge::PEER_PORT, &m);
                    forge::send_raw(&path, vec![p(claim.v1(seq)), p(claim.v2_wrong_key(seq))])
                },
            );
            let sent = tokio::task::spawn_blocking(move || forger.join().unwrap_or(0)).await?;
            drop(rogue);
            lab.note(format!("spoofed {} heartbeats from {a}", 2 * sent));
            Ok(())
        }
        Scenario::ForgeReplication => {
            let (claim, a, b) = claim_on_az0(lab, "ok")?;
            let host = lab.azs[0].host_ip;
            let rogue = forge::rogue_host(lab)?;
            let path = rogue.path();
            let forger = forge::repeat(
                Duration::from_secs(20),
                Duration::from_millis(100),
                move |seq| {
                    let p = |m: Vec<u8>| {
                        forge::ipv4_udp(a, b, forge::REPLICATION_PORT, forge::REPLICATION_PORT, &m)
                    };
                    let copy = forge::Copy {
                        instance: claim.instance.clone(),
                        az: claim.az.clone(),
                        src: host,
                        sport: forge::FORGED_PORT,
                        dst: crate::lab::SERVERS[0],
                        dport: crate::lab::SESSION_PORT,
                        nat: a,
                    };
                    forge::send_raw(&path, vec![p(copy.wrong_key(seq)), p(copy.unsigned(seq))])
                },
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
            lab.terminate_instance(0).await?;
            let sent = tokio::task::spawn_blocking(move || forger.join().unwrap_or(0)).await?;
            drop(rogue);
            lab.note(format!("spoofed {} connection copies from {a}", 2 * sent));
            let port = forge::FORGED_PORT.to_string();
            let listed = lab.nat_exec(1, "conntrack", &["-L", "-p", "tcp", "--sport", &port]);
            let forged = listed.map(|l| l.lines().filter(|l| l.contains("src=")).count());
            lab.note(format!(
                "forged connections in AZ 1's kernel: {}",
                forged.map_or_else(|e| format!("unknown ({e:#})"), |n| n.to_string())
            ));
            Ok(())
        }
        Scenario::EndpointFlood => {
            let run = Duration::from_secs(20);
            let memory = |when: &str| match lab.daemon_memory(0) {
                Some((rss, peak)) => lab.note(format!(
                    "az0: daemon resident {when}: {:.1} MB, peak {:.1} MB",
                    rss as f64 / 1024.0,
                    peak as f64 / 1024.0
                )),
                None => lab.note(format!("az0: daemon memory {when}: not readable")),
            };
            memory("before the flood");
            let health = abuse::watch_health(lab, 0, run, Duration::from_secs(1))?;
            let flood = abuse::flood_endpoint(lab, 0, 0, 2_000, 4, run)?;
            let f = tokio::task::spawn_blocking(move || flood.join().unwrap_or_default()).await?;
            let h = tokio::task::spawn_blocking(move || health.join().unwrap_or_default()).await?;
            lab.note(format!(
                "endpoint flood: {} connections opened with unfinished requests, at most {} held at once; {} of {} scrapes answered",
                f.opened, f.held_max, f.scraped, f.scrapes
            ));
            lab.note(h.summary());
            memory("after the flood");
            Ok(())
        }
        Scenario::HeartbeatFlood => {
            let flood = abuse::flood_heartbeats(lab, 1, 1, Duration::from_secs(25))?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            lab.terminate_instance(0).await?;
            let sent = tokio::task::spawn_blocking(move || flood.join().unwrap_or(0)).await?;
            let dropped = lab
                .nat_exec(1, "nft", &["list", "chain", "ip", "hanat", "input_filter"])
                .ok()
                .and_then(|l| abuse::counted(&l, "heartbeat flood"));
            let unsigned = abuse::metric(
                lab,
                1,
                "hanat_heartbeats_rejected_total{reason=\"unauthenticated\"}",
            );
            lab.note(format!(
                "heartbeat flood: {sent} datagrams sent to az1's NAT, {} dropped by its kernel, {} unsigned ones rejected by its daemon",
                dropped.map_or("none".into(), |d| d.to_string()),
                unsigned.map_or("none".into(), |d| d.to_string())
            ));
            Ok(())
        }
        Scenario::FdExhaustion => {
            let before = lab.daemon_pid(0);
            // Watched until just before the daemon's restart is due
            // (probe.unable_restart, 10 s).
            let health =
                abuse::watch_health(lab, 0, Duration::from_secs(8), Duration::from_secs(1))?;
            lab.exhaust_descriptors(0)?;
            let h = tokio::task::spawn_blocking(move || health.join().unwrap_or_default()).await?;
            lab.note(h.summary());
            lab.wait_for(
                "the daemon to restart itself",
                Duration::from_secs(40),
                || async { Ok(lab.daemon_pid(0).is_some_and(|p| Some(p) != before)) },
            )
            .await
            .map(drop)
        }
        Scenario::RefreshLaunchFirst => {
            let mut session = lab.session(0, Duration::from_secs(3))?;
            let before = session.ask()?;
            lab.launch_second(0).await?;
            newcomer_takes(lab, 0, timeout, 2).await?;
            let kept = match session.ask() {
                Ok(ip) if ip == before => format!("kept, still from {ip}"),
                Ok(ip) => format!("answered from {ip}, not {before}"),
                Err(e) => format!("broken: {e:#}"),
            };
            lab.note(format!("session across the switch: {kept}"));
            lab.retire_older(0, hook_timeout)
        }
        Scenario::StandbyNoDecrement => {
            lab.standby_replaced(0).await?;
            newcomer_takes(lab, 0, timeout, 2).await?;
            lab.retire_older(0, hook_timeout)
        }
        Scenario::TwoInAz => {
            lab.launch_second(0).await?;
            newcomer_takes(lab, 0, timeout, 6).await?;
            lab.retire_older(0, hook_timeout)
        }
        Scenario::NoPublicAddress | Scenario::NoPublicAddressEndpoints => {
            lab.note(format!(
                "every NAT reached the AWS API through the VPC; AZ 0's NAT launched with a public address: {:?}",
                lab.launched_with_public_address(0)
            ));
            Ok(())
        }
        Scenario::RollingUpgrade => {
            for i in 0..lab.azs.len() {
                let old = lab.nat(i).map(|n| n.instance.id);
                lab.launch_second(i).await?;
                newcomer_takes(lab, i, timeout, 2).await?;
                lab.retire_older(i, hook_timeout)?;
                lab.wait_for("the newer NAT to be the AZ's", timeout, || async {
                    Ok(lab.nat(i).map(|n| n.instance.id) != old && lab.az_ok(i).await)
                })
                .await?;
            }
            Ok(())
        }
        Scenario::Replay => {
            let (_, a, b) = claim_on_az0(lab, "ok")?;
            let capture = forge::Capture::start(&lab.rtr.path(), a, b, forge::PEER_PORT)?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let captured = capture.finish();
            if captured.is_empty() {
                bail!("captured no heartbeat from {a} to {b}");
            }
            let rogue = forge::rogue_host(lab)?;
            forge::send_raw(&rogue.path(), captured.clone())?;
            lab.note(format!(
                "replayed {} captured heartbeats at once",
                captured.len()
            ));
            tokio::time::sleep(Duration::from_secs(12)).await;
            forge::send_raw(&rogue.path(), captured.clone())?;
            lab.note(format!(
                "replayed {} captured heartbeats 12 s later",
                captured.len()
            ));
            Ok(())
        }
    }
}

/// Wait until the NAT launched beside AZ `i`'s holds AZ `i`'s route, then
/// watch two NATs share the AZ for `intervals` reconcile intervals (long
/// enough for routes passed back and forth to show).
async fn newcomer_takes(lab: &Lab, i: usize, timeout: Duration, intervals: u32) -> Result<()> {
    let eni = lab
        .newcomer_eni(i)
        .ok_or_else(|| anyhow!("no NAT was launched beside AZ {i}'s"))?;
    lab.wait_for("the newer NAT to hold its AZ", timeout, || async {
        Ok(lab.route_target(i).await?.as_deref() == Some(eni.as_str()))
    })
    .await?;
    lab.note(format!("the newer NAT holds AZ {i}"));
    tokio::time::sleep(lab.opts.reconcile_interval * intervals).await;
    Ok(())
}

/// A claim about AZ 0's NAT, its address and AZ 1's NAT's.
fn claim_on_az0(lab: &Lab, status: &'static str) -> Result<(forge::Claim, Ipv4Addr, Ipv4Addr)> {
    let (Some(a), Some(b)) = (lab.nat(0), lab.nat(1)) else {
        bail!("this scenario needs two AZs with a NAT each (--azs 2)");
    };
    let claim = forge::Claim {
        instance: a.instance.id.clone(),
        az: a.instance.az.clone(),
        status,
    };
    Ok((
        claim,
        a.instance.private_ip.parse()?,
        b.instance.private_ip.parse()?,
    ))
}

/// Send AZ 1's NAT, through its flow hand-off tunnel, heartbeats that say
/// AZ 0's NAT is `status`, from AZ 1's private host, every 100 ms for
/// `run`: each wraps a datagram "from" AZ 0's NAT to AZ 1's heartbeat port.
fn forge_tunnel(
    lab: &Lab,
    status: &'static str,
    run: Duration,
) -> Result<std::thread::JoinHandle<u64>> {
    let (claim, a, b) = claim_on_az0(lab, status)?;
    let socket = lab.azs[1]
        .host
        .bind_udp(std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    Ok(forge::repeat(run, Duration::from_millis(100), move |seq| {
        for m in [claim.v1(seq), claim.v2_wrong_key(seq)] {
            let inner = forge::ipv4_udp(a, b, forge::PEER_PORT, forge::PEER_PORT, &m);
            let outer = forge::vxlan(forge::VNI, forge::tunnel_mac(b), &inner);
            socket.send_to(&outer, (b, forge::TUNNEL_PORT))?;
        }
        Ok(())
    }))
}

/// AZ 0's kernel stops forwarding: a foreign table drops everything.
fn stop_forwarding(lab: &Lab) -> Result<()> {
    lab.stop_forwarding(0, "chaos")
}

async fn lab_ok(lab: &Lab) -> bool {
    for i in 0..lab.azs.len() {
        if !lab.az_ok(i).await {
            return false;
        }
    }
    true
}

/// Recovered: the scenario has run its course (`done`: e.g. the instance
/// was replaced), every AZ is on its own running NAT with its Elastic IP,
/// and the affected AZ's meter has answered steadily for 2 s. Effects can
/// take a moment to show, so at least 3 s are watched.
async fn wait_recovered(
    lab: &Lab,
    meter: &crate::lab::Meter,
    injected: Instant,
    timeout: Duration,
    done: &dyn Fn() -> bool,
) -> bool {
    let steady = Duration::from_secs(2);
    while injected.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if injected.elapsed() < Duration::from_secs(3) {
            continue;
        }
        let r = meter.peek();
        let now = meter.started.elapsed();
        let quiet = r
            .last_failure
            .is_none_or(|f| now.saturating_sub(f) >= steady);
        if quiet && done() && lab_ok(lab).await {
            return true;
        }
    }
    false
}

/// One line of `hanat-lab bench failover`.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub scenario: Scenario,
    pub mode: String,
    pub runs: usize,
    pub recovered: usize,
    /// Runs that ended with a host still failing (their outage counts to
    /// the end of the run).
    pub ended_in_outage: usize,
    /// Outage (longest gap) percentiles, ms: p50, p95, max.
    pub outage: (u64, u64, u64),
    /// Lost requests: p50, max.
    pub lost: (u64, u64),
    /// Route changes: p50, max.
    pub route_changes: (u64, u64),
    /// Sessions kept: fewest in a run, and sessions per run.
    pub sessions_kept: (usize, usize),
    /// Runs whose UDP stream was kept, and runs with one.
    pub streams_kept: (usize, usize),
}

/// The nearest-rank percentile `p` (0-100) of `v`.
pub fn percentile(v: &[u64], p: u64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = (p * s.len() as u64).div_ceil(100).max(1) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn bench_row(scenario: Scenario, mode: &str, reports: &[Report]) -> BenchRow {
    let outage: Vec<u64> = reports.iter().map(|r| r.outage_ms).collect();
    let lost: Vec<u64> = reports.iter().map(|r| r.lost as u64).collect();
    let routes: Vec<u64> = reports.iter().map(|r| r.route_changes as u64).collect();
    BenchRow {
        scenario,
        mode: mode.to_owned(),
        runs: reports.len(),
        recovered: reports.iter().filter(|r| r.recovered).count(),
        ended_in_outage: reports.iter().filter(|r| r.ended_in_outage).count(),
        outage: (
            percentile(&outage, 50),
            percentile(&outage, 95),
            percentile(&outage, 100),
        ),
        lost: (percentile(&lost, 50), percentile(&lost, 100)),
        route_changes: (percentile(&routes, 50), percentile(&routes, 100)),
        sessions_kept: (
            reports.iter().map(|r| r.sessions.kept).min().unwrap_or(0),
            reports
                .iter()
                .map(|r| r.sessions.sessions)
                .max()
                .unwrap_or(0),
        ),
        streams_kept: (
            (reports.iter())
                .filter(|r| r.sessions.stream.as_ref().is_some_and(|s| s.kept()))
                .count(),
            (reports.iter())
                .filter(|r| r.sessions.stream.is_some())
                .count(),
        ),
    }
}

/// A Markdown table of bench rows.
pub fn bench_table(rows: &[BenchRow]) -> String {
    let mut t = String::from(
        "| scenario | failover | recovered | outage p50 ms | p95 ms | max ms | lost p50 | lost max | route changes p50 | max | sessions kept (fewest) | UDP stream kept (runs) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let mut recovered = format!("{}/{}", r.recovered, r.runs);
        if r.recovered < r.runs {
            recovered.push_str(&format!(" (NOT: {})", r.runs - r.recovered));
        }
        if r.ended_in_outage > 0 {
            recovered.push_str(&format!(", {} ended in an outage", r.ended_in_outage));
        }
        t.push_str(&format!(
            "| {} | {} | {recovered} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {}/{} |\n",
            r.scenario.name(),
            r.mode,
            r.outage.0,
            r.outage.1,
            r.outage.2,
            r.lost.0,
            r.lost.1,
            r.route_changes.0,
            r.route_changes.1,
            r.sessions_kept.0,
            r.sessions_kept.1,
            r.streams_kept.0,
            r.streams_kept.1
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
        assert_eq!(percentile(&v, 50), 5);
        assert_eq!(percentile(&v, 95), 10);
        assert_eq!(percentile(&v, 100), 10);
        assert_eq!(percentile(&[7], 95), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()).unwrap(), s);
        }
        assert!(
            Scenario::parse("meteor")
                .unwrap_err()
                .to_string()
                .contains("choose one of: none")
        );
    }
}
