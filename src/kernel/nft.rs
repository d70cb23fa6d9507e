//! The nftables ruleset hanat owns: table `ip hanat`.
//!
//! Rendered as text from values ([`render`], golden-file tested) and applied
//! ([`super::apply_ruleset`]) with one `nft -f -` transaction that adds, deletes and recreates the
//! table, so the kernel switches from the old rules to the new ones
//! atomically: no packet sees a half-built table, and established flows
//! (conntrack) are untouched. Only the table named [`TABLE`] is ever
//! changed; other tables, including ones that drop traffic, are left alone.
//!
//! Policy (the one-way "back gate"):
//! - forward: replies (established/related) pass; new connections pass only
//!   from the NAT sources (the VPC CIDRs and the probe network); everything
//!   else is dropped, so nothing outside can open a connection inward.
//!   Flow hand-off ([`super::tunnel`]): what is routed into the tunnel
//!   passes (only marked mid-flow packets are); what comes out of it passes
//!   only if it belongs to a connection this NAT translates;
//! - postrouting: NAT sources leaving the primary interface for a
//!   destination outside them are translated: masqueraded to the
//!   interface's address when it has one public address, else each new
//!   connection to the next of its addresses in turn (`numgen inc`), so
//!   even one client's connections to one destination use them all. TCP
//!   and UDP get a source port from the configured range (`snat.ports`).
//!   The kernel picks the address before the port: when the chosen
//!   address has no free port left for that destination, the connection's
//!   first packet is dropped (conntrack `insert_failed`), not moved to
//!   another address.
//! - input ([`Guard`]): the daemon's own ports. The endpoints' port
//!   (`metrics.listen`) admits loopback and `metrics.allow` only; the
//!   heartbeat port takes at most [`HEARTBEAT_RATE`] datagrams a second
//!   from one address, and drops the rest in the kernel, so a host that
//!   floods it costs the daemon no work (a peer sends a few a second).

use super::TUNNEL_DEVICE as tunnel;
use std::net::Ipv4Addr;

use super::{KernelError, check_iface};
use crate::domain::Ipv4Cidr;

/// The family and name of our table.
pub const TABLE: &str = "hanat";

/// What new connections are translated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// The interface's addresses that have a public address, primary
    /// first; with one (or none), the interface's own (`masquerade`).
    pub addresses: Vec<Ipv4Addr>,
    /// Source ports for TCP and UDP, inclusive.
    pub ports: (u16, u16),
}

