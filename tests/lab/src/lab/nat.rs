//! A NAT instance of the lab: its namespace, IMDSv2 emulator, AWS API proxy ([`crate::api`])
//! and config, and its daemon, started the way the unit starts it.

use super::*;

/// A NAT instance: a namespace with the ENI's address and MAC, its own
/// IMDSv2 emulator and moto proxy, and the hanat daemon.
pub struct Nat {
    pub instance: Instance,
    pub ns: Netns,
    pub imds: Imds,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub probe_namespace: String,
    /// Its binary, if not the lab's (a rolling upgrade's newer NATs).
    pub(super) bin: Option<PathBuf>,
    pub(super) daemon: Option<Child>,
    /// When the daemon was seen dead (for the restart delay).
    pub(super) died_at: Option<Instant>,
    /// Where its daemon reaches the AWS API (`AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// Its own API proxy, inside the instance (`None` when the API is
    /// reached through the VPC: [`LabOptions::api_through_vpc`]).
    pub(super) _proxy: Option<AbortOnDrop>,
}

pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

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
    pub(super) fn new(opts: &LabOptions, dir: &Path) -> Result<Launch> {
        let mut sandbox = Sandbox::shipped()?;
        if let Some(caps) = &opts.capabilities {
            sandbox = sandbox.with_capabilities(caps);
        }
        if let Some(limits) = opts.open_files {
            sandbox.open_files = limits;
        }
        let installed = dir.join("hanat");
        std::fs::write(&installed, b"")?;
        Ok(Launch {
            sandbox,
            bin: opts.hanat_bin.clone(),
            installed,
        })
    }

    /// A command running the unit's `ExecStart` of `bin` in `ns` with
    /// `config`.
    pub fn command(&self, ns: &Netns, bin: &Path, config: &Path) -> std::process::Command {
        self.sandbox
            .command(&ns.path(), bin, &self.installed, config)
    }
}

impl Nat {
    /// Start the daemon the way the unit does.
    pub(super) fn start(&mut self, launch: &Launch) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        launch.sandbox.run_pre_outside()?;
        let bin = self.bin.as_ref().unwrap_or(&launch.bin);
        let child = launch
            .command(&self.ns, bin, &self.config_path)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .envs(daemon_env(&self.endpoint))
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

