//! A host of the VPC that abuses what it can reach on a NAT (issue 25):
//! the endpoints' port held open by unfinished requests and scraped in a
//! storm, the heartbeat port flooded, and — by another cause — the
//! daemon's own descriptor table filled. While it goes on, the lab asks
//! `/health` from where EC2's application status check asks (the VPC
//! router's address in the NAT's subnet), as the witness would, and reports
//! how long each answer took.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;
use crate::netns::in_netns;

/// The endpoints' port (`metrics.listen`'s default).
pub const ENDPOINT_PORT: u16 = super::witness::PORT;

/// AZ `i`'s NAT's private address.
fn nat_ip(lab: &Lab, i: usize) -> Result<Ipv4Addr> {
    Ok(lab
        .nat(i)
        .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?
        .instance
        .private_ip
        .parse()?)
}

/// What a health watch saw: answers, failures and the slowest answer.
#[derive(Debug, Clone, Default)]
pub struct HealthWatch {
    pub asked: usize,
    /// Not answered 200 within the check's deadline, with why.
    pub failed: Vec<String>,
    pub slowest: Duration,
}

impl HealthWatch {
    pub fn summary(&self) -> String {
        format!(
            "/health asked {} times from the router: {} failed, slowest {} ms{}",
            self.asked,
            self.failed.len(),
            self.slowest.as_millis(),
            self.failed
                .first()
                .map(|f| format!(" (first failure: {f})"))
                .unwrap_or_default()
        )
    }
}

/// Ask AZ `i`'s NAT for `/health` every 500 ms for `run`, from the router,
/// each within `deadline`.
pub fn watch_health(
    lab: &Lab,
    i: usize,
    run: Duration,
    deadline: Duration,
) -> Result<std::thread::JoinHandle<HealthWatch>> {
    let ip = nat_ip(lab, i)?;
    let rtr = lab.rtr.path();
    Ok(std::thread::spawn(move || {
        let mut w = HealthWatch::default();
        let start = Instant::now();
        while start.elapsed() < run {
            let asked = Instant::now();
            let got = super::witness::check(&rtr, ip, deadline);
            let took = asked.elapsed();
            w.asked += 1;
            w.slowest = w.slowest.max(took);
            w.failed.extend(got.err());
            std::thread::sleep(Duration::from_millis(500).saturating_sub(took));
        }
        w
    }))
}

/// What the endpoint flood did.
#[derive(Debug, Clone, Default)]
pub struct Flood {
    /// Connections opened, each sent an unfinished request.
    pub opened: usize,
    /// The most held open at once.
    pub held_max: usize,
    /// Scrapes of `/metrics` sent, and answered with 200.
    pub scrapes: usize,
    pub scraped: usize,
}

/// Raise this process's open-file limit so the flood is not bounded by
/// the lab's own.
fn raise_own_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < want
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
    }
}

/// From AZ `from`'s private host, for `run`: keep `hold` connections to
/// AZ `i`'s NAT's endpoints open, each with an unfinished request
/// (re-opening those the NAT closes), and scrape `/metrics` from
/// `scrapers` threads as fast as answers come.
pub fn flood_endpoint(
    lab: &Lab,
    i: usize,
    from: usize,
    hold: usize,
    scrapers: usize,
    run: Duration,
) -> Result<std::thread::JoinHandle<Flood>> {
    let ip = nat_ip(lab, i)?;
    let addr = SocketAddr::from((ip, ENDPOINT_PORT));
    let host = lab.azs[from].host.path();
    raise_own_limit(hold as u64 + 4096);
    Ok(std::thread::spawn(move || {
        let storm: Vec<_> = (0..scrapers)
            .map(|_| {
                let host = host.clone();
                std::thread::spawn(move || {
                    let (mut sent, mut ok) = (0, 0);
                    let start = Instant::now();
                    while start.elapsed() < run {
                        sent += 1;
                        let got =
                            crate::netns::http_get(&host, addr, "/metrics", Duration::from_secs(2));
                        if matches!(got, Ok((200, _))) {
                            ok += 1;
                        }
                    }
                    (sent, ok)
                })
            })
            .collect();
        let held = in_netns(&host, move || Ok(hold_open(addr, hold, run))).unwrap_or_default();
        let mut f = held;
        for s in storm {
            let (sent, ok) = s.join().unwrap_or((0, 0));
            f.scrapes += sent;
            f.scraped += ok;
        }
        f
    }))
}

