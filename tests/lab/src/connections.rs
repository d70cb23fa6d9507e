//! `hanat-lab bench connections`: how many concurrent flows one NAT carries
//! to **one** destination (address, port, protocol) with `snat.addresses =
//! N`, against N × the ports per address and against the NAT Gateway's
//! documented 55,000 per address.
//!
//! One AZ, one NAT with N Elastic IPs. The private host gets N secondary
//! addresses (N + 1 sources in all, each with every port from 1024 up), so
//! it attempts more flows than the NAT can translate:
//! - **UDP**: one datagram per flow, built by hand (raw socket) and sent
//!   as fast as the host sends them; a receiver on the server counts the
//!   distinct public (address, port) pairs it saw. Unanswered, each flow
//!   holds its translation for conntrack's 30 s, longer than the run.
//! - **TCP**: real connections, opened without waiting (non-blocking
//!   `connect` from each source address and port) and kept open by both
//!   ends; the server counts the distinct pairs it accepted. A connection
//!   whose SYN the NAT cannot translate never completes: it counts as
//!   failed.
//!
//! The rate of new flows is what got through divided by the time it took.
//! Conntrack's limit and the receive backlog are global on the lab's
//! kernel, so the bench raises `nf_conntrack_max` (and its hash table) and
//! `netdev_max_backlog` for the run and restores them after
//! ([`HostLimits`]).
//!
//! It measures one NAT from start to end: the lab's Auto Scaling does not
//! replace it. What would have (its status check timing out while the
//! flood saturates the lab's cores, its own Unhealthy report) is listed in
//! each row's `nat_flagged`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::lab::forge::{ipv4_udp, send_raw};
use crate::lab::{Lab, LabOptions, SERVERS};
use crate::netns::in_netns;

/// The NAT Gateway's documented concurrent connections per address to one
/// destination.
pub const NAT_GATEWAY_PER_ADDRESS: usize = 55_000;

/// The source ports every source address uses (hanat's default
/// `snat.ports` too): 64,512 per address.
pub const PORTS: std::ops::RangeInclusive<u16> = 1024..=u16::MAX;

const UDP_PORT: u16 = 9100;
const TCP_PORT: u16 = 9101;

/// One protocol's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub protocol: &'static str,
    pub addresses: u8,
    /// Flows the private host started.
    pub attempted: usize,
    /// Flows the server never saw (UDP) or that never connected (TCP).
    pub failed: usize,
    /// Distinct public (address, port) pairs the server saw.
    pub distinct_public_pairs: usize,
    /// Distinct public addresses among them.
    pub public_addresses: usize,
    /// Translations the NAT refused for want of a port (conntrack
    /// `insert_failed`, `hanat_port_allocation_errors_total`; a TCP SYN's
    /// retries count again).
    pub port_allocation_errors: u64,
    /// New flows per second that got through.
    pub new_per_s: f64,
    /// The NAT's conntrack entries at the end (this protocol's and the
    /// ones before it).
    pub conntrack_entries: u64,
    /// Their memory (the `nf_conntrack` slab's object size each).
    pub conntrack_mib: f64,
    /// What the NAT was called while this protocol ran: the status
    /// check's `impaired`, its own Unhealthy report. The bench does not
    /// let Auto Scaling replace it (it measures one NAT), so these are
    /// what would have replaced it.
    pub nat_flagged: Vec<String>,
}

impl Row {
    /// What N addresses can hold: N × the ports of [`PORTS`].
    pub fn capacity(&self) -> usize {
        usize::from(self.addresses) * PORTS.len()
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "protocol": self.protocol,
            "addresses": self.addresses,
            "attempted": self.attempted,
            "failed": self.failed,
            "distinct_public_pairs": self.distinct_public_pairs,
            "public_addresses": self.public_addresses,
            "port_allocation_errors": self.port_allocation_errors,
            "capacity": self.capacity(),
            "nat_gateway_capacity": usize::from(self.addresses) * NAT_GATEWAY_PER_ADDRESS,
            "new_per_s": self.new_per_s.round(),
            "conntrack_entries": self.conntrack_entries,
            "conntrack_mib": (self.conntrack_mib * 10.0).round() / 10.0,
            "nat_flagged": self.nat_flagged,
        })
        .to_string()
    }
}

