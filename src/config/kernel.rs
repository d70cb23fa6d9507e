//! Kernel NAT settings (`[kernel]`): the interface, conntrack's sizes and
//! timeouts, how often the kernel is converged.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::de::duration;
use crate::domain::Conntrack;

/// Kernel NAT settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kernel {
    /// The interface to masquerade out of. Empty: the interface whose MAC is
    /// the primary MAC in instance metadata.
    pub interface: String,
    /// `net.netfilter.nf_conntrack_max`: `"auto"` (from the instance's
    /// memory, [`Kernel::conntrack`]), a number, or 0 to leave the
    /// kernel's value alone.
    #[serde(deserialize_with = "sizing")]
    pub conntrack_max: Sizing,
    /// `net.netfilter.nf_conntrack_buckets` (the hash table; writable in
    /// the initial network namespace only): `"auto"` (as many as
    /// `conntrack_max`), a number, or 0 to leave it.
    #[serde(deserialize_with = "sizing")]
    pub conntrack_buckets: Sizing,
    /// Conntrack's timeouts (`nf_conntrack_tcp_timeout_established`,
    /// `…_tcp_timeout_time_wait`, `…_udp_timeout` for a flow without an
    /// answer, `…_udp_timeout_stream` for one with).
    #[serde(deserialize_with = "duration")]
    pub tcp_timeout_established: Duration,
    #[serde(deserialize_with = "duration")]
    pub tcp_timeout_time_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub udp_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub udp_timeout_stream: Duration,
    /// How often sysctls, the nftables table and the probe namespace are
    /// re-checked and repaired.
    #[serde(deserialize_with = "duration")]
    pub converge_interval: Duration,
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            interface: String::new(),
            conntrack_max: Sizing::Auto,
            conntrack_buckets: Sizing::Auto,
            converge_interval: Duration::from_secs(10),
            tcp_timeout_established: Duration::from_secs(7440),
            tcp_timeout_time_wait: Duration::from_secs(120),
            udp_timeout: Duration::from_secs(30),
            udp_timeout_stream: Duration::from_secs(120),
        }
    }
}

/// A table size: derived from the instance, given, or left to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    Auto,
    /// 0: leave the kernel's value alone.
    Fixed(u64),
}

fn sizing<'de, D: Deserializer<'de>>(d: D) -> Result<Sizing, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Sizing;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("\"auto\", a number, or 0 to leave the kernel's value")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Sizing, E> {
            u64::try_from(v)
                .map(Sizing::Fixed)
                .map_err(|_| E::custom(format!("{v} is negative: use \"auto\", a number, or 0")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Sizing, E> {
            Ok(Sizing::Fixed(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sizing, E> {
            match v {
                "auto" => Ok(Sizing::Auto),
                _ => Err(E::custom(format!(
                    "`{v}`: use \"auto\", a number, or 0 to leave the kernel's value"
                ))),
            }
        }
    }
    d.deserialize_any(Visitor)
}

/// What one tracked connection costs the kernel, with its share of the
/// hash table and NAT extension, rounded up (the `nf_conntrack` slab
/// object is 256 bytes on 64-bit kernels).
pub const CONNTRACK_ENTRY_BYTES: u64 = 320;

impl Kernel {
    /// Conntrack's settings for an instance with `memory` bytes. `auto`
    /// gives the table a quarter of the memory at
    /// [`CONNTRACK_ENTRY_BYTES`] an entry, rounded down to a power of two,
    /// at least 65,536 and at most 4,194,304 (a t4g.nano's 512 MiB:
    /// 262,144); buckets as many as entries (chains of one, as the
    /// kernel's own default).
    pub fn conntrack(&self, memory: u64) -> Conntrack {
        let auto_max = {
            let fit = (memory / 4 / CONNTRACK_ENTRY_BYTES).max(1);
            (1u64 << (63 - fit.leading_zeros())).clamp(65_536, 4_194_304)
        };
        let max = match self.conntrack_max {
            Sizing::Auto => Some(auto_max),
            Sizing::Fixed(0) => None,
            Sizing::Fixed(n) => Some(n),
        };
        let buckets = match self.conntrack_buckets {
            Sizing::Auto => max,
            Sizing::Fixed(0) => None,
            Sizing::Fixed(n) => Some(n),
        };
        Conntrack {
            max,
            buckets,
            tcp_established: self.tcp_timeout_established.as_secs(),
            tcp_time_wait: self.tcp_timeout_time_wait.as_secs(),
            udp: self.udp_timeout.as_secs(),
            udp_stream: self.udp_timeout_stream.as_secs(),
            events: false,
        }
    }
}

impl Kernel {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, d) in [
            (
                "kernel.tcp_timeout_established",
                self.tcp_timeout_established,
            ),
            ("kernel.tcp_timeout_time_wait", self.tcp_timeout_time_wait),
            ("kernel.udp_timeout", self.udp_timeout),
            ("kernel.udp_timeout_stream", self.udp_timeout_stream),
        ] {
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err((key, "must be whole seconds, at least 1s".into()));
            }
        }
        if self.udp_timeout_stream < self.udp_timeout {
            return Err((
                "kernel.udp_timeout_stream",
                "must be at least kernel.udp_timeout (a flow with answers outlives one without)"
                    .into(),
            ));
        }
        if self.converge_interval < Duration::from_millis(100) {
            return Err(("kernel.converge_interval", "must be at least 100ms".into()));
        }
        Ok(())
    }
}
