//! A VPC on one machine: moto as the control plane, network namespaces as
//! the data plane, and the real `hanat` binary on every NAT instance.
//!
//! ```text
//!  host-i 10.0.(2i+1).10 ── prv{i} ┐                    ┌── inet: 203.0.113.10/.11
//!                                  ├── rtr ── igw ──────┤   servers report the
//!  NAT ns (ENI MAC + IP) ── bp{i} ─┘ VPC      1:1 NAT    │   source they saw
//!   hanat, IMDSv2 emulator,          router   private ↔ public (Elastic IP)
//!   moto proxy 127.0.0.1:4566
//!  NAT Gateway ns 10.0.(2i).250 ── bp{i}   (with --fallback-nat-gateway)
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

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cloud::{Cloud, Instance};
use crate::imds::{Imds, InstanceMetadata};
use crate::moto::Moto;
use crate::netns::{Netns, veth};
use crate::sandbox::Sandbox;

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
/// Port of the moto proxy inside each NAT namespace.
pub const MOTO_PROXY_PORT: u16 = 4566;
/// Tag on the Elastic IPs of the pool (value: the AZ).
pub const EIP_POOL_TAG: &str = "hanat:pool";

/// The lab's address for AZ `i`'s Elastic IP (moto's are 127.x).
pub fn elastic_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
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
    pub heartbeat_interval: Duration,
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
    /// `peers.failover`: `peer` (default) or `none`.
    pub failover: String,
    /// `peers.failback`: `immediate` (default) or `drain:<duration>`.
    pub failback: String,
    /// `exit.handoff_on_stop`.
    pub handoff_on_stop: bool,
    /// Give every AZ a managed NAT Gateway (moto, with a data plane) and
    /// name it in `peers.fallback_nat_gateway_id`.
    pub fallback_nat_gateway: bool,
    /// `peers.flow_handoff`: `None` leaves hanat's default.
    pub flow_handoff: Option<Duration>,
    /// Play Auto Scaling's replacement of an instance reported Unhealthy
    /// (default); `false` leaves it running, for tests that report again.
    pub replace_unhealthy: bool,
}