    pub(super) fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(super) fn running(&mut self) -> bool {
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

/// Environment a daemon gets inside a NAT namespace: the AWS API at
/// `endpoint` (the lab's proxy), dummy credentials, and nothing from the
/// host's AWS config.
pub fn daemon_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Remove AZ `i`'s NAT (namespace and daemon) and terminate it in moto
/// (whose group launches a replacement).
pub(super) async fn terminate_nat(shared: &Shared, i: usize, why: &str) -> Result<String> {
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
pub(super) async fn launch_nat(shared: &Shared, i: usize, instance: Instance) -> Result<Nat> {
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
        subnet_cidr: shared.cloud.subnet_cidr(&instance.subnet).await?,
        private_ip: instance.private_ip.clone(),
        image_id: instance.image_id.clone(),
        instance_type: instance.instance_type.clone(),
        account_id: instance.owner_id.clone(),
        reservation_id: instance.reservation_id.clone(),
        launch_time: instance.launch_time.clone(),
        security_groups: instance.security_groups.clone(),
        // Set by the internet gateway's sync, as the address is mapped.
        public_ipv4: None,
    };
    let imds = Imds::serve(ns.bind_tcp("169.254.169.254:80".parse()?)?, meta.values())?;
    // The AWS API: through the VPC to the lab's endpoint on the internet
    // side, or from inside the instance through a proxy of its own.
    let (endpoint, proxy) = match shared.opts.api_host() {
        Some(host) => (api_endpoint(host, i), None),
        None => {
            let listener = ns.bind_tcp(SocketAddr::from(([127, 0, 0, 1], MOTO_PROXY_PORT)))?;
            let proxy = tokio::spawn(crate::api::serve(
                listener,
                i,
                shared.api.clone(),
                shared.moto_port,
            ));
            (
                format!("http://127.0.0.1:{MOTO_PROXY_PORT}"),
                Some(AbortOnDrop(proxy)),
            )
        }
    };
    let probe_namespace = format!("{prefix}-p{i}g{n}");
    let config_path = shared.dir.join(format!("nat-{i}-{n}.toml"));
    let log_path = shared.dir.join(format!("nat-{i}-{n}.log"));
    std::fs::write(
        &config_path,
        daemon_config(
            &shared.opts,
            &probe_namespace,
            &shared.gateways,
            shared.key_secret.as_deref(),
            shared.status_check.as_deref(),
        ),
    )?;
    shared.event(format!("az{i}: {} materialised", instance.id));
    Ok(Nat {
        instance,
        ns,
        imds,
        config_path,
        log_path,
        probe_namespace,
        bin: None,
        daemon: None,
        died_at: None,
        endpoint,
        _proxy: proxy,
    })
}

/// The config the lab gives every daemon.
pub fn daemon_config(
    o: &LabOptions,
    probe_namespace: &str,
    gateways: &[(String, NatGateway)],
    key_secret: Option<&str>,
    status_check: Option<&str>,
) -> String {
    let mut auth = match key_secret {
        Some(arn) => format!("key_secret = \"{arn}\"\n"),
        None => "accept_unauthenticated = true\n".into(),
    };
    if let Some(check) = status_check {
        auth.push_str(&format!("status_check = \"{check}\"\n"));
    }
    let fallbacks: String = match o.regional_nat_gateway {
        true => (gateways.first())
            .map(|(_, g)| format!("\"*\" = \"{}\"\n", g.id))
            .unwrap_or_default(),
        false => (gateways.iter())
            .map(|(az, g)| format!("\"{az}\" = \"{}\"\n", g.id))
            .collect(),
    };
    let targets: Vec<String> = SERVERS
        .iter()
        .map(|s| format!("\"tcp://{s}:{WHOAMI_PORT}\""))
        .collect();
    // Left to hanat's default when it is the default (so older binaries,
    // which lack the key, can run in the lab for comparison).
    let refresh = match o.refresh_interval == Duration::from_secs(600) {
        true => String::new(),
        false => format!(
            "refresh_interval = \"{}\"\n",
            humantime::format_duration(o.refresh_interval)
        ),
    };
    let flow_handoff = o
        .flow_handoff
        .map(|d| format!("flow_handoff = \"{}\"\n", humantime::format_duration(d)))
        .unwrap_or_default();
    let cloudwatch = o
        .cloudwatch
        .map(|every| {
            format!(
                "[cloudwatch]\nenabled = true\ninterval = \"{}\"\n\n",
                humantime::format_duration(every)
            )
        })
        .unwrap_or_default();
    let kernel_extra = &o.kernel_extra;
    // Only when asked for (older binaries lack the key).
    let metrics = o
        .metrics_allow
        .as_ref()
        .map(|a| format!("[metrics]\nallow = {a}\n\n"))
        .unwrap_or_default();
    // Only when off (older binaries lack the section).
    let replication = match o.replication {
        true => "",
        false => "[replication]\nenabled = false\n\n",
    };
    // Only when asked for (older binaries lack the section).
    let snat = match o.addresses {
        1 => String::new(),
        n => format!("[snat]\naddresses = {n}\n\n"),
    };
    format!(
        "[heartbeat]\ntargets = [{}]\ninterval = \"{}\"\ntimeout = \"{}\"\nfall = {}\nrise = {}\n\
         grace_period = \"{}\"\nprobe_namespace = \"{probe_namespace}\"\n\n\
         [routes]\nreconcile_interval = \"{}\"\n\n[kernel]\nconverge_interval = \"10s\"\n\
         conntrack_max = 0\n{kernel_extra}\n[peers]\nfailover = \"{}\"\nfailback = \"{}\"\n{flow_handoff}{auth}\n\
         [exit]\npoll_interval = \"250ms\"\ndrain = \"2s\"\nhandoff_timeout = \"10s\"\n\
         handoff_on_stop = {}\n\n\
         [aws]\nimds_timeout = \"20s\"\n{refresh}\n{replication}{snat}{metrics}{cloudwatch}[peers.fallback_nat_gateway_id]\n{fallbacks}",
        targets.join(", "),
        humantime::format_duration(o.probe_interval),
        humantime::format_duration(o.probe_timeout),
        o.fall,
        o.rise,
        humantime::format_duration(o.grace),
        humantime::format_duration(o.reconcile_interval),
        o.failover,
        o.failback,
        o.handoff_on_stop,
    )
}

impl Lab {
    /// AZ `i`'s NAT's `/metrics`, asked from inside the instance, given
    /// `timeout` to answer.
    pub fn nat_metrics(&self, i: usize, timeout: Duration) -> Result<String> {
        let max_time = timeout.as_secs_f64().to_string();
        let url = "http://127.0.0.1:7472/metrics";
        self.nat_exec(i, "curl", &["-s", "--max-time", &max_time, url])
    }

    /// Run a command inside AZ `i`'s NAT namespace.
    pub fn nat_exec(&self, i: usize, program: &str, args: &[&str]) -> Result<String> {
        // Not under the NATs' lock: the lab's own tasks (IMDS, the data
        // plane's sync) need it while the command runs, and a command may
        // need them (curl to instance metadata).
        let ns = self.shared.nats()[i]
            .as_ref()
            .map(|n| n.ns.name.clone())
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        crate::netns::exec_in(&ns, program, args)
    }

    /// A command that runs inside AZ `i`'s NAT namespace with the daemon's
    /// environment (for `hanat plan`).
    pub fn nat_command(&self, i: usize, program: &str) -> Result<std::process::Command> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        let mut c = n.ns.command(program);
        c.envs(daemon_env(&n.endpoint));
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
        c.envs(daemon_env(&n.endpoint));
        Ok(c)
    }
}
