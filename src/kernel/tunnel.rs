//! The flow hand-off tunnel: a VXLAN device ([`DEVICE`]) that carries
//! mid-flow TCP packets to the NAT that still holds their conntrack entry.
//!
//! Why: a NAT's translations live in its own conntrack table. When a route
//! moves from a NAT that still forwards (one leaving on a planned exit, or
//! an adopter giving an AZ back) to this one, packets of connections opened
//! through the other NAT start arriving here. Masquerading them with our
//! address would make the far end reset them. Instead, a TCP packet that
//! arrives on the primary interface from a handed-off source, is not a SYN
//! and belongs to no connection of ours, gets a firewall mark; a policy
//! route sends marked packets through the tunnel to the previous holder,
//! which forwards them with the translation it already has. Replies come
//! back through it as before (the far end talks to its address).
//!
//! What is set up (all converging, nothing torn down on exit):
//! - the device: VXLAN id [`VNI`], UDP port `peers.port + 1`, local address
//!   the NAT's private IP, no learning, MAC [`mac`] of the private IP (so a
//!   sender can address any NAT without ARP), the primary interface's MTU
//!   (the outer packet may be fragmented; inside a VPC the MTU is 9001), and
//!   a link-local /32 (loose reverse-path filtering drops packets arriving
//!   on an interface without an IPv4 address);
//! - per previous holder `P`: route table and firewall mark [`mark`]`(P)`
//!   with `default via P dev hanat0 onlink`, a permanent neighbour entry
//!   and a forwarding-database entry (MAC → P), and
//!   `ip rule priority 7470 iif IFACE fwmark M lookup M`; the rule matches
//!   only packets that came in on the primary interface, so the tunnel's own
//!   outer packets (sent by this host) are never routed into the tunnel;
//! - nftables table `ip hanat_handoff`: a map from handed-off source
//!   networks to marks, an input filter that lets only the VPC send to
//!   the tunnel port (whatever the security group says), and two filters
//!   that keep the tunnel from being a way to forge a source address:
//!   nothing that comes out of the tunnel reaches a local socket (the
//!   heartbeat port above all), and nothing from it is forwarded to an
//!   address of the VPC (another NAT's heartbeat port). The tunnel carries
//!   only handed-off connections to the internet. Applied atomically like
//!   the main table.
//!
//! Only [`DEVICE`], rules at priority [`RULE_PRIORITY`], the tables they
//! name and [`NFT_TABLE`] are ever changed.

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{KernelError, parse_json, run, run_json};
use crate::domain::Ipv4Cidr;

/// The tunnel device's name.
pub const DEVICE: &str = super::TUNNEL_DEVICE;
/// The VXLAN network identifier every hanat NAT uses.
pub const VNI: u32 = 7470;
/// Our nftables table for the hand-off marks.
pub const NFT_TABLE: &str = "hanat_handoff";
/// Priority of our policy-routing rules.
pub const RULE_PRIORITY: u32 = 7470;
/// The device's own address: never leaves the host, only there so that
/// reverse-path filtering accepts what arrives on the device.
const DEVICE_ADDRESS: &str = "169.254.74.70/32";

/// Packets from `sources` that belong to a connection of `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub peer: Ipv4Addr,
    pub sources: Vec<Ipv4Cidr>,
}

/// Firewall mark and route table for handing flows to `peer`: `0x68` and
/// the low 24 bits of its address, so the same peer always gets the same
/// number (stable across daemon restarts) and peers of one VPC (at most a
/// /16 each) never share one.
pub fn mark(peer: Ipv4Addr) -> u32 {
    0x6800_0000 | (u32::from(peer) & 0x00ff_ffff)
}

