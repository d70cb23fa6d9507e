//! A VPC on one machine: moto as the control plane, network namespaces as
//! the data plane, and the real `hanat` binary on every NAT instance.
//!
//! ```text
//!  host-i 10.0.(2i+1).10 ── prv{i} ┐                    ┌── inet: 203.0.113.10/.11
//!                                  ├── rtr ── igw ──────┤   servers report the
//!  NAT ns (ENI MAC + IP) ── bp{i} ─┘ VPC      1:1 NAT    │   source they saw
//!   hanat, IMDSv2 emulator,          router   private ↔ public (Elastic IP)
//!   AWS API proxy 127.0.0.1:4566 (faults, buckets, counters: crate::api)
//!  NAT Gateway ns 10.0.(2i).250 ── bp{i}   (with --fallback-nat-gateway; one id
//!                                          for every AZ with --regional-nat-gateway)
//! ```
//! - The **router** forwards each private subnet by *its route table in
//!   moto* (polled every 100 ms): a route to the ENI of a live NAT goes to
//!   that ENI's address, a route to the AZ's NAT Gateway to its namespace;
//!   no route, a blackhole, or an ENI whose instance is gone is unreachable
//!   (what AWS shows as a blackhole).
//! - The **internet gateway** maps each NAT's private address 1:1 to its
//!   public address: its Elastic IP when moto says one is associated (moto's
//!   127.x addresses are mapped to 198.51.100.10+i, NAT Gateways' to
//!   198.51.100.20+i), otherwise an auto-assigned 192.0.2.x; unmapped
//!   sources are dropped, as on AWS. It is synced just before the router,
//!   so an address claimed before a route moved is in place first.
//! - A **NAT Gateway** (optional, one per AZ) is moto's resource plus a
//!   namespace on the public subnet that masquerades the VPC.
//! - **Auto Scaling** is played by the lab: an instance set Unhealthy is
//!   terminated; a terminated instance is replaced by moto's group, and the
//!   lab materialises the replacement (namespace, IMDS, daemon) after
//!   `boot_delay`. A killed daemon is restarted after `restart_delay`
//!   (systemd's `Restart=always`).
//!
//! The control plane is `cloudformation/vpc.yaml`, deployed into moto.
//! Everything is named with a unique prefix and removed on drop.
//!
//! By concern: [`vpc`] builds it, [`nat`] runs a NAT instance and its
//! daemon, [`planes`] keeps the router and internet gateway in line with
//! moto, [`autoscaler`] plays Auto Scaling and systemd, [`faults`] injects
//! failures, [`traffic`] serves, sends and meters requests.

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::api::{Api, Latency};
use crate::cloud::{Cloud, Instance};
use crate::imds::{Imds, ImdsFault, InstanceMetadata};
use crate::moto::Moto;
use crate::netns::{Netns, veth};
use crate::sandbox::Sandbox;

pub mod abuse;
mod autoscaler;
mod faults;
mod fleet;
pub mod forge;
mod nat;
mod planes;
pub mod prometheus;
mod sessions;
mod traffic;
pub mod vpc;
pub mod witness;

use self::autoscaler::autoscaler;
pub use self::nat::{Launch, Nat, daemon_config, daemon_env};
use self::nat::{launch_nat, terminate_nat};
use self::planes::plane_sync;
pub use self::sessions::{Sessions, SessionsReport};
pub use self::traffic::{Meter, MeterReport, Sample, Session, summarize, whoami};
use self::vpc::deploy_vpc;
pub use self::vpc::{EXISTING_VPC_TEMPLATE, VPC_TEMPLATE, nat_stack_name};
use self::witness::witness;

/// moto's CloudFormation resolves `!GetAZs ""` to us-east-1's zones
/// whatever the region, so the lab lives there.
pub const REGION: &str = "us-east-1";
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// Where each lab keeps its files (configs, logs), in `<prefix>/`: not
/// under `/tmp` or `/root`, which the unit's sandbox hides from daemons.
pub const LAB_DIR: &str = "/run/hanat-lab";
/// Internet servers (TEST-NET-3, only ever inside the lab's namespace).
pub const SERVERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 11),
];
/// TCP and UDP port where servers answer with the source address they saw.
pub const WHOAMI_PORT: u16 = 80;
/// The internet servers' session port: one line back (the source address
/// seen) for every line received, for as long as the connection lasts.
pub const SESSION_PORT: u16 = 7;
/// Port of the AWS API proxy ([`crate::api`]) inside each NAT namespace.
pub const MOTO_PROXY_PORT: u16 = 4566;
/// The AWS API's address on the internet side, when the daemons reach it
/// through the VPC ([`LabOptions::api_through_vpc`]): AZ `i`'s NATs at
/// port [`MOTO_PROXY_PORT`] + `i` (so the proxy knows whose calls it
/// counts and delays).
pub const AWS_ENDPOINT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);

