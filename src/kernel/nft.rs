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
//!   destination outside them are masqueraded to the interface's address.

use super::TUNNEL_DEVICE as tunnel;
use super::{KernelError, check_iface};
use crate::domain::Ipv4Cidr;

/// The family and name of our table.
pub const TABLE: &str = "hanat";

/// The ruleset for masquerading `sources` out of `iface`. Pure.
pub fn render(iface: &str, sources: &[Ipv4Cidr]) -> Result<String, KernelError> {
    check_iface(iface)?;
    let elements = super::cidr_list(sources);
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

	chain forward_filter {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		oifname "{tunnel}" accept comment "flow hand-off: mid-flow packets of another NAT's connection"
		iifname "{tunnel}" drop comment "flow hand-off: only connections this NAT translates"
		ct state invalid drop
		ip saddr @nat_sources ct state new accept
		counter comment "new connection not from a NAT source"
	}}

	chain postrouting_nat {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr @nat_sources ip daddr != @nat_sources oifname "{iface}" masquerade
	}}
}}
"#
    ))
}

/// Whether our table exists (used by `hanat plan`).
pub async fn table_exists() -> Result<bool, KernelError> {
    super::table_exists(TABLE).await
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
        let got = render("ens5", &sources).unwrap();
        super::super::assert_golden("ruleset-ens5.nft", &got);
    }

    #[test]
    fn hostile_interface_names_are_refused() {
        for bad in ["", "eth0\" accept", "a b", "x\\y"] {
            assert!(render(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
