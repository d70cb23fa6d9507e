//! Peer failover (`[peers]`): heartbeats between the NATs, who confirms a
//! silent one, failback, the fallback NAT Gateways, the witness.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::de::{blank_is_none, duration};
use crate::domain::NatGatewayId;

/// Failover between the NAT instances of one deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peers {
    /// `peer`: a healthy NAT adopts the private routes of an AZ whose NAT
    /// died; `none`: each AZ waits for its own replacement.
    pub failover: Failover,
    /// How the AZ's own NAT takes its routes back from an adopter:
    /// `immediate`, or `drain:<duration>` to let the adopter's connections
    /// finish first.
    #[serde(deserialize_with = "failback")]
    pub failback: Duration,
    /// UDP port of the heartbeats between NAT instances; the next port
    /// carries the flow hand-off tunnel.
    pub port: u16,
    /// How often each NAT tells its peers how it is (and at once when that
    /// changes). Datagrams are tiny: this can be short.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// A peer that has not been heard from for this long is suspect, and
    /// EC2 is asked about it; it is dead only when EC2 confirms its
    /// instance is gone (or impaired). A heartbeat older than this no
    /// longer counts. Formerly `dead_after`, still read.
    #[serde(deserialize_with = "duration", alias = "dead_after")]
    pub suspect_after: Duration,
    /// The tag on the Auto Scaling groups that marks one deployment; peers
    /// are the groups with the same value as ours.
    pub group_tag: String,
    /// After taking routes from a NAT that still forwards (a peer on a
    /// planned exit, or an adopter giving this AZ back), send the packets of
    /// connections it translates to it through a tunnel for at most this
    /// long (and only while it is heard from), so they are not reset.
    /// `0s` turns flow hand-off off.
    #[serde(deserialize_with = "duration")]
    pub flow_handoff: Duration,
    /// Per AZ, a managed NAT Gateway to point the AZ's private routes at
    /// when no NAT instance of the deployment is healthy to serve it; a NAT
    /// instance takes the routes back as soon as it is healthy. The key
    /// `"*"` ([`EVERY_AZ`]) names a regional NAT Gateway, which stands in
    /// for every AZ not named.
    pub fallback_nat_gateway_id: BTreeMap<String, NatGatewayId>,
    /// The Secrets Manager secret (ARN or name) holding the key that signs
    /// and checks heartbeats (`hanat/2`); its `AWSPREVIOUS` version is
    /// accepted too, for rotation. Without it (or empty), peer failover is
    /// off unless `accept_unauthenticated` is on.
    #[serde(deserialize_with = "blank_is_none")]
    pub key_secret: Option<String>,
    /// Accept unauthenticated `hanat/1` heartbeats (and send them when there
    /// is no key): only for a rolling upgrade from a version without keys.
    /// Anyone who can forge a NAT's source address can then fake its verdict.
    pub accept_unauthenticated: bool,
    /// An EC2 application status check (`asc-…`, or its ARN) that probes
    /// this NAT's `/health`: the daemon associates its own instance with it
    /// at start, and peers take "silent **and** impaired" (by this check or
    /// EC2's own status checks) as proof of death, as they take "silent and
    /// not running". Empty: EC2's own status checks still count.
    #[serde(deserialize_with = "blank_is_none")]
    pub status_check: Option<String>,
}

/// The key of `peers.fallback_nat_gateway_id` for a regional NAT Gateway
/// (one gateway for every AZ, in each AZ's own zone).
pub const EVERY_AZ: &str = "*";

impl Peers {
    /// The fallback NAT Gateway of `az`: its own, else the regional one.
    pub fn fallback_for(&self, az: &str) -> Option<&NatGatewayId> {
        let by_az = &self.fallback_nat_gateway_id;
        by_az.get(az).or_else(|| by_az.get(EVERY_AZ))
    }

    /// UDP port of the flow hand-off tunnel (VXLAN).
    pub fn tunnel_port(&self) -> u16 {
        self.port.saturating_add(1)
    }
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            failover: Failover::Peer,
            failback: Duration::ZERO,
            port: 7470,
            interval: Duration::from_millis(50),
            suspect_after: Duration::from_millis(250),
            group_tag: "hanat:stack".into(),
            flow_handoff: Duration::from_secs(300),
            fallback_nat_gateway_id: BTreeMap::new(),
            key_secret: None,
            accept_unauthenticated: false,
            status_check: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    Peer,
    None,
}

fn failback<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    if s == "immediate" {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        serde::de::Error::custom(format!(
            "`{s}` is neither `immediate` nor `drain:<duration>` like drain:60s"
        ))
    };
    let d = s.strip_prefix("drain:").ok_or_else(bad)?;
    humantime::parse_duration(d).map_err(|_| bad())
}

/// The id in an application status check's id or ARN
/// (`arn:aws:ec2:…:application-status-check/asc-…`, what CloudFormation's
/// `Ref` gives).
pub fn status_check_id(s: &str) -> Option<&str> {
    let id = s.rsplit('/').next()?;
    let hex = id.strip_prefix("asc-")?;
    let arn_ok =
        !s.contains('/') || s.starts_with("arn:") && s.contains(":application-status-check/");
    (arn_ok && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_alphanumeric())).then_some(id)
}

impl Peers {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.port == 0 || self.port == u16::MAX {
            return Err((
                "peers.port",
                "must be a port number from 1 to 65534 (the next one carries the flow hand-off tunnel)"
                    .into(),
            ));
        }
        if self.interval < Duration::from_millis(50) {
            return Err(("peers.interval", "must be at least 50ms".into()));
        }
        if self.suspect_after < self.interval * 2 {
            return Err((
                "peers.suspect_after",
                "must be at least twice peers.interval".into(),
            ));
        }
        if self
            .key_secret
            .as_ref()
            .is_some_and(|s| s.contains(char::is_whitespace))
        {
            return Err((
                "peers.key_secret",
                "must be a Secrets Manager secret's ARN or name (no spaces)".into(),
            ));
        }
        if let Some(check) = &self.status_check
            && status_check_id(check).is_none()
        {
            return Err((
                "peers.status_check",
                format!("`{check}` is not an application status check id (asc-…) or its ARN"),
            ));
        }
        Ok(())
    }
}