impl LabOptions {
    pub fn new(hanat_bin: impl Into<PathBuf>) -> Self {
        Self {
            azs: 1,
            hanat_bin: hanat_bin.into(),
            heartbeat_interval: Duration::from_millis(500),
            fall: 3,
            rise: 2,
            grace: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            boot_delay: Duration::from_secs(20),
            restart_delay: Some(Duration::from_secs(1)),
            capabilities: None,
            failover: "peer".into(),
            failback: "immediate".into(),
            handoff_on_stop: false,
            fallback_nat_gateway: false,
            flow_handoff: None,
            replace_unhealthy: true,
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
    /// The AZ's fallback NAT Gateway, if the lab has them.
    pub nat_gateway: Option<NatGateway>,
    _nat_gateway_ns: Option<Netns>,
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

/// A NAT instance: a namespace with the ENI's address and MAC, its own
/// IMDSv2 emulator and moto proxy, and the hanat daemon.
pub struct Nat {
    pub instance: Instance,
    pub ns: Netns,
    pub imds: Imds,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub probe_namespace: String,
    daemon: Option<Child>,
    /// When the daemon was seen dead (for the restart delay).
    died_at: Option<Instant>,
    _proxy: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How daemons are started: the unit's sandbox and the binary it runs.
pub struct Launch {
    pub sandbox: Sandbox,
    pub bin: PathBuf,
    /// An empty file in the lab's directory the binary is bind-mounted onto
    /// inside the sandbox (the unit's `/usr/bin/hanat`): `ProtectHome`
    /// hides a binary built under `/root`.
    pub installed: PathBuf,
}

impl Launch {
    fn new(opts: &LabOptions, dir: &Path) -> Result<Launch> {
        let mut sandbox = Sandbox::shipped()?;
        if let Some(caps) = &opts.capabilities {
            sandbox = sandbox.with_capabilities(caps);
        }
        let installed = dir.join("hanat");
        std::fs::write(&installed, b"")?;
        Ok(Launch {
            sandbox,
            bin: opts.hanat_bin.clone(),
            installed,
        })
    }

    /// A command running the unit's `ExecStart` in `ns` with `config`.
    pub fn command(&self, ns: &Netns, config: &Path) -> std::process::Command {
        self.sandbox
            .command(&ns.path(), &self.bin, &self.installed, config)
    }
}

impl Nat {
    /// Start the daemon the way the unit does.
    fn start(&mut self, launch: &Launch) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        launch.sandbox.run_pre_outside()?;
        let child = launch
            .command(&self.ns, &self.config_path)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .envs(daemon_env())
            .env("RUST_LOG", "hanat=debug,info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting hanat")?;
        self.daemon = Some(child);
        self.died_at = None;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.kill();
        let _ = crate::netns::ip(&format!("netns del {}", self.probe_namespace));
    }
}

/// Environment a daemon gets inside a NAT namespace: the AWS API through
/// the proxy, dummy credentials, and nothing from the host's AWS config.
pub fn daemon_env() -> Vec<(String, String)> {
    [
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{MOTO_PROXY_PORT}"),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
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
    /// Every launch so far, for unique names.
    launches: Mutex<u32>,
    /// moto's public address of each Elastic IP → the lab's address.
    eip_public: HashMap<String, Ipv4Addr>,
    /// Auto-assigned public addresses of instances without an Elastic IP.
    auto_public: Mutex<HashMap<String, Ipv4Addr>>,
    /// Log of lab events (launches, terminations, restarts).
    events: Mutex<Vec<(Instant, String)>>,
    /// AZs that are down, until when.
    az_down: Mutex<HashMap<usize, Instant>>,
    /// Per AZ (name), its fallback NAT Gateway.
    gateways: Vec<(String, NatGateway)>,
}

impl Shared {
    fn nats(&self) -> MutexGuard<'_, Vec<Option<Nat>>> {
        self.nats.lock().unwrap_or_else(|p| p.into_inner())
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
        let shared = Arc::new(Shared {
            prefix: prefix.clone(),
            opts: opts.clone(),
            cloud: cloud.clone(),
            rtr: rtr.name.clone(),
            moto_port: moto.port,
            dir: dir.clone(),
            launch,
            nats: Mutex::new((0..opts.azs).map(|_| None).collect()),
            launches: Mutex::new(0),
            eip_public,
            auto_public: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            az_down: Mutex::new(HashMap::new()),
            gateways: azs
                .iter()
                .filter_map(|a| a.nat_gateway.clone().map(|g| (a.name.clone(), g)))
                .collect(),
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
            dir,
            shared: shared.clone(),
            stop: stop.clone(),
            tasks: Mutex::new(Vec::new()),
            moto,
        };
        lab.start_servers()?;
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
            .push(tokio::spawn(autoscaler(shared, groups, stop)));
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

    /// `kill -9` AZ `i`'s daemon (the lab's systemd restarts it).
    pub fn kill_daemon(&self, i: usize) -> Result<()> {
        let mut nats = self.shared.nats();
        let n = nats[i]
            .as_mut()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        n.kill();
        n.died_at = Some(Instant::now());
        self.shared.event(format!("az{i}: daemon killed"));
        Ok(())
    }

    /// SIGTERM AZ `i`'s daemon and wait for its exit status.
    pub fn terminate_daemon(&self, i: usize) -> Result<std::process::ExitStatus> {
        let mut child = {
            let mut nats = self.shared.nats();
            let n = nats[i]
                .as_mut()
                .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
            // Like systemd, restart only once the stopping process exited.
            n.died_at = None;
            n.daemon
                .take()
                .ok_or_else(|| anyhow!("daemon not running"))?
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                if let Some(n) = self.shared.nats()[i].as_mut() {
                    n.died_at = Some(Instant::now());
                }
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("daemon did not exit within 10s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The instance vanishes: namespace and daemon gone, moto instance
    /// terminated (moto's group launches a replacement).
    pub async fn terminate_instance(&self, i: usize) -> Result<String> {
        terminate_nat(&self.shared, i, "terminated").await
    }

    /// Set an instance metadata value of AZ `i`'s NAT.
    pub fn set_metadata(&self, i: usize, path: &str, value: &str) -> Result<()> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        n.imds.set(path, value);
        Ok(())
    }

    /// Auto Scaling scales AZ `i`'s NAT in: its target lifecycle state
    /// becomes `Terminated`; the termination hook holds the instance until
    /// the daemon says its hand-off is done (moto cannot record
    /// `CompleteLifecycleAction`, so the lab reads the daemon's log), at most
    /// `hook_timeout`; then the instance goes and is replaced.
    pub fn scale_in(&self, i: usize, hook_timeout: Duration) -> Result<()> {
        self.set_metadata(i, "autoscaling/target-lifecycle-state", "Terminated")?;
        self.shared
            .event(format!("az{i}: lifecycle state Terminated"));
        self.terminate_after_handoff(i, hook_timeout)
    }

    /// A spot interruption notice for AZ `i`'s NAT; the instance goes when
    /// the daemon's hand-off is done (the lab's shortened notice), at most
    /// after `notice` (two minutes on AWS).
    pub fn spot_interruption(&self, i: usize, notice: Duration) -> Result<()> {
        self.set_metadata(
            i,
            "spot/instance-action",
            "{\"action\": \"terminate\", \"time\": \"2026-01-01T00:00:00Z\"}",
        )?;
        self.shared
            .event(format!("az{i}: spot interruption notice"));
        self.terminate_after_handoff(i, notice)
    }

    fn terminate_after_handoff(&self, i: usize, limit: Duration) -> Result<()> {
        let (log, id) = {
            let nats = self.shared.nats();
            let n = nats[i]
                .as_ref()
                .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
            (n.log_path.clone(), n.instance.id.clone())
        };
        let shared = self.shared.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(async move {
                let start = Instant::now();
                while start.elapsed() < limit {
                    if std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains("hand-off done")
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let still = shared.nats()[i]
                    .as_ref()
                    .is_some_and(|n| n.instance.id == id);
                if still {
                    let _ = terminate_nat(&shared, i, "terminated after hand-off").await;
                }
            }));
        Ok(())
    }

    /// Cut the heartbeats between NATs (UDP on the peer port) in the VPC
    /// router, or restore them.
    pub fn partition(&self, on: bool) -> Result<()> {
        if on {
            self.rtr.exec(
                "nft",
                &["add table ip labpart; add chain ip labpart c { type filter hook forward priority -50; policy accept; }; add rule ip labpart c udp dport 7470 drop"],
            )?;
            self.shared.event("NATs partitioned".into());
        } else {
            self.rtr.exec("nft", &["delete table ip labpart"])?;
            self.shared.event("partition healed".into());
        }
        Ok(())
    }

    /// Take AZ `i` down: its NAT vanishes and no replacement can launch there
    /// for `hold`.
    pub async fn az_outage(&self, i: usize, hold: Duration) -> Result<()> {
        *self
            .shared
            .az_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(i)
            .or_insert_with(Instant::now) = Instant::now() + hold;
        terminate_nat(&self.shared, i, "lost with its AZ")
            .await
            .map(drop)
    }

    /// Run a command inside AZ `i`'s NAT namespace.
    pub fn nat_exec(&self, i: usize, program: &str, args: &[&str]) -> Result<String> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        n.ns.exec(program, args)
    }

    /// A command that runs inside AZ `i`'s NAT namespace with the daemon's
    /// environment (for `hanat plan`).
    pub fn nat_command(&self, i: usize, program: &str) -> Result<std::process::Command> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        let mut c = n.ns.command(program);
        c.envs(daemon_env());
        Ok(c)
    }

    /// A command that starts a daemon on AZ `i`'s NAT the way the unit does
    /// (the lab's own is not touched), with `capabilities` instead of the
    /// unit's bounding set if given, and the daemon's environment.
    pub fn daemon_command(
        &self,
        i: usize,
        capabilities: Option<&str>,
    ) -> Result<std::process::Command> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        let launch = &self.shared.launch;
        launch.sandbox.run_pre_outside()?;
        let sandbox = match capabilities {
            Some(caps) => launch.sandbox.with_capabilities(caps),
            None => launch.sandbox.clone(),
        };
        let mut c = sandbox.command(&n.ns.path(), &launch.bin, &launch.installed, &n.config_path);
        c.envs(daemon_env());
        Ok(c)
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

    /// Lab events since start, with their times.
    pub fn events(&self) -> Vec<(Instant, String)> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A listening socket on the internet namespace, for a server task.
    fn listen_tcp(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        let l = self.inet.bind_tcp(addr)?;
        l.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(l)?)
    }

    /// Keep `task` for as long as the lab (aborted with it).
    fn keep_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    fn start_servers(&mut self) -> Result<()> {
        for s in SERVERS {
            // whoami: the source address seen, then close.
            let l = self.listen_tcp(SocketAddr::from((s, WHOAMI_PORT)))?;
            self.keep_task(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Ok((mut c, peer)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = c.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
                        let _ = c.shutdown().await;
                    });
                }
            }));
            // Session: the source address seen, once per line received.
            let l = self.listen_tcp(SocketAddr::from((s, SESSION_PORT)))?;
            self.keep_task(tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                while let Ok((c, peer)) = l.accept().await {
                    tokio::spawn(async move {
                        let (r, mut w) = c.into_split();
                        let mut lines = tokio::io::BufReader::new(r).lines();
                        while let Ok(Some(_)) = lines.next_line().await {
                            let answer = format!("{}\n", peer.ip());
                            if w.write_all(answer.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }));
            let u = self.inet.bind_udp(SocketAddr::from((s, WHOAMI_PORT)))?;
            u.set_nonblocking(true)?;
            let u = tokio::net::UdpSocket::from_std(u)?;
            self.keep_task(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok((_, peer)) = u.recv_from(&mut buf).await {
                    let _ = u.send_to(format!("{}\n", peer.ip()).as_bytes(), peer).await;
                }
            }));
        }
        Ok(())
    }

    /// Ask an internet server, from AZ `i`'s private host, which source
    /// address it saw (TCP).
    pub fn whoami(&self, i: usize, timeout: Duration) -> Result<Ipv4Addr> {
        whoami(&self.azs[i].host, SERVERS[0], timeout)
    }

    /// Open a long-lived connection from AZ `i`'s private host to an
    /// internet server.
    pub fn session(&self, i: usize, timeout: Duration) -> Result<Session> {
        let s = self.azs[i]
            .host
            .connect_tcp(SocketAddr::from((SERVERS[0], SESSION_PORT)), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Session {
            reader: std::io::BufReader::new(s.try_clone()?),
            stream: s,
        })
    }

    /// The same over UDP.
    pub fn whoami_udp(&self, i: usize, timeout: Duration) -> Result<Ipv4Addr> {
        let s = self.azs[i].host.bind_udp("0.0.0.0:0".parse()?)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"who", SocketAddr::from((SERVERS[1], WHOAMI_PORT)))?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        String::from_utf8_lossy(&buf[..n])
            .trim()
            .parse()
            .context("bad UDP answer")
    }

