//! The status board: what the loops record as they go (their last errors,
//! where this AZ's routes point, the Elastic IPs, what this NAT covers,
//! when each last succeeded), for the snapshot ([`super::snapshot`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::decide::holder::Why;
use crate::domain::InstanceId;
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
    /// The last `PutMetricData` that succeeded.
    pub last_publish: Option<Instant>,
    pub last_reconcile: Option<Instant>,
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
            last_publish: None,
            last_reconcile: None,
            last_converge: None,
            errors: BTreeMap::new(),
            unable_to_probe: None,
        }
    }
}

impl StatusBoard {
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
