//! The control plane: a pinned moto server in a venv under
//! `~/.cache/hanat`, one process per lab or test, on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The moto version everything is checked against (see LAB-NOTES).
pub const MOTO_VERSION: &str = "5.2.5";

/// Where the venv lives (`HANAT_CACHE` overrides `~/.cache/hanat`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HANAT_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hanat")
}

fn venv() -> PathBuf {
    cache_dir().join(format!("moto-{MOTO_VERSION}"))
}

/// Create the venv and install `moto[server]` if it is not there yet.
/// Safe to call from concurrent tests: a lock file serialises installs.
pub fn ensure_installed() -> Result<PathBuf> {
    let venv = venv();
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    std::fs::create_dir_all(cache_dir())?;
    let lock_path = cache_dir().join("moto-install.lock");
    let lock = std::fs::File::create(&lock_path)?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the moto install")?;
    if server.exists() {
        return Ok(server);
    }
    eprintln!(
        "hanat-lab: installing moto[server]=={MOTO_VERSION} into {}",
        venv.display()
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv (is python3 with venv installed?)")?
        .success();
    if !ok {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let ok = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            &format!("moto[server]=={MOTO_VERSION}"),
        ])
        .status()
        .context("running pip")?
        .success();
    if !ok || !server.exists() {
        bail!("pip install moto[server]=={MOTO_VERSION} failed");
    }
    Ok(server)
}

/// A running moto server; killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Result<Moto> {
        let server = ensure_installed()?;
        // Retry with another port if one is taken between probe and bind.
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&server);
            crate::die_with_parent(&mut cmd);
            let child = cmd
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting moto_server")?;
            let mut moto = Moto { child, port };
            if moto.wait_ready(Duration::from_secs(30))? {
                return Ok(moto);
            }
        }
        bail!("moto_server did not start")
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                eprintln!("moto_server exited: {status}");
                return Ok(false);
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(false)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SDK config for the lab's own calls.
    pub async fn sdk_config(&self, region: &str) -> aws_config::SdkConfig {
        sdk_config(&self.endpoint(), region).await
    }
}

/// SDK config with dummy credentials pointing at `endpoint`.
pub async fn sdk_config(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "hanat-lab",
        ))
        .load()
        .await
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A currently free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