    /// Make the router send traffic from outside for AZ `i`'s private
    /// subnet to its NAT (an attacker who can reach the NAT).
    pub fn route_inbound_via_nat(&self, i: usize) -> Result<()> {
        let nat = self.nat(i).ok_or_else(|| anyhow!("no NAT"))?;
        self.rtr.ip("rule add iif igw lookup 99 pref 99").ok();
        self.rtr.ip(&format!(
            "route replace 10.0.{}.0/24 via {} table 99",
            2 * i + 1,
            nat.instance.private_ip
        ))?;
        self.igw.ip(&format!(
            "route replace 10.0.{}.0/24 via 172.31.255.1",
            2 * i + 1
        ))?;
        self.inet.ip(&format!(
            "route replace 10.0.{}.0/24 via 203.0.113.1",
            2 * i + 1
        ))?;
        Ok(())
    }

    /// Try to open a TCP connection from the internet to AZ `i`'s private host.
    pub fn connect_inbound(&self, i: usize, port: u16, timeout: Duration) -> Result<()> {
        let host = SocketAddr::from((self.azs[i].host_ip, port));
        self.inet.connect_tcp(host, timeout).map(drop)
    }

    /// Start a steady stream of requests from AZ `i`'s private host.
    pub fn meter(&self, i: usize, every: Duration) -> Meter {
        Meter::start(&self.azs[i].host, SERVERS[0], every)
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
    /// NAT, whose daemon runs, and egress works with the AZ's Elastic IP.
    pub async fn az_ok(&self, i: usize) -> bool {
        let Some(nat) = self.nat(i) else { return false };
        nat.running
            && self.route_target(i).await.ok().flatten().as_deref()
                == Some(nat.instance.eni.as_str())
            && self.whoami(i, Duration::from_millis(500)).ok() == Some(self.azs[i].eip.1)
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
        nats.iter()
            .flatten()
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
        if std::env::var_os("HANAT_LAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The VPC template, compiled in so the lab binary is self-contained.
pub const VPC_TEMPLATE: &str = include_str!("../../../cloudformation/vpc.yaml");

/// Deploy `cloudformation/vpc.yaml` (at least 2 AZs: the template's minimum;
/// groups of AZs beyond `azs` are scaled to zero) and build each used AZ's
/// data plane. Returns the VPC, the AZs, and moto's EIP address → lab address.
async fn deploy_vpc(
    cloud: &Cloud,
    prefix: &str,
    rtr: &Netns,
    opts: &LabOptions,
) -> Result<(String, Vec<Az>, HashMap<String, Ipv4Addr>)> {
    let azs = opts.azs;
    let ami = cloud.image().await?;
    let deployed = azs.max(2);
    let n = deployed.to_string();
    let mut params: Vec<(String, String)> = vec![
        ("Name".into(), prefix.into()),
        ("AmiId".into(), ami),
        ("NumberOfAZs".into(), n),
        ("VpcCidr".into(), VPC_CIDR.into()),
    ];
    for (i, az) in ["A", "B", "C"].iter().enumerate() {
        params.push((
            format!("PublicSubnetCidr{az}"),
            format!("10.0.{}.0/24", 2 * i),
        ));
        params.push((
            format!("PrivateSubnetCidr{az}"),
            format!("10.0.{}.0/24", 2 * i + 1),
        ));
    }
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = cloud.deploy_stack(prefix, VPC_TEMPLATE, &params).await?;
    let list = |key: &str| -> Result<Vec<String>> {
        let v: Vec<String> = out
            .get(key)
            .ok_or_else(|| anyhow!("stack output {key} missing"))?
            .split(',')
            .map(str::to_owned)
            .collect();
        if v.len() != deployed {
            bail!(
                "stack output {key} has {} entries, expected {deployed}",
                v.len()
            );
        }
        Ok(v)
    };
    let vpc = out
        .get("VpcId")
        .cloned()
        .ok_or_else(|| anyhow!("stack output VpcId missing"))?;
    let (public, private, tables) = (
        list("PublicSubnets")?,
        list("PrivateSubnets")?,
        list("PrivateRouteTables")?,
    );
    let (groups, allocations, eips) = (
        list("NatGroups")?,
        list("ElasticIpAllocations")?,
        list("ElasticIps")?,
    );

    // moto records CloudFormation's subnet/route-table associations apart
    // from the route tables, so DescribeRouteTables does not show them: make
    // them again through the API, as they are on AWS.
    for (rt, subnet) in tables.iter().zip(&private) {
        cloud
            .ec2
            .associate_route_table()
            .route_table_id(rt)
            .subnet_id(subnet)
            .send()
            .await?;
    }
    let mut out_azs = Vec::new();
    let mut eip_public = HashMap::new();
    for i in 0..deployed {
        if i >= azs {
            cloud.empty_group(&groups[i]).await?;
            continue;
        }
        let name = cloud.az(i);
        // moto drops tags on CloudFormation EIPs; put back what the
        // template declares.
        cloud
            .tag(
                &allocations[i],
                &[
                    (EIP_POOL_TAG, prefix),
                    ("hanat:az", &name),
                    ("hanat:group", &groups[i]),
                ],
            )
            .await?;
        let lab_ip = elastic_ip(i);
        eip_public.insert(eips[i].clone(), lab_ip);

        // Router side: a bridge for the public subnet (NATs come and go), a
        // link to the private host, and the private subnet's own table.
        rtr.ip(&format!("link add bp{i} type bridge"))?;
        rtr.ip(&format!("addr add 10.0.{}.1/24 dev bp{i}", 2 * i))?;
        rtr.ip(&format!("link set bp{i} up"))?;
        let host = Netns::new(&format!("{prefix}-h{i}"))?;
        veth(rtr, &format!("prv{i}"), &host, "eth0")?;
        rtr.ip(&format!("addr add 10.0.{}.1/24 dev prv{i}", 2 * i + 1))?;
        let host_ip = Ipv4Addr::new(10, 0, (2 * i + 1) as u8, 10);
        host.ip(&format!("addr add {host_ip}/24 dev eth0"))?;
        host.ip(&format!("route add default via 10.0.{}.1", 2 * i + 1))?;
        let table = 100 + i;
        rtr.ip(&format!("rule add iif prv{i} lookup {table} pref {table}"))?;
        rtr.ip(&format!("route add unreachable default table {table}"))?;
        let (nat_gateway, nat_gateway_ns) = match opts.fallback_nat_gateway {
            true => {
                let (id, moto_ip) = cloud.nat_gateway(&public[i]).await?;
                let gw = NatGateway {
                    id,
                    private_ip: Ipv4Addr::new(10, 0, (2 * i) as u8, 250),
                    public_ip: nat_gateway_public_ip(i),
                };
                eip_public.insert(moto_ip, gw.public_ip);
                let ns = nat_gateway_plane(rtr, prefix, i, &gw)?;
                (Some(gw), Some(ns))
            }
            false => (None, None),
        };
        out_azs.push(Az {
            index: i,
            name,
            public_subnet: public[i].clone(),
            private_subnet: private[i].clone(),
            private_route_table: tables[i].clone(),
            group: groups[i].clone(),
            host,
            host_ip,
            eip: (allocations[i].clone(), lab_ip),
            nat_gateway,
            _nat_gateway_ns: nat_gateway_ns,
        });
    }
    Ok((vpc, out_azs, eip_public))
}

/// AZ `i`'s NAT Gateway data plane: a namespace on the public subnet that
/// masquerades the VPC to its own address (the internet gateway maps that
/// to the gateway's Elastic IP).
fn nat_gateway_plane(rtr: &Netns, prefix: &str, i: usize, gw: &NatGateway) -> Result<Netns> {
    let ns = Netns::new(&format!("{prefix}-gw{i}"))?;
    veth(rtr, &format!("gw{i}"), &ns, "eth0")?;
    rtr.ip(&format!("link set gw{i} master bp{i}"))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ns.ip(&format!("addr add {}/24 dev eth0", gw.private_ip))?;
    ns.ip(&format!("route add default via 10.0.{}.1", 2 * i))?;
    ns.exec(
        "nft",
        &[&format!(
            "add table ip labnatgw; add chain ip labnatgw post {{ type nat hook postrouting \
             priority srcnat; policy accept; }}; add rule ip labnatgw post \
             ip saddr {VPC_CIDR} ip daddr != {VPC_CIDR} masquerade"
        )],
    )?;
    Ok(ns)
}

/// Remove AZ `i`'s NAT (namespace and daemon) and terminate it in moto
/// (whose group launches a replacement).
async fn terminate_nat(shared: &Shared, i: usize, why: &str) -> Result<String> {
    let nat = shared.nats()[i]
        .take()
        .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
    let id = nat.instance.id.clone();
    drop(nat);
    shared.cloud.terminate(&id).await?;
    shared.event(format!("az{i}: {id} {why}"));
    Ok(id)
}

/// Give `instance` a namespace, IMDS, proxy and config; the daemon starts
/// when the caller says so.
async fn launch_nat(shared: &Shared, i: usize, instance: Instance) -> Result<Nat> {
    let n = {
        let mut l = shared.launches.lock().unwrap_or_else(|p| p.into_inner());
        *l += 1;
        *l
    };
    let prefix = &shared.prefix;
    let ns = Netns::new(&format!("{prefix}-n{i}g{n}"))?;
    let rtr = Netns {
        name: shared.rtr.clone(),
    };
    let link = format!("n{i}g{n}");
    let made = veth(&rtr, &link, &ns, "eth0");
    // `rtr` is borrowed by name only: never delete it from here.
    std::mem::forget(rtr);
    made?;
    crate::netns::ip(&format!("-n {} link set {link} master bp{i}", shared.rtr))?;
    ns.ip("link set eth0 down")?;
    ns.ip(&format!("link set eth0 address {}", instance.mac))?;
    ns.ip("link set eth0 up")?;
    ns.ip(&format!("addr add {}/24 dev eth0", instance.private_ip))?;
    ns.ip(&format!("route add default via 10.0.{}.1", 2 * i))?;
    // IMDS at its real address, inside the instance.
    ns.ip("addr add 169.254.169.254/32 dev lo")?;
    let meta = InstanceMetadata {
        instance_id: instance.id.clone(),
        region: REGION.into(),
        az: instance.az.clone(),
        mac: instance.mac.clone(),
        eni: instance.eni.clone(),
        vpc_id: instance.vpc.clone(),
        vpc_cidrs: vec![VPC_CIDR.into()],
        subnet_id: instance.subnet.clone(),
        private_ip: instance.private_ip.clone(),
    };
    let imds = Imds::serve(ns.bind_tcp("169.254.169.254:80".parse()?)?, meta.values())?;
    // The AWS API, reached from inside the instance through a proxy.
    let proxy_listener = ns.bind_tcp(SocketAddr::from(([127, 0, 0, 1], MOTO_PROXY_PORT)))?;
    let proxy = tokio::spawn(proxy(proxy_listener, shared.moto_port));

    let probe_namespace = format!("{prefix}-p{i}g{n}");
    let config_path = shared.dir.join(format!("nat-{i}-{n}.toml"));
    let log_path = shared.dir.join(format!("nat-{i}-{n}.log"));
    std::fs::write(
        &config_path,
        daemon_config(&shared.opts, &probe_namespace, &shared.gateways),
    )?;
    shared.event(format!("az{i}: {} materialised", instance.id));
    Ok(Nat {
        instance,
        ns,
        imds,
        config_path,
        log_path,
        probe_namespace,
        daemon: None,
        died_at: None,
        _proxy: AbortOnDrop(proxy),
    })
}

/// The config the lab gives every daemon.
pub fn daemon_config(
    o: &LabOptions,
    probe_namespace: &str,
    gateways: &[(String, NatGateway)],
) -> String {
    let fallbacks: String = gateways
        .iter()
        .map(|(az, g)| format!("\"{az}\" = \"{}\"\n", g.id))
        .collect();
    let targets: Vec<String> = SERVERS
        .iter()
        .map(|s| format!("\"tcp://{s}:{WHOAMI_PORT}\""))
        .collect();
    let flow_handoff = o
        .flow_handoff
        .map(|d| format!("flow_handoff = \"{}\"\n", humantime::format_duration(d)))
        .unwrap_or_default();
    format!(
        "[heartbeat]\ntargets = [{}]\ninterval = \"{}\"\ntimeout = \"{}\"\nfall = {}\nrise = {}\n\
         grace_period = \"{}\"\nprobe_namespace = \"{probe_namespace}\"\n\n\
         [routes]\nreconcile_interval = \"{}\"\n\n[kernel]\nconverge_interval = \"2s\"\n\
         conntrack_max = 0\n\n[peers]\nfailover = \"{}\"\nfailback = \"{}\"\n{flow_handoff}\n\
         [exit]\npoll_interval = \"250ms\"\ndrain = \"2s\"\nhandoff_timeout = \"10s\"\n\
         handoff_on_stop = {}\n\n\
         [aws]\nimds_timeout = \"20s\"\n\n[peers.fallback_nat_gateway_id]\n{fallbacks}",
        targets.join(", "),
        humantime::format_duration(o.heartbeat_interval),
        humantime::format_duration(o.heartbeat_interval * 4 / 5),
        o.fall,
        o.rise,
        humantime::format_duration(o.grace),
        humantime::format_duration(o.reconcile_interval),
        o.failover,
        o.failback,
        o.handoff_on_stop,
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A long-lived connection to an internet server's session port.
pub struct Session {
    stream: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Session {
    /// Which source address the server sees for this connection now; an
    /// error if the connection was reset or timed out.
    pub fn ask(&mut self) -> Result<Ipv4Addr> {
        use std::io::{BufRead, Write};
        self.stream.write_all(b"who\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the server closed the connection");
        }
        line.trim()
            .parse()
            .with_context(|| format!("bad session answer {line:?}"))
    }
}

/// One request to the whoami server from inside `ns`.
pub fn whoami(ns: &Netns, server: Ipv4Addr, timeout: Duration) -> Result<Ipv4Addr> {
    let mut s = ns.connect_tcp(SocketAddr::from((server, WHOAMI_PORT)), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.trim()
        .parse()
        .with_context(|| format!("bad whoami answer {buf:?}"))
}

async fn proxy(listener: std::net::TcpListener, port: u16) {
    let Ok(()) = listener.set_nonblocking(true) else {
        return;
    };
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
            }
        });
    }
}

/// Keep the data plane in line with moto, every 100 ms: first the internet
/// gateway's 1:1 NAT (Elastic IP associations), then the router's per-AZ
/// tables (route tables). In that order, so an address claimed before a
/// route moved is in place before traffic follows the route.
async fn plane_sync(
    shared: Arc<Shared>,
    tables: Vec<(usize, String)>,
    igw: String,
    stop: Arc<AtomicBool>,
) {
    let mut routes: HashMap<usize, String> = HashMap::new();
    let mut rules = String::new();
    while !stop.load(Ordering::Relaxed) {
        igw_step(&shared, &igw, &mut rules).await;
        router_step(&shared, &tables, &mut routes).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The router forwards each private subnet by its route table in moto.
async fn router_step(
    shared: &Shared,
    tables: &[(usize, String)],
    applied: &mut HashMap<usize, String>,
) {
    // Live ENIs: those of materialised NATs.
    let live: HashMap<String, String> = shared
        .nats()
        .iter()
        .flatten()
        .map(|n| (n.instance.eni.clone(), n.instance.private_ip.clone()))
        .collect();
    let gateway = |id: &str| {
        shared
            .gateways
            .iter()
            .find(|(_, g)| g.id == id)
            .map(|(_, g)| g.private_ip.to_string())
    };
    for (i, rt) in tables {
        let Ok(route) = shared.cloud.default_route(rt).await else {
            continue;
        };
        let want = match route {
            Some((target, state)) if state != "blackhole" => {
                match live.get(&target).cloned().or_else(|| gateway(&target)) {
                    Some(ip) => format!("default via {ip}"),
                    None => "unreachable default".into(),
                }
            }
            _ => "unreachable default".into(),
        };
        if applied.get(i) != Some(&want) {
            let cmd = format!("-n {} route replace {want} table {}", shared.rtr, 100 + i);
            if crate::netns::ip(&cmd).is_ok() {
                applied.insert(*i, want);
            }
        }
    }
}

/// The internet gateway maps each live instance (and NAT Gateway) 1:1 to
/// its public address: its Elastic IP if moto has one associated, else an
/// auto-assigned one.
async fn igw_step(shared: &Shared, igw: &str, applied: &mut String) {
    let instances: Vec<Instance> = shared
        .nats()
        .iter()
        .flatten()
        .map(|n| n.instance.clone())
        .collect();
    let Ok(assoc) = shared.cloud.address_associations().await else {
        return;
    };
    let mut map: Vec<(String, Ipv4Addr)> = Vec::new();
    for inst in &instances {
        let eip = assoc
            .iter()
            .find(|(_, holder)| holder == &inst.id || holder == &inst.eni)
            .and_then(|(moto_ip, _)| shared.eip_public.get(moto_ip).copied());
        let public = match eip {
            Some(ip) => {
                shared
                    .auto_public
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&inst.id);
                ip
            }
            None => {
                let mut auto = shared.auto_public.lock().unwrap_or_else(|p| p.into_inner());
                let next = Ipv4Addr::new(192, 0, 2, 10 + auto.len() as u8);
                *auto.entry(inst.id.clone()).or_insert(next)
            }
        };
        map.push((inst.private_ip.clone(), public));
    }
    for (_, g) in &shared.gateways {
        map.push((g.private_ip.to_string(), g.public_ip));
    }
    let rules = igw_ruleset(&map);
    if rules != *applied {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", igw, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(rules.as_bytes())?;
                }
                c.wait()
            })
            .is_ok_and(|s| s.success());
        if ok {
            *applied = rules;
        }
    }
}

fn igw_ruleset(map: &[(String, Ipv4Addr)]) -> String {
    let snat: Vec<String> = map.iter().map(|(p, e)| format!("{p} : {e}")).collect();
    let dnat: Vec<String> = map.iter().map(|(p, e)| format!("{e} : {p}")).collect();
    let mapped: Vec<String> = map.iter().map(|(p, _)| p.clone()).collect();
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", v.join(", "))
        }
    };
    format!(
        "table ip labigw {{}}\ndelete table ip labigw\ntable ip labigw {{\n\
         map snat_map {{ type ipv4_addr : ipv4_addr; {} }}\n\
         map dnat_map {{ type ipv4_addr : ipv4_addr; {} }}\n\
         set mapped {{ type ipv4_addr; {} }}\n\
         chain pre {{ type nat hook prerouting priority dstnat; policy accept; iifname \"inet\" dnat to ip daddr map @dnat_map; }}\n\
         chain post {{ type nat hook postrouting priority srcnat; policy accept; oifname \"inet\" snat to ip saddr map @snat_map; }}\n\
         chain filter {{ type filter hook forward priority filter; policy accept; ct state new oifname \"inet\" ip saddr {VPC_CIDR} ip saddr != @mapped drop; }}\n}}\n",
        elements(&snat),
        elements(&dnat),
        elements(&mapped),
    )
}