/// The tunnel device's MAC on the NAT whose private address is `ip`: a
/// locally administered address that spells it out.
pub fn mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:68:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The hand-off table for packets arriving on `iface`, accepting tunnel
/// packets (UDP `port`) only from the `vpc` networks. Pure. A source
/// network named for two peers goes to the first.
pub fn render(
    iface: &str,
    port: u16,
    vpc: &[Ipv4Cidr],
    handoffs: &[Handoff],
) -> Result<String, KernelError> {
    super::check_iface(iface)?;
    let mut taken: Vec<Ipv4Cidr> = Vec::new();
    let mut elements = Vec::new();
    for h in handoffs {
        for s in &h.sources {
            if taken.iter().any(|t| t.overlaps(s)) {
                continue;
            }
            taken.push(*s);
            elements.push(format!(
                "{}/{} : {:#010x}",
                s.network(),
                s.prefix,
                mark(h.peer)
            ));
        }
    }
    let elements = match elements.is_empty() {
        true => String::new(),
        false => format!("\t\telements = {{ {} }}\n", elements.join(", ")),
    };
    let vpc = match vpc.is_empty() {
        true => String::new(),
        false => format!("\t\telements = {{ {} }}\n", super::cidr_list(vpc)),
    };
    Ok(format!(
        r#"# Managed by hanat: replaced atomically when a flow hand-off starts or ends. Do not edit.
table ip {NFT_TABLE} {{
}}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
	map previous_holder {{
		type ipv4_addr : mark
		flags interval
{elements}	}}

	set tunnel_sources {{
		type ipv4_addr
		flags interval
{vpc}	}}

	chain prerouting_mark {{
		type filter hook prerouting priority mangle; policy accept;
		iifname "{iface}" ip protocol tcp tcp flags & syn == 0 ct state new,invalid meta mark set ip saddr map @previous_holder
	}}

	chain input_tunnel {{
		type filter hook input priority filter; policy accept;
		udp dport {port} ip saddr != @tunnel_sources drop comment "the tunnel is for NATs of this VPC only"
		iifname "{DEVICE}" drop comment "nothing from the tunnel reaches this host's sockets"
	}}

	chain forward_tunnel {{
		type filter hook forward priority filter; policy accept;
		iifname "{DEVICE}" ip daddr @tunnel_sources drop comment "the tunnel carries traffic to the internet only"
	}}
}}
"#
    ))
}

/// Whether the hand-off table exists.
pub async fn table_exists() -> Result<bool, KernelError> {
    super::table_exists(NFT_TABLE).await
}

#[derive(Debug, Deserialize)]
struct LinkDetail {
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    address: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_data: Option<VxlanData>,
}

#[derive(Debug, Deserialize)]
struct VxlanData {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    port: u16,
}

/// The interface `name`, or `None` if there is none.
async fn link_detail(name: &str) -> Result<Option<LinkDetail>, KernelError> {
    let args = ["-j", "-d", "link", "show", "dev", name];
    let Ok(out) = run("ip", &args, None).await else {
        return Ok(None);
    };
    let mut links: Vec<LinkDetail> = parse_json("ip", &args, &out)?;
    Ok(links.pop())
}

/// Make the tunnel device exist, as described in the module header, for
/// the NAT at `local` sending out of `iface`. Converges: an existing device
/// with other settings is replaced.
pub async fn ensure_device(local: Ipv4Addr, port: u16, iface: &str) -> Result<(), KernelError> {
    let mtu = link_detail(iface)
        .await?
        .map(|l| l.mtu)
        .filter(|m| *m > 0)
        .unwrap_or(1500);
    let local_s = local.to_string();
    let current = link_detail(DEVICE).await?;
    let matches = current.as_ref().is_some_and(|l| {
        l.linkinfo
            .as_ref()
            .and_then(|i| i.info_data.as_ref())
            .is_some_and(|d| d.id == VNI && d.port == port && d.local.as_deref() == Some(&local_s))
    });
    if current.is_some() && !matches {
        run("ip", &["link", "del", "dev", DEVICE], None).await?;
    }
    if !matches {
        let (vni, port) = (VNI.to_string(), port.to_string());
        run(
            "ip",
            &[
                "link",
                "add",
                DEVICE,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local_s,
                "dstport",
                &port,
                "nolearning",
            ],
            None,
        )
        .await?;
    }
    // Only what differs is set: setting the MAC, even to the same value,
    // flushes the device's neighbour entries (the hand-off routes' next hops).
    let now = match matches {
        true => current,
        false => link_detail(DEVICE).await?,
    };
    let address = mac(local);
    let mut changes: Vec<String> = Vec::new();
    if now
        .as_ref()
        .is_none_or(|l| !l.address.eq_ignore_ascii_case(&address))
    {
        changes.extend(["address".into(), address]);
    }
    if now.as_ref().is_none_or(|l| l.mtu != mtu) {
        changes.extend(["mtu".into(), mtu.to_string()]);
    }
    if now
        .as_ref()
        .is_none_or(|l| !l.flags.iter().any(|f| f == "UP"))
    {
        changes.push("up".into());
    }
    if !changes.is_empty() {
        let mut args = vec!["link", "set", "dev", DEVICE];
        args.extend(changes.iter().map(String::as_str));
        run("ip", &args, None).await?;
    }
    run(
        "ip",
        &["addr", "replace", DEVICE_ADDRESS, "dev", DEVICE],
        None,
    )
    .await
    .map(drop)
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    table: String,
}