/// The AWS API's address inside the VPC, on AZ 0's public subnet, when the
/// existing-VPC stack has interface endpoints
/// ([`LabOptions::interface_endpoints`]): what their private DNS names
/// resolve to.
pub const VPC_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 200);

/// The `AWS_ENDPOINT_URL` of AZ `i`'s NATs when the API is reached through
/// the VPC, at `host` ([`AWS_ENDPOINT`] or [`VPC_ENDPOINT`]).
pub fn api_endpoint(host: Ipv4Addr, i: usize) -> String {
    format!("http://{host}:{}", usize::from(MOTO_PROXY_PORT) + i)
}

/// Tag on the Elastic IPs of the pool (value: the AZ).
pub const EIP_POOL_TAG: &str = "hanat:pool";

/// The lab's address for AZ `i`'s Elastic IP (moto's are 127.x).
pub fn elastic_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
}

/// The lab's address for AZ `i`'s Elastic IP number `k` (0 is
/// [`elastic_ip`]; 1 to 7 are those of `snat.addresses` > 1).
pub fn nth_elastic_ip(i: usize, k: usize) -> Ipv4Addr {
    match k {
        0 => elastic_ip(i),
        _ => Ipv4Addr::new(198, 51, 100, 100 + 10 * i as u8 + k as u8),
    }
}

/// The lab's address for AZ `i`'s spare Elastic IP (the template's
/// `SpareAddress`).
pub fn spare_elastic_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 100 + 10 * i as u8 + 9)
}

/// The lab's address for the Elastic IP of AZ `i`'s NAT Gateway.
pub fn nat_gateway_public_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 20 + i as u8)
}

