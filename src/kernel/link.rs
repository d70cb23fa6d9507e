//! Interface lookup through `ip -j link` (netlink, so it always sees the
//! caller's network namespace, unlike `/sys` which shows the mount's), and
//! the secondary private addresses the NAT translates to.

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{KernelError, run_json};

#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    address: String,
}

/// The interface whose MAC is `mac` (case-insensitive).
pub async fn by_mac(mac: &str) -> Result<String, KernelError> {
    let links = list().await?;
    links
        .iter()
        .find(|l| l.address.eq_ignore_ascii_case(mac))
        .map(|l| l.ifname.clone())
        .ok_or_else(|| {
            let seen: Vec<String> = links.iter().map(|l| format!("{} {}", l.ifname, l.address)).collect();
            KernelError::Interface(format!(
                "no interface has the primary MAC {mac} from instance metadata (have: {}); set kernel.interface",
                seen.join(", ")
            ))
        })
}

/// The interface to NAT out of: `configured` if set (it must exist), else
/// the one with the primary MAC from instance metadata.
pub async fn nat_interface(configured: &str, mac: &str) -> Result<String, KernelError> {
    if configured.is_empty() {
        return by_mac(mac).await;
    }
    match exists_in(None, configured).await? {
        true => Ok(configured.to_owned()),
        false => Err(KernelError::Interface(format!(
            "kernel.interface `{configured}` does not exist"
        ))),
    }
}

/// Whether interface `name` exists in network namespace `netns` (a name
/// under `/run/netns`), or in the daemon's own with `None`.
pub async fn exists_in(netns: Option<&str>, name: &str) -> Result<bool, KernelError> {
    let links: Vec<Link> = match netns {
        Some(ns) => run_json("ip", &["-n", ns, "-j", "link", "show"]).await?,
        None => list().await?,
    };
    Ok(links.iter().any(|l| l.ifname == name))
}

#[derive(Debug, Deserialize)]
struct Addresses {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
}

/// Put each of `addresses` on `iface` that is not there yet, with the
/// primary address's prefix (so each is a secondary address of the same
/// subnet: no new route, never chosen as a source). Addresses are only
/// ever added: one no longer wanted keeps serving the connections that
/// were translated to it. Returns the addresses it added.
pub async fn ensure_addresses(
    iface: &str,
    primary: Ipv4Addr,
    addresses: &[Ipv4Addr],
) -> Result<Vec<Ipv4Addr>, KernelError> {
    let mut added = Vec::new();
    if addresses.iter().all(|a| *a == primary) {
        return Ok(added);
    }
    let shown: Vec<Addresses> = run_json("ip", &["-j", "-4", "addr", "show", "dev", iface]).await?;
    let have: Vec<&AddrInfo> = shown
        .iter()
        .flat_map(|a| &a.addr_info)
        .filter(|i| i.family == "inet")
        .collect();
    let prefix = have
        .iter()
        .find(|i| i.local == primary.to_string())
        .map_or(32, |i| i.prefixlen);
    for a in addresses {
        if have.iter().any(|i| i.local == a.to_string()) {
            continue;
        }
        let cidr = format!("{a}/{prefix}");
        super::run("ip", &["addr", "add", &cidr, "dev", iface], None).await?;
        added.push(*a);
    }
    Ok(added)
}

async fn list() -> Result<Vec<Link>, KernelError> {
    run_json("ip", &["-j", "link", "show"]).await
}
