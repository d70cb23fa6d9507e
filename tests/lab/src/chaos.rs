//! Chaos scenarios: build a lab, wait for convergence, inject one failure in
//! AZ 0, measure what every private host feels until the lab has recovered
//! (or a timeout), and report.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cloud::DefaultTarget;
use crate::lab::{Lab, LabOptions, MeterReport};

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
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::None,
        Scenario::KillDaemon,
        Scenario::TerminateInstance,
        Scenario::StopForwarding,
        Scenario::HijackRoute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::KillDaemon => "kill-daemon",
            Scenario::TerminateInstance => "terminate-instance",
            Scenario::StopForwarding => "stop-forwarding",
            Scenario::HijackRoute => "hijack-route",
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
    pub scenario: Scenario,
    pub azs: usize,
    pub recovered: bool,
    /// Longest gap between answered requests any private host saw.
    pub outage_ms: u64,
    /// Requests lost, all hosts.
    pub lost: usize,
    pub sent: usize,
    /// From injection to the first answer after the last failure in the
    /// affected AZ (0 when nothing failed).
    pub recovery_ms: u64,
    /// How often the source address seen by the internet changed.
    pub source_ip_changes: usize,
    pub events: Vec<String>,
}

impl Report {
    pub fn json(&self) -> String {
        let events: Vec<String> = self.events.iter().map(|e| json_string(e)).collect();
        format!(
            "{{\"scenario\":\"{}\",\"azs\":{},\"recovered\":{},\"outage_ms\":{},\"lost\":{},\"sent\":{},\
             \"recovery_ms\":{},\"source_ip_changes\":{},\"events\":[{}]}}",
            self.scenario.name(),
            self.azs,
            self.recovered,
            self.outage_ms,
            self.lost,
            self.sent,
            self.recovery_ms,
            self.source_ip_changes,
            events.join(",")
        )
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "scenario {}: {} — longest gap {} ms, {} of {} requests lost, recovery {} ms, source IP changes {}\n",
            self.scenario.name(),
            if self.recovered {
                "recovered"
            } else {
                "NOT recovered"
            },
            self.outage_ms,
            self.lost,
            self.sent,
            self.recovery_ms,
            self.source_ip_changes
        );
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
}

/// Run one scenario end to end on a fresh lab.
pub async fn run(scenario: Scenario, opts: ChaosOptions) -> Result<Report> {
    let lab = Lab::build(opts.lab.clone()).await?;
    lab.start_daemons()?;
    lab.wait_converged(Duration::from_secs(60)).await?;
    let meters: Vec<_> = (0..lab.azs.len())
        .map(|i| lab.meter(i, opts.every))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let injected = Instant::now();
    let since_start = injected.duration_since(meters[0].started);
    inject(&lab, scenario).await?;
    let recovered = wait_recovered(&lab, &meters[0], injected, opts.timeout).await;
    // A little more steady state, so a relapse would show.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let reports: Vec<MeterReport> = meters.into_iter().map(|m| m.finish()).collect();
    let affected = &reports[0];
    let recovery_ms = match affected.first_success_after_last_failure {
        Some(t) if affected.lost > 0 => t.saturating_sub(since_start).as_millis() as u64,
        _ => 0,
    };
    let events = lab
        .events()
        .into_iter()
        .filter(|(t, _)| *t >= injected)
        .map(|(t, e)| format!("+{} ms {e}", t.duration_since(injected).as_millis()))
        .collect();
    Ok(Report {
        scenario,
        azs: lab.azs.len(),
        recovered: recovered && lab_ok(&lab).await,
        outage_ms: reports
            .iter()
            .map(|r| r.longest_gap.as_millis() as u64)
            .max()
            .unwrap_or(0),
        lost: reports.iter().map(|r| r.lost).sum(),
        sent: reports.iter().map(|r| r.sent).sum(),
        recovery_ms,
        source_ip_changes: reports.iter().map(|r| r.source_changes).sum(),
        events,
    })
}

async fn inject(lab: &Lab, scenario: Scenario) -> Result<()> {
    match scenario {
        Scenario::None => Ok(()),
        Scenario::KillDaemon => lab.kill_daemon(0),
        Scenario::TerminateInstance => lab.terminate_instance(0).await.map(drop),
        Scenario::StopForwarding => lab
            .nat_exec(
                0,
                "nft",
                &["add table inet chaos; add chain inet chaos drop_all { type filter hook forward priority -10; policy drop; }"],
            )
            .map(drop),
        Scenario::HijackRoute => {
            lab.cloud
                .set_default_route(&lab.azs[0].private_route_table, DefaultTarget::Gateway(&lab.igw_id))
                .await
        }
    }
}

async fn lab_ok(lab: &Lab) -> bool {
    for i in 0..lab.azs.len() {
        if !lab.az_ok(i).await {
            return false;
        }
    }
    true
}

/// Recovered: every AZ on its own running NAT with egress, and the
/// affected AZ's meter answering steadily for 2 s. Effects can take a
/// moment to show, so at least 3 s are watched.
async fn wait_recovered(
    lab: &Lab,
    meter: &crate::lab::Meter,
    injected: Instant,
    timeout: Duration,
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
        if quiet && lab_ok(lab).await {
            return true;
        }
    }
    false
}
