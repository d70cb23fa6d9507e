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
use crate::domain::{Ipv4Cidr, Unit};

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

/// Where a NAT Gateway counter's value is read in the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The bytes of a counter of [`TABLE`].
    Bytes(&'static str),
    /// The packets of a counter of [`TABLE`].
    Packets(&'static str),
    /// A sum of conntrack statistics (`/proc/net/stat/nf_conntrack`
    /// columns) and of the packets of counters of [`TABLE`].
    Sum(&'static [&'static str], &'static [&'static str]),
}

/// One of the NAT Gateway's counters: its metric name (`hanat_NAME_total`),
/// its CloudWatch name (`AWS/NATGateway`'s), where the kernel keeps it.
#[derive(Debug, Clone, Copy)]
pub struct GatewayCounter {
    pub name: &'static str,
    pub cloudwatch: &'static str,
    pub unit: Unit,
    pub help: &'static str,
    pub source: Source,
}

const fn gateway(
    name: &'static str,
    cloudwatch: &'static str,
    unit: Unit,
    source: Source,
    help: &'static str,
) -> GatewayCounter {
    GatewayCounter {
        name,
        cloudwatch,
        unit,
        help,
        source,
    }
}

/// The NAT Gateway's counters, each with its names and source (see
/// `docs/observability.md`): the one table the metrics, CloudWatch and
/// the readings share.
pub const GATEWAY_COUNTERS: [GatewayCounter; 12] = {
    use Source::{Bytes, Packets, Sum};
    use Unit::{Bytes as B, Count as N};
    [
        gateway(
            "bytes_in_from_source",
            "BytesInFromSource",
            B,
            Bytes("in_from_source"),
            "BytesInFromSource: bytes from private hosts, to be forwarded",
        ),
        gateway(
            "packets_in_from_source",
            "PacketsInFromSource",
            N,
            Packets("in_from_source"),
            "PacketsInFromSource",
        ),
        gateway(
            "bytes_out_to_destination",
            "BytesOutToDestination",
            B,
            Bytes("out_to_destination"),
            "BytesOutToDestination: bytes sent on to destinations",
        ),
        gateway(
            "packets_out_to_destination",
            "PacketsOutToDestination",
            N,
            Packets("out_to_destination"),
            "PacketsOutToDestination",
        ),
        gateway(
            "bytes_in_from_destination",
            "BytesInFromDestination",
            B,
            Bytes("in_from_destination"),
            "BytesInFromDestination: reply bytes from destinations",
        ),
        gateway(
            "packets_in_from_destination",
            "PacketsInFromDestination",
            N,
            Packets("in_from_destination"),
            "PacketsInFromDestination",
        ),
        gateway(
            "bytes_out_to_source",
            "BytesOutToSource",
            B,
            Bytes("out_to_source"),
            "BytesOutToSource: reply bytes sent on to private hosts",
        ),
        gateway(
            "packets_out_to_source",
            "PacketsOutToSource",
            N,
            Packets("out_to_source"),
            "PacketsOutToSource",
        ),
        gateway(
            "connection_attempts",
            "ConnectionAttemptCount",
            N,
            Packets("connection_attempts"),
            "ConnectionAttemptCount: new connections from private hosts (any protocol)",
        ),
        gateway(
            "connections_established",
            "ConnectionEstablishedCount",
            N,
            Packets("connections_established"),
            "ConnectionEstablishedCount: TCP connections a destination accepted (SYN-ACKs)",
        ),
        gateway(
            "port_allocation_errors",
            "ErrorPortAllocation",
            N,
            Sum(&["insert_failed"], &[]),
            "ErrorPortAllocation: conntrack insert_failed (no free source port for a new connection)",
        ),
        gateway(
            "packets_dropped",
            "PacketsDropCount",
            N,
            Sum(&["drop", "early_drop", "insert_failed"], &["invalid"]),
            "PacketsDropCount: conntrack drop, early_drop and insert_failed (no source port), and invalid packets",
        ),
    ]
};

/// Every gateway counter's value from one reading of [`TABLE`] and of
/// conntrack's statistics (a missing one counts 0). Pure.
pub fn gateway_values(
    counts: &BTreeMap<String, Count>,
    stats: &BTreeMap<String, u64>,
) -> Vec<(&'static str, u64)> {
    let count = |name: &str| counts.get(name).copied().unwrap_or_default();
    let stat = |name: &str| stats.get(name).copied().unwrap_or_default();
    GATEWAY_COUNTERS
        .iter()
        .map(|g| {
            let v = match g.source {
                Source::Bytes(c) => count(c).bytes,
                Source::Packets(c) => count(c).packets,
                Source::Sum(s, c) => {
                    s.iter().map(|s| stat(s)).sum::<u64>()
                        + c.iter().map(|c| count(c).packets).sum::<u64>()
                }
            };
            (g.name, v)
        })
        .collect()
}

/// The gateway counters now: one `nft` listing and one read of conntrack's
/// statistics (unreadable statistics count 0).
pub async fn read_gateway() -> Result<Vec<(&'static str, u64)>, KernelError> {
    let counts = read().await?;
    let stats = std::fs::read_to_string("/proc/net/stat/nf_conntrack")
        .map(|t| parse_stats(&t))
        .unwrap_or_default();
    Ok(gateway_values(&counts, &stats))
}

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

    #[test]
    fn every_gateway_counter_is_read_from_its_source() {
        let count = |packets, bytes| Count { packets, bytes };
        let counts: BTreeMap<String, Count> = [
            ("in_from_source", count(10, 1000)),
            ("out_to_destination", count(9, 900)),
            ("in_from_destination", count(8, 800)),
            ("out_to_source", count(7, 700)),
            ("connection_attempts", count(6, 0)),
            ("connections_established", count(5, 0)),
            ("invalid", count(4, 0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let stats: BTreeMap<String, u64> = [("insert_failed", 3), ("drop", 2), ("early_drop", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let want = [
            ("bytes_in_from_source", 1000),
            ("packets_in_from_source", 10),
            ("bytes_out_to_destination", 900),
            ("packets_out_to_destination", 9),
            ("bytes_in_from_destination", 800),
            ("packets_in_from_destination", 8),
            ("bytes_out_to_source", 700),
            ("packets_out_to_source", 7),
            ("connection_attempts", 6),
            ("connections_established", 5),
            ("port_allocation_errors", 3),
            ("packets_dropped", 3 + 2 + 1 + 4),
        ];
        assert_eq!(gateway_values(&counts, &stats), want);
        // Nothing read: every counter 0, none missing.
        let none = gateway_values(&BTreeMap::new(), &BTreeMap::new());
        assert_eq!(none.len(), GATEWAY_COUNTERS.len());
        assert!(none.iter().all(|(_, v)| *v == 0));
    }

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
