//! Domain types shared by every module: AWS identifiers, IPv4 networks,
//! route tables, routes and their targets, instances, Elastic IPs, and what
//! a NAT says about itself.
//!
//! Adapters convert SDK and kernel data into these types at their edge, so the
//! decision core never sees an SDK struct. No I/O here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

macro_rules! aws_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

aws_id!(
    /// `i-…`
    InstanceId
);
aws_id!(
    /// `eni-…`
    EniId
);
aws_id!(
    /// `rtb-…`
    RouteTableId
);
aws_id!(
    /// `subnet-…`
    SubnetId
);
aws_id!(
    /// `vpc-…`
    VpcId
);

/// Who this NAT instance is, as told by the instance metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: InstanceId,
    pub region: String,
    pub availability_zone: String,
    /// MAC of the primary network interface, lower case.
    pub mac: String,
    pub eni: EniId,
    pub vpc_id: VpcId,
    pub vpc_cidrs: Vec<Ipv4Cidr>,
    pub subnet_id: SubnetId,
    pub private_ip: Ipv4Addr,
}

/// An IPv4 network such as `10.0.0.0/16`. The address is kept as written;
/// [`Ipv4Cidr::network`] gives the masked form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The `n`-th address of the network (0 is the network address itself).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).wrapping_add(n))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a string is not an IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IPv4 network like 10.0.0.0/16")]
pub struct CidrParseError(pub String);

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

/// A route table as hanat sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub id: RouteTableId,
    pub vpc_id: VpcId,
    /// The VPC's main route table: never modified by hanat.
    pub is_main: bool,
    /// Subnets explicitly associated with it.
    pub subnets: Vec<SubnetId>,
    /// The `0.0.0.0/0` route, if there is one.
    pub default_route: Option<Route>,
}

/// A `0.0.0.0/0` route's target and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub target: RouteTarget,
    /// AWS marks a route whose target is gone as a blackhole.
    pub blackhole: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    Eni(EniId),
    Instance(InstanceId),
    NatGateway(String),
    /// An internet gateway, VPC endpoint, transit gateway, peering…
    Other(String),
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Eni(e) => write!(f, "{e}"),
            RouteTarget::Instance(i) => write!(f, "{i}"),
            RouteTarget::NatGateway(n) | RouteTarget::Other(n) => f.write_str(n),
        }
    }
}

/// An instance as peers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub az: String,
    /// Primary interface and its private address.
    pub eni: Option<EniId>,
    pub ip: Option<Ipv4Addr>,
    /// `pending` or `running`: it can still forward or soon will.
    pub alive: bool,
    /// When it was launched (Unix seconds), if EC2 said: which of two NATs
    /// of one AZ is the newer ([`crate::decide::holder`]).
    pub launched: Option<i64>,
}

/// What EC2 says of a silent peer: whether it still runs, and which of its
/// status checks call it impaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHealth {
    pub id: InstanceId,
    /// `pending` or `running`.
    pub alive: bool,
    /// The checks that say `impaired`: `system`, `instance` (EC2's own: the
    /// host, and whether the instance's kernel answers on its network), and
    /// `application` (application status checks, e.g. one on hanat's
    /// `/health`).
    pub impaired: Vec<&'static str>,
}

/// One figure for CloudWatch: a metric's name, its dimensions and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub name: &'static str,
    pub dimensions: Vec<(&'static str, String)>,
    pub value: f64,
    pub unit: Unit,
}

/// CloudWatch units of the figures hanat publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Percent,
}

/// An Elastic IP and where it is associated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub allocation_id: String,
    pub public_ip: String,
    pub eni: Option<EniId>,
    pub instance: Option<InstanceId>,
    /// The private address it is associated with, when associated.
    pub private_ip: Option<Ipv4Addr>,
    /// Tagged [`SPARE_TAG`]: the pool's spare, for a second NAT of the AZ.
    pub spare: bool,
}

/// The tag (value `true`) the templates put on each AZ's spare Elastic IP,
/// which a NAT claims only when the pool's other addresses are held.
pub const SPARE_TAG: &str = "hanat:spare";

impl Address {
    /// Whether it is associated with `id`'s interface or instance.
    pub fn is_on(&self, id: &Identity) -> bool {
        self.eni.as_ref() == Some(&id.eni) || self.instance.as_ref() == Some(&id.instance_id)
    }

    /// Whether anyone holds it.
    pub fn is_held(&self) -> bool {
        self.eni.is_some() || self.instance.is_some()
    }

    /// The private address of `id` it is on: the one EC2 names, else (an
    /// association by instance) the primary one.
    pub fn private_ip_of(&self, id: &Identity) -> Ipv4Addr {
        self.private_ip.unwrap_or(id.private_ip)
    }
}

/// What a NAT says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// Up, but its forwarding has not been proven yet.
    #[default]
    Starting,
    /// Its forwarding probe passes.
    Ok,
    /// Its forwarding probe fails.
    Failing,
    /// It is leaving (scale-in, spot interruption, stop with hand-off).
    Exiting,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Ok => "ok",
            Status::Failing => "failing",
            Status::Exiting => "exiting",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Starting,
            Status::Ok,
            Status::Failing,
            Status::Exiting,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A duration as a person reads it, in at most two units: `250ms`,