/// Keep `hold` connections to `addr` open with an unfinished request for
/// `run`, re-opening those closed by the other end.
fn hold_open(addr: SocketAddr, hold: usize, run: Duration) -> Flood {
    let mut f = Flood::default();
    let mut open: Vec<TcpStream> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        while open.len() < hold && start.elapsed() < run {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
                break;
            };
            f.opened += 1;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: nat\r\nX-Slow: ");
            let _ = s.set_nonblocking(true);
            open.push(s);
        }
        f.held_max = f.held_max.max(open.len());
        // Drop what the other end closed (EOF or reset).
        let mut buf = [0u8; 256];
        open.retain_mut(|s| match s.read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    f
}

/// From AZ `from`'s private host, send AZ `i`'s NAT's heartbeat port
/// datagrams as fast as the host can for `run`: junk and well-formed
/// unsigned heartbeats naming AZ `i`'s own NAT, in turn. Returns how many
/// were sent.
pub fn flood_heartbeats(
    lab: &Lab,
    i: usize,
    from: usize,
    run: Duration,
) -> Result<std::thread::JoinHandle<u64>> {
    let nat = lab.nat(i).ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
    let ip: Ipv4Addr = nat.instance.private_ip.parse()?;
    let claim = forge::Claim {
        instance: nat.instance.id.clone(),
        az: nat.instance.az.clone(),
        status: "failing",
    };
    let socket = lab.azs[from]
        .host
        .bind_udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    Ok(std::thread::spawn(move || {
        let junk: Vec<u8> = (0..200).map(|_| fastrand::u8(..)).collect();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < run {
            for _ in 0..256 {
                let unsigned = claim.v1(sent);
                let payload = match sent % 2 {
                    0 => &junk[..],
                    _ => &unsigned[..],
                };
                if socket.send_to(payload, (ip, forge::PEER_PORT)).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    }))
}

/// The packets counted by the rule commented `comment` in an `nft list`
/// output.
pub fn counted(listing: &str, comment: &str) -> Option<u64> {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))?;
    let after = &line[line.find("counter packets ")? + "counter packets ".len()..];
    after.split_whitespace().next()?.parse().ok()
}

/// A value of AZ `i`'s NAT's `/metrics` (a whole series name, labels
/// included), asked from the router.
pub fn metric(lab: &Lab, i: usize, series: &str) -> Option<u64> {
    series_in(&metrics(lab, i)?, series)
}

/// AZ `i`'s daemon's `/metrics` page, `None` when it did not answer.
pub fn metrics(lab: &Lab, i: usize) -> Option<String> {
    let ip = nat_ip(lab, i).ok()?;
    let (_, text) = crate::netns::http_get(
        &lab.rtr.path(),
        SocketAddr::from((ip, ENDPOINT_PORT)),
        "/metrics",
        Duration::from_secs(2),
    )
    .ok()?;
    Some(text)
}

/// The value of an unlabelled `series` in a `/metrics` page.
pub fn series_in(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

impl Lab {
    /// The pid of AZ `i`'s daemon, if it runs.
    pub fn daemon_pid(&self, i: usize) -> Option<u32> {
        self.shared.nats()[i]
            .as_ref()
            .and_then(|n| n.daemon.as_ref().map(std::process::Child::id))
    }

    /// AZ `i`'s daemon's memory now and at its peak (`VmRSS`, `VmHWM`),
    /// in KiB.
    pub fn daemon_memory(&self, i: usize) -> Option<(u64, u64)> {
        let pid = self.daemon_pid(i)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some((kib("VmRSS:")?, kib("VmHWM:")?))
    }

    /// Fill AZ `i`'s daemon's descriptor table by another cause: its
    /// open-file limit lowered (`prlimit`) to what it holds now, so it can
    /// open nothing more. Returns that number.
    pub fn exhaust_descriptors(&self, i: usize) -> Result<usize> {
        let pid = self
            .daemon_pid(i)
            .ok_or_else(|| anyhow!("AZ {i}'s daemon is not running"))?;
        let held = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        crate::netns::sh(
            "prlimit",
            &[&format!("--pid={pid}"), &format!("--nofile={held}:{held}")],
        )?;
        self.note(format!(
            "az{i}: daemon {pid}'s open-file limit lowered to the {held} it holds"
        ));
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rules_counter_is_read_by_its_comment() {
        let l = "\t\tudp dport 7470 update @heartbeat_senders { ip saddr limit rate over 100/second burst 100 packets } counter packets 3099 bytes 1 drop comment \"heartbeat flood\"\n";
        assert_eq!(super::counted(l, "heartbeat flood"), Some(3099));
        assert_eq!(super::counted(l, "metrics.allow"), None);
    }
}
