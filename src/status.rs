//! This NAT's state as `/status` serves it ([`Snapshot`]) and as `hanat
//! status` prints it ([`render`]): shared by the daemon, which fills it,
//! and the CLI, which reads it. Pure data and text.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// This NAT as `/status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub instance: String,
    pub az: String,
    pub verdict: String,
    pub verdict_for_s: f64,
    pub healthy: bool,
    /// Why it is not healthy (empty when it is).
    pub reasons: Vec<String>,
    /// What is wrong that does not make it unhealthy.
    pub warnings: Vec<String>,
    pub routes: Vec<RouteView>,
    /// Another NAT of this AZ holds its routes: which, and why.
    #[serde(default)]
    pub yielded_to: Option<String>,
    pub peers: Vec<PeerView>,
    /// `None`: busy (a loop held them for a kernel command just then).
    pub handoffs: Option<Vec<HandoffView>>,
    pub elastic_ip_held: Option<bool>,
    /// Elastic IPs held, of those wanted (`snat.addresses`).
    #[serde(default)]
    pub elastic_ips: Option<(usize, usize)>,
    /// The private addresses new connections are translated to.
    #[serde(default)]
    pub snat_addresses: Vec<String>,
    /// The application status check watching this NAT's `/health`, once
    /// this instance is associated with it (`peers.status_check`).
    #[serde(default)]
    pub status_check: Option<String>,
    pub conntrack_entries: i64,
    pub conntrack_max: i64,
    /// Publishing to CloudWatch, when on (`[cloudwatch]`).
    #[serde(default)]
    pub cloudwatch: Option<CloudWatchView>,
    pub since_reconcile_s: Option<f64>,
    pub since_converge_s: Option<f64>,
    pub errors: Vec<ErrorView>,
    /// The daemon cannot send its probes (no evidence about forwarding):
    /// for how long and why.
    #[serde(default)]
    pub unable_to_probe: Option<(f64, String)>,
}