/// How the lab is built and behaves.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub azs: usize,
    pub hanat_bin: PathBuf,
    /// The daemons' probe (`[probe]`): hanat's shipped defaults unless a
    /// test sets others.
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    pub grace: Duration,
    pub reconcile_interval: Duration,
    /// Time from an Auto Scaling launch to the daemon starting.
    pub boot_delay: Duration,
    /// systemd's RestartSec for a daemon that died; `None`: never restart.
    pub restart_delay: Option<Duration>,
    /// Daemons run in the sandbox of `systemd/hanat.service` (see
    /// [`crate::sandbox`]); `Some` replaces its capability bounding set
    /// (`setpriv` syntax: `net_admin,sys_admin`).
    pub capabilities: Option<String>,
    /// The daemons' open-file limits (soft, hard) instead of the unit's
    /// `LimitNOFILE` (e.g. systemd's default for a unit without it).
    pub open_files: Option<(u64, u64)>,
    /// `peers.failover`: `peer` (default) or `none`.
    pub failover: String,
    /// `peers.failback`: `immediate` (default) or `drain:<duration>`.
    pub failback: String,
    /// `exit.handoff_on_stop`.
    pub handoff_on_stop: bool,
    /// Give every AZ a managed NAT Gateway (moto, with a data plane) and
    /// name it in `peers.fallback_nat_gateway_id`.
    pub fallback_nat_gateway: bool,
    /// With `fallback_nat_gateway`: one regional NAT Gateway for every AZ
    /// (`"*"` in `peers.fallback_nat_gateway_id`) instead of a zonal one
    /// per AZ. moto has no regional mode: it holds one zonal gateway, in AZ
    /// 0's public subnet; the lab gives that one id a data plane in every
    /// AZ, each with its own address, as a regional gateway has.
    pub regional_nat_gateway: bool,
    /// `peers.flow_handoff`: `None` leaves hanat's default.
    pub flow_handoff: Option<Duration>,
    /// Play Auto Scaling's replacement of an instance reported Unhealthy
    /// (default); `false` leaves it running, for tests that report again.
    pub replace_unhealthy: bool,
    /// The latency the AWS API proxy adds to the daemons' calls.
    pub api_latency: Latency,
    /// `aws.refresh_interval`: short in the lab, so that the paths that
    /// re-read the peer list and subnets run within a test.
    pub refresh_interval: Duration,
    /// Authenticated heartbeats with a key in Secrets Manager (default);
    /// `false`: no key, `peers.accept_unauthenticated = true` (hanat/1).
    pub peer_auth: bool,
    /// Connection replication on in the daemons (hanat's default);
    /// `false`: `[replication] enabled = false`.
    pub replication: bool,
    /// EC2's application status check on every NAT's `/health` (the
    /// templates' `NatStatusCheck`, played by [`witness`]) and
    /// `peers.status_check` in the daemons' config (default); `false`: no
    /// check, as before the templates had one.
    pub witness: bool,
    /// How often the check runs: 60 s on AWS (its only value).
    pub witness_interval: Duration,
    /// From a daemon's association to its first check.
    pub witness_grace: Duration,
    /// `[cloudwatch]` on in the daemons' config with this interval, as the
    /// templates have it (60 s); the metrics land in moto. `None`: off.
    pub cloudwatch: Option<Duration>,
    /// More lines for the daemons' `[kernel]` section.
    pub kernel_extra: String,
    /// `metrics.allow`, as TOML (`["10.0.0.0/24"]`); `None`: the default
    /// (the VPC).
    pub metrics_allow: Option<String>,
    /// `snat.addresses` and the template's `AddressesPerNat`: each NAT's
    /// public addresses (Elastic IPs), one per private address.
    pub addresses: u8,
    /// The binary of NATs launched beside an AZ's current one (a rolling
    /// upgrade from `hanat_bin`); `None`: `hanat_bin`.
    pub upgrade_to: Option<PathBuf>,
    /// The daemons reach the AWS API as on AWS: out of their interface,
    /// through the VPC's router and internet gateway (so only with a public
    /// address) to [`AWS_ENDPOINT`]; `false`: through a proxy inside each
    /// instance, whatever its addresses (the lab's side channel).
    pub api_through_vpc: bool,
    /// The public subnets map a public address on launch (the template's
    /// `MapPublicIpOnLaunch: true`); `false`: they do not, as a subnet a user
    /// created, and an instance gets one only if its launch template asks
    /// (`AssociatePublicIpAddress`).
    pub map_public_ip: bool,
    /// The NATs come from `cloudformation/existing-vpc.yaml`, deployed into
    /// the VPC that `vpc.yaml` made (its own NAT groups emptied), as into a
    /// VPC a user already has; `false`: from `vpc.yaml` itself. The
    /// existing-VPC stack is deployed without alarms.
    pub existing_vpc: bool,
    /// With `existing_vpc`: its `InterfaceEndpoints` (the NATs launch
    /// without a public address), the API served at [`VPC_ENDPOINT`].
    pub interface_endpoints: bool,
}

impl LabOptions {
    /// Where the daemons reach the AWS API through the VPC: the interface
    /// endpoints' address or the internet side's; `None`: through a proxy
    /// inside each instance.
    pub fn api_host(&self) -> Option<Ipv4Addr> {
        match (self.api_through_vpc, self.interface_endpoints) {
            (false, _) => None,
            (true, true) => Some(VPC_ENDPOINT),
            (true, false) => Some(AWS_ENDPOINT),
        }
    }

    pub fn new(hanat_bin: impl Into<PathBuf>) -> Self {
        Self {
            azs: 1,
            hanat_bin: hanat_bin.into(),
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(300),
            fall: 2,
            rise: 2,
            grace: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            boot_delay: Duration::from_secs(20),
            restart_delay: Some(Duration::from_secs(1)),
            capabilities: None,
            open_files: None,
            failover: "peer".into(),
            failback: "immediate".into(),
            handoff_on_stop: false,
            fallback_nat_gateway: false,
            regional_nat_gateway: false,
            flow_handoff: None,
            replace_unhealthy: true,
            api_latency: Latency::Realistic,
            refresh_interval: Duration::from_secs(15),
            peer_auth: true,
            replication: true,
            witness: true,
            witness_interval: Duration::from_secs(60),
            witness_grace: Duration::from_secs(10),
            cloudwatch: Some(Duration::from_secs(60)),
            kernel_extra: String::new(),
            metrics_allow: None,
            addresses: 1,
            upgrade_to: None,
            api_through_vpc: false,
            map_public_ip: true,
            existing_vpc: false,
            interface_endpoints: false,
        }
    }
}

