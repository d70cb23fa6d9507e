//! Traffic counters with a NAT Gateway's meanings, from the kernel alone:
//! the nftables table `ip hanat_metrics` ([`render`]: named counters and
//! two counting chains that never drop or accept anything), conntrack's
//! statistics (`/proc/net/stat/nf_conntrack`) and table
//! (`/proc/net/nf_conntrack`).
//!
//! The table is not replaced like hanat's main table (that would reset the
//! counters every converge): each converge re-declares it, which keeps the
//! counters, and rewrites only its set and chains, in one transaction.
//!
//! Directions, for connections whose original source is a NAT source (a
//! private host; the probe namespace is left out by interface):
//! - *in from source*: original-direction packets arriving on the primary
//!   interface (or from the flow hand-off tunnel) to be forwarded;
//! - *out to destination*: the same leaving the primary interface;
//! - *in from destination*: reply-direction packets arriving on it;
//! - *out to source*: the same leaving it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::TUNNEL_DEVICE as tunnel;
use super::{KernelError, check_iface, parse_json, run};
use crate::domain::Ipv4Cidr;

/// Our counting table.
pub const TABLE: &str = "hanat_metrics";

/// The counters of [`TABLE`], by name.
pub const COUNTERS: [&str; 7] = [
    "in_from_source",
    "out_to_destination",
    "in_from_destination",
    "out_to_source",
    "connection_attempts",
    "connections_established",
    "invalid",
];

/// The counting table for traffic of `sources` on `iface`. Pure.
pub fn render(iface: &str, sources: &[Ipv4Cidr]) -> Result<String, KernelError> {
    check_iface(iface)?;
    let elements = super::cidr_list(sources);
    let counters: String = COUNTERS
        .iter()
        .map(|c| format!("\tcounter {c} {{\n\t}}\n"))
        .collect();
    let t = format!("ip {TABLE}");
    let from_source = "ct original ip saddr @nat_sources";
    Ok(format!(
        r#"# Managed by hanat: counters kept across converges. Do not edit.
table {t} {{
	set nat_sources {{
		type ipv4_addr
		flags interval
		auto-merge
	}}
{counters}
	chain count_forward {{
		type filter hook forward priority -150; policy accept;
	}}

	chain count_postrouting {{
		type filter hook postrouting priority 150; policy accept;
	}}
}}
flush set {t} nat_sources
add element {t} nat_sources {{ {elements} }}
flush chain {t} count_forward
add rule {t} count_forward ct state invalid counter name invalid
add rule {t} count_forward iifname {{ "{iface}", "{tunnel}" }} ct direction original {from_source} counter name in_from_source
add rule {t} count_forward iifname "{iface}" ct direction reply {from_source} counter name in_from_destination
add rule {t} count_forward iifname {{ "{iface}", "{tunnel}" }} ct state new {from_source} counter name connection_attempts
add rule {t} count_forward iifname "{iface}" ct direction reply {from_source} tcp flags & (syn | ack) == syn | ack counter name connections_established
flush chain {t} count_postrouting
add rule {t} count_postrouting iifname {{ "{iface}", "{tunnel}" }} oifname "{iface}" ct direction original {from_source} counter name out_to_destination
add rule {t} count_postrouting iifname "{iface}" oifname "{iface}" ct direction reply {from_source} counter name out_to_source
"#
    ))
}

/// One named counter's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Listing {
    nftables: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct Item {
    #[serde(default)]
    counter: Option<CounterItem>,
}

#[derive(Debug, Deserialize)]
struct CounterItem {
    name: String,
    #[serde(default)]
    packets: u64,
    #[serde(default)]
    bytes: u64,
}

/// The counters of [`TABLE`] from `nft -j list counters` output. Pure.
pub fn parse_counters(json: &str) -> Result<BTreeMap<String, Count>, KernelError> {
    let args = ["-j", "list", "counters", "table", "ip", TABLE];
    let listing: Listing = parse_json("nft", &args, json)?;
    Ok(listing
        .nftables
        .into_iter()
        .filter_map(|i| i.counter)
        .map(|c| {
            let count = Count {
                packets: c.packets,
                bytes: c.bytes,
            };
            (c.name, count)
        })
        .collect())
}

