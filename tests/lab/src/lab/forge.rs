//! Attacks on the peers' heartbeats, as hosts of a real VPC could make
//! them: a private host that wraps a heartbeat in VXLAN for a NAT's flow
//! hand-off tunnel, a host with the source/destination check off (a VPN
//! appliance, say) that sends heartbeats with a NAT's source address, and
//! the same host replaying heartbeats it captured.
//!
//! The packets are built here byte by byte, as an attacker's tool would:
//! nothing of hanat's own code is used to make them.

use std::io::Read;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use socket2::{Domain, Protocol, Socket, Type};

use super::*;
use crate::netns::in_netns;

/// The heartbeat port the lab's daemons use (hanat's default), and the
/// tunnel's VXLAN port and id.
pub const PEER_PORT: u16 = 7470;
pub const TUNNEL_PORT: u16 = 7471;
pub const VNI: u32 = 7470;
/// The replication port the lab's daemons use (hanat's default), and the
/// private host's port of the forged connection.
pub const REPLICATION_PORT: u16 = 7473;
pub const FORGED_PORT: u16 = 31337;

/// Where the host with the source/destination check off lives (AZ 0's
/// public subnet).
pub const ROGUE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 240);

/// A heartbeat claim: `instance` of `az` says `status`.
#[derive(Debug, Clone)]
pub struct Claim {
    pub instance: String,
    pub az: String,
    pub status: &'static str,
}

impl Claim {
    /// The unauthenticated (`hanat/1`) form.
    pub fn v1(&self, seq: u64) -> Vec<u8> {
        format!(
            "hanat/1 {} {} {} {seq}",
            self.instance, self.az, self.status
        )
        .into_bytes()
    }

    /// The authenticated form, signed with a key of the forger's own.
    pub fn v2_wrong_key(&self, seq: u64) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let body = format!(
            "hanat/2 {} {} {} {now} {seq} {now} 0badc0de",
            self.instance, self.az, self.status
        );
        let key: Vec<u8> = (0..48).map(|_| fastrand::u8(..)).collect();
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&key) {
            Ok(m) => m,
            Err(_) => return body.into_bytes(),
        };
        mac.update(body.as_bytes());
        let tag: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{body} {tag}").into_bytes()
    }
}

/// A forged connection copy (`hanat-ct/1`): "`instance` of `az` has
/// translated `src`:`sport` → `dst`:`dport` to `nat`": were it written
/// into an adopter's kernel, the far end could reach the private host
/// through it.
#[derive(Debug, Clone)]
pub struct Copy {
    pub instance: String,
    pub az: String,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub nat: Ipv4Addr,
}

impl Copy {
    fn text(&self, seq: u64, key_id: &str) -> (String, String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let head = format!(
            "hanat-ct/1 {} {} {now} {seq} {now} - d {key_id}",
            self.instance, self.az
        );
        let line = format!(
            "+ {} {} {} {} {} {}\n",
            self.src, self.sport, self.dst, self.dport, self.nat, self.sport
        );
        (head, line)
    }

    /// Signed with a key of the forger's own.
    pub fn wrong_key(&self, seq: u64) -> Vec<u8> {
        let (head, line) = self.text(seq, "0badc0de");
        let key: Vec<u8> = (0..48).map(|_| fastrand::u8(..)).collect();
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&key) else {
            return Vec::new();
        };
        // What a signature covers, as the forger guesses it.
        let signed_head = head.rsplit_once(' ').map_or(head.as_str(), |(h, _)| h);
        mac.update(format!("{signed_head}\n{line}").as_bytes());
        let tag: String = (mac.finalize().into_bytes().iter())
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{head} {tag}\n{line}").into_bytes()
    }

    /// With a made-up MAC.
    pub fn unsigned(&self, seq: u64) -> Vec<u8> {
        let (head, line) = self.text(seq, "00000000");
        format!("{head} {}\n{line}", "0".repeat(64)).into_bytes()
    }
}