/// One AZ's fixed parts.
pub struct Az {
    pub index: usize,
    pub name: String,
    pub public_subnet: String,
    pub private_subnet: String,
    pub private_route_table: String,
    pub group: String,
    pub host: Netns,
    pub host_ip: Ipv4Addr,
    /// The AZ's Elastic IP: (allocation id, lab public address).
    pub eip: (String, Ipv4Addr),
    /// Its further Elastic IPs (`addresses` > 1), in template order.
    pub more_eips: Vec<(String, Ipv4Addr)>,
    /// Its pool's spare Elastic IP, for a NAT launched beside the current
    /// one (the template's `SpareAddress`).
    pub spare_eip: Option<(String, Ipv4Addr)>,
    /// The AZ's fallback NAT Gateway, if the lab has them.
    pub nat_gateway: Option<NatGateway>,
    _nat_gateway_ns: Option<Netns>,
}

impl Az {
    /// The lab public addresses of a NAT's Elastic IPs (`addresses`), the
    /// first one first.
    pub fn elastic_ips(&self) -> Vec<Ipv4Addr> {
        std::iter::once(self.eip.1)
            .chain(self.more_eips.iter().map(|(_, ip)| *ip))
            .collect()
    }

    /// The AZ's whole pool: [`Az::elastic_ips`] and the spare, what its
    /// users allow-list.
    pub fn pool(&self) -> Vec<Ipv4Addr> {
        self.elastic_ips()
            .into_iter()
            .chain(self.spare_eip.iter().map(|(_, ip)| *ip))
            .collect()
    }
}

/// A managed NAT Gateway: moto's resource, and a namespace that
/// masquerades like one.
#[derive(Debug, Clone)]
pub struct NatGateway {
    pub id: String,
    /// Its address in the public subnet (the lab's choice, not moto's).
    pub private_ip: Ipv4Addr,
    /// The lab's address for its Elastic IP.
    pub public_ip: Ipv4Addr,
}

/// What a background task or a test may read and change while the lab runs.
struct Shared {
    prefix: String,
    opts: LabOptions,
    cloud: Cloud,
    rtr: String,
    moto_port: u16,
    dir: PathBuf,
    launch: Launch,
    /// One slot per AZ: its current NAT, if materialised.
    nats: Mutex<Vec<Option<Nat>>>,
    /// NATs launched beside an AZ's current one (a launch-before-terminate
    /// refresh, a Standby's replacement): (AZ, NAT), oldest first. See
    /// [`fleet`].
    extra: Mutex<Vec<(usize, Nat)>>,
    /// Every launch so far, for unique names.
    launches: Mutex<u32>,
    /// moto's public address of each Elastic IP → the lab's address.
    eip_public: HashMap<String, Ipv4Addr>,
    /// Auto-assigned public addresses of instances without an Elastic IP.
    auto_public: Mutex<HashMap<String, Ipv4Addr>>,
    /// The NATs get a public address on launch, as EC2 decides it: their
    /// launch template's `AssociatePublicIpAddress` if it says, else their
    /// subnet's `MapPublicIpOnLaunch` (the lab's [`LabOptions::map_public_ip`]:
    /// moto says true for every subnet). Without one, only an Elastic IP
    /// gives a NAT a public address.
    public_on_launch: bool,
    /// Log of lab events (launches, terminations, restarts).
    events: Mutex<Vec<(Instant, String)>>,
    /// AZs that are down, until when.
    az_down: Mutex<HashMap<usize, Instant>>,
    /// Per AZ (name), its fallback NAT Gateway.
    gateways: Vec<(String, NatGateway)>,
    /// The AWS API as the daemons reach it.
    api: Api,
    /// The heartbeat key's secret (`peers.key_secret`), unless the lab runs
    /// with unauthenticated heartbeats.
    key_secret: Option<String>,
    /// The application status check's id (`peers.status_check`), when the
    /// lab plays one.
    status_check: Option<String>,
}