/// The rows as a table, with the ratios to N × 64,512 and to the NAT
/// Gateway's N × 55,000.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| N | protocol | attempted | failed | distinct public pairs | of N × 64,512 | of NAT Gateway N × 55,000 | new/s | conntrack entries (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let gw = usize::from(r.addresses) * NAT_GATEWAY_PER_ADDRESS;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.2} | {} | {} ({:.0}) |\n",
            r.addresses,
            r.protocol,
            thousands(r.attempted),
            thousands(r.failed),
            thousands(r.distinct_public_pairs),
            r.distinct_public_pairs as f64 / r.capacity() as f64,
            r.distinct_public_pairs as f64 / gw as f64,
            thousands(r.new_per_s.round() as usize),
            thousands(r.conntrack_entries as usize),
            r.conntrack_mib,
        ));
    }
    for r in rows {
        for f in &r.nat_flagged {
            out.push_str(&format!("\nN = {}, {}: {f}", r.addresses, r.protocol));
        }
    }
    out
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Host-wide limits raised for the run, restored when dropped.
pub struct HostLimits {
    saved: Vec<(&'static str, String)>,
}

impl HostLimits {
    /// Room for `flows` tracked by the NAT and by the lab's internet
    /// gateway, twice over; and a per-CPU receive backlog that holds a
    /// burst of them, so that every flow reaches the NAT. The lab's
    /// namespaces share one kernel's backlog (veth delivers through it):
    /// with the default 1,000 packets, the burst drops part of itself, and
    /// of every other host's packets, before the NAT sees them.
    pub fn raise(flows: usize) -> Result<HostLimits> {
        let mut limits = HostLimits { saved: Vec::new() };
        let entries = (4 * flows).next_power_of_two().max(262_144);
        limits.set("/proc/sys/net/netfilter/nf_conntrack_max", entries)?;
        limits.set("/proc/sys/net/netfilter/nf_conntrack_buckets", entries)?;
        limits.set(
            "/proc/sys/net/core/netdev_max_backlog",
            flows.next_power_of_two(),
        )?;
        Ok(limits)
    }

    /// Set `path` to at least `value`, remembering what it was.
    fn set(&mut self, path: &'static str, value: usize) -> Result<()> {
        let was = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        if was.trim().parse::<usize>().is_ok_and(|v| v >= value) {
            return Ok(());
        }
        std::fs::write(path, value.to_string()).with_context(|| format!("writing {path}"))?;
        self.saved.push((path, was));
        Ok(())
    }
}

impl Drop for HostLimits {
    fn drop(&mut self) {
        for (path, was) in self.saved.drain(..).rev() {
            if let Err(e) = std::fs::write(path, was.trim()) {
                eprintln!("hanat-lab: could not restore {path} to {}: {e}", was.trim());
            }
        }
    }
}

/// Build a one-AZ lab with `addresses` Elastic IPs per NAT and measure UDP
/// then TCP.
pub async fn run(mut lab: LabOptions, addresses: u8) -> Result<Vec<Row>> {
    lab.azs = 1;
    lab.addresses = addresses;
    // One NAT, measured from start to end: what would have replaced it
    // (its status check failing while the flood saturates the lab's two
    // cores, its own Unhealthy report) is reported in the row instead.
    lab.replace_unhealthy = false;
    let sources = usize::from(addresses) + 1;
    let flows = sources * PORTS.len();
    // UDP's and TCP's, held at once.
    let _limits = HostLimits::raise(2 * flows)?;
    let lab = Lab::build(lab).await?;
    lab.start_daemons()?;
    lab.wait_converged(Duration::from_secs(90)).await?;
    let want: HashSet<Ipv4Addr> = lab.azs[0].elastic_ips().into_iter().collect();
    lab.wait_for(
        "the NAT to translate to all its addresses",
        Duration::from_secs(90),
        || async {
            let mut seen = HashSet::new();
            for _ in 0..(3 * want.len()) {
                if let Ok(ip) = lab.whoami(0, Duration::from_secs(2)) {
                    seen.insert(ip);
                }
            }
            Ok(seen == want)
        },
    )
    .await?;
    let host = lab.azs[0].host_ip;
    let mut from = vec![host];
    for k in 1..sources {
        let extra = Ipv4Addr::from(u32::from(host) + 100 + k as u32);
        lab.add_host_address(0, extra)?;
        from.push(extra);
    }
    let udp = udp(&lab, addresses, &from).await?;
    eprintln!("hanat-lab: {}", udp.json());
    let tcp = tcp(&lab, addresses, &from).await?;
    eprintln!("hanat-lab: {}", tcp.json());
    Ok(vec![udp, tcp])
}

/// What the bench reads off AZ 0's NAT: which instance it is, its
/// conntrack entries, and its port allocation errors so far.
struct NatCounts {
    instance: String,
    entries: u64,
    insert_failed: u64,
}

fn nat_counts(lab: &Lab) -> Result<NatCounts> {
    let instance = lab
        .nat(0)
        .map(|n| n.instance.id)
        .context("AZ 0 has no NAT")?;
    let count = lab.nat_exec(0, "cat", &["/proc/sys/net/netfilter/nf_conntrack_count"])?;
    let stats = lab.nat_exec(0, "cat", &["/proc/net/stat/nf_conntrack"])?;
    // One line per CPU: hex fields, named by the header.
    let mut lines = stats.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "insert_failed")
        .context("no insert_failed in /proc/net/stat/nf_conntrack")?;
    let insert_failed: u64 = lines
        .filter_map(|l| l.split_whitespace().nth(col))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum();
    Ok(NatCounts {
        instance,
        entries: count.trim().parse()?,
        insert_failed,
    })
}

