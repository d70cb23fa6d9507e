//! This NAT's addresses: claiming the Elastic IPs (`[eip]`) and
//! translating to several of them (`[snat]`).

use serde::{Deserialize, Deserializer};

/// The AZ's stable public address.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eip {
    /// Claim the Elastic IP tagged for this NAT's group at start and keep it.
    pub claim: bool,
    /// The tag whose value is this NAT's Auto Scaling group name (the
    /// CloudFormation templates set it on each AZ's address).
    pub tag_key: String,
}

impl Default for Eip {
    fn default() -> Self {
        Self {
            claim: true,
            tag_key: "hanat:group".into(),
        }
    }
}

/// How many public addresses a NAT translates to, and which source ports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Snat {
    /// Private addresses on the interface, each with an Elastic IP of the
    /// group's pool: the primary one and `addresses - 1` secondary ones,
    /// which the daemon assigns itself. New connections are spread over
    /// them one by one, so one client's connections to one destination
    /// use them all (`docs/configuration.md`).
    pub addresses: u8,
    /// The source ports TCP and UDP connections are translated to.
    #[serde(deserialize_with = "port_range")]
    pub ports: (u16, u16),
}

/// At most this many addresses per NAT: the NAT Gateway's own limit, and
/// the most the smallest instances accept on one interface.
pub const MAX_SNAT_ADDRESSES: u8 = 8;

impl Default for Snat {
    fn default() -> Self {
        Self {
            addresses: 1,
            ports: (1024, 65535),
        }
    }
}

/// `"1024-65535"` (or one port, `"4000"`).
fn port_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let text = String::deserialize(d)?;
    let bad = || {
        serde::de::Error::custom(format!(
            "`{text}` is not a port range such as \"1024-65535\" (ports 1-65535, low first)"
        ))
    };
    let (lo, hi) = text.split_once('-').unwrap_or((&text, &text));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl Snat {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_SNAT_ADDRESSES).contains(&self.addresses) {
            return Err((
                "snat.addresses",
                format!("must be from 1 to {MAX_SNAT_ADDRESSES}"),
            ));
        }
        Ok(())
    }
}