impl Shared {
    fn nats(&self) -> MutexGuard<'_, Vec<Option<Nat>>> {
        self.nats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn extra(&self) -> MutexGuard<'_, Vec<(usize, Nat)>> {
        self.extra.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance and IMDS of every materialised NAT, the AZs' current
    /// ones and those beside them.
    fn all_instances(&self) -> Vec<(Instance, Imds)> {
        let mut v: Vec<(Instance, Imds)> = self
            .nats()
            .iter()
            .flatten()
            .map(|n| (n.instance.clone(), n.imds.clone()))
            .collect();
        v.extend(
            self.extra()
                .iter()
                .map(|(_, n)| (n.instance.clone(), n.imds.clone())),
        );
        v
    }

    fn event(&self, what: String) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), what));
    }
}

/// The whole lab. Dropping it removes everything.
pub struct Lab {
    pub prefix: String,
    pub opts: LabOptions,
    pub cloud: Cloud,
    pub vpc: String,
    pub igw_id: String,
    pub azs: Vec<Az>,
    pub rtr: Netns,
    pub igw: Netns,
    pub inet: Netns,
    /// The interface endpoints' namespace, when the lab has them.
    _endpoints: Option<Netns>,
    pub dir: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    // Dropped last: daemons talk to it until they are killed.
    pub moto: Moto,
}

/// A snapshot of one NAT for tests and status.
#[derive(Debug, Clone)]
pub struct NatInfo {
    pub instance: Instance,
    pub ns: String,
    pub probe_namespace: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub running: bool,
}