/// The port allocation errors between `before` and `after`, which must be
/// the same NAT: a NAT replaced mid-run (its counters start again) makes
/// the run meaningless, and the error says what the lab saw happen.
fn errors_between(lab: &Lab, before: &NatCounts, after: &NatCounts) -> Result<u64> {
    if before.instance != after.instance {
        let events: Vec<String> = lab.events().into_iter().map(|(_, e)| e).collect();
        let logs = lab.all_logs();
        let first = logs.first().map(String::as_str).unwrap_or_default();
        bail!(
            "AZ 0's NAT was replaced during the run ({} -> {}); the lab's events: {events:?}; \
             the first NAT's log ends:\n{}",
            before.instance,
            after.instance,
            crate::lab::tail(first, 30)
        );
    }
    after
        .insert_failed
        .checked_sub(before.insert_failed)
        .with_context(|| {
            format!(
                "the NAT's insert_failed went down, from {} to {}",
                before.insert_failed, after.insert_failed
            )
        })
}

/// The `nf_conntrack` slab's object size, from `/proc/slabinfo`.
fn conntrack_object_bytes() -> u64 {
    std::fs::read_to_string("/proc/slabinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.split_whitespace().next() == Some("nf_conntrack"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(320)
}

fn row(
    protocol: &'static str,
    addresses: u8,
    attempted: usize,
    seen: &HashSet<SocketAddrV4>,
    errors: u64,
    took: Duration,
    entries: u64,
) -> Row {
    let public: HashSet<Ipv4Addr> = seen.iter().map(|a| *a.ip()).collect();
    Row {
        protocol,
        addresses,
        attempted,
        failed: attempted.saturating_sub(seen.len()),
        distinct_public_pairs: seen.len(),
        public_addresses: public.len(),
        port_allocation_errors: errors,
        new_per_s: seen.len() as f64 / took.as_secs_f64().max(0.001),
        conntrack_entries: entries,
        conntrack_mib: (entries * conntrack_object_bytes()) as f64 / f64::from(1 << 20),
        nat_flagged: Vec::new(),
    }
}

/// What AZ 0's NAT `instance` was called since `since`: the status
/// check's `impaired` verdicts (the lab's events) and its own Unhealthy
/// report to Auto Scaling.
async fn flagged(lab: &Lab, instance: &str, since: Instant) -> Vec<String> {
    let mut out: Vec<String> = lab
        .events()
        .into_iter()
        .filter(|(at, e)| *at >= since && e.starts_with("az0:") && e.contains("impaired"))
        .map(|(_, e)| e)
        .collect();
    if lab.cloud.health(instance).await.ok().as_deref() == Some("Unhealthy") {
        out.push(format!(
            "az0: {instance} reported Unhealthy to Auto Scaling"
        ));
    }
    out
}

/// One datagram per (source, port); the server counts who it saw.
async fn udp(lab: &Lab, addresses: u8, from: &[Ipv4Addr]) -> Result<Row> {
    let server = SERVERS[0];
    let socket = lab.inet.bind_udp(SocketAddr::from((server, UDP_PORT)))?;
    // Room for every datagram while the receiver catches up.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(1 << 30))
        .context("SO_RCVBUFFORCE")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    let receiver = std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 64];
        let (mut first, mut last) = (None, Instant::now());
        let started = Instant::now();
        loop {
            match socket.recv_from(&mut buf) {
                Ok((_, SocketAddr::V4(a))) => {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    seen.insert(a);
                }
                Ok(_) => {}
                // Quiet for 3 s after traffic (or 60 s before any): done.
                Err(_) if first.is_some() || started.elapsed() > Duration::from_secs(60) => break,
                Err(_) => {}
            }
        }
        (seen, first.map(|f| last - f).unwrap_or_default())
    });
    let before = nat_counts(lab)?;
    let phase = Instant::now();
    let packets: Vec<Vec<u8>> = from
        .iter()
        .flat_map(|src| PORTS.map(move |p| ipv4_udp(*src, server, p, UDP_PORT, b"flow")))
        .collect();
    let attempted = packets.len();
    send_raw(&lab.azs[0].host.path(), packets)?;
    let (seen, took) = tokio::task::spawn_blocking(move || receiver.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the UDP receiver panicked"))?;
    let after = nat_counts(lab)?;
    let mut r = row(
        "udp",
        addresses,
        attempted,
        &seen,
        errors_between(lab, &before, &after)?,
        took,
        after.entries,
    );
    r.nat_flagged = flagged(lab, &after.instance, phase).await;
    Ok(r)
}

