//! A VPC on one machine: moto as the control plane, network namespaces as
//! the data plane, and the real `hanat` binary on every NAT instance.
//!
//! ```text
//!  host-i (10.0.2i+1.10) ─ prv{i} ┐                ┌ inet (203.0.113.10/.11)
//!                                 ├─ rtr (VPC router) ─┤  servers that report
//!  nat-i (ENI IP+MAC) ──── bp{i} ┘  follows moto's   │  the source they saw
//!    └ hanat, IMDSv2 emulator,        route tables    
//!      moto proxy on 127.0.0.1:4566
//! ```
//! The router forwards each private subnet's traffic by *its route table in
//! moto* (polled every 100 ms): a route to an ENI goes to that ENI's address;
//! no route, a blackhole or an unknown ENI is unreachable. Everything is
//! named with a unique prefix and removed on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cloud::{Cloud, Instance};
use crate::imds::{Imds, InstanceMetadata};
use crate::moto::Moto;
use crate::netns::{Netns, veth};

pub const REGION: &str = "eu-west-1";
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// Internet servers (TEST-NET-3, only ever inside the lab's namespace).
pub const SERVERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 11),
];
/// TCP port where servers answer with the source address they saw.
pub const WHOAMI_PORT: u16 = 80;
/// Port of the moto proxy inside each NAT namespace.
pub const MOTO_PROXY_PORT: u16 = 4566;

/// How the lab is built.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub azs: usize,
    pub hanat_bin: PathBuf,
    /// Extra TOML appended to every daemon's config (sections other than
    /// those the lab writes).
    pub heartbeat_interval: Duration,
    pub fall: u32,
    pub rise: u32,
    pub grace: Duration,
    pub reconcile_interval: Duration,
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
            reconcile_interval: Duration::from_secs(2),
        }
    }
}

/// One AZ: its subnets, private route table, private host and NAT.
pub struct Az {
    pub index: usize,
    pub name: String,
    pub public_subnet: String,
    pub private_subnet: String,
    pub private_route_table: String,
    pub host: Netns,
    pub host_ip: Ipv4Addr,
    pub nat: Option<Nat>,
}

/// A NAT instance: a namespace with the ENI's address and MAC, its own
/// IMDSv2 emulator and moto proxy, and (when started) the hanat daemon.
pub struct Nat {
    pub instance: Instance,
    pub group: String,
    pub ns: Netns,
    pub imds: Imds,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub probe_namespace: String,
    daemon: Option<Child>,
    _proxy: tokio::task::JoinHandle<()>,
}