impl Lab {
    /// Build the control and data planes and materialise one NAT per AZ;
    /// daemons start with [`Lab::start_daemons`].
    pub async fn build(opts: LabOptions) -> Result<Lab> {
        crate::ensure_tools()?;
        let prefix = crate::netns::unique_prefix();
        // Started on this thread, not a pooled one: moto gets SIGKILL when
        // the thread that spawned it ends (parent-death signal).
        let moto = tokio::task::block_in_place(Moto::start)?;
        let cloud = Cloud::new(&moto.endpoint(), REGION).await;
        let dir = Path::new(LAB_DIR).join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let launch = Launch::new(&opts, &dir)?;

        let rtr = Netns::new(&format!("{prefix}-rtr"))?;
        let igw = Netns::new(&format!("{prefix}-igw"))?;
        let inet = Netns::new(&format!("{prefix}-inet"))?;
        for ns in [&rtr, &igw] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        veth(&rtr, "igw", &igw, "vpc")?;
        rtr.ip("addr add 172.31.255.1/30 dev igw")?;
        igw.ip("addr add 172.31.255.2/30 dev vpc")?;
        rtr.ip("route add default via 172.31.255.2")?;
        igw.ip(&format!("route add {VPC_CIDR} via 172.31.255.1"))?;
        veth(&igw, "inet", &inet, "eth0")?;
        igw.ip("addr add 203.0.113.1/24 dev inet")?;
        for s in SERVERS {
            inet.ip(&format!("addr add {s}/24 dev eth0"))?;
        }
        inet.ip("route add default via 203.0.113.1")?;

        // Control plane: the project's own CloudFormation template, deployed
        // into moto exactly as an operator would deploy it on AWS.
        let (vpc, azs, eip_public) = deploy_vpc(&cloud, &prefix, &rtr, &opts).await?;
        let igw_id = cloud.vpc_internet_gateway(&vpc).await?;
        // The VPC's source/destination check, for the private hosts: what a
        // host sends with another source address goes nowhere.
        // Each host's addresses (its primary, and any secondary one
        // `Lab::add_host_address` gives it) in a set of its own.
        let rules: String = azs
            .iter()
            .map(|a| {
                format!(
                    "add set ip labvpc host{i} {{ type ipv4_addr; elements = {{ {ip} }}; }}; \
                     add rule ip labvpc srcdst iifname \"prv{i}\" ip saddr != @host{i} drop; ",
                    i = a.index,
                    ip = a.host_ip
                )
            })
            .collect();
        rtr.exec(
            "nft",
            &[&format!(
                "add table ip labvpc; add chain ip labvpc srcdst {{ type filter hook forward \
                 priority -100; policy accept; }}; {rules}"
            )],
        )?;
        // The template's PeerKeySecret, which moto's CloudFormation skips:
        // created as CloudFormation would (GenerateSecretString).
        let key_secret = match opts.peer_auth {
            true => Some(cloud.create_peer_key(&format!("{prefix}-peer-key")).await?),
            false => None,
        };
        for a in &azs {
            let table = 100 + a.index;
            for b in &azs {
                rtr.ip(&format!(
                    "route replace 10.0.{}.0/24 dev bp{} table {table}",
                    2 * b.index,
                    b.index
                ))?;
                rtr.ip(&format!(
                    "route replace 10.0.{}.0/24 dev prv{} table {table}",
                    2 * b.index + 1,
                    b.index
                ))?;
            }
        }
        let public_on_launch = cloud
            .launch_template_public_ip(&format!("{}-nat", nat_stack_name(&prefix, &opts)))
            .await?
            .unwrap_or(opts.map_public_ip);
        let shared = Arc::new(Shared {
            prefix: prefix.clone(),
            opts: opts.clone(),
            cloud: cloud.clone(),
            rtr: rtr.name.clone(),
            moto_port: moto.port,
            dir: dir.clone(),
            launch,
            nats: Mutex::new((0..opts.azs).map(|_| None).collect()),
            extra: Mutex::new(Vec::new()),
            launches: Mutex::new(0),
            eip_public,
            auto_public: Mutex::new(HashMap::new()),
            public_on_launch,
            events: Mutex::new(Vec::new()),
            az_down: Mutex::new(HashMap::new()),
            gateways: azs
                .iter()
                .filter_map(|a| a.nat_gateway.clone().map(|g| (a.name.clone(), g)))
                .collect(),
            api: Api::new(opts.api_latency),
            key_secret,
            // The template's NatStatusCheck, which moto's CloudFormation
            // skips: the lab plays it (see [`witness`]).
            status_check: opts
                .witness
                .then(|| format!("asc-{:017x}", fastrand::u64(..) >> 4)),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut lab = Lab {
            prefix,
            opts,
            cloud,
            vpc,
            igw_id,
            azs,
            rtr,
            igw,
            inet,
            _endpoints: None,
            dir,
            shared: shared.clone(),
            stop: stop.clone(),
            tasks: Mutex::new(Vec::new()),
            moto,
        };
        lab.start_servers()?;
        if lab.opts.api_through_vpc {
            let host = lab.opts.api_host().unwrap_or(AWS_ENDPOINT);
            if lab.opts.interface_endpoints {
                lab._endpoints = Some(vpc::endpoints_plane(&lab.rtr, &lab.prefix)?);
            } else {
                lab.inet.ip(&format!("addr add {host}/24 dev eth0"))?;
            }
            let ns = lab._endpoints.as_ref().unwrap_or(&lab.inet);
            for i in 0..lab.azs.len() {
                let port = MOTO_PROXY_PORT + i as u16;
                let listener = ns.bind_tcp(SocketAddr::from((host, port)))?;
                let proxy = crate::api::serve(listener, i, shared.api.clone(), shared.moto_port);
                lab.tasks
                    .get_mut()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(tokio::spawn(proxy));
            }
        }
        // The first NATs: the groups' instances, with the AZ's Elastic IP.
        for a in &lab.azs {
            let instance = lab.cloud.group_instance(&a.group).await?;
            let nat = launch_nat(&shared, a.index, instance).await?;
            shared.nats()[a.index] = Some(nat);
        }
        let tables: Vec<(usize, String)> = lab
            .azs
            .iter()
            .map(|a| (a.index, a.private_route_table.clone()))
            .collect();
        lab.tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(plane_sync(
                shared.clone(),
                tables,
                lab.igw.name.clone(),
                stop.clone(),
            )));
        let groups: Vec<(usize, String)> =
            lab.azs.iter().map(|a| (a.index, a.group.clone())).collect();
        lab.tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(autoscaler(
                shared.clone(),
                groups,
                stop.clone(),
            )));
        if lab.opts.witness {
            lab.tasks
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .push(tokio::spawn(witness(shared, stop)));
        }
        Ok(lab)
    }

    /// Start every NAT's daemon.
    pub fn start_daemons(&self) -> Result<()> {
        for n in self.shared.nats().iter_mut().flatten() {
            if !n.running() {
                n.start(&self.shared.launch)?;
            }
        }
        Ok(())
    }

    /// A snapshot of AZ `i`'s current NAT.
    pub fn nat(&self, i: usize) -> Option<NatInfo> {
        self.shared.nats()[i].as_mut().map(|n| NatInfo {
            instance: n.instance.clone(),
            ns: n.ns.name.clone(),
            probe_namespace: n.probe_namespace.clone(),
            config_path: n.config_path.clone(),
            log_path: n.log_path.clone(),
            running: n.running(),
        })
    }