impl Translation {
    /// The `postrouting_nat` statements: first TCP and UDP (with the port
    /// range), then everything else (ICMP keeps its id).
    fn statements(&self) -> [String; 2] {
        let target = match self.addresses.as_slice() {
            [] | [_] => None,
            many => Some(format!(
                "numgen inc mod {} map {{ {} }}",
                many.len(),
                many.iter()
                    .enumerate()
                    .map(|(i, a)| format!("{i} : {a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        let (lo, hi) = self.ports;
        match target {
            None => [
                format!("meta l4proto {{ tcp, udp }} masquerade to :{lo}-{hi}"),
                "masquerade".into(),
            ],
            Some(t) => [
                format!("meta l4proto {{ tcp, udp }} snat to {t} :{lo}-{hi}"),
                format!("snat to {t}"),
            ],
        }
    }
}

/// Datagrams a second one address may send to the heartbeat port (and as
/// many at once); more are dropped in the kernel. A peer sends one every
/// `peers.interval` and one at each change of its verdict.
pub const HEARTBEAT_RATE: u32 = 100;

/// Open connections one address may have to the endpoints; its next
/// connection is reset by the kernel, before it takes a place in the
/// listen queue that EC2's status check may need. Twice the daemon's own
/// cap per address (`MAX_PER_SOURCE`), for connections still closing.
pub const ENDPOINT_PER_SOURCE: u32 = 8;

/// Sets whose elements the kernel adds as packets arrive: not a change
/// anyone made, so left out of [`listing`].
const DYNAMIC_SETS: [&str; 2] = ["heartbeat_senders", "endpoint_clients"];

/// What the input filter guards: the daemon's own ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    /// The endpoints' TCP port, and who besides loopback may connect.
    pub endpoint: Option<(u16, Vec<Ipv4Cidr>)>,
    /// The heartbeat UDP port, rate-limited per source.
    pub heartbeat: Option<u16>,
}

impl Guard {
    /// The input chain's sets and rules (empty when there is nothing to
    /// guard).
    fn render(&self) -> (String, Vec<String>) {
        let mut sets = String::new();
        let mut rules = Vec::new();
        if let Some((port, allow)) = &self.endpoint {
            let elements = match allow.is_empty() {
                true => String::new(),
                false => format!("\t\telements = {{ {} }}\n", super::cidr_list(allow)),
            };
            sets.push_str(&format!(
                "\tset endpoint_allow {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n{elements}\t}}\n\n"
            ));
            sets.push_str(
                "\tset endpoint_clients {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic\n\t}\n\n",
            );
            rules.push(format!(
                "tcp dport {port} ip saddr != @endpoint_allow counter drop comment \"metrics.allow\""
            ));
            rules.push(format!(
                "tcp dport {port} ct state new add @endpoint_clients {{ ip saddr ct count over {ENDPOINT_PER_SOURCE} }} counter reject with tcp reset comment \"endpoint: connections per address\""
            ));
        }
        if let Some(port) = self.heartbeat {
            sets.push_str(
                "\tset heartbeat_senders {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t}\n\n",
            );
            rules.push(format!(
                "udp dport {port} update @heartbeat_senders {{ ip saddr limit rate over {HEARTBEAT_RATE}/second burst {HEARTBEAT_RATE} packets }} counter drop comment \"heartbeat flood\""
            ));
        }
        (sets, rules)
    }
}

/// The ruleset for translating `sources` out of `iface`, guarding the
/// daemon's ports as `guard` says. Pure.
pub fn render(
    iface: &str,
    sources: &[Ipv4Cidr],
    translation: &Translation,
    guard: &Guard,
) -> Result<String, KernelError> {
    check_iface(iface)?;
    let elements = super::cidr_list(sources);
    let (guard_sets, guard_rules) = guard.render();
    let input = match guard_rules.is_empty() {
        true => String::new(),
        false => format!(
            "\n\tchain input_filter {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"lo\" accept\n{}\t}}\n",
            guard_rules
                .iter()
                .map(|r| format!("\t\t{r}\n"))
                .collect::<String>()
        ),
    };
    let matched = format!(r#"ip saddr @nat_sources ip daddr != @nat_sources oifname "{iface}""#);
    let [ported, rest] = translation.statements();
    Ok(format!(
        r#"# Managed by hanat: replaced atomically on every converge. Do not edit.
table ip {TABLE} {{
}}
delete table ip {TABLE}
table ip {TABLE} {{
	set nat_sources {{
		type ipv4_addr
		flags interval
		auto-merge
		elements = {{ {elements} }}
	}}

{guard_sets}	chain forward_filter {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		oifname "{tunnel}" accept comment "flow hand-off: mid-flow packets of another NAT's connection"
		iifname "{tunnel}" drop comment "flow hand-off: only connections this NAT translates"
		ct state invalid drop
		ip saddr @nat_sources tcp flags & (syn | rst) == 0 ct state new counter reject with tcp reset comment "mid-flow packet of a connection this NAT does not know: reset it, as a NAT Gateway does"
		ip saddr @nat_sources ct state new accept
		counter comment "new connection not from a NAT source"
	}}

	chain postrouting_nat {{
		type nat hook postrouting priority srcnat; policy accept;
		{matched} {ported}
		{matched} {rest}
	}}
{input}}}
"#
    ))
}

/// Whether our table exists (used by `hanat plan`).
pub async fn table_exists() -> Result<bool, KernelError> {
    super::table_exists(TABLE).await
}

/// Our table as the kernel holds it, without counter values (`nft -s`), or
/// `None` if it is absent (or `nft` cannot list it: applying will say why).
/// Two listings are equal when nothing changed it in between.
pub async fn listing() -> Option<String> {
    super::run("nft", &["-s", "list", "table", "ip", TABLE], None)
        .await
        .ok()
        .map(|l| without_dynamic_sets(&l))
}

/// A listing without the [`DYNAMIC_SETS`]. Pure.
fn without_dynamic_sets(listing: &str) -> String {
    let mut skipping = false;
    listing
        .lines()
        .filter(|l| {
            let t = l.trim();
            if DYNAMIC_SETS
                .iter()
                .any(|set| t.starts_with(&format!("set {set} {{")))
            {
                skipping = true;
            }
            let keep = !skipping;
            if skipping && t == "}" {
                skipping = false;
            }
            keep
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_ruleset() {
        let sources: Vec<Ipv4Cidr> = ["10.0.0.0/16", "100.64.7.1/24", "198.19.255.252/30"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let one = Translation {
            addresses: vec!["10.0.0.10".parse().unwrap()],
            ports: (1024, 65535),
        };
        let guard = Guard {
            endpoint: Some((7472, vec!["10.0.0.0/16".parse().unwrap()])),
            heartbeat: Some(7470),
        };
        let got = render("ens5", &sources, &one, &guard).unwrap();
        super::super::assert_golden("ruleset-ens5.nft", &got);
        // Loopback only, and no heartbeats (failover off).
        let local = Guard {
            endpoint: Some((7472, vec![])),
            heartbeat: None,
        };
        let got = render("ens5", &sources, &one, &local).unwrap();
        super::super::assert_golden("ruleset-ens5-endpoint-loopback-only.nft", &got);
        let three = Translation {
            addresses: ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            ports: (32768, 60999),
        };
        let got = render("ens5", &sources, &three, &Guard::default()).unwrap();
        super::super::assert_golden("ruleset-ens5-three-addresses.nft", &got);
    }

    #[test]
    fn what_the_kernel_adds_to_dynamic_sets_is_no_drift() {
        let listing = |senders: &str| {
            format!(
                "table ip hanat {{\n\tset heartbeat_senders {{\n\t\ttype ipv4_addr\n{senders}\t}}\n\n\tchain input_filter {{\n\t}}\n}}\n"
            )
        };
        let empty = without_dynamic_sets(&listing(""));
        assert_eq!(
            empty,
            without_dynamic_sets(&listing(
                "\t\telements = { 10.0.2.4 timeout 1m expires 59s }\n"
            ))
        );
        assert_eq!(
            empty,
            "table ip hanat {\n\n\tchain input_filter {\n\t}\n}\n"
        );
    }

    #[test]
    fn hostile_interface_names_are_refused() {
        for bad in ["", "eth0\" accept", "a b", "x\\y"] {
            let t = Translation {
                addresses: vec![],
                ports: (1024, 65535),
            };
            assert!(render(bad, &[], &t, &Guard::default()).is_err(), "{bad:?}");
        }
    }
}