/// Play Auto Scaling (and systemd): replace Unhealthy or vanished
/// instances after the boot delay, restart dead daemons.
async fn autoscaler(shared: Arc<Shared>, groups: Vec<(usize, String)>, stop: Arc<AtomicBool>) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (i, group) in &groups {
            let i = *i;
            let current = shared.nats()[i].as_ref().map(|n| n.instance.id.clone());
            // An instance the daemon reported Unhealthy is terminated.
            if let Some(id) = &current
                && shared.opts.replace_unhealthy
                && shared.cloud.health(id).await.ok().as_deref() == Some("Unhealthy")
            {
                let nat = shared.nats()[i].take();
                drop(nat);
                let _ = shared.cloud.terminate(id).await;
                shared.event(format!("az{i}: {id} Unhealthy, terminated"));
                continue;
            }
            // A running daemon that died is restarted, like systemd would.
            if let Some(delay) = shared.opts.restart_delay {
                let mut nats = shared.nats();
                if let Some(n) = nats[i].as_mut() {
                    if n.daemon.is_some() && !n.running() {
                        n.daemon = None;
                        n.died_at.get_or_insert(Instant::now());
                    }
                    if n.daemon.is_none()
                        && n.died_at.is_some_and(|t| t.elapsed() >= delay)
                        && n.start(&shared.launch).is_ok()
                    {
                        drop(nats);
                        shared.event(format!("az{i}: daemon restarted"));
                    }
                }
            }
            if current.is_some() {
                continue;
            }
            let down = shared
                .az_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&i)
                .is_some_and(|until| Instant::now() < *until);
            if down {
                continue;
            }
            // No NAT: materialise the group's new instance after boot delay.
            let Ok(instance) = shared.cloud.group_instance(group).await else {
                continue;
            };
            let since = *pending
                .entry(instance.id.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < shared.opts.boot_delay {
                continue;
            }
            pending.remove(&instance.id);
            match launch_nat(&shared, i, instance).await {
                Ok(mut nat) => {
                    let started = nat.start(&shared.launch);
                    shared.event(format!(
                        "az{i}: {} booted (daemon {:?})",
                        nat.instance.id,
                        started.is_ok()
                    ));
                    shared.nats()[i] = Some(nat);
                }
                Err(e) => shared.event(format!("az{i}: launch failed: {e:#}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Requests sent at a steady rate from a private host, each recorded.
pub struct Meter {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub started: Instant,
}

/// One metered request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the meter's start.
    pub at: Duration,
    /// The source address the server saw, or `None` if the request failed.
    pub seen: Option<Ipv4Addr>,
}

/// What a meter saw.
#[derive(Debug, Clone, Default)]
pub struct MeterReport {
    pub sent: usize,
    pub lost: usize,
    /// Longest time between two answered requests.
    pub longest_gap: Duration,
    /// Source addresses in the order first seen.
    pub sources: Vec<Ipv4Addr>,
    /// How often the seen source changed from one answer to the next.
    pub source_changes: usize,
    /// When the last failed request was sent (from the meter's start).
    pub last_failure: Option<Duration>,
    /// The first answered request after the last failure.
    pub first_success_after_last_failure: Option<Duration>,
}

impl Meter {
    /// Send a request every `every`, each on its own (so a slow or lost one
    /// does not delay the next), from inside `ns`.
    fn start(ns: &Netns, server: Ipv4Addr, every: Duration) -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let path = ns.path();
        let (st, sm) = (stop.clone(), samples.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let entered = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                });
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if entered.is_err() {
                return;
            }
            rt.block_on(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut inflight = tokio::task::JoinSet::new();
                while !st.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let at = started.elapsed();
                    let sm = sm.clone();
                    inflight.spawn(async move {
                        let seen = one_request(server, Duration::from_secs(1)).await;
                        sm.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Sample { at, seen });
                    });
                    while inflight.try_join_next().is_some() {}
                }
                while inflight.join_next().await.is_some() {}
            });
        });
        Meter {
            stop,
            samples,
            thread: Some(thread),
            started,
        }
    }

    /// The report so far, without stopping.
    pub fn peek(&self) -> MeterReport {
        summarize(&self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stop and summarise.
    pub fn finish(mut self) -> MeterReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        summarize(&self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn one_request(server: Ipv4Addr, timeout: Duration) -> Option<Ipv4Addr> {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(SocketAddr::from((server, WHOAMI_PORT)))
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        buf.trim().parse().ok()
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// Summarise samples (in any order): losses, the longest gap between
/// answered requests' send times, sources seen.
pub fn summarize(samples: &[Sample]) -> MeterReport {
    let mut samples = samples.to_vec();
    samples.sort_by_key(|s| s.at);
    let samples = &samples[..];
    let mut r = MeterReport {
        sent: samples.len(),
        ..MeterReport::default()
    };
    let mut last_ok: Option<&Sample> = None;
    for s in samples {
        match s.seen {
            Some(ip) => {
                if let Some(prev) = last_ok {
                    r.longest_gap = r.longest_gap.max(s.at.saturating_sub(prev.at));
                    if prev.seen != Some(ip) {
                        r.source_changes += 1;
                    }
                }
                if r.last_failure.is_some() && r.first_success_after_last_failure.is_none() {
                    r.first_success_after_last_failure = Some(s.at);
                }
                last_ok = Some(s);
                if !r.sources.contains(&ip) {
                    r.sources.push(ip);
                }
            }
            None => {
                r.lost += 1;
                r.last_failure = Some(s.at);
                r.first_success_after_last_failure = None;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_an_outage() {
        let ip = |n| Some(Ipv4Addr::new(198, 51, 100, n));
        let ms = Duration::from_millis;
        let samples: Vec<Sample> = [
            (0, ip(10)),
            (50, ip(10)),
            (100, None),
            (150, None),
            (200, ip(11)),
            (250, ip(11)),
        ]
        .into_iter()
        .map(|(t, seen)| Sample { at: ms(t), seen })
        .collect();
        let r = summarize(&samples);
        assert_eq!(r.sent, 6);
        assert_eq!(r.lost, 2);
        assert_eq!(r.longest_gap, ms(150));
        assert_eq!(r.source_changes, 1);
        assert_eq!(r.last_failure, Some(ms(150)));
        assert_eq!(r.first_success_after_last_failure, Some(ms(200)));
        assert_eq!(r.sources.len(), 2);
    }
}
