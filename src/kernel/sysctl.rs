//! Sysctls a NAT instance needs, rendered as values and written through
//! `/proc/sys` (which always addresses the caller's network namespace).
//!
//! | key | value | why |
//! |---|---|---|
//! | `net.ipv4.ip_forward` | 1 | forward at all |
//! | `net.ipv4.conf.{all,default,IFACE}.send_redirects` | 0 | a NAT forwards out of the interface packets came in on; redirects would tell private hosts to bypass it |
//! | `net.ipv4.conf.all.rp_filter` | 2 | loose reverse-path filtering: asymmetric paths (several ENIs) are not dropped; the nftables forward chain does the filtering |
//! | `net.netfilter.nf_conntrack_max` | `kernel.conntrack_max` | room for the NAT's connections (optional: read-only outside the initial namespace) |
//! | `net.netfilter.nf_conntrack_tcp_timeout_established` | 7440 | RFC 5382's 2 h 4 min instead of 5 days, so dead flows do not fill the table (optional) |
//!
//! Values are only written when they differ, so converging is cheap.

use std::path::PathBuf;

use super::KernelError;

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

/// The sysctls for NAT out of `iface`. Pure.
pub fn desired(iface: &str, conntrack_max: u64) -> Vec<Sysctl> {
    let mut v = vec![
        s("net.ipv4.ip_forward".into(), 1, false),
        s("net.ipv4.conf.all.send_redirects".into(), 0, false),
        s("net.ipv4.conf.default.send_redirects".into(), 0, false),
        s(format!("net.ipv4.conf.{iface}.send_redirects"), 0, false),
        s("net.ipv4.conf.all.rp_filter".into(), 2, false),
        s(
            "net.netfilter.nf_conntrack_tcp_timeout_established".into(),
            7440,
            true,
        ),
    ];
    if conntrack_max > 0 {
        v.push(s(
            "net.netfilter.nf_conntrack_max".into(),
            conntrack_max,
            true,
        ));
    }
    v
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

/// Write every desired value that differs. Returns the optional keys that
/// could not be set (for a warning); fails on the first required one.
pub fn apply(wanted: &[Sysctl]) -> Result<Vec<KernelError>, KernelError> {
    let mut skipped = Vec::new();
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
                skipped.push(err);
            } else {
                return Err(err);
            }
        }
    }
    Ok(skipped)
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

    #[test]
    fn desired_values() {
        let d = desired("ens5", 0);
        assert!(
            d.iter()
                .any(|x| x.key == "net.ipv4.conf.ens5.send_redirects" && x.value == "0")
        );
        assert!(!d.iter().any(|x| x.key == "net.netfilter.nf_conntrack_max"));
        let d = desired("ens5", 1000);
        assert!(
            d.iter().any(|x| x.key == "net.netfilter.nf_conntrack_max"
                && x.value == "1000"
                && x.optional)
        );
        assert!(
            d.iter()
                .any(|x| x.key == "net.ipv4.ip_forward" && x.value == "1" && !x.optional)
        );
    }
}
