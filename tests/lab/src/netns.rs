//! Network namespaces, veth links and processes inside them.
//!
//! Everything is named under a per-run prefix so two labs (or two tests)
//! never clash, and everything a [`Netns`] holds is removed on drop, even
//! when a test panics. Namespaces are created from the root mount namespace
//! (see LAB-NOTES), and the lab's own processes are started in a namespace
//! with `nsenter --net`, so they share the caller's mount namespace. Daemons
//! are not: they run in the unit's sandbox ([`crate::sandbox`]), with a
//! mount namespace of their own, as under systemd.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// A unique, short prefix for this process and call: `hl<pid><n>`.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("hl{}x{n}", std::process::id() % 100_000)
}

/// Run a command, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with arguments given as one string (no quoting needed in the lab).
pub fn ip(args: &str) -> Result<String> {
    let v: Vec<&str> = args.split_whitespace().collect();
    sh("ip", &v)
}

/// Run a program inside the named namespace and wait for it.
pub fn exec_in(name: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["netns", "exec", name, program];
    v.extend_from_slice(args);
    sh("ip", &v)
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        if name.len() > 64 {
            bail!("namespace name too long: {name}");
        }
        let _ = ip(&format!("netns del {name}"));
        ip(&format!("netns add {name}"))?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME …`
    pub fn ip(&self, args: &str) -> Result<String> {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Run a program inside the namespace and wait for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        exec_in(&self.name, program, args)
    }

    /// Set a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// A command that will run inside the namespace (same mount namespace
    /// as the caller). The child gets SIGKILL if the lab process dies.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        crate::die_with_parent(&mut c);
        c
    }

    /// A TCP listener whose socket lives in this namespace.
    pub fn bind_tcp(&self, addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
        in_netns(&self.path(), move || {
            std::net::TcpListener::bind(addr).map_err(Into::into)
        })
    }

    /// A UDP socket that lives in this namespace.
    pub fn bind_udp(&self, addr: std::net::SocketAddr) -> Result<std::net::UdpSocket> {
        in_netns(&self.path(), move || {
            std::net::UdpSocket::bind(addr).map_err(Into::into)
        })
    }

    /// Connect a TCP socket from inside this namespace.
    pub fn connect_tcp(
        &self,
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<std::net::TcpStream> {
        in_netns(&self.path(), move || {
            std::net::TcpStream::connect_timeout(&addr, timeout).map_err(Into::into)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&format!("netns del {}", self.name));
    }
}

/// `GET path` from inside the namespace at `ns` to `addr` (HTTP/1.0: the
/// whole answer, then the end of the connection), all within `within`:
/// the status code and the body.
pub fn http_get(
    ns: &std::path::Path,
    addr: std::net::SocketAddr,
    path: &str,
    within: std::time::Duration,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let path = path.to_owned();
    let deadline = std::time::Instant::now() + within;
    let left = move || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(std::time::Duration::from_millis(1))
    };
    in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, within)?;
        s.set_write_timeout(Some(left()))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if std::time::Instant::now() >= deadline {
                bail!("GET {path} from {addr}: no whole answer within {within:?}");
            }
            s.set_read_timeout(Some(left()))?;
            match s.read(&mut buf)? {
                0 => break,
                n => answer.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("GET {path} from {addr}: not HTTP: {head}"))?;
        Ok((code, body.to_owned()))
    })
}

/// Run `f` on a fresh thread that has entered the namespace at `path`.
/// Sockets it creates stay in that namespace whatever thread uses them.
pub fn in_netns<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        enter(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// Run the future `make` builds, on a fresh thread that has entered the
/// namespace at `path` and on a runtime of its own, until it ends (for
/// clients that run beside the lab: sockets it opens live in the
/// namespace). Nothing runs if the namespace cannot be entered.
pub fn spawn_in_netns<Fut: std::future::Future<Output = ()>>(
    path: &std::path::Path,
    make: impl FnOnce() -> Fut + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        if enter(&path).is_err() {
            return;
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(make());
    })
}

/// Move the calling thread into the namespace at `path`.
fn enter(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))
}

/// A veth pair from `a:a_if` to `b:b_if`, created directly inside the two
/// namespaces so no name ever appears in the root namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    ip(&format!(
        "link add {a_if} netns {} type veth peer name {b_if} netns {}",
        a.name, b.name
    ))?;
    a.ip(&format!("link set {a_if} up"))?;
    b.ip(&format!("link set {b_if} up"))?;
    Ok(())
}

/// Whether `name` is one of the lab's namespaces: `hl<digits>x<digits>-…`.
pub fn is_lab_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("hl") else {
        return false;
    };
    let Some((head, _)) = rest.split_once('-') else {
        return false;
    };
    let Some((pid, n)) = head.split_once('x') else {
        return false;
    };
    !pid.is_empty()
        && !n.is_empty()
        && pid.chars().all(|c| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_digit())
}

/// Delete every namespace and temp directory a lab left behind (for `down`).
/// Processes inside die with the lab process (parent-death signal).
pub fn remove_lab_leftovers() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in ip("netns list")?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if is_lab_name(name) {
            ip(&format!("netns del {name}"))?;
            removed.push(name.to_owned());
        }
    }
    let dirs = [PathBuf::from(crate::lab::LAB_DIR), std::env::temp_dir()];
    for dir in dirs.iter().filter_map(|d| std::fs::read_dir(d).ok()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_lab_name(&format!("{name}-")) && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
                removed.push(e.path().display().to_string());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_names() {
        assert!(super::is_lab_name("hl123x0-rtr"));
        assert!(!super::is_lab_name("hl123-rtr"));
        assert!(!super::is_lab_name("hanat-probe"));
        assert!(!super::is_lab_name("hlx0-rtr"));
    }
}