/// Route tables our rules point at now.
async fn tables_in_use() -> Result<Vec<u32>, KernelError> {
    let rules: Vec<Rule> = run_json("ip", &["-j", "rule", "show"]).await?;
    Ok(rules
        .iter()
        .filter(|r| r.priority == RULE_PRIORITY)
        .filter_map(|r| r.table.parse().ok())
        .collect())
}

/// What the kernel holds of the hand-off, read before converging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// [`DEVICE`] exists.
    pub device: bool,
    /// Tables our rules (priority [`RULE_PRIORITY`]) point at.
    pub tables: Vec<u32>,
    /// Neighbour entries on the device (their addresses).
    pub neighbours: Vec<String>,
    /// Forwarding entries on the device: (MAC, destination).
    pub fdb: Vec<(String, String)>,
}

/// One command of a converge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Ip(Vec<String>),
    Bridge(Vec<String>),
    /// Apply our nftables table (see [`render`]).
    Ruleset(String),
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// The commands that make the kernel hand exactly `handoffs` over from
/// what it holds (`found`), and accept tunnel packets on UDP `port` only
/// from `vpc`. New routes come first, then the marks, then stale routes
/// go, so a marked packet always finds its route. Pure.
pub fn steps(
    iface: &str,
    port: u16,
    vpc: &[Ipv4Cidr],
    handoffs: &[Handoff],
    found: &Found,
) -> Result<Vec<Step>, KernelError> {
    let ruleset = render(iface, port, vpc, handoffs)?;
    if !found.device && !handoffs.is_empty() {
        return Err(KernelError::Interface(format!(
            "the flow hand-off device {DEVICE} does not exist (see the earlier warning)"
        )));
    }
    let mut v = Vec::new();
    for h in handoffs {
        let (peer, m, lladdr) = (h.peer, mark(h.peer), mac(h.peer));
        v.push(Step::Ip(words(&format!(
            "route replace default via {peer} dev {DEVICE} onlink table {m}"
        ))));
        v.push(Step::Ip(words(&format!(
            "neigh replace {peer} dev {DEVICE} lladdr {lladdr} nud permanent"
        ))));
        v.push(Step::Bridge(words(&format!(
            "fdb replace {lladdr} dev {DEVICE} dst {peer}"
        ))));
        if !found.tables.contains(&m) {
            v.push(Step::Ip(words(&format!(
                "rule add priority {RULE_PRIORITY} iif {iface} fwmark {m:#x} lookup {m}"
            ))));
        }
    }
    v.push(Step::Ruleset(ruleset));
    for table in &found.tables {
        if !handoffs.iter().any(|h| mark(h.peer) == *table) {
            v.push(Step::Ip(words(&format!(
                "rule del priority {RULE_PRIORITY} lookup {table}"
            ))));
            v.push(Step::Ip(words(&format!("route flush table {table}"))));
        }
    }
    // Neighbour and forwarding entries of peers no longer handed to.
    let wanted: Vec<String> = handoffs.iter().map(|h| h.peer.to_string()).collect();
    for dst in found.neighbours.iter().filter(|d| !wanted.contains(d)) {
        v.push(Step::Ip(words(&format!("neigh del {dst} dev {DEVICE}"))));
    }
    for (lladdr, dst) in &found.fdb {
        if lladdr != "00:00:00:00:00:00" && !wanted.contains(dst) {
            v.push(Step::Bridge(words(&format!(
                "fdb del {lladdr} dev {DEVICE} dst {dst}"
            ))));
        }
    }
    Ok(v)
}