    /// The daemon log of AZ `i`'s current NAT.
    pub fn nat_log(&self, i: usize) -> String {
        self.shared.nats()[i]
            .as_ref()
            .map(Nat::log)
            .unwrap_or_default()
    }

    /// The log of every daemon that ran in this lab, by file name.
    pub fn all_logs(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Whether AZ `i`'s current NAT was launched with a public address (its
    /// launch template's or its subnet's choice).
    pub fn launched_with_public_address(&self, i: usize) -> Option<bool> {
        self.shared.nats()[i]
            .as_ref()
            .map(|_| self.shared.public_on_launch)
    }

    /// The public address the internet sees for AZ `i`'s current NAT.
    pub fn public_ip(&self, i: usize) -> Option<Ipv4Addr> {
        let id = self.shared.nats()[i].as_ref()?.instance.id.clone();
        let auto = self
            .shared
            .auto_public
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied();
        auto.or(Some(self.azs[i].eip.1))
    }

    /// The AWS API as the daemons reach it: faults, buckets, calls.
    /// Add an event to the lab's log (what a scenario did).
    pub fn note(&self, what: String) {
        self.shared.event(what);
    }

    /// The heartbeat key's secret, if the lab's daemons use one.
    pub fn key_secret(&self) -> Option<&str> {
        self.shared.key_secret.as_deref()
    }

    pub fn api(&self) -> &Api {
        &self.shared.api
    }

    /// Lab events since start, with their times.
    pub fn events(&self) -> Vec<(Instant, String)> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Give AZ `i`'s private host a secondary private address, as
    /// `AssignPrivateIpAddresses` does on AWS: on its interface, and
    /// allowed by the VPC's source check.
    pub fn add_host_address(&self, i: usize, addr: Ipv4Addr) -> Result<()> {
        self.azs[i]
            .host
            .ip(&format!("addr add {addr}/24 dev eth0"))?;
        self.rtr.exec(
            "nft",
            &[&format!("add element ip labvpc host{i} {{ {addr} }}")],
        )?;
        Ok(())
    }

    /// Where AZ `i`'s private default route points in moto.
    pub async fn route_target(&self, i: usize) -> Result<Option<String>> {
        Ok(self
            .cloud
            .default_route(&self.azs[i].private_route_table)
            .await?
            .map(|(t, _)| t))
    }

    /// Whether AZ `i` is served as it should be: its route on its own live
    /// NAT, whose daemon runs, and egress works with one of the AZ's pool
    /// of Elastic IPs.
    pub async fn az_ok(&self, i: usize) -> bool {
        let Some(nat) = self.nat(i) else { return false };
        nat.running
            && self.route_target(i).await.ok().flatten().as_deref()
                == Some(nat.instance.eni.as_str())
            && self
                .whoami(i, Duration::from_millis(500))
                .is_ok_and(|seen| self.azs[i].pool().contains(&seen))
    }

    /// Wait until `check` is true, polling every 100 ms, for at most `limit`.
    pub async fn wait_for<F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        mut check: F,
    ) -> Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let start = Instant::now();
        let mut last_err = None;
        while start.elapsed() < limit {
            match check().await {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "timed out after {limit:?} waiting for {what} (last error: {last_err:?})\n{}",
            self.logs_tail(40)
        )
    }

    /// Wait until every AZ is served by its own NAT.
    pub async fn wait_converged(&self, limit: Duration) -> Result<Duration> {
        self.wait_for("every AZ served by its own NAT", limit, || async {
            for i in 0..self.azs.len() {
                if !self.az_ok(i).await {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }

    /// The last `n` lines of every daemon log, for failure messages.
    pub fn logs_tail(&self, n: usize) -> String {
        let nats = self.shared.nats();
        let extra = self.shared.extra();
        nats.iter()
            .flatten()
            .chain(extra.iter().map(|(_, n)| n))
            .map(|nat| {
                format!(
                    "--- {} ---\n{}",
                    nat.log_path.display(),
                    tail(&nat.log(), n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.shared.nats().iter_mut().for_each(|n| drop(n.take()));
        self.shared.extra().clear();
        if std::env::var_os("HANAT_LAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last `n` lines of `s`.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
