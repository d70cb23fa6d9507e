//! Which routes are hanat's and how often they are looked at:
//! `[discovery]`, `[routes]`, `[aws]`, and planned exits (`[exit]`).

use std::time::Duration;

use serde::Deserialize;

use super::de::duration;

/// Which subnets are ours to serve.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    pub tag_key: String,
    pub tag_value: String,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            tag_key: "network".into(),
            tag_value: "private".into(),
        }
    }
}

/// How route tables are taken over and kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// How often routes and the source/destination check are re-read and
    /// repaired. Each wait is jittered by ±10% so a fleet of NATs does not
    /// call the EC2 API in lock-step. 30 s is 3 read calls per NAT per
    /// 30 s in steady state: far below EC2's throttling limits.
    #[serde(deserialize_with = "duration")]
    pub reconcile_interval: Duration,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(30),
        }
    }
}

/// Planned exits: scale-in (lifecycle hook), spot interruption, and
/// optionally `systemctl stop`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exit {
    /// How often instance metadata is asked about a coming termination.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// After the routes have moved to a peer, keep forwarding this long so
    /// packets still arriving here (replies to the Elastic IP) get through.
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
    /// Give up waiting for a peer to take the routes after this long.
    #[serde(deserialize_with = "duration")]
    pub handoff_timeout: Duration,
    /// The termination lifecycle hook to complete (the templates' name).
    pub lifecycle_hook: String,
    /// Hand the routes to a peer on SIGTERM too (for planned maintenance).
    /// Off by default: a restart should not move routes.
    pub handoff_on_stop: bool,
}

impl Default for Exit {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            drain: Duration::from_secs(10),
            handoff_timeout: Duration::from_secs(30),
            lifecycle_hook: "hanat-handoff".into(),
            handoff_on_stop: false,
        }
    }
}

/// AWS API behaviour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aws {
    /// Attempts per API call, with the SDK's exponential backoff and jitter
    /// between them (throttling is retried too).
    pub max_attempts: u32,
    /// Give up on a single API call (all attempts) after this long.
    #[serde(deserialize_with = "duration")]
    pub call_timeout: Duration,
    /// How long start-up waits for the instance metadata service before the
    /// daemon exits (and systemd restarts it).
    #[serde(deserialize_with = "duration")]
    pub imds_timeout: Duration,
    /// What rarely changes is read again this often: the tagged subnets,
    /// the peer list, a held Elastic IP, the source/destination check once
    /// seen off. Route tables are read every `routes.reconcile_interval`.
    #[serde(deserialize_with = "duration")]
    pub refresh_interval: Duration,
}

impl Default for Aws {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            call_timeout: Duration::from_secs(20),
            imds_timeout: Duration::from_secs(120),
            refresh_interval: Duration::from_secs(600),
        }
    }
}

impl Discovery {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.tag_key.is_empty() {
            return Err(("discovery.tag_key", "must not be empty".into()));
        }
        Ok(())
    }
}

impl Routes {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.reconcile_interval < Duration::from_secs(1) {
            return Err(("routes.reconcile_interval", "must be at least 1s".into()));
        }
        Ok(())
    }
}

impl Aws {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 {
            return Err(("aws.max_attempts", "must be at least 1".into()));
        }
        Ok(())
    }
}