/// Read what the kernel holds of the hand-off.
pub async fn find() -> Result<Found, KernelError> {
    let device = link_detail(DEVICE).await?.is_some();
    let tables = tables_in_use().await?;
    if !device {
        return Ok(Found {
            tables,
            ..Found::default()
        });
    }
    let neighbours = entries("ip", &["-j", "neigh", "show", "dev", DEVICE], "dst").await?;
    let fdb = run("bridge", &["-j", "fdb", "show", "dev", DEVICE], None).await?;
    let fdb: Vec<serde_json::Value> = serde_json::from_str(&fdb).unwrap_or_default();
    let fdb = fdb
        .iter()
        .filter_map(|e| Some((e["mac"].as_str()?.to_owned(), e["dst"].as_str()?.to_owned())))
        .collect();
    Ok(Found {
        device,
        tables,
        neighbours,
        fdb,
    })
}

/// Make the kernel hand exactly `handoffs` over (the device must exist for
/// any): read what it holds, then run [`steps`].
pub async fn converge(
    iface: &str,
    port: u16,
    vpc: &[Ipv4Cidr],
    handoffs: &[Handoff],
) -> Result<(), KernelError> {
    let found = find().await?;
    for step in steps(iface, port, vpc, handoffs, &found)? {
        match step {
            Step::Ip(args) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run("ip", &args, None).await?;
            }
            Step::Bridge(args) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run("bridge", &args, None).await?;
            }
            Step::Ruleset(text) => super::apply_ruleset(&text).await?,
        }
    }
    Ok(())
}

/// The hand-offs the kernel carries out now (left by an earlier daemon):
/// each rule's table names its peer (its `via`), and the map its sources.
/// Empty when there are none or the state cannot be read.
pub async fn current() -> Vec<Handoff> {
    let Ok(tables) = tables_in_use().await else {
        return Vec::new();
    };
    let map = run(
        "nft",
        &["-j", "list", "map", "ip", NFT_TABLE, "previous_holder"],
        None,
    )
    .await
    .map(|out| map_elements(&out))
    .unwrap_or_default();
    let mut out = Vec::new();
    for table in tables {
        let t = table.to_string();
        let Ok(gateways) = entries("ip", &["-j", "route", "show", "table", &t], "gateway").await
        else {
            continue;
        };
        let Some(peer) = gateways.iter().find_map(|g| g.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let sources: Vec<Ipv4Cidr> = map
            .iter()
            .filter(|(_, m)| *m == table && mark(peer) == table)
            .map(|(c, _)| *c)
            .collect();
        if !sources.is_empty() {
            out.push(Handoff { peer, sources });
        }
    }
    out
}

/// The `(source, mark)` elements of our map in `nft -j list map` output.
/// Pure.
pub fn map_elements(json: &str) -> Vec<(Ipv4Cidr, u32)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let sets = v["nftables"].as_array().cloned().unwrap_or_default();
    for elem in sets.iter().filter_map(|o| o["map"]["elem"].as_array()) {
        for pair in elem {
            let (key, value) = (&pair[0], &pair[1]);
            let Some(mark) = value.as_u64().and_then(|m| u32::try_from(m).ok()) else {
                continue;
            };
            let cidr = match (key.as_str(), &key["prefix"]) {
                (Some(addr), _) => format!("{addr}/32").parse().ok(),
                (None, p) => match (p["addr"].as_str(), p["len"].as_u64()) {
                    (Some(a), Some(l)) => format!("{a}/{l}").parse().ok(),
                    _ => None,
                },
            };
            if let Some(c) = cidr {
                out.push((c, mark));
            }
        }
    }
    out
}

