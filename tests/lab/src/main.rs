//! `hanat-lab`: a multi-AZ VPC with autoscaled hanat NAT instances on one
//! machine. `up` runs it until Ctrl-C; `chaos` measures one failure; `down`
//! removes what a crashed lab left behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hanat_lab::api::{self, Latency};
use hanat_lab::chaos::{self, ChaosOptions, Scenario};
use hanat_lab::lab::{Lab, LabOptions};

const USAGE: &str = "\
usage: hanat-lab <command> [options]

commands:
  up [--azs N] [--for D]           build the lab, run it until Ctrl-C (or for D),
                                   tear it down
  chaos SCENARIO [--azs N] [--json] [--plot FILE.svg]
                                   up → converge → inject → measure → down
                                   scenarios: none, kill-daemon, terminate-instance,
                                   stop-forwarding, hijack-route, scale-in,
                                   spot-interruption, instance-refresh, partition,
                                   az-outage, api-slow, api-throttle, api-down,
                                   imds-down, kernel-drift, standby, forge-tunnel,
                                   forge-tunnel-ok, forge-spoof, replay, freeze,
                                   az-isolation, endpoint-flood, heartbeat-flood,
                                   fd-exhaustion, refresh-launch-first,
                                   standby-no-decrement, two-in-az, rolling-upgrade,
                                   no-public-address, no-public-address-endpoints
  bench failover [--runs N]        every scenario N times (default 10) with
                                   failover = peer and = none; a table of outages
  bench connections [--addresses N] [--json]
                                   concurrent UDP flows and TCP connections from
                                   one private host to one server port through
                                   one NAT with N addresses (default 1); a table
                                   against N × 64,512 and the NAT Gateway's
                                   N × 55,000 (raises nf_conntrack_max, its
                                   buckets and netdev_max_backlog for the run;
                                   Auto Scaling does not replace the NAT)
  soak [--for D]                   the lab for D (default 30m) with the internet
                                   path unkind: 2 % loss and 0-200 ms delay on
                                   every NAT's uplink, a probe target
                                   black-holed 3 min in every 6,
                                   the API throttled 1 min in every 10; counts
                                   route changes, Unhealthy reports and verdict
                                   flips (exit 1 if anything moved)
  fis FILE [EXPERIMENT] [--parameter K=V]…
                                   the AWS FIS experiments of a CloudFormation
                                   template (cloudformation/fis.yaml), each on a
                                   fresh lab as chaos runs a scenario: every
                                   action mapped onto the lab's own fault, with
                                   its targets and durations as written, stopped
                                   when a stop-condition alarm fires; the lab
                                   fills Name, NatStackName, VpcId, NumberOfAZs,
                                   TargetAz (AZ 0) and NatRoleArn; the NATs
                                   publish every second (--cloudwatch-interval)
                                   and the alarms are evaluated over their own
                                   periods
  down                             remove namespaces a crashed lab left behind
