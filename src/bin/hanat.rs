//! `hanat`: parse the command line and config, set up logging, build the
//! real adapters, run. Every failure ends with one readable line on stderr
//! and an exit code per failure class (see `hanat::sysexits`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use hanat::aws::cloud::Sdk;
use hanat::aws::imds::{Imds, identity_with_retry};
use hanat::aws::meter::ApiMeter;
use hanat::config::{Config, LogFormat};
use hanat::daemon::{self, Deps};
use hanat::domain::Identity;
use hanat::kernel::link;
use hanat::notify::Notifier;
use hanat::report;
use hanat::sysexits::Sysexit;

const DEFAULT_CONFIG: &str = "/etc/hanat/hanat.toml";

const USAGE: &str = "\
usage: hanat <command> [--config PATH]

commands:
  run           run the NAT supervisor (as a systemd service)
  plan          show what `run` would change, change nothing
  status        the running daemon's state, from its status endpoint
  check-config  validate the config file and exit
options:
  --config PATH  config file (default /etc/hanat/hanat.toml)
  --json         status: print the daemon's JSON as it is
  -V, --version  print the version
  -h, --help     print this help
";

enum Command {
    Run,
    Plan,
    Status { json: bool },
    CheckConfig,
}

struct Failure {
    code: Sysexit,
    message: String,
}

impl Failure {
    fn new(code: Sysexit, err: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            code,
            message: report(err),
        }
    }
}

fn parse_args() -> Result<Option<(Command, PathBuf)>, String> {
    let mut args = std::env::args().skip(1);
    let mut command = None;
    let mut json = false;
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-V" | "--version" => {
                println!("hanat {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--config" | "-c" => {
                config = args.next().ok_or("--config needs a path")?.into();
            }
            s if s.starts_with("--config=") => config = s["--config=".len()..].into(),
            "run" if command.is_none() => command = Some(Command::Run),
            "plan" if command.is_none() => command = Some(Command::Plan),
            "check-config" if command.is_none() => command = Some(Command::CheckConfig),
            "status" if command.is_none() => command = Some(Command::Status { json: false }),
            "--json" => json = true,
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let command = match command.ok_or("missing command")? {
        Command::Status { .. } => Command::Status { json },
        _ if json => return Err("--json goes with `status` only".into()),
        c => c,
    };
    Ok(Some((command, config)))
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // journald stamps every line itself.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (config.log.format, under_journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

fn main() -> ExitCode {
    let (command, config_path) = match parse_args() {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hanat: {e}\n\n{USAGE}");
            return ExitCode::from(Sysexit::Usage);
        }
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hanat: {}", report(&e));
            return ExitCode::from(Sysexit::Config);
        }
    };
    if let Command::CheckConfig = command {
        println!("{}: ok", config_path.display());
        return ExitCode::SUCCESS;
    }
    if !matches!(command, Command::Status { .. }) {
        init_logging(&config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hanat: cannot start async runtime: {e}");
            return ExitCode::from(Sysexit::OsErr);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run => run(config).await,
            Command::Plan => plan(config).await,
            Command::Status { json } => status(&config, json).await,
            Command::CheckConfig => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            tracing::error!(error = %f.message, "exiting");
            eprintln!("hanat: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn identity(imds: &Imds, config: &Config) -> Result<Identity, Failure> {
    identity_with_retry(imds, config.aws.imds_timeout)
        .await
        .map_err(|e| Failure::new(Sysexit::Unavailable, &e))
}

async fn interface(config: &Config, identity: &Identity) -> Result<String, Failure> {
    link::nat_interface(&config.kernel.interface, &identity.mac)
        .await
        .map_err(|e| Failure::new(Sysexit::OsErr, &e))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (terminate) applies,
        // which leaves everything in place just the same.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Raise the soft limit on open files to the hard one, as many daemons
/// do: systemd starts services with a soft limit of 1,024 unless the unit
/// says otherwise, and Rust does not raise it. Returns (before, now).
fn raise_open_files() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    Some((soft, now))
}

async fn run(config: Config) -> Result<(), Failure> {
    match raise_open_files() {
        Some((before, now)) if before < now => {
            tracing::info!(before, now, "raised the soft limit on open files")
        }
        Some((_, now)) => tracing::info!(limit = now, "open files"),
        None => tracing::warn!("cannot read or raise the limit on open files"),
    }
    let imds = Imds::from_env();
    let identity = identity(&imds, &config).await?;
    let interface = interface(&config, &identity).await?;
    let sdk = hanat::aws::sdk_config(&identity.region, &config.aws).await;
    let api_meter = ApiMeter::default();
    let deps = Deps {
        cloud: Arc::new(Sdk::metered(&sdk, &api_meter)),
        api_meter,
        imds,
        identity,
        interface,
        notifier: Notifier::from_env(),
        config,
    };
    daemon::run(deps, shutdown_signal()).await.map_err(|e| {
        let code = match e {
            daemon::RunError::ProbeOverlap { .. } => Sysexit::Config,
            daemon::RunError::Kernel(_) => Sysexit::OsErr,
            daemon::RunError::Panicked { .. } => Sysexit::Software,
            daemon::RunError::UnableToProbe { .. } => Sysexit::TempFail,
        };
        Failure::new(code, &e)
    })
}

/// How long `plan` waits for instance metadata: a person is waiting.
const PLAN_METADATA_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn plan(config: Config) -> Result<(), Failure> {
    let identity = hanat::aws::imds::identity_now(PLAN_METADATA_WAIT)
        .await
        .map_err(|e| Failure::new(Sysexit::Unavailable, &e))?;
    println!(
        "instance {} in {} ({}), VPC {} {:?}, ENI {}",
        identity.instance_id,
        identity.availability_zone,
        identity.region,
        identity.vpc_id,
        identity
            .vpc_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        identity.eni
    );
    daemon::check_probe_cidr(&identity, &config).map_err(|e| Failure::new(Sysexit::Config, &e))?;
    let sdk = hanat::aws::sdk_config(&identity.region, &config.aws).await;
    let found = link::nat_interface(&config.kernel.interface, &identity.mac).await;
    let dry = daemon::dry_run::dry_run(&Sdk::new(&sdk), &identity, &config, found)
        .await
        .map_err(|e| Failure::new(Sysexit::Unavailable, &e))?;
    for line in &dry.lines {
        println!("{line}");
    }
    println!("{} change(s)", dry.changes);
    Ok(())
}

/// Ask the running daemon, on its status endpoint (`metrics.listen`; a
/// wildcard address is asked on loopback), and print its answer.
async fn status(config: &Config, json: bool) -> Result<(), Failure> {
    let Some(listen) = config.metrics.listen else {
        return Err(Failure {
            code: Sysexit::Config,
            message: "metrics.listen is \"\" in the config: the daemon serves no status to ask"
                .into(),
        });
    };
    let host = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let url = format!(
        "http://{}/status",
        std::net::SocketAddr::new(host, listen.port())
    );
    let unavailable = |e: String| Failure {
        code: Sysexit::Unavailable,
        message: format!(
            "no hanat daemon answers at {url}: {e} (is it running? `systemctl status hanat`)"
        ),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .no_proxy()
        .build()
        .map_err(|e| unavailable(report(&e)))?;
    let body = async {
        client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }
    .await
    .map_err(|e| unavailable(report(&e)))?;
    if json {
        print!("{body}");
        return Ok(());
    }
    let snapshot: hanat::status::Snapshot = serde_json::from_str(&body)
        .map_err(|e| unavailable(format!("its answer is not a status ({e})")))?;
    print!("{}", hanat::status::render(&snapshot));
    Ok(())
}
