//! The status board: what the loops record as they go (their last errors,
//! where this AZ's routes point, the Elastic IPs, what this NAT covers,
//! when each last succeeded), for the snapshot ([`super::snapshot`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::decide::holder::Why;
use crate::domain::{InstanceId, Status};
use crate::status::RouteView;

/// What the loops record for `/status`, in [`super::ctx::Ctx::board`].
#[derive(Debug)]
pub struct StatusBoard {
    /// When this NAT's verdict last changed.
    pub verdict_since: Instant,
    /// This AZ's route tables in scope and where each default route points
    /// after the last successful pass, and whether that is this NAT.
    pub own_routes: Vec<RouteView>,
    /// The Elastic IP is on this NAT (`None`: claiming is off).
    pub elastic_ip: Option<bool>,
    /// Elastic IPs held of those wanted (`snat.addresses`).
    pub elastic_ips: Option<(usize, usize)>,
    /// None of the group's Elastic IPs is on this NAT, and each is held by
    /// another running NAT (the pool has no spare).
    pub pool_taken: bool,
    /// The NAT of this AZ that holds its routes instead of this one, and
    /// why, as the last routes pass found.
    pub yielded_to: Option<(InstanceId, Why)>,
    /// The application status check this instance is associated with.
    pub status_check: Option<String>,
    /// The other AZs this NAT covers, and how (`this_nat`, `nat_gateway`),
    /// as the peers loop last decided.
    pub covering: Vec<(String, &'static str)>,
    /// AZs this NAT adopted and gave up (their own NAT is healthy again),
    /// with when: their routes point here until that NAT takes them back.
    pub handed_back: BTreeMap<String, Instant>,
    /// The last `PutMetricData` that succeeded.
    pub last_publish: Option<Instant>,
    pub last_reconcile: Option<Instant>,
    /// The verdict the last successful routes pass ran under.
    pub reconciled_as: Option<Status>,
    pub last_converge: Option<Instant>,
    /// Per loop, its last error and when (cleared by a success).
    pub errors: BTreeMap<&'static str, (Instant, String)>,
    /// How long this daemon has been unable to send its probes, and why.
    pub unable_to_probe: Option<(Duration, String)>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            verdict_since: Instant::now(),
            own_routes: Vec::new(),
            elastic_ip: None,
            elastic_ips: None,
            pool_taken: false,
            yielded_to: None,
            status_check: None,
            covering: Vec::new(),
            handed_back: BTreeMap::new(),
            last_publish: None,
            last_reconcile: None,
            reconciled_as: None,
            last_converge: None,
            errors: BTreeMap::new(),
            unable_to_probe: None,
        }
    }
}

impl StatusBoard {
    /// The peers loop's new decision: the AZs this NAT covers. An AZ it
    /// adopted and no longer does is noted as handed back.
    pub fn cover(&mut self, azs: Vec<(String, &'static str)>) {
        let now = Instant::now();
        for (az, via) in &self.covering {
            if *via == "this_nat" && !azs.iter().any(|(a, _)| a == az) {
                self.handed_back.insert(az.clone(), now);
            }
        }
        self.handed_back
            .retain(|az, _| !azs.iter().any(|(a, _)| a == az));
        self.covering = azs;
    }

    /// What this NAT forwards for other AZs, for `ForwardingNat`: what it
    /// covers, and the AZs it handed back whose routes still point here
    /// (their own NAT has not taken them back yet; under a throttled API
    /// that can take seconds, and this NAT forwards for them meanwhile).
    /// `still_here(az, since)`: whether a reading of `az` taken after
    /// `since` shows a route pointing here (`None`: no such reading). An AZ
    /// handed back `cap` ago is dropped even unread.
    pub fn forwarding_for(
        &mut self,
        still_here: impl Fn(&str, Instant) -> Option<bool>,
        cap: Duration,
    ) -> Vec<(String, &'static str)> {
        self.handed_back
            .retain(|az, at| at.elapsed() < cap && still_here(az, *at) != Some(false));
        let mut out = self.covering.clone();
        out.extend(self.handed_back.keys().map(|az| (az.clone(), "this_nat")));
        out
    }

    /// `name`'s last round failed with `error`, or (`None`) succeeded.
    pub fn error(&mut self, name: &'static str, error: Option<String>) {
        match error {
            Some(e) => {
                self.errors.insert(name, (Instant::now(), e));
            }
            None => {
                self.errors.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_az_handed_back_stays_forwarded_here_until_its_routes_are_seen_gone() {
        let mut b = StatusBoard::default();
        let long = Duration::from_secs(30);
        b.cover(vec![
            ("az-b".into(), "this_nat"),
            ("az-c".into(), "nat_gateway"),
        ]);
        // Its own NAT is healthy again: az-b is given up; az-c, pointed at
        // a NAT Gateway, never pointed here.
        b.cover(vec![]);
        assert!(b.covering.is_empty());
        let b_here = [("az-b".to_owned(), "this_nat")];
        // Not read since, or read with its routes still here: still counted.
        assert_eq!(b.forwarding_for(|_, _| None, long), b_here);
        assert_eq!(b.forwarding_for(|_, _| Some(true), long), b_here);
        // Read with its routes gone (to its own NAT): no longer.
        assert_eq!(b.forwarding_for(|_, _| Some(false), long), []);
        assert!(b.handed_back.is_empty());
        // Adopted again: covered, not handed back.
        b.cover(vec![("az-b".into(), "this_nat")]);
        b.cover(vec![("az-b".into(), "this_nat")]);
        assert!(b.handed_back.is_empty());
        b.cover(vec![]);
        assert_eq!(b.forwarding_for(|_, _| None, Duration::ZERO), []);
        assert!(b.handed_back.is_empty(), "forgotten after the cap, unread");
    }
}