options:
  --azs N            availability zones, 1-3 (default 2)
  --addresses N      public addresses per NAT, 1-8 (snat.addresses and the
                     template's AddressesPerNat; default 1)
  --boot-delay D     Auto Scaling launch to daemon start (default 20s)
  --fallback-nat-gateway
                     give every AZ a managed NAT Gateway and name it in
                     peers.fallback_nat_gateway_id
  --regional-nat-gateway
                     one regional NAT Gateway for every AZ instead (key * of
                     peers.fallback_nat_gateway_id; moto has no regional
                     mode: the lab gives one gateway id a plane in each AZ)
  --unauthenticated-peers
                     no heartbeat key: peers.accept_unauthenticated = true
                     (hanat/1), as during an upgrade from a version without keys
  --no-replication   the daemons copy no connections to their peers
                     ([replication] enabled = false): an abrupt death costs
                     the dead NAT's connections
  --no-witness       no application status check on the NATs' /health (the
                     templates' NatStatusCheck, played by the lab)
  --witness-interval D
                     how often the status check runs (default 60s, AWS's only
                     value)
  --open-files SOFT:HARD
                     the daemons' open-file limits instead of the unit's
                     LimitNOFILE (1024:524288 is systemd's default for a unit
                     without it); never above the lab's own hard limit
  --no-cloudwatch    the daemons publish nothing to CloudWatch (moto)
  --cloudwatch-interval D
                     how often each daemon publishes (default 60s, as the
                     templates)
  --timeout D        chaos, fis: give up waiting for recovery this long after
                     the fault is in place (default 120s)
  --parameter K=V    fis: a parameter of the experiment template
  --api-latency P    latency the AWS API proxy adds: realistic (default) or none
  --for D            up: tear down after D; soak: how long
  --steady D         chaos, bench: steady state watched before the fault (default
                     2s; the JSON's api_calls_per_nat_min is measured over it)
  --refresh-interval D
                     the daemons' aws.refresh_interval (default 15s; hanat's own
                     default is 10m)
  --reconcile-interval D
                     the daemons' routes.reconcile_interval (default 5s; hanat's
                     own default is 30s)
  --hanat PATH       the hanat binary (default: next to hanat-lab, built if missing)
  --api-through-vpc  the daemons reach the AWS API as on AWS: out of their
                     interface through the VPC and its internet gateway (so
                     only with a public address); default: through a proxy
                     inside each instance
  --no-public-ip-on-launch
                     the public subnets map no public address on launch (as
                     a subnet a user creates): a NAT has one only if its
                     launch template asks, or once it holds its Elastic IP
  --existing-vpc     the NATs from cloudformation/existing-vpc.yaml, deployed
                     into the VPC vpc.yaml made (its own NAT groups emptied),
                     without alarms
  --upgrade-to PATH  the binary of NATs launched beside an AZ's current one
                     (refresh-launch-first, rolling-upgrade…): a rolling upgrade
                     from --hanat to PATH
  --json             chaos: print one JSON object
  --plot PATH        chaos: draw the run to PATH (SVG): answered requests per
                     second per AZ, with the lab's events; bench: one SVG per
                     run into the directory PATH
  --runs N           bench: runs per scenario and mode (default 10)
  --scenarios A,B    bench: only these scenarios
  --modes A,B        bench: these failover modes (peer, none, peer-noreplication:
                     peer with [replication] off; default peer,none)
  --probe I,T,F      the daemons' probe interval, timeout and fall (default
                     hanat's own; 500ms,400ms,3 is what the lab ran before
                     2026-12-06's faster defaults)
Needs root (network namespaces, nftables); installs moto into ~/.cache/hanat on first use.
";

struct Args {
    command: String,
    scenario: Option<String>,
    azs: usize,
    boot_delay: Duration,
    timeout: Duration,
    hanat: Option<PathBuf>,
    upgrade_to: Option<PathBuf>,
    api_through_vpc: bool,
    map_public_ip: bool,
    existing_vpc: bool,
    json: bool,
    runs: usize,
    plot: Option<PathBuf>,
    scenarios: Option<String>,
    /// bench: the failover modes to run (`peer`, `none`).
    modes: Vec<String>,
    /// The daemons' probe interval, timeout and fall instead of hanat's
    /// defaults (to run an older release as the lab used to).
    probe: Option<(Duration, Duration, u32)>,
    fallback_nat_gateway: bool,
    regional_nat_gateway: bool,
    peer_auth: bool,
    replication: bool,
    witness: bool,
    witness_interval: Duration,
    cloudwatch: Option<Duration>,
    api_latency: Latency,
    run_for: Option<Duration>,
    reconcile_interval: Duration,
    steady: Duration,
    refresh_interval: Duration,
    addresses: u8,
    open_files: Option<(u64, u64)>,
    /// fis: the experiment to run (default: every one).
    experiment: Option<String>,
    /// fis: parameters given to the template.
    parameters: Vec<(String, String)>,
    /// `--cloudwatch-interval` or `--no-cloudwatch` was given.
    cloudwatch_given: bool,
}