/// Real connections from every (source, port), kept open at both ends:
/// the client sockets by [`HOLD_TCP`] worker processes,
/// the server's in its listen queue, never accepted (a completed
/// handshake waits there without a file).
async fn tcp(lab: &Lab, addresses: u8, from: &[Ipv4Addr]) -> Result<Row> {
    let server = SERVERS[0];
    let backlog = 1 << 21;
    lab.inet
        .sysctl("net.core.somaxconn", &backlog.to_string())?;
    lab.inet
        .sysctl("net.ipv4.tcp_max_syn_backlog", &backlog.to_string())?;
    let listener = in_netns(&lab.inet.path(), move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((server, TCP_PORT)).into())?;
        s.listen(backlog)?;
        Ok(s)
    })?;
    let before = nat_counts(lab)?;
    let attempted = from.len() * PORTS.len();
    let started = Instant::now();
    // The server's count of completed handshakes, every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, ns) = (stop.clone(), lab.inet.name.clone());
        std::thread::spawn(move || {
            let mut samples = vec![(Duration::ZERO, 0)];
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(n) = queued(&ns) {
                    samples.push((started.elapsed(), n));
                }
            }
            samples
        })
    };
    let mut workers = Vec::new();
    for src in from {
        let mut lo = *PORTS.start();
        while lo <= *PORTS.end() {
            let hi = lo.saturating_add(HOLD_PER_WORKER - 1).min(*PORTS.end());
            let mut child = lab.azs[0]
                .host
                .command("python3")
                .args(["-c", HOLD_TCP])
                .arg(server.to_string())
                .arg(TCP_PORT.to_string())
                .arg(src.to_string())
                .arg(lo.to_string())
                .arg(hi.to_string())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting a TCP client worker")?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                use std::io::BufRead;
                std::io::BufReader::new(out).read_line(&mut line)?;
            }
            if !line.starts_with("issued") {
                let _ = child.kill();
                bail!("TCP client worker for {src}:{lo}-{hi} failed: {line:?}");
            }
            workers.push(child);
            lo = match hi.checked_add(1) {
                Some(n) => n,
                None => break,
            };
        }
    }
    // Until no handshake has completed for 5 s (a lost SYN is retried
    // after 1 s, then 3 s).
    let mut last = (queued(&lab.inet.name)?, Instant::now());
    while last.1.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = queued(&lab.inet.name)?;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    // From the start to the first sample with every handshake done.
    let took = samples
        .iter()
        .find(|(_, n)| *n >= last.0)
        .map_or(started.elapsed(), |(at, _)| *at);
    let after = nat_counts(lab)?;
    let seen = established_peers(lab, TCP_PORT)?;
    for mut w in workers {
        drop(w.stdin.take());
        let _ = w.wait();
    }
    drop(listener);
    let mut r = row(
        "tcp",
        addresses,
        attempted,
        &seen,
        errors_between(lab, &before, &after)?,
        took,
        after.entries,
    );
    r.nat_flagged = flagged(lab, &after.instance, started).await;
    Ok(r)
}