/// The `key` field of each object `program args` prints as a JSON list.
async fn entries(program: &str, args: &[&str], key: &str) -> Result<Vec<String>, KernelError> {
    let out = run(program, args, None).await?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    Ok(list
        .iter()
        .filter_map(|e| e[key].as_str().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn golden_handoff_table() {
        let handoffs = [
            Handoff {
                peer: Ipv4Addr::new(10, 0, 101, 10),
                sources: vec![cidr("10.0.1.0/24"), cidr("10.0.3.7/24")],
            },
            Handoff {
                peer: Ipv4Addr::new(10, 0, 102, 10),
                // Already handed to the first peer: skipped, not an nft error.
                sources: vec![cidr("10.0.2.0/24"), cidr("10.0.1.128/25")],
            },
        ];
        let got = render("ens5", 7471, &[cidr("10.0.0.0/16")], &handoffs).unwrap();
        super::super::assert_golden("handoff-ens5.nft", &got);
        let empty = render("ens5", 7471, &[], &[]).unwrap();
        assert!(!empty.contains("elements"), "{empty}");
        assert!(render("ens5\" accept", 7471, &[], &[]).is_err());
    }

    #[test]
    fn steps_add_the_new_peer_before_the_marks_and_remove_the_old_after() {
        let new = Ipv4Addr::new(10, 0, 102, 10);
        let old = Ipv4Addr::new(10, 0, 101, 10);
        let handoffs = [Handoff {
            peer: new,
            sources: vec![cidr("10.0.2.0/24")],
        }];
        let found = Found {
            device: true,
            tables: vec![mark(old)],
            neighbours: vec![old.to_string(), new.to_string()],
            fdb: vec![
                (mac(old), old.to_string()),
                ("00:00:00:00:00:00".into(), "10.0.9.9".into()),
            ],
        };
        let vpc = [cidr("10.0.0.0/16")];
        let got: Vec<String> = steps("ens5", 7471, &vpc, &handoffs, &found)
            .unwrap()
            .into_iter()
            .map(|s| match s {
                Step::Ip(a) => format!("ip {}", a.join(" ")),
                Step::Bridge(a) => format!("bridge {}", a.join(" ")),
                Step::Ruleset(_) => "nft -f ruleset".into(),
            })
            .collect();
        let (m_new, m_old) = (mark(new), mark(old));
        let want = [
            format!("ip route replace default via {new} dev hanat0 onlink table {m_new}"),
            format!(
                "ip neigh replace {new} dev hanat0 lladdr {} nud permanent",
                mac(new)
            ),
            format!("bridge fdb replace {} dev hanat0 dst {new}", mac(new)),
            format!("ip rule add priority 7470 iif ens5 fwmark {m_new:#x} lookup {m_new}"),
            "nft -f ruleset".into(),
            format!("ip rule del priority 7470 lookup {m_old}"),
            format!("ip route flush table {m_old}"),
            format!("ip neigh del {old} dev hanat0"),
            format!("bridge fdb del {} dev hanat0 dst {old}", mac(old)),
        ];
        assert_eq!(got, want);
        // Converged: only the idempotent replaces and the ruleset again.
        let settled = Found {
            device: true,
            tables: vec![m_new],
            neighbours: vec![new.to_string()],
            fdb: vec![(mac(new), new.to_string())],
        };
        let again = steps("ens5", 7471, &vpc, &handoffs, &settled).unwrap();
        assert_eq!(again.len(), 4, "{again:?}");
        // Nothing to hand over needs no device; something does.
        let none = Found::default();
        assert_eq!(steps("ens5", 7471, &vpc, &[], &none).unwrap().len(), 1);
        assert!(steps("ens5", 7471, &vpc, &handoffs, &none).is_err());
    }

    #[test]
    fn map_elements_are_read_back_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "ip", "name": "previous_holder", "table": "hanat_handoff", "type": "ipv4_addr", "map": "mark", "flags": ["interval"], "elem": [[{"prefix": {"addr": "10.0.1.0", "len": 24}}, 1744856330], ["10.0.3.5", 1744856586], [{"range": ["10.0.4.0", "10.0.4.9"]}, 1]]}}]}"#;
        assert_eq!(
            map_elements(json),
            vec![
                (cidr("10.0.1.0/24"), 0x6800_650a),
                (cidr("10.0.3.5/32"), 0x6800_660a)
            ]
        );
        assert!(map_elements("not json").is_empty());
        assert!(map_elements(r#"{"nftables": []}"#).is_empty());
    }

    #[test]
    fn marks_and_macs_follow_the_peer_address() {
        let ip = Ipv4Addr::new(10, 0, 101, 10);
        assert_eq!(mark(ip), 0x6800_650a);
        assert_eq!(mac(ip), "02:68:0a:00:65:0a");
        assert_ne!(mark(ip), mark(Ipv4Addr::new(10, 0, 102, 10)));
    }
}