fn parse() -> Result<Option<Args>> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        command: String::new(),
        scenario: None,
        azs: 2,
        boot_delay: Duration::from_secs(20),
        timeout: Duration::from_secs(120),
        hanat: None,
        upgrade_to: None,
        api_through_vpc: false,
        map_public_ip: true,
        existing_vpc: false,
        json: false,
        runs: 10,
        plot: None,
        scenarios: None,
        modes: vec!["peer".into(), "none".into()],
        probe: None,
        fallback_nat_gateway: false,
        regional_nat_gateway: false,
        peer_auth: true,
        replication: true,
        witness: true,
        witness_interval: Duration::from_secs(60),
        cloudwatch: Some(Duration::from_secs(60)),
        api_latency: Latency::Realistic,
        run_for: None,
        reconcile_interval: Duration::from_secs(5),
        steady: Duration::from_secs(2),
        refresh_interval: Duration::from_secs(15),
        addresses: 1,
        open_files: None,
        experiment: None,
        parameters: Vec::new(),
        cloudwatch_given: false,
    };
    let duration = |v: Option<String>, flag: &str| -> Result<Duration> {
        let v = v.with_context(|| format!("{flag} needs a value"))?;
        humantime::parse_duration(&v)
            .with_context(|| format!("{flag}: `{v}` is not a duration like 20s"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--azs" => {
                let v = it.next().context("--azs needs a number")?;
                a.azs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=3).contains(n))
                    .with_context(|| format!("--azs: `{v}` is not 1, 2 or 3"))?;
            }
            "--addresses" => {
                let v = it.next().context("--addresses needs a number")?;
                a.addresses = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .with_context(|| format!("--addresses: `{v}` is not from 1 to 8"))?;
            }
            "--boot-delay" => a.boot_delay = duration(it.next(), "--boot-delay")?,
            "--timeout" => a.timeout = duration(it.next(), "--timeout")?,
            "--hanat" => a.hanat = Some(it.next().context("--hanat needs a path")?.into()),
            "--api-through-vpc" => a.api_through_vpc = true,
            "--no-public-ip-on-launch" => a.map_public_ip = false,
            "--existing-vpc" => a.existing_vpc = true,
            "--upgrade-to" => {
                a.upgrade_to = Some(it.next().context("--upgrade-to needs a path")?.into())
            }
            "--json" => a.json = true,
            "--refresh-interval" => a.refresh_interval = duration(it.next(), "--refresh-interval")?,
            "--steady" => a.steady = duration(it.next(), "--steady")?,
            "--for" => a.run_for = Some(duration(it.next(), "--for")?),
            "--reconcile-interval" => {
                a.reconcile_interval = duration(it.next(), "--reconcile-interval")?
            }
            "--api-latency" => {
                a.api_latency = Latency::parse(&it.next().context("--api-latency needs a value")?)?
            }
            "--fallback-nat-gateway" => a.fallback_nat_gateway = true,
            "--regional-nat-gateway" => {
                a.fallback_nat_gateway = true;
                a.regional_nat_gateway = true;
            }
            "--unauthenticated-peers" => a.peer_auth = false,
            "--no-replication" => a.replication = false,
            "--no-witness" => a.witness = false,
            "--no-cloudwatch" => {
                a.cloudwatch = None;
                a.cloudwatch_given = true;
            }
            "--parameter" => {
                let v = it.next().context("--parameter needs KEY=VALUE")?;
                let (k, v) = v
                    .split_once('=')
                    .with_context(|| format!("--parameter: `{v}` is not KEY=VALUE"))?;
                a.parameters.push((k.to_owned(), v.to_owned()));
            }
            "--open-files" => {
                let v = it.next().context("--open-files needs SOFT:HARD")?;
                a.open_files = Some(
                    v.split_once(':')
                        .and_then(|(s, h)| Some((s.parse().ok()?, h.parse().ok()?)))
                        .with_context(|| format!("--open-files: `{v}` is not SOFT:HARD"))?,
                );
            }
            "--cloudwatch-interval" => {
                a.cloudwatch = Some(duration(it.next(), "--cloudwatch-interval")?);
                a.cloudwatch_given = true;
            }
            "--plot" => a.plot = Some(it.next().context("--plot needs a path")?.into()),
            "--witness-interval" => a.witness_interval = duration(it.next(), "--witness-interval")?,
            "--runs" => {
                let v = it.next().context("--runs needs a number")?;
                a.runs = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--runs: `{v}` is not a positive number"))?;
            }
            "--scenarios" => a.scenarios = Some(it.next().context("--scenarios needs a list")?),
            "--probe" => {
                let v = it.next().context("--probe needs INTERVAL,TIMEOUT,FALL")?;
                let parts: Vec<&str> = v.split(',').collect();
                let [interval, timeout, fall] = parts[..] else {
                    bail!("--probe: `{v}` is not INTERVAL,TIMEOUT,FALL (e.g. 500ms,400ms,3)");
                };
                a.probe = Some((
                    duration(Some(interval.to_owned()), "--probe")?,
                    duration(Some(timeout.to_owned()), "--probe")?,
                    fall.parse().context("--probe: FALL is not a number")?,
                ));
            }
            "--modes" => {
                let list = it.next().context("--modes needs a list")?;
                a.modes = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = a
                    .modes
                    .iter()
                    .find(|m| !["peer", "none", "peer-noreplication"].contains(&m.as_str()))
                {
                    bail!(
                        "--modes: unknown mode `{bad}`; choose from peer, none, peer-noreplication"
                    );
                }
            }
            s if s.starts_with('-') => bail!("unknown option `{s}`"),
            s if a.command.is_empty() => a.command = s.to_owned(),
            s if ["chaos", "bench", "fis"].contains(&a.command.as_str())
                && a.scenario.is_none() =>
            {
                a.scenario = Some(s.to_owned())
            }
            s if a.command == "fis" && a.experiment.is_none() => a.experiment = Some(s.to_owned()),
            s => bail!("unexpected argument `{s}`"),
        }
    }
    if a.command.is_empty() {
        bail!("missing command");
    }
    Ok(Some(a))
}