/// The counters of [`TABLE`] now.
pub async fn read() -> Result<BTreeMap<String, Count>, KernelError> {
    let args = ["-j", "list", "counters", "table", "ip", TABLE];
    let out = run("nft", &args, None).await?;
    parse_counters(&out)
}

/// Conntrack's statistics, summed over CPUs, by column name
/// (`insert_failed`, `drop`, `early_drop`, …) from the text of
/// `/proc/net/stat/nf_conntrack` (a header, then one row of hex per CPU).
/// Pure.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        for (name, v) in names.iter().zip(line.split_whitespace()) {
            // `entries` is a gauge repeated on every row, not a sum.
            if *name == "entries" {
                continue;
            }
            let v = u64::from_str_radix(v, 16).unwrap_or(0);
            *sums.entry((*name).to_owned()).or_default() += v;
        }
    }
    sums
}

/// Connections in the conntrack table (the text of
/// `/proc/net/nf_conntrack`, read a line at a time) that are TCP,
/// established, and opened by a NAT source. Lines that cannot be read are
/// skipped.
pub fn active_tcp(text: impl std::io::BufRead, sources: &[Ipv4Cidr]) -> u64 {
    text.lines()
        .map_while(Result::ok)
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.nth(2) == Some("tcp") && l.contains(" ESTABLISHED ")
        })
        .filter(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("src="))
                .and_then(|ip| ip.parse().ok())
                .is_some_and(|ip| sources.iter().any(|c| c.contains(ip)))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn golden_counting_table() {
        let text = render("ens5", &[cidr("10.0.0.0/16"), cidr("100.64.7.0/24")]).unwrap();
        crate::kernel::assert_golden("metrics-ens5.nft", &text);
        // Never a verdict: counting must not change what passes, and the
        // table (with its counters) is never deleted.
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("add rule")).collect();
        assert_eq!(rules.len(), 7);
        for word in [" accept", " drop", " reject", " jump", " goto"] {
            assert!(!rules.iter().any(|r| r.contains(word)), "{word} in\n{text}");
        }
        assert!(!text.contains("delete"), "{text}");
        assert_eq!(text.matches("policy accept;").count(), 2);
        assert!(render("ens5\" drop", &[]).is_err());
    }

    #[test]
    fn counters_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"counter": {"family": "ip", "name": "in_from_source", "table": "hanat_metrics", "handle": 2, "packets": 10, "bytes": 840}},
          {"counter": {"family": "ip", "name": "invalid", "table": "hanat_metrics", "handle": 8, "packets": 0, "bytes": 0}}]}"#;
        let c = parse_counters(json).unwrap();
        assert_eq!(
            c["in_from_source"],
            Count {
                packets: 10,
                bytes: 840
            }
        );
        assert_eq!(c["invalid"], Count::default());
        assert!(parse_counters("not json").is_err());
    }

    #[test]
    fn conntrack_stats_sum_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
            00000010  00000000 00000000 00000000 00000002 00000000 00000000 00000000 00000000 00000001 0000000a 00000000 00000000  00000000 00000000 00000000 00000000\n\
            00000010  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000002 00000006 00000003 00000000  00000000 00000000 00000000 00000000\n";
        let s = parse_stats(text);
        assert_eq!(s["insert_failed"], 3);
        assert_eq!(s["drop"], 16);
        assert_eq!(s["early_drop"], 3);
        assert_eq!(s["invalid"], 3);
        assert!(!s.contains_key("entries"));
        assert!(parse_stats("").is_empty());
    }

    #[test]
    fn active_connections_are_established_tcp_from_a_source() {
        let text = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.1.10 dst=203.0.113.10 sport=40000 dport=80 src=203.0.113.10 dst=10.0.0.4 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=10.0.1.10 dst=203.0.113.10 sport=40001 dport=80 src=203.0.113.10 dst=10.0.0.4 sport=80 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=10.0.1.10 dst=203.0.113.10 sport=5000 dport=53 src=203.0.113.10 dst=10.0.0.4 sport=53 dport=5000 mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=203.0.113.99 dst=10.0.0.4 sport=1 dport=22 src=10.0.0.4 dst=203.0.113.99 sport=22 dport=1 [ASSURED] mark=0 zone=0 use=2
";
        assert_eq!(active_tcp(text.as_bytes(), &[cidr("10.0.0.0/16")]), 1);
        assert_eq!(active_tcp(text.as_bytes(), &[]), 0);
    }
}
