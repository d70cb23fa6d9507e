//! Whether this NAT is healthy, and what else is wrong: the policy behind
//! `/health` (a 503 gets the NAT replaced through the witness) and the
//! reasons and warnings of `/status`. Pure.
//!
//! Only forwarding makes a NAT unhealthy: its verdict is not `ok`, or a
//! loop is stuck. Everything else (an AWS API that fails, routes another
//! NAT holds for a while, an Elastic IP not yet claimed, probes this daemon
//! cannot send) is a warning, so a health check wired to replace unhealthy
//! instances never replaces a NAT that forwards.

use std::time::Duration;

use crate::domain::{Status, human};

/// What the health policy reads.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub verdict: Status,
    /// Loops stuck in a round, and for how long.
    pub stuck: &'a [(&'static str, Duration)],
    /// This AZ's route tables in scope, and how many point elsewhere.
    pub routes: usize,
    pub routes_elsewhere: usize,
    /// Another NAT of this AZ holds them ([`super::holder`]).
    pub yielded: bool,
    /// The AZ's Elastic IP is on this NAT (`None`: claiming is off).
    pub elastic_ip: Option<bool>,
    /// Elastic IPs held, of those wanted.
    pub elastic_ips: Option<(usize, usize)>,
    /// Private addresses new connections are translated to.
    pub snat_addresses: usize,
    /// The application status check configured, and whether this instance
    /// is associated with it yet.
    pub status_check: Option<(&'a str, bool)>,
    /// Each loop's last error: (loop, error).
    pub errors: &'a [(&'a str, &'a str)],
    /// How long this daemon has been unable to send its probes, and why.
    pub unable_to_probe: Option<(Duration, &'a str)>,
}

/// Why the NAT is unhealthy (empty: it is healthy), and the warnings.
pub fn health(f: &Facts) -> (Vec<String>, Vec<String>) {
    let mut reasons = Vec::new();
    match f.verdict {
        Status::Ok => {}
        Status::Starting => {
            reasons.push("starting: its forwarding probe has not passed yet".into())
        }
        Status::Failing => reasons.push("failing: its forwarding probes fail".into()),
        Status::Exiting => reasons.push("exiting: a planned exit is under way".into()),
    }
    for (name, ran) in f.stuck {
        reasons.push(format!(
            "the {name} loop is stuck ({}s into a round)",
            ran.as_secs()
        ));
    }
    (reasons, warnings(f))
}

fn warnings(f: &Facts) -> Vec<String> {
    let mut warnings = Vec::new();
    if f.routes_elsewhere > 0 && f.verdict == Status::Ok && !f.yielded {
        warnings.push(format!(
            "{} of this AZ's {} route tables do not point at this NAT",
            f.routes_elsewhere, f.routes
        ));
    }
    if f.elastic_ip == Some(false) {
        warnings.push("this AZ's Elastic IP is not on this NAT".into());
    }
    if let Some((held, wanted)) = f.elastic_ips
        && held < wanted
        && wanted > 1
    {
        warnings.push(format!(
            "{held} of {wanted} Elastic IPs held (snat.addresses): new connections use {} addresses",
            f.snat_addresses
        ));
    }
    if let Some((check, false)) = f.status_check {
        warnings.push(format!(
            "not yet under application status check {check} (peers.status_check): a freeze would be caught only by EC2's own checks"
        ));
    }
    for (what, error) in f.errors {
        warnings.push(format!("{what}: {error}"));
    }
    if let Some((unable, why)) = f.unable_to_probe {
        warnings.push(format!(
            "cannot send its probes for {} ({why}): no evidence about forwarding, so the verdict stays; the daemon restarts itself if it lasts probe.unable_restart",
            human(unable)
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forwarding_makes_a_nat_unhealthy() {
        let errors = [("routes", "DescribeRouteTables: throttled")];
        let stuck = [("routes", Duration::from_secs(42))];
        // (facts, unhealthy because, warned about)
        let ok = Facts {
            verdict: Status::Ok,
            ..Facts::default()
        };
        let table: [(Facts, &[&str], &[&str]); 8] = [
            (ok.clone(), &[], &[]),
            (
                Facts {
                    verdict: Status::Failing,
                    ..ok.clone()
                },
                &["failing: its forwarding probes fail"],
                &[],
            ),
            (
                Facts {
                    verdict: Status::Starting,
                    routes: 2,
                    routes_elsewhere: 2,
                    ..ok.clone()
                },
                &["starting"],
                &[],
            ),
            (
                Facts {
                    stuck: &stuck,
                    ..ok.clone()
                },
                &["the routes loop is stuck (42s into a round)"],
                &[],
            ),
            (
                Facts {
                    routes: 3,
                    routes_elsewhere: 1,
                    elastic_ip: Some(false),
                    errors: &errors,
                    ..ok.clone()
                },
                &[],
                &[
                    "1 of this AZ's 3 route tables do not point at this NAT",
                    "this AZ's Elastic IP is not on this NAT",
                    "routes: DescribeRouteTables: throttled",
                ],
            ),
            (
                // Another NAT of the AZ holds its routes: no warning.
                Facts {
                    routes: 2,
                    routes_elsewhere: 2,
                    yielded: true,
                    ..ok.clone()
                },
                &[],
                &[],
            ),
            (
                Facts {
                    elastic_ips: Some((1, 3)),
                    snat_addresses: 1,
                    status_check: Some(("asc-1", false)),
                    ..ok.clone()
                },
                &[],
                &[
                    "1 of 3 Elastic IPs held (snat.addresses): new connections use 1 addresses",
                    "not yet under application status check asc-1",
                ],
            ),
            (
                Facts {
                    unable_to_probe: Some((Duration::from_millis(3200), "EMFILE")),
                    status_check: Some(("asc-1", true)),
                    ..ok.clone()
                },
                &[],
                &["cannot send its probes for 3.2s (EMFILE)"],
            ),
        ];
        for (facts, unhealthy, warned) in table {
            let (reasons, warnings) = health(&facts);
            assert_eq!(reasons.len(), unhealthy.len(), "{facts:?}: {reasons:?}");
            for (r, want) in reasons.iter().zip(unhealthy) {
                assert!(r.starts_with(want), "{r} / {want}");
            }
            assert_eq!(warnings.len(), warned.len(), "{facts:?}: {warnings:?}");
            for (w, want) in warnings.iter().zip(warned) {
                assert!(w.starts_with(want), "{w} / {want}");
            }
        }
    }
}
