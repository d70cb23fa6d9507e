//! Sysctls a NAT instance needs, rendered as values and written through
//! `/proc/sys` (which always addresses the caller's network namespace).
//!
//! | key | value | why |
//! |---|---|---|
//! | `net.ipv4.ip_forward` | 1 | forward at all |
//! | `net.ipv4.conf.{all,default,IFACE}.send_redirects` | 0 | a NAT forwards out of the interface packets came in on; redirects would tell private hosts to bypass it |
//! | `net.ipv4.conf.all.rp_filter` | 2 | loose reverse-path filtering: asymmetric paths (several ENIs) are not dropped; the nftables forward chain does the filtering |
//! | `net.netfilter.nf_conntrack_max` | `kernel.conntrack_max` | room for the NAT's connections (optional: read-only outside the initial namespace) |
//! | `net.netfilter.nf_conntrack_buckets` | `kernel.conntrack_buckets` | the table's hash buckets (optional: writable in the initial namespace only) |
//! | `net.netfilter.nf_conntrack_tcp_timeout_established` | `kernel.tcp_timeout_established` (7440) | RFC 5382's 2 h 4 min instead of 5 days, so dead flows do not fill the table (optional) |
//! | `net.netfilter.nf_conntrack_tcp_loose` | 1 (the kernel's default) | a mid-flow packet of a connection conntrack does not know is seen as `new`, so the forward chain can answer it with a reset (as a NAT Gateway does) instead of dropping it as invalid and leaving the host to time out (optional) |
//! | `net.netfilter.nf_conntrack_events` | 1, with replication on | every connection reports its changes to replication's watcher, also one made before the watcher (re)started; the kernel's default (2) reports them only for connections made while a listener was there, so a UDP flow that became a stream, or a TCP connection established, after the watcher started went uncopied until the next resync (optional) |
//! | `…_tcp_timeout_time_wait`, `…_udp_timeout`, `…_udp_timeout_stream` | `kernel.*` (120, 30, 120: the kernel's) | how long a closed TCP connection and a UDP flow without and with answers keep their port (optional) |
//!
//! Values are only written when they differ, so converging is cheap.

use std::path::PathBuf;

use super::KernelError;
use crate::domain::Conntrack;

/// One desired sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted name, e.g. `net.ipv4.ip_forward`.
    pub key: String,
    pub value: String,
    /// Failure to set it is a warning, not an error.
    pub optional: bool,
}

fn s(key: String, value: impl ToString, optional: bool) -> Sysctl {
    Sysctl {
        key,
        value: value.to_string(),
        optional,
    }
}

/// The sysctls for NAT out of `iface`, with conntrack as `ct` says. Pure.
pub fn desired(iface: &str, ct: &Conntrack) -> Vec<Sysctl> {
    let nf = |leaf: &str, value: u64| s(format!("net.netfilter.nf_conntrack_{leaf}"), value, true);
    let mut v = vec![
        s("net.ipv4.ip_forward".into(), 1, false),
        s("net.ipv4.conf.all.send_redirects".into(), 0, false),
        s("net.ipv4.conf.default.send_redirects".into(), 0, false),
        s(format!("net.ipv4.conf.{iface}.send_redirects"), 0, false),
        s("net.ipv4.conf.all.rp_filter".into(), 2, false),
        nf("tcp_loose", 1),
        nf("tcp_timeout_established", ct.tcp_established),
        nf("tcp_timeout_time_wait", ct.tcp_time_wait),
        nf("udp_timeout", ct.udp),
        nf("udp_timeout_stream", ct.udp_stream),
    ];
    // Buckets before the maximum: a resize rehashes what is there.
    v.extend(ct.buckets.map(|n| nf("buckets", n)));
    v.extend(ct.max.map(|n| nf("max", n)));
    if ct.events {
        v.push(nf("events", 1));
    }
    v
}

/// The instance's memory in bytes (`MemTotal`), if it can be read.
pub fn memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `/proc/sys` path of a dotted key. Interface names may contain dots, so
/// only the fixed prefix is split.
fn path(key: &str) -> PathBuf {
    let mut p = PathBuf::from("/proc/sys");
    if let Some(rest) = key.strip_prefix("net.ipv4.conf.") {
        p.push("net/ipv4/conf");
        if let Some((iface, leaf)) = rest.rsplit_once('.') {
            p.push(iface);
            p.push(leaf);
        }
    } else {
        p.push(key.replace('.', "/"));
    }
    p
}

