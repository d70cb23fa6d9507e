//! Telling what the daemon sees: `[metrics]` (the endpoints),
//! `[cloudwatch]`, `[log]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::de::duration;
use crate::domain::Ipv4Cidr;

/// Publishing to CloudWatch: the NAT Gateway's metrics, the verdict, and
/// whether each AZ has a forwarding NAT (`docs/observability.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatch {
    /// Off by default (it costs money); the templates turn it on.
    pub enabled: bool,
    /// Where the metrics go; the templates' IAM policy allows only this one.
    pub namespace: String,
    /// One `PutMetricData` call this often.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// `all`, or `alarms`: only the three metrics the templates' alarms
    /// watch (under a third of the cost).
    pub metrics: MetricSet,
}

impl Default for CloudWatch {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: "hanat".into(),
            interval: Duration::from_secs(60),
            metrics: MetricSet::All,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricSet {
    All,
    Alarms,
}

/// The metrics, health and status endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Where to serve `/metrics`, `/health` and `/status`; `""` turns them
    /// off. The templates' security group admits only the VPC.
    #[serde(deserialize_with = "listen")]
    pub listen: Option<std::net::SocketAddr>,
    /// Who may connect to the endpoints, enforced in hanat's nftables
    /// input filter (loopback always may). Unset: the VPC's CIDRs, which
    /// hold the NAT's own subnet (EC2's application status check asks from
    /// there) and a Prometheus in the VPC. `[]`: loopback only.
    pub allow: Option<Vec<Ipv4Cidr>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 7472))),
            allow: None,
        }
    }
}

impl Metrics {
    /// Who may connect to the endpoints, `vpc` being the VPC's CIDRs.
    pub fn allowed(&self, vpc: &[Ipv4Cidr]) -> Vec<Ipv4Cidr> {
        self.allow.clone().unwrap_or_else(|| vpc.to_vec())
    }
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{s}` is not an address like 0.0.0.0:7472 (\"\" turns the endpoints off)"
        ))
    })
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (journald-friendly, no timestamps when under systemd) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hanat=debug`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl CloudWatch {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 255
            || ns.starts_with("AWS/")
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c))
        {
            return Err((
                "cloudwatch.namespace",
                format!(
                    "`{ns}` must be 1-255 characters of letters, digits and . - _ / # : space, not starting with AWS/"
                ),
            ));
        }
        if self.interval < Duration::from_secs(1) || self.interval > Duration::from_secs(3600) {
            return Err((
                "cloudwatch.interval",
                "must be from 1s to 1h (60s: one datapoint per CloudWatch minute)".into(),
            ));
        }
        Ok(())
    }
}