/// Handshakes completed and waiting in the listen queue of the server's
/// port [`TCP_PORT`] in namespace `ns`.
fn queued(ns: &str) -> Result<usize> {
    let out = crate::netns::exec_in(ns, "ss", &["-Hltn", &format!("sport = :{TCP_PORT}")])?;
    Ok(out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Client ports per worker process (each holds that many sockets).
const HOLD_PER_WORKER: u16 = 16_128;

/// A TCP client worker (`python3 -c`, run in the private host's
/// namespace): connect to SERVER PORT from SOURCE on every port LO..=HI
/// without waiting, say `issued N`, and hold the sockets open until stdin
/// closes. A process of its own because a process may hold only so many
/// files, and the lab's machine may not raise that.
const HOLD_TCP: &str = r#"
import errno, socket, sys
server, port, src, lo, hi = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
held = []
for p in range(lo, hi + 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((src, p))
    err = s.connect_ex((server, port))
    if err not in (0, errno.EINPROGRESS):
        print(f"error: connect from {src}:{p}: {errno.errorcode.get(err, err)}", flush=True)
        sys.exit(1)
    held.append(s)
print(f"issued {len(held)}", flush=True)
sys.stdin.read()
"#;

/// The distinct peers of the established connections to local `port` in
/// the internet namespace (`/proc/net/tcp`: state 01).
fn established_peers(lab: &Lab, port: u16) -> Result<HashSet<SocketAddrV4>> {
    let text = lab.inet.exec("cat", &["/proc/net/tcp"])?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let local_port = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            if *state != "01" || local_port != port {
                return None;
            }
            let (ip, p) = remote.split_once(':')?;
            // The address as the kernel's little-endian word.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            Some(SocketAddrV4::new(ip, u16::from_str_radix(p, 16).ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_against_both_capacities() {
        let r = Row {
            protocol: "udp",
            addresses: 2,
            attempted: 193_536,
            failed: 64_600,
            distinct_public_pairs: 128_936,
            public_addresses: 2,
            port_allocation_errors: 64_600,
            new_per_s: 151_234.4,
            conntrack_entries: 129_000,
            conntrack_mib: 39.4,
            nat_flagged: vec!["az0: i-1 application status impaired (timed out)".into()],
        };
        let t = table(std::slice::from_ref(&r));
        assert!(
            t.ends_with("\nN = 2, udp: az0: i-1 application status impaired (timed out)"),
            "{t}"
        );
        assert!(
            t.contains(
                "| 2 | udp | 193,536 | 64,600 | 128,936 | 0.999 | 1.17 | 151,234 | 129,000 (39) |"
            ),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        for key in [
            "protocol",
            "addresses",
            "attempted",
            "failed",
            "distinct_public_pairs",
            "new_per_s",
        ] {
            assert!(j.get(key).is_some(), "{key} in {j}");
        }
        assert_eq!(j["capacity"], 129_024);
        assert_eq!(j["nat_gateway_capacity"], 110_000);
        assert_eq!(j["nat_flagged"][0], r.nat_flagged[0]);
    }
}
