//! The forwarding probe (`[probe]`, formerly `[heartbeat]`).

use std::time::Duration;

use serde::Deserialize;

use super::de::duration;
use crate::domain::{Ipv4Cidr, ProbeTarget};

/// The forwarding probe: this NAT's own check that packets flow through
/// it (`[probe]`; formerly `[heartbeat]`, still read).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Probe {
    /// Where probes go, through the NAT path. Any target answering means
    /// the NAT forwards.
    pub targets: Vec<ProbeTarget>,
    /// A round starts this often, whether or not the last has answered.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// How long a round waits for its answers (at most 3 × `interval`:
    /// rounds overlap).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed rounds (a round fails only when every target
    /// fails) before the NAT says `failing` and reconverges the kernel
    /// and, if the next round also fails, marks the instance Unhealthy.
    pub fall: u32,
    /// Consecutive good rounds that clear a failure state.
    pub rise: u32,
    /// After start-up, failures do not count until the first good round or
    /// until this much time has passed, whichever comes first.
    #[serde(deserialize_with = "duration")]
    pub grace_period: Duration,
    /// Name of the daemon's own probe network namespace (`/run/netns/NAME`).
    pub probe_namespace: String,
    /// A /30 for the veth between the host and the probe namespace. Must not
    /// overlap the VPC; it is NATed exactly like VPC traffic.
    pub probe_cidr: Ipv4Cidr,
    /// A daemon that cannot *send* its probes (out of file descriptors or
    /// memory: no evidence that packets stop flowing) for this long ends
    /// itself (exit 75) so systemd starts a fresh one; the kernel forwards
    /// meanwhile. It never reports its instance Unhealthy for that.
    #[serde(deserialize_with = "duration")]
    pub unable_restart: Duration,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            targets: [
                "tcp://1.1.1.1:443",
                "tcp://8.8.8.8:443",
                "tcp://9.9.9.9:443",
            ]
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect(),
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(300),
            fall: 2,
            rise: 2,
            grace_period: Duration::from_secs(60),
            probe_namespace: "hanat-probe".into(),
            probe_cidr: Ipv4Cidr {
                addr: std::net::Ipv4Addr::new(198, 19, 255, 252),
                prefix: 30,
            },
            unable_restart: Duration::from_secs(10),
        }
    }
}

impl Probe {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.targets.is_empty() {
            return Err(("probe.targets", "at least one target is required".into()));
        }
        if self.fall == 0 {
            return Err(("probe.fall", "must be at least 1".into()));
        }
        if self.rise == 0 {
            return Err(("probe.rise", "must be at least 1".into()));
        }
        if self.interval < Duration::from_millis(100) {
            return Err(("probe.interval", "must be at least 100ms".into()));
        }
        if self.unable_restart < self.interval * 3 {
            return Err((
                "probe.unable_restart",
                "must be at least 3 × probe.interval".into(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval * 3 {
            return Err((
                "probe.timeout",
                format!(
                    "must be more than 0 and at most 3 × probe.interval ({})",
                    crate::domain::human(self.interval * 3)
                ),
            ));
        }
        if self.probe_cidr.prefix > 30 {
            return Err(("probe.probe_cidr", "must be a /30 or larger".into()));
        }
        let ns = &self.probe_namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                "probe.probe_namespace",
                format!("`{ns}` must be 1-64 characters of letters, digits, - and _"),
            ));
        }
        Ok(())
    }
}