impl Snapshot {
    /// The conntrack table's fill, 0 to 1 (`None`: its size is unknown).
    pub fn conntrack_fill(&self) -> Option<f64> {
        (self.conntrack_max > 0).then(|| self.conntrack_entries as f64 / self.conntrack_max as f64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudWatchView {
    pub namespace: String,
    pub every_s: f64,
    /// Since the last call that succeeded (`None`: none yet).
    pub last_put_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub table: String,
    /// Where its default route points; `None`: nowhere.
    pub target: Option<String>,
    pub this_nat: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerView {
    pub instance: String,
    pub az: String,
    pub ip: Ipv4Addr,
    /// Its last word, if heard within `peers.dead_after`.
    pub verdict: Option<String>,
    pub silent_s: Option<f64>,
    /// EC2 says it is gone, or it left its group.
    pub gone: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandoffView {
    pub peer: Ipv4Addr,
    pub sources: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorView {
    pub what: String,
    pub error: String,
    pub ago_s: f64,
}

/// Seconds as a person reads them ([`crate::domain::human`]).
pub fn human(secs: f64) -> String {
    crate::domain::human(std::time::Duration::from_secs_f64(secs.max(0.0)))
}

/// What `hanat status` prints: one screen.
pub fn render(s: &Snapshot) -> String {
    let mut out = format!(
        "{} ({}): {} for {} — {}\n",
        s.instance,
        s.az,
        s.verdict,
        human(s.verdict_for_s),
        match s.healthy {
            true => "healthy".to_owned(),
            false => format!("UNHEALTHY: {}", s.reasons.join("; ")),
        }
    );
    let mut lines = Vec::new();
    routes(s, &mut lines);
    peers(s, &mut lines);
    handoffs(s, &mut lines);
    addresses(s, &mut lines);
    upkeep(s, &mut lines);
    problems(s, &mut lines);
    for (head, text) in lines {
        out.push_str(&format!("  {head:<11}{text}\n"));
    }
    out
}

/// One line of the screen: its heading and its text.
type Lines = Vec<(&'static str, String)>;

fn routes(s: &Snapshot, out: &mut Lines) {
    if s.routes.is_empty() {
        out.push(("routes", "none in scope yet".into()));
    }
    for r in &s.routes {
        let to = match (&r.target, r.this_nat) {
            (_, true) => "this NAT".to_owned(),
            (Some(t), false) => t.clone(),
            (None, false) => "no default route".to_owned(),
        };
        out.push(("routes", format!("{} → {to}", r.table)));
    }
    if let Some(y) = &s.yielded_to {
        out.push(("routes", format!("left to {y}")));
    }
}

fn peers(s: &Snapshot, out: &mut Lines) {
    if s.peers.is_empty() {
        out.push(("peers", "none".into()));
    }
    for p in &s.peers {
        let said = match (&p.verdict, p.silent_s) {
            (Some(v), Some(t)) => format!("{v} (heard {} ago)", human(t)),
            (None, Some(t)) => format!("silent for {}", human(t)),
            (_, None) => "never heard".to_owned(),
        };
        let gone = if p.gone { ", gone" } else { "" };
        out.push((
            "peer",
            format!("{} {} {}: {said}{gone}", p.instance, p.az, p.ip),
        ));
    }
}

fn handoffs(s: &Snapshot, out: &mut Lines) {
    match s.handoffs.as_deref() {
        None => out.push(("hand-offs", "(busy, ask again)".into())),
        Some([]) => out.push(("hand-offs", "none".into())),
        Some(_) => {}
    }
    for h in s.handoffs.iter().flatten() {
        out.push(("hand-off", format!("{} ← {}", h.peer, h.sources.join(", "))));
    }
}

fn addresses(s: &Snapshot, out: &mut Lines) {
    let eip = match s.elastic_ip_held {
        Some(true) => "held",
        Some(false) => "NOT held",
        None => "not claimed (eip.claim = false)",
    };
    out.push(("Elastic IP", eip.into()));
    if let Some((held, wanted)) = s.elastic_ips.filter(|(_, w)| *w > 1) {
        out.push((
            "addresses",
            format!(
                "{held} of {wanted} Elastic IPs held; new connections spread over {}",
                s.snat_addresses.join(", ")
            ),
        ));
    }
    if let Some(check) = &s.status_check {
        out.push((
            "witness",
            format!("application status check {check} watches /health"),
        ));
    }
    let fill = s
        .conntrack_fill()
        .map(|f| format!(" ({:.1}%)", 100.0 * f))
        .unwrap_or_default();
    out.push((
        "conntrack",
        format!("{} of {}{fill}", s.conntrack_entries, s.conntrack_max),
    ));
}

/// When CloudWatch, the routes and the kernel were last seen to.
fn upkeep(s: &Snapshot, out: &mut Lines) {
    let ago = |v: Option<f64>| v.map_or("not yet".to_owned(), |t| format!("{} ago", human(t)));
    if let Some(cw) = &s.cloudwatch {
        out.push((
            "cloudwatch",
            format!(
                "namespace {} every {}, last put {}",
                cw.namespace,
                human(cw.every_s),
                ago(cw.last_put_s)
            ),
        ));
    }
    out.push((
        "last",
        format!(
            "route pass {}, kernel converge {}",
            ago(s.since_reconcile_s),
            ago(s.since_converge_s)
        ),
    ));
}

/// What cannot be done, what failed, what else is wrong.
fn problems(s: &Snapshot, out: &mut Lines) {
    if let Some((unable_s, why)) = &s.unable_to_probe {
        out.push((
            "probes",
            format!(
                "cannot be sent for {} ({why}); the verdict stays as it was",
                human(*unable_s)
            ),
        ));
    }
    if s.errors.is_empty() {
        out.push(("errors", "none".into()));
    }
    for e in &s.errors {
        out.push((
            "error",
            format!("{}: {} ({} ago)", e.what, e.error, human(e.ago_s)),
        ));
    }
    for w in s
        .warnings
        .iter()
        .filter(|w| !s.errors.iter().any(|e| w.ends_with(&e.error)))
    {
        out.push(("warning", w.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_as_a_person_reads_them() {
        assert_eq!(human(0.26), "260ms");
        assert_eq!(human(3.04), "3s");
        assert_eq!(human(252.0), "4m 12s");
        assert_eq!(human(-1.0), "0ms");
    }

    #[test]
    fn a_status_screen_says_what_is_wrong() {
        let s = Snapshot {
            instance: "i-0a".into(),
            az: "eu-west-1a".into(),
            verdict: "failing".into(),
            verdict_for_s: 3.0,
            healthy: false,
            reasons: vec!["failing: its forwarding probes fail".into()],
            warnings: vec!["routes: DescribeRouteTables: throttled".into()],
            routes: vec![RouteView {
                table: "rtb-1".into(),
                target: Some("eni-9".into()),
                this_nat: false,
            }],
            yielded_to: Some("i-0c (a newer NAT of this AZ holds it)".into()),
            peers: vec![PeerView {
                instance: "i-0b".into(),
                az: "eu-west-1b".into(),
                ip: Ipv4Addr::new(10, 0, 2, 4),
                verdict: Some("ok".into()),
                silent_s: Some(0.2),
                gone: false,
            }],
            handoffs: Some(vec![]),
            elastic_ip_held: Some(true),
            elastic_ips: Some((1, 1)),
            snat_addresses: vec!["10.0.0.10".into()],
            status_check: Some("asc-0a".into()),
            conntrack_entries: 1_000,
            conntrack_max: 262_144,
            cloudwatch: Some(CloudWatchView {
                namespace: "hanat".into(),
                every_s: 60.0,
                last_put_s: Some(75.0),
            }),
            since_reconcile_s: Some(12.0),
            since_converge_s: None,
            errors: vec![ErrorView {
                what: "routes".into(),
                error: "DescribeRouteTables: throttled".into(),
                ago_s: 4.0,
            }],
            unable_to_probe: Some((3.2, "not sent: Too many open files (os error 24)".into())),
        };
        let text = render(&s);
        for want in [
            "i-0a (eu-west-1a): failing for 3s — UNHEALTHY: failing: its forwarding probes fail",
            "rtb-1 → eni-9",
            "left to i-0c (a newer NAT of this AZ holds it)",
            "i-0b eu-west-1b 10.0.2.4: ok (heard 200ms ago)",
            "1000 of 262144 (0.4%)",
            "witness    application status check asc-0a watches /health",
            "route pass 12s ago, kernel converge not yet",
            "cloudwatch namespace hanat every 1m 0s, last put 1m 15s ago",
            "routes: DescribeRouteTables: throttled (4s ago)",
            "probes     cannot be sent for 3.2s (not sent: Too many open files (os error 24)); the verdict stays as it was",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(
            !text.contains("warning"),
            "the error is not repeated:\n{text}"
        );
    }
}