/// `1s`, `1.5s`, `12s`, `1m 56s`, `2h 13m`, `3d 4h`.
pub fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 10_000 {
        let tenths = (ms + 50) / 100;
        return match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            t => format!("{}.{t}s", tenths / 10),
        };
    }
    let s = (d.as_secs_f64().round()) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Conntrack's sizes and timeouts as the kernel takes them (seconds), for
/// an instance with `memory` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// `None`: leave the kernel's value.
    pub max: Option<u64>,
    pub buckets: Option<u64>,
    pub tcp_established: u64,
    pub tcp_time_wait: u64,
    pub udp: u64,
    pub udp_stream: u64,
    /// Every entry reports its changes to a listener that starts after it
    /// was made (replication's watcher); the kernel's default reports
    /// them only for entries made while a listener was there.
    pub events: bool,
}

/// The id of a managed NAT Gateway (`nat-…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatGatewayId(pub String);

impl<'de> serde::Deserialize<'de> for NatGatewayId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        let hex = s.strip_prefix("nat-").unwrap_or_default();
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(serde::de::Error::custom(format!(
                "`{s}` is not a NAT Gateway id like nat-0123456789abcdef0"
            )));
        }
        Ok(NatGatewayId(s))
    }
}

impl std::fmt::Display for NatGatewayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One target of the forwarding probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// `tcp://HOST:PORT`: a TCP handshake completes.
    Tcp { host: String, port: u16 },
    /// `http://HOST[:PORT]/PATH`: any HTTP response arrives.
    Http { url: String },
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeTarget::Tcp { host, port } => match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => write!(f, "tcp://[{host}]:{port}"),
                _ => write!(f, "tcp://{host}:{port}"),
            },
            ProbeTarget::Http { url } => f.write_str(url),
        }
    }
}

impl std::str::FromStr for ProbeTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                format!("`{s}`: a tcp target needs a port, like tcp://203.0.113.10:80")
            })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{s}`: `{port}` is not a port number (1-65535)"))?;
            if host.is_empty() || host.contains('/') {
                return Err(format!("`{s}`: missing or bad host"));
            }
            Ok(ProbeTarget::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(rest) = s.strip_prefix("http://") {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(format!("`{s}`: missing host"));
            }
            Ok(ProbeTarget::Http { url: s.to_owned() })
        } else {
            Err(format!(
                "`{s}`: unsupported target; use tcp://HOST:PORT or http://HOST[:PORT]/PATH"
            ))
        }
    }
}

impl<'de> serde::Deserialize<'de> for ProbeTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
impl Identity {
    /// An identity with the given ids, for tests.
    pub fn example(instance: &str, eni: &str, vpc: &str) -> Identity {
        Identity {
            instance_id: InstanceId(instance.into()),
            region: "eu-west-1".into(),
            availability_zone: "eu-west-1a".into(),
            mac: "02:00:00:00:00:01".into(),
            eni: EniId(eni.into()),
            vpc_id: crate::domain::VpcId(vpc.into()),
            vpc_cidrs: vec![crate::domain::Ipv4Cidr {
                addr: std::net::Ipv4Addr::new(10, 0, 0, 0),
                prefix: 16,
            }],
            subnet_id: SubnetId("subnet-pub".into()),
            private_ip: std::net::Ipv4Addr::new(10, 0, 0, 10),
        }
    }
}

/// A TCP connection or UDP flow by its original tuple: the private host's
/// address and port, and the far end's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    pub proto: Proto,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// A connection's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// As `conntrack -p` names it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The address and port a connection's source was translated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c: Ipv4Cidr = "10.0.0.0/16".parse().unwrap();
        assert!(c.contains("10.0.255.1".parse().unwrap()));
        assert!(!c.contains("10.1.0.1".parse().unwrap()));
        assert_eq!(c.to_string(), "10.0.0.0/16");
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", ""] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn cidr_overlap_and_nth() {
        let probe: Ipv4Cidr = "198.19.255.252/30".parse().unwrap();
        let vpc: Ipv4Cidr = "10.0.0.0/16".parse().unwrap();
        assert!(!probe.overlaps(&vpc));
        assert!(vpc.overlaps(&"10.0.3.0/24".parse().unwrap()));
        assert!(
            "198.16.0.0/14"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .overlaps(&probe)
        );
        assert_eq!(probe.nth(1), Ipv4Addr::new(198, 19, 255, 253));
        assert_eq!(probe.nth(2), Ipv4Addr::new(198, 19, 255, 254));
    }
}

#[cfg(test)]
mod human_tests {
    use super::human;
    use std::time::Duration;

    #[test]
    fn durations_read_in_at_most_two_units() {
        let ms = Duration::from_millis;
        for (d, want) in [
            (ms(0), "0ms"),
            (ms(250), "250ms"),
            (ms(999), "999ms"),
            (ms(1_000), "1s"),
            (ms(1_500), "1.5s"),
            (ms(9_960), "10s"),
            (ms(12_400), "12s"),
            (Duration::from_nanos(115_578_079_288), "1m 56s"),
            (ms(7_980_000), "2h 13m"),
            (ms(273_600_000), "3d 4h"),
        ] {
            assert_eq!(human(d), want, "{d:?}");
        }
    }
}