/// An IPv4 packet carrying one UDP datagram (no UDP checksum, as IPv4
/// allows).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&fastrand::u16(..).to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VXLAN payload carrying `inner` (an IPv4 packet) in an Ethernet frame
/// to `dst_mac`.
pub fn vxlan(vni: u32, dst_mac: [u8; 6], inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(&dst_mac);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(inner);
    p
}

/// The MAC hanat gives the tunnel device of the NAT at `ip` (it spells the
/// address out, so anyone can compute it).
pub fn tunnel_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x68, a, b, c, d]
}

/// Send whole IPv4 packets (source address included) from inside the
/// namespace at `path`, through a raw socket.
pub fn send_raw(path: &std::path::Path, packets: Vec<Vec<u8>>) -> Result<()> {
    in_netns(path, move || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
        for p in packets {
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let to = std::net::SocketAddr::from((dst, 0));
            s.send_to(&p, &to.into())?;
        }
        Ok(())
    })
}

/// Heartbeats seen by a packet socket in a namespace (the lab's router:
/// the network between the NATs), until stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    /// Capture IPv4 packets from `src` to `dst` on UDP port `dport` that
    /// pass through the namespace at `path`.
    pub fn start(
        path: &std::path::Path,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        dport: u16,
    ) -> Result<Capture> {
        const ETH_P_IP: u16 = 0x0800;
        let socket = in_netns(path, move || {
            let s = Socket::new(
                Domain::PACKET,
                Type::DGRAM,
                Some(Protocol::from(i32::from(ETH_P_IP.to_be()))),
            )?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                let Ok(n) = (&socket).read(&mut buf) else {
                    continue;
                };
                let p = buf[..n].to_vec();
                if p.len() < 28
                    || p[9] != 17
                    || p[12..16] != src.octets()
                    || p[16..20] != dst.octets()
                {
                    continue;
                }
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if p.len() < ihl + 8 || u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]) != dport {
                    continue;
                }
                // Captured before the (offloaded) UDP checksum was filled
                // in: send it with none, as IPv4 allows.
                let mut p = p;
                p[ihl + 6..ihl + 8].copy_from_slice(&[0, 0]);
                // A routed packet shows twice (in and out): keep one.
                if !seen.iter().any(|q| q[ihl..] == p[ihl..]) {
                    seen.push(p);
                }
            }
            seen
        });
        Ok(Capture { stop, thread })
    }

    /// Stop and return the distinct packets captured.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A host with the source/destination check off in AZ 0's public subnet,
/// at [`ROGUE_IP`]: it can send packets with any source address, as a VPN
/// or firewall appliance could.
pub fn rogue_host(lab: &Lab) -> Result<Netns> {
    let ns = Netns::new(&format!("{}-rogue", lab.prefix))?;
    veth(&lab.rtr, "rogue0", &ns, "eth0")?;
    lab.rtr.ip("link set rogue0 master bp0")?;
    lab.rtr.ip("link set rogue0 up")?;
    ns.ip(&format!("addr add {ROGUE_IP}/24 dev eth0"))?;
    ns.ip("link set eth0 up")?;
    ns.ip("link set lo up")?;
    ns.ip("route add default via 10.0.0.1")?;
    Ok(ns)
}

/// Call `send(seq)` every `every` for `run`, from a background thread;
/// the thread returns how many rounds it sent.
pub fn repeat(
    run: Duration,
    every: Duration,
    mut send: impl FnMut(u64) -> Result<()> + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut seq = 1_000_000;
        while start.elapsed() < run {
            seq += 1;
            let _ = send(seq);
            std::thread::sleep(every);
        }
        seq - 1_000_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_verifies() {
        let p = ipv4_udp(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 2, 1),
            7470,
            7470,
            b"hello",
        );
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(checksum(&p[..20]), 0, "a valid header sums to 0");
        let v = vxlan(VNI, tunnel_mac(Ipv4Addr::new(10, 0, 2, 1)), &p);
        assert_eq!(&v[4..8], &[0x00, 0x1d, 0x2e, 0x00]);
        assert_eq!(&v[8..14], &[0x02, 0x68, 10, 0, 2, 1]);
    }
}
