//! Connection replication (`[replication]`): each NAT copies its
//! established connections to its peers, so the one that adopts its AZ
//! after an abrupt death carries them on through the same public address
//! (see docs/design.md, "Keeping connections through a dead NAT").

use std::time::Duration;

use serde::Deserialize;

use super::de::duration;

/// What is copied to the peers, and how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// Copy established TCP connections to the peers (needs `conntrack`,
    /// conntrack-tools, on the instance, a heartbeat key, and
    /// `snat.addresses = 1`). Off: a NAT that dies abruptly costs its
    /// AZ's established connections, which its adopter resets.
    pub enabled: bool,
    /// UDP port the copies travel on, between the NATs only.
    pub port: u16,
    /// Copy only connections established at least this long: short
    /// requests cost nothing, and a connection that dies with its NAT
    /// younger than this is reset rather than kept.
    #[serde(deserialize_with = "duration")]
    pub min_age: Duration,
    /// Send every copy again this often, so a lost datagram or a peer's
    /// restart costs at most this long; a peer drops a copy it has not
    /// heard of for three times this long.
    #[serde(deserialize_with = "duration")]
    pub resync: Duration,
    /// The most copies a NAT holds of one peer's connections.
    pub max_per_peer: usize,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 7473,
            min_age: Duration::from_secs(2),
            resync: Duration::from_secs(60),
            max_per_peer: 262_144,
        }
    }
}

impl Replication {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.port == 0 {
            return Err((
                "replication.port",
                "must be a port number from 1 to 65535".into(),
            ));
        }
        if self.resync < Duration::from_secs(1) {
            return Err(("replication.resync", "must be at least 1s".into()));
        }
        if self.max_per_peer == 0 {
            return Err(("replication.max_per_peer", "must be at least 1".into()));
        }
        Ok(())
    }
}