/// The hanat binary: given, next to this one, or built now.
fn hanat_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("hanat");
    if !sibling.exists() {
        eprintln!("hanat-lab: building the hanat binary…");
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
        let ok =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--quiet",
                    "--bin",
                    "hanat",
                    "--manifest-path",
                    manifest,
                ])
                .status()
                .context("running cargo build for hanat")?
                .success();
        if !ok || !sibling.exists() {
            bail!("could not build hanat; pass --hanat PATH");
        }
    }
    Ok(sibling)
}

fn lab_options(a: &Args) -> Result<LabOptions> {
    let mut o = LabOptions::new(hanat_bin(a.hanat.clone())?);
    o.azs = a.azs;
    o.boot_delay = a.boot_delay;
    o.grace = Duration::from_secs(30);
    if let Some((interval, timeout, fall)) = a.probe {
        (o.probe_interval, o.probe_timeout, o.fall) = (interval, timeout, fall);
    }
    o.fallback_nat_gateway = a.fallback_nat_gateway;
    o.regional_nat_gateway = a.regional_nat_gateway;
    o.peer_auth = a.peer_auth;
    o.replication = a.replication;
    o.witness = a.witness;
    o.witness_interval = a.witness_interval;
    o.cloudwatch = a.cloudwatch;
    o.api_latency = a.api_latency;
    o.reconcile_interval = a.reconcile_interval;
    o.refresh_interval = a.refresh_interval;
    o.addresses = a.addresses;
    o.open_files = a.open_files;
    o.upgrade_to = a.upgrade_to.clone();
    o.api_through_vpc = a.api_through_vpc;
    o.map_public_ip = a.map_public_ip;
    o.existing_vpc = a.existing_vpc;
    Ok(o)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hanat-lab: {e:#}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "hanat-lab: needs root (network namespaces and nftables); try: sudo hanat-lab {}",
            args.command
        );
        return ExitCode::from(77);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hanat-lab: {e}");
            return ExitCode::from(71);
        }
    };
    let result = rt.block_on(async {
        match args.command.as_str() {
            "up" => up(&args).await,
            "chaos" => chaos_cmd(&args).await,
            "fis" => fis_cmd(&args).await,
            "bench" => bench(&args).await,
            "soak" => soak(&args).await,
            "down" => down(),
            other => bail!("unknown command `{other}`"),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hanat-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(a: &Args) -> Result<u8> {
    let opts = lab_options(a)?;
    println!(
        "hanat-lab: building a {}-AZ VPC (moto + network namespaces)…",
        opts.azs
    );
    let lab = Lab::build(opts).await?;
    lab.start_daemons()?;
    println!(
        "hanat-lab: up as {}; logs in {}; Ctrl-C to tear down",
        lab.prefix,
        lab.dir.display()
    );
    let start = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let end = a.run_for.map(|d| start + d);
    let mut rtt = HashMap::new();
    while end.is_none_or(|e| Instant::now() < e) {
        print_status(&lab, start, &mut rtt).await;
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    println!("\nhanat-lab: tearing down");
    drop(lab);
    Ok(0)
}

/// The sum of every series of `name` in a NAT's exposition.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The live table; `rtt` keeps each NAT's probe round-trip sum and count
/// from the previous table, for the mean since then.
async fn print_status(lab: &Lab, start: Instant, rtt: &mut HashMap<String, (f64, f64)>) {
    println!(
        "\n[{:>4}s] {:<12} {:<21} {:<10} {:<12} {:<24} {:<7} {:<16} {:>6} {:>8} {:>9}",
        start.elapsed().as_secs(),
        "AZ",
        "NAT instance",
        "health",
        "status check",
        "private route →",
        "egress",
        "public IP (seen)",
        "conns",
        "probe ms",
        "calls/min",
    );
    for a in &lab.azs {
        let nat = lab.nat(a.index);
        let (id, eni, running) = match &nat {
            Some(n) => (n.instance.id.clone(), n.instance.eni.clone(), n.running),
            None => ("(booting)".into(), String::new(), false),
        };
        let health = match &nat {
            Some(n) => lab
                .cloud
                .health(&n.instance.id)
                .await
                .unwrap_or_else(|_| "gone".into()),
            None => "-".into(),
        };
        let health = if nat.is_some() && !running {
            format!("{health}*")
        } else {
            health
        };
        // The application status check's verdict, as EC2 would show it.
        let check = nat
            .as_ref()
            .and_then(|n| {
                lab.api()
                    .witness()
                    .status
                    .get(&n.instance.id)
                    .map(|(s, _)| *s)
            })
            .unwrap_or("-");
        let route = match lab.route_target(a.index).await {
            Ok(Some(t)) if !eni.is_empty() && t == eni => "own NAT".to_owned(),
            Ok(Some(t)) => t,
            Ok(None) => "none".into(),
            Err(_) => "?".into(),
        };
        let seen = lab.whoami(a.index, Duration::from_millis(500));
        // From the NAT's own metrics: established connections, and the
        // mean probe round trip since the last table.
        let metrics = nat
            .as_ref()
            .and_then(|_| lab.nat_metrics(a.index, Duration::from_secs(1)).ok())
            .filter(|m| m.contains("hanat_"));
        let (conns, probe_ms) = match &metrics {
            Some(m) => {
                let now = (
                    metric_sum(m, "hanat_probe_rtt_seconds_sum"),
                    metric_sum(m, "hanat_probe_rtt_seconds_count"),
                );
                let before = rtt.insert(id.clone(), now).unwrap_or((0.0, 0.0));
                let n = now.1 - before.1;
                let ms = match n > 0.0 {
                    true => format!("{:.1}", (now.0 - before.0) / n * 1000.0),
                    false => "-".into(),
                };
                (format!("{}", metric_sum(m, "hanat_active_connections")), ms)
            }
            None => ("-".into(), "-".into()),
        };
        let minute_ago = Instant::now() - Duration::from_secs(60);
        let calls = lab
            .api()
            .calls()
            .iter()
            .filter(|c| c.nat == a.index && c.at >= minute_ago)
            .count();
        println!(
            "        {:<12} {:<21} {:<10} {:<12} {:<24} {:<7} {:<16} {:>6} {:>8} {:>9}",
            a.name,
            id,
            health,
            check,
            route,
            if seen.is_ok() { "OK" } else { "FAIL" },
            seen.map(|s| s.to_string()).unwrap_or_else(|_| "-".into()),
            conns,
            probe_ms,
            calls,
        );
    }
    print_api(lab, start);
}

/// The daemons' AWS calls: in all, and per NAT per minute over the last
/// [`API_WINDOW`] (ten minutes) once the lab has run a minute past its first
/// (start-up's calls left out).
fn print_api(lab: &Lab, start: Instant) {
    const API_WINDOW: Duration = Duration::from_secs(600);
    let calls = lab.api().calls();
    let now = Instant::now();
    let from = (now - API_WINDOW).max(start + Duration::from_secs(60));
    let rate = match now.saturating_duration_since(from) >= Duration::from_secs(60) {
        true => format!(
            "{:.1} per NAT per minute over the last {}",
            api::per_nat_min(&calls, lab.azs.len(), from, now),
            humantime::format_duration(Duration::from_secs(now.duration_since(from).as_secs()))
        ),
        false => "per NAT per minute: after the first two minutes".into(),
    };
    let recent: Vec<api::Call> = calls.iter().filter(|c| c.at >= from).cloned().collect();
    let actions: Vec<String> = api::by_action(&recent)
        .into_iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    println!(
        "        AWS API ({} latency): {} calls; {rate}; {}",
        lab.api().latency().name(),
        calls.len(),
        actions.join(", ")
    );
}

async fn chaos_cmd(a: &Args) -> Result<u8> {
    let name = a.scenario.as_deref().context("chaos needs a SCENARIO")?;
    let scenario = Scenario::parse(name)?;
    let opts = ChaosOptions {
        steady: a.steady,
        ..ChaosOptions::new(lab_options(a)?, a.timeout)
    };
    let report = chaos::run(scenario, opts).await?;
    if let Some(path) = &a.plot {
        hanat_lab::plot::plot(&report, path)?;
    }
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    Ok(if report.recovered { 0 } else { 1 })
}

async fn fis_cmd(a: &Args) -> Result<u8> {
    use hanat_lab::fis;
    let file = a.scenario.as_deref().context("fis needs a FILE")?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let template = fis::read(&text).with_context(|| file.to_owned())?;
    let known = template.parameter_names();
    for (k, _) in &a.parameters {
        if fis::FILLED.contains(&k.as_str()) {
            bail!("--parameter {k}: the lab fills {k} with its own stack's value");
        }
        if !known.contains(k) {
            bail!(
                "--parameter {k}: {file} has no parameter {k}; it has {}",
                known.join(", ")
            );
        }
    }
    let given = a.parameters.iter().cloned().collect();
    let names = match &a.experiment {
        Some(e) => vec![e.clone()],
        None => template.experiments(),
    };
    let mut lab = lab_options(a)?;
    if !a.cloudwatch_given {
        lab.cloudwatch = Some(Duration::from_secs(1));
    }
    let mut failed = 0;
    for name in names {
        let opts = ChaosOptions {
            steady: a.steady,
            ..ChaosOptions::new(lab.clone(), a.timeout)
        };
        let report = fis::run(&template, &name, &given, opts).await?;
        if a.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.human());
        }
        if !report.recovered || report.stopped_by.is_some() {
            failed += 1;
        }
    }
    Ok(u8::from(failed > 0))
}

async fn bench(a: &Args) -> Result<u8> {
    if a.scenario.as_deref() == Some("connections") {
        let rows = hanat_lab::connections::run(lab_options(a)?, a.addresses).await?;
        for r in &rows {
            if a.json {
                println!("{}", r.json());
            }
        }
        if !a.json {
            println!("{}", hanat_lab::connections::table(&rows));
        }
        return Ok(0);
    }
    if a.scenario.as_deref() != Some("failover") {
        bail!("benchmarks: `bench failover`, `bench connections`");
    }
    let scenarios: Vec<Scenario> = match &a.scenarios {
        Some(list) => list
            .split(',')
            .map(Scenario::parse)
            .collect::<Result<_>>()?,
        None => Scenario::ALL.to_vec(),
    };
    let mut rows = Vec::new();
    for s in &scenarios {
        for mode in &a.modes {
            let mode = mode.as_str();
            let mut reports = Vec::new();
            for run in 1..=a.runs {
                let mut lab = lab_options(a)?;
                lab.failover = mode.trim_end_matches("-noreplication").into();
                lab.replication &= !mode.ends_with("-noreplication");
                let opts = ChaosOptions {
                    steady: a.steady,
                    ..ChaosOptions::new(lab, a.timeout)
                };
                let r = chaos::run(*s, opts).await?;
                eprintln!("{} {mode} run {run}/{}: {}", s.name(), a.runs, r.json());
                if let Some(dir) = &a.plot {
                    std::fs::create_dir_all(dir)?;
                    let file = dir.join(format!("{}-{mode}-{run}.svg", s.name()));
                    hanat_lab::plot::plot(&r, &file)?;
                }
                reports.push(r);
            }
            rows.push(chaos::bench_row(*s, mode, &reports));
        }
    }
    println!("{}", chaos::bench_table(&rows));
    Ok(0)
}

async fn soak(a: &Args) -> Result<u8> {
    let duration = a.run_for.unwrap_or(Duration::from_secs(1800));
    let report =
        hanat_lab::soak::run(hanat_lab::soak::SoakOptions::new(lab_options(a)?, duration)).await?;
    print!("{}", report.text());
    Ok(match report.clean() {
        true => 0,
        false => 1,
    })
}

fn down() -> Result<u8> {
    let removed = hanat_lab::netns::remove_lab_leftovers()?;
    if removed.is_empty() {
        println!("hanat-lab: nothing to remove");
    } else {
        println!("hanat-lab: removed {}", removed.join(", "));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_sums_over_its_series_and_only_its_own() {
        let m = "# TYPE hanat_probe_rtt_seconds histogram\n\
                 hanat_probe_rtt_seconds_sum{target=\"a\"} 0.5\n\
                 hanat_probe_rtt_seconds_sum{target=\"b\"} 0.25\n\
                 hanat_probe_rtt_seconds_sum_other 9\n\
                 hanat_active_connections 3\n";
        assert_eq!(metric_sum(m, "hanat_probe_rtt_seconds_sum"), 0.75);
        assert_eq!(metric_sum(m, "hanat_active_connections"), 3.0);
        assert_eq!(metric_sum(m, "hanat_missing"), 0.0);
    }
}