impl Nat {
    /// Start the daemon (`hanat run`), replacing none: call `kill` first.
    pub fn start(&mut self, hanat_bin: &std::path::Path, endpoint_port: u16) -> Result<()> {
        let _ = endpoint_port;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = self
            .ns
            .command(&hanat_bin.to_string_lossy())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{MOTO_PROXY_PORT}"),
            )
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("RUST_LOG", "hanat=debug,info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting hanat")?;
        self.daemon = Some(child);
        Ok(())
    }

    /// `kill -9` the daemon; everything it configured stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the daemon and wait for its exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self
            .daemon
            .take()
            .ok_or_else(|| anyhow!("daemon not running"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("daemon did not exit within 10s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
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

/// The whole lab. Dropping it removes everything.
pub struct Lab {
    pub prefix: String,
    pub opts: LabOptions,
    pub cloud: Cloud,
    pub vpc: String,
    pub azs: Vec<Az>,
    pub rtr: Netns,
    pub inet: Netns,
    pub dir: PathBuf,
    stop: Arc<AtomicBool>,
    router: Option<tokio::task::JoinHandle<()>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    // Dropped last: daemons talk to it until they are killed.
    pub moto: Moto,
}

impl Lab {
    /// Build the control and data planes; daemons are not started yet.
    pub async fn build(opts: LabOptions) -> Result<Lab> {
        let prefix = crate::netns::unique_prefix();
        let moto = tokio::task::spawn_blocking(Moto::start).await??;
        let cloud = Cloud::new(&moto.endpoint(), REGION).await;
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let rtr = Netns::new(&format!("{prefix}-rtr"))?;
        let inet = Netns::new(&format!("{prefix}-inet"))?;
        rtr.sysctl("net.ipv4.ip_forward", "1")?;
        rtr.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        rtr.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        veth(&rtr, "inet", &inet, "eth0")?;
        rtr.ip("addr add 203.0.113.1/24 dev inet")?;
        for s in SERVERS {
            inet.ip(&format!("addr add {s}/24 dev eth0"))?;
        }
        inet.ip("route add default via 203.0.113.1")?;

        let vpc = cloud.vpc(VPC_CIDR).await?;
        let mut lab = Lab {
            prefix: prefix.clone(),
            opts: opts.clone(),
            cloud,
            vpc,
            azs: Vec::new(),
            rtr,
            inet,
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            router: None,
            servers: Vec::new(),
            moto,
        };
        for i in 0..opts.azs {
            let az = lab.build_az(i).await?;
            lab.azs.push(az);
        }
        lab.start_servers()?;
        lab.router = Some(tokio::spawn(router_sync(
            lab.cloud.clone(),
            lab.rtr.name.clone(),
            lab.azs
                .iter()
                .map(|a| (a.index, a.private_route_table.clone()))
                .collect(),
            lab.stop.clone(),
        )));
        for i in 0..opts.azs {
            lab.add_nat(i).await?;
        }
        Ok(lab)
    }

    async fn build_az(&mut self, i: usize) -> Result<Az> {
        let name = self.cloud.az(i);
        let pub_cidr = format!("10.0.{}.0/24", 2 * i);
        let prv_cidr = format!("10.0.{}.0/24", 2 * i + 1);
        let public_subnet = self
            .cloud
            .subnet(&self.vpc, &pub_cidr, &name, &[("network", "public")])
            .await?;
        let private_subnet = self
            .cloud
            .subnet(&self.vpc, &prv_cidr, &name, &[("network", "private")])
            .await?;
        let private_route_table = self
            .cloud
            .route_table(&self.vpc, Some(&private_subnet))
            .await?;

        // Router side: a bridge for the public subnet (NATs come and go),
        // a plain link to the private host.
        self.rtr.ip(&format!("link add bp{i} type bridge"))?;
        self.rtr
            .ip(&format!("addr add 10.0.{}.1/24 dev bp{i}", 2 * i))?;
        self.rtr.ip(&format!("link set bp{i} up"))?;
        let host = Netns::new(&format!("{}-h{i}", self.prefix))?;
        veth(&self.rtr, &format!("prv{i}"), &host, "eth0")?;
        self.rtr
            .ip(&format!("addr add 10.0.{}.1/24 dev prv{i}", 2 * i + 1))?;
        let host_ip = Ipv4Addr::new(10, 0, (2 * i + 1) as u8, 10);
        host.ip(&format!("addr add {host_ip}/24 dev eth0"))?;
        host.ip(&format!("route add default via 10.0.{}.1", 2 * i + 1))?;
        // Traffic from the private subnet follows its route table (table
        // 100+i); VPC-local destinations stay local, as on AWS.
        let table = 100 + i;
        self.rtr
            .ip(&format!("rule add iif prv{i} lookup {table} pref {table}"))?;
        self.rtr
            .ip(&format!("route add unreachable default table {table}"))?;
        Ok(Az {
            index: i,
            name,
            public_subnet,
            private_subnet,
            private_route_table,
            host,
            host_ip,
            nat: None,
        })
    }

    /// Complete the per-AZ tables once every AZ's links exist.
    fn fill_local_routes(&self) -> Result<()> {
        for a in &self.azs {
            let table = 100 + a.index;
            for b in &self.azs {
                self.rtr.ip(&format!(
                    "route replace 10.0.{}.0/24 dev bp{} table {table}",
                    2 * b.index,
                    b.index
                ))?;
                self.rtr.ip(&format!(
                    "route replace 10.0.{}.0/24 dev prv{} table {table}",
                    2 * b.index + 1,
                    b.index
                ))?;
            }
        }
        Ok(())
    }

    /// Launch a NAT group for AZ `i` in moto and give its instance a namespace.
    pub async fn add_nat(&mut self, i: usize) -> Result<()> {
        self.fill_local_routes()?;
        let az = &self.azs[i];
        let group = format!("{}-nat-{}", self.prefix, az.name);
        let instance = self.cloud.nat_group(&group, &az.public_subnet).await?;
        let nat = self.make_nat(i, instance, group).await?;
        self.azs[i].nat = Some(nat);
        Ok(())
    }

    async fn make_nat(&self, i: usize, instance: Instance, group: String) -> Result<Nat> {
        let ns = Netns::new(&format!("{}-n{i}", self.prefix))?;
        // The instance's primary interface: the ENI's MAC and address.
        veth(&self.rtr, &format!("n{i}"), &ns, "eth0")?;
        self.rtr.ip(&format!("link set n{i} master bp{i}"))?;
        ns.ip("link set eth0 down")?;
        ns.ip(&format!("link set eth0 address {}", instance.mac))?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("addr add {}/24 dev eth0", instance.private_ip))?;
        ns.ip(&format!("route add default via 10.0.{}.1", 2 * i))?;
        // IMDS at its real address, inside the instance.
        ns.ip("addr add 169.254.169.254/32 dev lo")?;
        let imds_listener = ns.bind_tcp("169.254.169.254:80".parse()?)?;
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
        let imds = Imds::serve(imds_listener, meta.values())?;
        // The AWS API, reached from inside the instance through a proxy.
        let proxy_listener = ns.bind_tcp(SocketAddr::from(([127, 0, 0, 1], MOTO_PROXY_PORT)))?;
        let proxy = tokio::spawn(proxy(proxy_listener, self.moto.port));

        let probe_namespace = format!("{}-p{i}", self.prefix);
        let config_path = self.dir.join(format!("nat-{i}.toml"));
        let log_path = self.dir.join(format!("nat-{i}.log"));
        std::fs::write(&config_path, self.daemon_config(&probe_namespace))?;
        Ok(Nat {
            instance,
            group,
            ns,
            imds,
            config_path,
            log_path,
            probe_namespace,
            daemon: None,
            _proxy: proxy,
        })
    }

    /// The config the lab gives every daemon.
    pub fn daemon_config(&self, probe_namespace: &str) -> String {
        let o = &self.opts;
        let targets: Vec<String> = SERVERS
            .iter()
            .map(|s| format!("\"tcp://{s}:{WHOAMI_PORT}\""))
            .collect();
        format!(
            "[heartbeat]\ntargets = [{}]\ninterval = \"{}\"\ntimeout = \"{}\"\nfall = {}\nrise = {}\n\
             grace_period = \"{}\"\nprobe_namespace = \"{probe_namespace}\"\n\n\
             [routes]\nreconcile_interval = \"{}\"\n\n[kernel]\nconverge_interval = \"2s\"\n\
             conntrack_max = 0\n\n[aws]\nimds_timeout = \"20s\"\n",
            targets.join(", "),
            humantime::format_duration(o.heartbeat_interval),
            humantime::format_duration(o.heartbeat_interval / 2),
            o.fall,
            o.rise,
            humantime::format_duration(o.grace),
            humantime::format_duration(o.reconcile_interval),
        )
    }

    pub fn nat(&mut self, i: usize) -> &mut Nat {
        self.azs[i].nat.as_mut().expect("AZ has a NAT")
    }

    /// Start every NAT's daemon.
    pub fn start_daemons(&mut self) -> Result<()> {
        let bin = self.opts.hanat_bin.clone();
        let port = self.moto.port;
        for a in &mut self.azs {
            if let Some(n) = a.nat.as_mut() {
                n.start(&bin, port)?;
            }
        }
        Ok(())
    }

    fn start_servers(&mut self) -> Result<()> {
        for s in SERVERS {
            let l = self.inet.bind_tcp(SocketAddr::from((s, WHOAMI_PORT)))?;
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            self.servers.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Ok((mut c, peer)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = c.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
                        let _ = c.shutdown().await;
                    });
                }
            }));
        }
        Ok(())
    }

    /// Ask an internet server, from AZ `i`'s private host, which source
    /// address it saw.
    pub fn whoami(&self, i: usize, timeout: Duration) -> Result<Ipv4Addr> {
        whoami(&self.azs[i].host, SERVERS[0], timeout)
    }

    /// Make the router send traffic from the internet for AZ `i`'s private
    /// subnet to its NAT (an attacker who can reach the NAT).
    pub fn route_inbound_via_nat(&self, i: usize) -> Result<()> {
        let nat = self.azs[i].nat.as_ref().ok_or_else(|| anyhow!("no NAT"))?;
        self.rtr.ip("rule add iif inet lookup 99 pref 99").ok();
        self.rtr.ip(&format!(
            "route replace 10.0.{}.0/24 via {} table 99",
            2 * i + 1,
            nat.instance.private_ip
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
        let logs: Vec<String> = self
            .azs
            .iter()
            .filter_map(|a| a.nat.as_ref())
            .map(|n| format!("--- {} ---\n{}", n.log_path.display(), tail(&n.log(), 40)))
            .collect();
        bail!(
            "timed out after {limit:?} waiting for {what} (last error: {last_err:?})\n{}",
            logs.join("\n")
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.router.take() {
            r.abort();
        }
        for s in self.servers.drain(..) {
            s.abort();
        }
        for a in &mut self.azs {
            a.nat.take();
        }
        if std::env::var_os("HANAT_LAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One request to the whoami server from inside `ns`.
pub fn whoami(ns: &Netns, server: Ipv4Addr, timeout: Duration) -> Result<Ipv4Addr> {
    let mut s = ns.connect_tcp(SocketAddr::from((server, WHOAMI_PORT)), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let _ = s.flush();
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

/// Keep the router's per-AZ tables in line with the route tables in moto.
async fn router_sync(
    cloud: Cloud,
    rtr: String,
    tables: Vec<(usize, String)>,
    stop: Arc<AtomicBool>,
) {
    let mut applied: HashMap<usize, String> = HashMap::new();
    let mut eni_ips: HashMap<String, Option<String>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (i, rt) in &tables {
            let Ok(route) = cloud.default_route(rt).await else {
                continue;
            };
            let want = match route {
                Some((target, state)) if target.starts_with("eni-") && state != "blackhole" => {
                    if !eni_ips.contains_key(&target) {
                        let ip = cloud.eni_ip(&target).await.ok().flatten();
                        eni_ips.insert(target.clone(), ip);
                    }
                    match eni_ips.get(&target).cloned().flatten() {
                        Some(ip) => format!("default via {ip}"),
                        None => "unreachable default".into(),
                    }
                }
                _ => "unreachable default".into(),
            };
            if applied.get(i) != Some(&want) {
                let cmd = format!("-n {rtr} route replace {want} table {}", 100 + i);
                if crate::netns::ip(&cmd).is_ok() {
                    applied.insert(*i, want);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests sent at a steady rate from a private host, each recorded.
pub struct Meter {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
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
#[derive(Debug, Clone)]
pub struct MeterReport {
    pub sent: usize,
    pub lost: usize,
    /// Longest time between two answered requests.
    pub longest_gap: Duration,
    pub sources: Vec<Ipv4Addr>,
}

impl Meter {
    fn start(ns: &Netns, server: Ipv4Addr, every: Duration) -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let path = ns.path();
        let (st, sm) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let entered = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                });
            if entered.is_err() {
                return;
            }
            let start = Instant::now();
            let mut next = start;
            while !st.load(Ordering::Relaxed) {
                let at = start.elapsed();
                let seen = one_request(server, every.max(Duration::from_millis(200)) * 2);
                sm.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Sample { at, seen });
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Meter {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stop and summarise.
    pub fn finish(mut self) -> MeterReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        summarize(&samples)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn one_request(server: Ipv4Addr, timeout: Duration) -> Option<Ipv4Addr> {
    let mut s =
        std::net::TcpStream::connect_timeout(&SocketAddr::from((server, WHOAMI_PORT)), timeout)
            .ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.trim().parse().ok()
}

/// Summarise samples: losses, the longest gap between answers, sources seen.
pub fn summarize(samples: &[Sample]) -> MeterReport {
    let mut longest_gap = Duration::ZERO;
    let mut last_ok: Option<Duration> = None;
    let mut sources: Vec<Ipv4Addr> = Vec::new();
    for s in samples {
        if let Some(ip) = s.seen {
            if let Some(prev) = last_ok {
                longest_gap = longest_gap.max(s.at.saturating_sub(prev));
            }
            last_ok = Some(s.at);
            if !sources.contains(&ip) {
                sources.push(ip);
            }
        }
    }
    MeterReport {
        sent: samples.len(),
        lost: samples.iter().filter(|s| s.seen.is_none()).count(),
        longest_gap,
        sources,
    }
}
