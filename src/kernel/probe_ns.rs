//! The heartbeat's probe namespace: a tiny "private host" of the daemon's
//! own, so probes take the same path as a VPC host's packets — in through an
//! interface, through the kernel's forwarding decision, the nftables forward
//! chain and masquerade, and out of the primary interface.
//!
//! ```text
//!   probe netns NAME            NAT instance (daemon's netns)
//!   eth0 .2/30  ── veth ──  hanat-probe .1/30 ── forward+NAT ── primary iface
//! ```
//!
//! [`ensure`] converges: it adopts a namespace and veth left by a killed
//! predecessor, repairs missing pieces, and is a no-op when all is in place.

use std::path::{Path, PathBuf};

use super::{KernelError, link, run};
use crate::domain::Ipv4Cidr;

/// Host-side veth name (fits the 15-character limit).
pub const HOST_IFACE: &str = "hanat-probe";
/// Interface name inside the probe namespace.
pub const NS_IFACE: &str = "eth0";

/// Where `ip netns` keeps the namespace handle.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Addresses on the probe link: (host side, namespace side).
pub fn addresses(cidr: &Ipv4Cidr) -> (String, String) {
    (
        format!("{}/{}", cidr.nth(1), cidr.prefix),
        format!("{}/{}", cidr.nth(2), cidr.prefix),
    )
}

/// Make the probe namespace, its veth and routes exist and be up.
pub async fn ensure(name: &str, cidr: &Ipv4Cidr) -> Result<(), KernelError> {
    if !netns_path(name).exists() {
        run("ip", &["netns", "add", name], None).await?;
    }
    if !link::exists(HOST_IFACE).await? {
        // A stale inner end cannot outlive its peer, but a same-named
        // interface might exist in an adopted namespace: clear the name.
        let _ = run("ip", &["-n", name, "link", "del", NS_IFACE], None).await;
        run(
            "ip",
            &[
                "link", "add", HOST_IFACE, "type", "veth", "peer", "name", NS_IFACE, "netns", name,
            ],
            None,
        )
        .await?;
    }
    let (host_addr, ns_addr) = addresses(cidr);
    let gateway = cidr.nth(1).to_string();
    run(
        "ip",
        &["addr", "replace", &host_addr, "dev", HOST_IFACE],
        None,
    )
    .await?;
    run("ip", &["link", "set", HOST_IFACE, "up"], None).await?;
    run(
        "ip",
        &["-n", name, "addr", "replace", &ns_addr, "dev", NS_IFACE],
        None,
    )
    .await?;
    run("ip", &["-n", name, "link", "set", "lo", "up"], None).await?;
    run("ip", &["-n", name, "link", "set", NS_IFACE, "up"], None).await?;
    run(
        "ip",
        &["-n", name, "route", "replace", "default", "via", &gateway],
        None,
    )
    .await?;
    Ok(())
}