/// Read a sysctl's current value.
pub fn read(key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(path(key)).map(|v| v.trim().to_owned())
}

/// Conntrack's table fill: its entries and its size, from their sysctls
/// (zeros where unreadable).
pub fn conntrack_fill() -> (i64, i64) {
    let read = |key: &str| {
        read(key)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0)
    };
    (
        read("net.netfilter.nf_conntrack_count"),
        read("net.netfilter.nf_conntrack_max"),
    )
}

/// What [`apply`] did: the optional keys it could not set (for a warning)
/// and the keys it found at another value and set (drift, after the first
/// converge).
#[derive(Debug, Default)]
pub struct Applied {
    pub skipped: Vec<KernelError>,
    pub set: Vec<String>,
}

/// Write every desired value that differs; fails on the first required key
/// that cannot be set. A key counts as set only if it reads back as
/// wanted, so one the kernel rounds (or a namespace keeps read-only) is not
/// reported as changed at every converge.
pub fn apply(wanted: &[Sysctl]) -> Result<Applied, KernelError> {
    let mut applied = Applied::default();
    for w in wanted {
        if read(&w.key).ok().as_deref() == Some(w.value.as_str()) {
            continue;
        }
        if let Err(source) = std::fs::write(path(&w.key), &w.value) {
            let err = KernelError::Sysctl {
                key: w.key.clone(),
                value: w.value.clone(),
                source,
            };
            if w.optional {
                applied.skipped.push(err);
                continue;
            }
            return Err(err);
        }
        if read(&w.key).ok().as_deref() == Some(w.value.as_str()) {
            applied.set.push(format!("{}={}", w.key, w.value));
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_dotted_interface_names() {
        assert_eq!(
            path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net.ipv4.conf.eth0.100.send_redirects"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/send_redirects")
        );
    }

    fn conntrack(max: Option<u64>, buckets: Option<u64>) -> Conntrack {
        Conntrack {
            max,
            buckets,
            tcp_established: 7440,
            tcp_time_wait: 60,
            udp: 30,
            udp_stream: 180,
            events: false,
        }
    }

    fn value<'d>(d: &'d [Sysctl], key: &str) -> Option<&'d str> {
        d.iter().find(|x| x.key == key).map(|x| x.value.as_str())
    }

    #[test]
    fn desired_values() {
        let d = desired("ens5", &conntrack(None, None));
        assert_eq!(value(&d, "net.ipv4.conf.ens5.send_redirects"), Some("0"));
        assert_eq!(value(&d, "net.netfilter.nf_conntrack_max"), None);
        assert_eq!(value(&d, "net.netfilter.nf_conntrack_buckets"), None);
        for (key, v) in [
            ("tcp_timeout_established", "7440"),
            ("tcp_timeout_time_wait", "60"),
            ("udp_timeout", "30"),
            ("udp_timeout_stream", "180"),
        ] {
            assert_eq!(
                value(&d, &format!("net.netfilter.nf_conntrack_{key}")),
                Some(v)
            );
        }
        assert_eq!(value(&d, "net.netfilter.nf_conntrack_events"), None);
        let events = Conntrack {
            events: true,
            ..conntrack(None, None)
        };
        let on = desired("ens5", &events);
        assert_eq!(value(&on, "net.netfilter.nf_conntrack_events"), Some("1"));
        let d = desired("ens5", &conntrack(Some(1000), Some(250)));
        assert_eq!(value(&d, "net.netfilter.nf_conntrack_max"), Some("1000"));
        let at = |k: &str| d.iter().position(|x| x.key == k);
        assert!(at("net.netfilter.nf_conntrack_buckets") < at("net.netfilter.nf_conntrack_max"));
        assert!(
            d.iter()
                .filter(|x| x.key.starts_with("net.netfilter."))
                .all(|x| x.optional)
        );
        assert!(
            d.iter()
                .any(|x| x.key == "net.ipv4.ip_forward" && x.value == "1" && !x.optional)
        );
    }

    #[test]
    fn memory_is_read() {
        assert!(memory().is_some_and(|m| m > 64 << 20), "{:?}", memory());
    }
}
