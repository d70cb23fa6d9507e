//! Connection replication, the pure part: which of this NAT's translated
//! connections its peers get a copy of ([`Outbox`]), the signed wire form
//! of those copies ([`Batch`]), and what a NAT keeps of its peers' copies
//! until it adopts their AZ ([`Replicas`]).
//!
//! A copy is a TCP connection's original tuple and the address and port
//! its source was translated to, as the kernel's conntrack events print
//! them ([`parse_event`]). Only established connections that have lived
//! `replication.min_age` are copied: a short request costs its peers
//! nothing. A copy is withdrawn when the connection closes.
//!
//! On the wire, one datagram holds a signed header and up to
//! [`PER_DATAGRAM`] lines:
//!
//! ```text
//! hanat-ct/1 <instance> <az> <epoch> <seq> <sent_ms> <allocation|-> <part> <key id> <mac>
//! + <src> <sport> <dst> <dport> <nat address> <nat port>
//! - <src> <sport> <dst> <dport>
//! +u …, -u …   (the same for a UDP flow)
//! ```
//!
//! The MAC ([`super::auth::sign`]) covers the header's other fields and
//! every line, with the heartbeat keys; the stamp (`epoch`, `seq`,
//! `sent_ms`) is checked for replays as a heartbeat's is. `allocation`
//! names the sender's Elastic IP, which its adopter carries. `part`
//! ([`Part`]): `d` what changed, `f`/`F` a part / the last part of
//! everything the sender copies, `h` a NAT asking for everything (it just
//! started, or its copies do not add up), `t<n>` a tally: the sender has
//! `n` connections copied, which its peers check their copies against.
//!
//! Datagrams can be lost (and one that arrives after a newer one is taken
//! for a replay). Everything is sent again every `replication.resync`,
//! and a tally every [`TALLY_EVERY`]: a peer whose count of copies from
//! the sender differs asks for everything at once ([`Replicas::tally`]),
//! so a lost copy is missing for about a second, not a resync.
//!
//! Pure: clocks are passed in as durations since the daemon's start.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::auth::{self, Policy, Rejected, Stamp};
pub use crate::domain::{Conn, Mapping, Proto};
use crate::domain::{InstanceId, Ipv4Cidr};

const MAGIC: &str = "hanat-ct/1";
/// Lines per datagram: 18 lines of at most 69 bytes, the header (at most
/// about 210) and the IP and UDP headers stay under 1,500 bytes, so no
/// datagram is fragmented.
pub const PER_DATAGRAM: usize = 18;
/// How often a NAT sends its peers its tally.
pub const TALLY_EVERY: Duration = Duration::from_secs(1);
/// The least time between two asks of one peer for everything.
pub const ASK_EVERY: Duration = Duration::from_secs(3);

/// What a conntrack event (or a listed entry) says of a TCP connection or
/// a UDP flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `[DESTROY]`: the entry is gone.
    pub destroyed: bool,
    /// The TCP state (`ESTABLISHED`, `FIN_WAIT`, …), when printed.
    pub state: Option<String>,
    /// `[ASSURED]`: the kernel has seen traffic both ways (for UDP, for
    /// about 2 s: a stream, not a lone query and its answer).
    pub assured: bool,
    pub conn: Conn,
    /// The reply direction's destination: the translated source.
    pub reply_to: Mapping,
}

impl Event {
    /// Whether the source was translated (the reply goes to another
    /// address than the original source).
    pub fn translated(&self) -> bool {
        self.reply_to.addr != self.conn.src
    }

    /// Whether the connection carries data now: a TCP connection
    /// established and not closing, a UDP flow assured (a stream).
    pub fn established(&self) -> bool {
        !self.destroyed
            && match self.conn.proto {
                Proto::Tcp => self.state.as_deref() == Some("ESTABLISHED"),
                Proto::Udp => self.assured,
            }
    }
}

/// One line of `conntrack -E -o extended` or `conntrack -L -o extended`,
/// if it is an IPv4 TCP connection or UDP flow: the first `src=`/`dst=`/
/// `sport=`/`dport=` are the original direction, the next ones the reply.
pub fn parse_event(line: &str) -> Option<Event> {
    let mut words = line.split_ascii_whitespace().peekable();
    let destroyed = match words.peek() {
        Some(w) if w.starts_with('[') => words.next() == Some("[DESTROY]"),
        _ => false,
    };
    let (mut ips, mut ports, mut state, mut proto) = (Vec::new(), Vec::new(), None, None);
    let mut assured = false;
    for w in words {
        if proto.is_none() && ips.is_empty() && (w == "tcp" || w == "udp") {
            proto = Some(if w == "tcp" { Proto::Tcp } else { Proto::Udp });
        } else if w == "[ASSURED]" {
            assured = true;
        } else if let Some(v) = w.strip_prefix("src=").or_else(|| w.strip_prefix("dst=")) {
            ips.push(v.parse::<Ipv4Addr>().ok()?);
        } else if let Some(v) = w
            .strip_prefix("sport=")
            .or_else(|| w.strip_prefix("dport="))
        {
            ports.push(v.parse::<u16>().ok()?);
        } else if state.is_none()
            && ips.is_empty()
            && w.len() > 2
            && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        {
            state = Some(w.to_owned());
        }
    }
    let proto = proto?;
    if ips.len() < 4 || ports.len() < 4 {
        return None;
    }
    Some(Event {
        destroyed,
        state,
        assured,
        conn: Conn {
            proto,
            src: ips[0],
            dst: ips[1],
            sport: ports[0],
            dport: ports[1],
        },
        reply_to: Mapping {
            addr: ips[3],
            port: ports[3],
        },
    })
}

#[derive(Debug, Clone)]
struct Local {
    nat: Mapping,
    established_at: Duration,
    sent: bool,
}

/// This NAT's translated connections and which of them its peers hold a
/// copy of.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: HashMap<Conn, Local>,
    /// Copies to withdraw at the next send.
    withdrawn: Vec<Conn>,
}

/// What to send: copies to add (or refresh), copies to withdraw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub add: Vec<(Conn, Mapping)>,
    pub remove: Vec<Conn>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

impl Outbox {
    /// Take in one event seen at `now`. `ours`: whether a translated
    /// address is one this NAT translates to (its own, or a dead peer's it
    /// carries), so that only its own connections are copied.
    pub fn on_event(&mut self, e: &Event, now: Duration, ours: impl Fn(Ipv4Addr) -> bool) {
        if !e.translated() || !ours(e.reply_to.addr) {
            return;
        }
        if e.established() {
            let entry = self.entries.entry(e.conn).or_insert(Local {
                nat: e.reply_to,
                established_at: now,
                sent: false,
            });
            if entry.nat != e.reply_to {
                entry.nat = e.reply_to;
                entry.sent = false;
            }
            return;
        }
        // Closing, closed or gone: a copy would serve nothing.
        if let Some(l) = self.entries.remove(&e.conn)
            && l.sent
        {
            self.withdrawn.push(e.conn);
        }
    }

    /// The kernel's table as listed: a connection no longer established
    /// in it is gone (the events of its closing were lost: the kernel
    /// drops events a busy listener cannot take), and its copy withdrawn.
    pub fn reconcile(&mut self, established: &HashSet<Conn>) {
        let gone: Vec<Conn> = (self.entries.keys())
            .filter(|c| !established.contains(*c))
            .copied()
            .collect();
        for c in gone {
            if self.entries.remove(&c).is_some_and(|l| l.sent) {
                self.withdrawn.push(c);
            }
        }
    }

    /// What changed since the last call: connections established for
    /// `min_age` and not yet sent, and the copies to withdraw.
    pub fn due(&mut self, now: Duration, min_age: Duration) -> Changes {
        let mut add = Vec::new();
        for (conn, l) in &mut self.entries {
            if !l.sent && now.saturating_sub(l.established_at) >= min_age {
                l.sent = true;
                add.push((*conn, l.nat));
            }
        }
        add.sort_by_key(|(c, _)| *c);
        Changes {
            add,
            remove: std::mem::take(&mut self.withdrawn),
        }
    }

    /// Every copy sent so far: for a peer that just appeared, and the
    /// periodic resend that heals lost datagrams.
    pub fn all_sent(&self) -> Changes {
        let mut add: Vec<(Conn, Mapping)> = (self.entries.iter())
            .filter(|(_, l)| l.sent)
            .map(|(c, l)| (*c, l.nat))
            .collect();
        add.sort_by_key(|(c, _)| *c);
        Changes {
            add,
            remove: Vec::new(),
        }
    }

    /// How many connections are tracked, and how many of them are copied.
    pub fn counts(&self) -> (usize, usize) {
        let sent = self.entries.values().filter(|l| l.sent).count();
        (self.entries.len(), sent)
    }
}

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// What changed since the last send.
    Delta,
    /// Part of everything the sender copies; `last`: the end of it.
    Full { last: bool },
    /// A NAT asks for everything (no lines).
    Hello,
    /// The sender has this many connections copied (no lines).
    Tally { copied: usize },
}

impl Part {
    fn code(self) -> String {
        match self {
            Part::Delta => "d".into(),
            Part::Full { last: false } => "f".into(),
            Part::Full { last: true } => "F".into(),
            Part::Hello => "h".into(),
            Part::Tally { copied } => format!("t{copied}"),
        }
    }

    fn parse(s: &str) -> Option<Part> {
        Some(match s {
            "d" => Part::Delta,
            "f" => Part::Full { last: false },
            "F" => Part::Full { last: true },
            "h" => Part::Hello,
            _ => Part::Tally {
                copied: s.strip_prefix('t')?.parse().ok()?,
            },
        })
    }
}

/// Who sends a batch, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub instance: InstanceId,
    pub az: String,
    /// The sender's Elastic IP allocation, for its adopter to carry.
    pub allocation: Option<String>,
}

/// One datagram's worth of changes, from one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub from: Sender,
    pub stamp: Stamp,
    pub part: Part,
    pub changes: Changes,
}

impl Batch {
    /// The signed datagrams for `changes` ([`PER_DATAGRAM`] lines each),
    /// the stamp's `seq` counting up from `next_seq`; `None` without a key
    /// (replication is never sent unsigned). `full`: `changes` is
    /// everything (the last datagram says so, and there is one even when
    /// it is empty); else what changed. [`Batch::lone`] for a hello or a tally.
    pub fn seal_all(
        from: &Sender,
        changes: &Changes,
        full: bool,
        epoch: u64,
        next_seq: &mut u64,
        sent_ms: u64,
        policy: &Policy,
    ) -> Option<Vec<Vec<u8>>> {
        let kind = match full {
            true => Part::Full { last: false },
            false => Part::Delta,
        };
        Self::seal(from, changes, kind, epoch, next_seq, sent_ms, policy)
    }

    /// A datagram of no lines: a hello (`Part::Hello`, asking for
    /// everything) or a tally (`Part::Tally`).
    pub fn lone(
        from: &Sender,
        part: Part,
        epoch: u64,
        next_seq: &mut u64,
        sent_ms: u64,
        policy: &Policy,
    ) -> Option<Vec<u8>> {
        let none = Changes::default();
        Self::seal(from, &none, part, epoch, next_seq, sent_ms, policy)?.pop()
    }

    fn seal(
        from: &Sender,
        changes: &Changes,
        kind: Part,
        epoch: u64,
        next_seq: &mut u64,
        sent_ms: u64,
        policy: &Policy,
    ) -> Option<Vec<Vec<u8>>> {
        policy.keys.as_ref()?;
        let mut lines: Vec<String> = changes
            .add
            .iter()
            .map(|(c, m)| {
                format!(
                    "+{} {} {} {} {} {} {}",
                    udp_mark(c),
                    c.src,
                    c.sport,
                    c.dst,
                    c.dport,
                    m.addr,
                    m.port
                )
            })
            .collect();
        lines.extend((changes.remove.iter()).map(|c| {
            format!(
                "-{} {} {} {} {}",
                udp_mark(c),
                c.src,
                c.sport,
                c.dst,
                c.dport
            )
        }));
        let mut chunks: Vec<&[String]> = lines.chunks(PER_DATAGRAM).collect();
        if chunks.is_empty() && kind != Part::Delta {
            chunks.push(&[]);
        }
        let count = chunks.len();
        let mut out = Vec::new();
        for (i, chunk) in chunks.into_iter().enumerate() {
            *next_seq += 1;
            let part = match kind {
                Part::Full { .. } => Part::Full {
                    last: i + 1 == count,
                },
                k => k,
            };
            let head = format!(
                "{MAGIC} {} {} {epoch} {} {sent_ms} {} {}",
                from.instance,
                from.az,
                next_seq,
                from.allocation.as_deref().unwrap_or("-"),
                part.code(),
            );
            let mut body = String::new();
            for l in chunk {
                let _ = writeln!(body, "{l}");
            }
            let (key_id, tag) = auth::sign(signed_text(&head, &body).as_bytes(), policy)?;
            out.push(format!("{head} {key_id} {tag}\n{body}").into_bytes());
        }
        Some(out)
    }

    /// A datagram as a batch, if it is signed with a key of `policy` and
    /// fresh at `now_ms`. Replays are the caller's to check, by the stamp.
    pub fn open(bytes: &[u8], policy: &Policy, now_ms: u64) -> Result<Batch, Rejected> {
        let text = std::str::from_utf8(bytes).map_err(|_| Rejected::Malformed)?;
        let (first, body) = text.split_once('\n').ok_or(Rejected::Malformed)?;
        let (head, tag) = first.rsplit_once(' ').ok_or(Rejected::Malformed)?;
        let (head, key_id) = head.rsplit_once(' ').ok_or(Rejected::Malformed)?;
        let parts: Vec<&str> = head.split(' ').collect();
        let [magic, instance, az, epoch, seq, sent_ms, allocation, part] = parts[..] else {
            return Err(Rejected::Malformed);
        };
        let part = Part::parse(part).ok_or(Rejected::Malformed)?;
        if magic != MAGIC || !instance.starts_with("i-") || az.is_empty() {
            return Err(Rejected::Malformed);
        }
        let stamp = Stamp::parse(epoch, seq, sent_ms)?;
        let signed = signed_text(head, body);
        auth::verify(
            signed.as_bytes(),
            key_id,
            tag,
            stamp.sent_ms,
            policy,
            now_ms,
        )?;
        let mut changes = Changes::default();
        for line in body.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|_| Rejected::Malformed);
            let port = |s: &str| s.parse::<u16>().map_err(|_| Rejected::Malformed);
            let proto = |sign: &str| match sign.get(1..) {
                Some("") => Ok(Proto::Tcp),
                Some("u") => Ok(Proto::Udp),
                _ => Err(Rejected::Malformed),
            };
            match w[..] {
                [add, s, sp, d, dp, a, ap] if add.starts_with('+') => changes.add.push((
                    Conn {
                        proto: proto(add)?,
                        src: ip(s)?,
                        sport: port(sp)?,
                        dst: ip(d)?,
                        dport: port(dp)?,
                    },
                    Mapping {
                        addr: ip(a)?,
                        port: port(ap)?,
                    },
                )),
                [remove, s, sp, d, dp] if remove.starts_with('-') => changes.remove.push(Conn {
                    proto: proto(remove)?,
                    src: ip(s)?,
                    sport: port(sp)?,
                    dst: ip(d)?,
                    dport: port(dp)?,
                }),
                _ => return Err(Rejected::Malformed),
            }
        }
        Ok(Batch {
            from: Sender {
                instance: InstanceId(instance.to_owned()),
                az: az.to_owned(),
                allocation: (allocation != "-").then(|| allocation.to_owned()),
            },
            stamp,
            part,
            changes,
        })
    }
}

/// A line's mark after its `+`/`-`: none for TCP, `u` for UDP.
fn udp_mark(c: &Conn) -> &'static str {
    match c.proto {
        Proto::Tcp => "",
        Proto::Udp => "u",
    }
}

fn signed_text(head: &str, body: &str) -> String {
    format!("{head}\n{body}")
}

#[derive(Debug, Default)]
struct PeerCopies {
    allocation: Option<String>,
    entries: HashMap<Conn, (Mapping, Duration)>,
    /// When the first part of the everything being received came: at its
    /// last part, what was not heard since is no longer the peer's.
    full_from: Option<Duration>,
}

/// The copies of its peers' connections this NAT holds, per peer, in
/// memory only: nothing reaches the kernel until this NAT takes routes
/// from that peer ([`Replicas::to_commit`]).
#[derive(Debug, Default)]
pub struct Replicas {
    peers: HashMap<InstanceId, PeerCopies>,
    /// Peers that sent everything they copy at least once.
    synced: HashSet<InstanceId>,
    /// When each peer was last asked for everything ([`Replicas::tally`]).
    asked: HashMap<InstanceId, Duration>,
}

impl Replicas {
    /// Take in a batch heard at `now`, keeping at most `max` copies per
    /// peer (more are dropped: a peer cannot fill this NAT's memory).
    /// Everything (a full batch's parts) replaces what was held of the
    /// peer: at its last part, copies not heard since its first are
    /// dropped (their withdrawal was lost).
    pub fn apply(&mut self, batch: &Batch, now: Duration, max: usize) -> usize {
        let p = self.peers.entry(batch.from.instance.clone()).or_default();
        if batch.from.allocation.is_some() {
            p.allocation.clone_from(&batch.from.allocation);
        }
        if let Part::Full { .. } = batch.part {
            p.full_from.get_or_insert(now);
        }
        for c in &batch.changes.remove {
            p.entries.remove(c);
        }
        let mut dropped = 0;
        for (c, m) in &batch.changes.add {
            if p.entries.len() >= max && !p.entries.contains_key(c) {
                dropped += 1;
                continue;
            }
            p.entries.insert(*c, (*m, now));
        }
        if batch.part == (Part::Full { last: true }) {
            let from = p.full_from.take().unwrap_or(now);
            p.entries.retain(|_, (_, heard)| *heard >= from);
            self.synced.insert(batch.from.instance.clone());
        }
        dropped
    }

    /// A peer's tally (it has `copied` connections copied) heard at `now`:
    /// whether to ask it for everything. Yes when the copies held of it do
    /// not add up to its tally (some were lost on the way) and it was not
    /// asked within [`ASK_EVERY`]; not when this NAT keeps no more of its
    /// copies (`max`).
    pub fn tally(&mut self, peer: &InstanceId, copied: usize, now: Duration, max: usize) -> bool {
        let held = self.peers.get(peer).map_or(0, |p| p.entries.len());
        if held == copied || (held >= max && copied >= max) {
            return false;
        }
        if (self.asked.get(peer)).is_some_and(|at| now.saturating_sub(*at) < ASK_EVERY) {
            return false;
        }
        self.asked.insert(peer.clone(), now);
        true
    }

    /// Forget copies not heard again for `ttl` (their withdrawal was lost,
    /// or their peer is gone and no longer resends them), and peers left
    /// with none.
    pub fn expire(&mut self, now: Duration, ttl: Duration) {
        for p in self.peers.values_mut() {
            p.entries
                .retain(|_, (_, heard)| now.saturating_sub(*heard) < ttl);
        }
        self.peers.retain(|_, p| !p.entries.is_empty());
        self.asked
            .retain(|_, at| now.saturating_sub(*at) < ASK_EVERY);
    }

    /// The copies of `peer`'s connections from hosts in `sources`: what
    /// this NAT writes into its kernel before taking `peer`'s routes of
    /// those networks.
    pub fn to_commit(&self, peer: &InstanceId, sources: &[Ipv4Cidr]) -> Vec<(Conn, Mapping)> {
        let Some(p) = self.peers.get(peer) else {
            return Vec::new();
        };
        let mut v: Vec<(Conn, Mapping)> = (p.entries.iter())
            .filter(|(c, _)| sources.iter().any(|s| s.contains(c.src)))
            .map(|(c, (m, _))| (*c, *m))
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }

    /// Whether `peer` sent everything it copies at least once.
    pub fn synced(&self, peer: &InstanceId) -> bool {
        self.synced.contains(peer)
    }

    /// `peer`'s Elastic IP allocation, as it last said.
    pub fn allocation(&self, peer: &InstanceId) -> Option<&str> {
        self.peers.get(peer)?.allocation.as_deref()
    }

    /// Copies held, over all peers.
    pub fn len(&self) -> usize {
        self.peers.values().map(|p| p.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::auth::{Key, Keys};

    const NEW: &str = "    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.9.1.10 dst=198.18.0.10 sport=33794 dport=8080 [UNREPLIED] src=198.18.0.10 dst=198.18.0.1 sport=8080 dport=33794";
    const EST: &str = " [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED src=10.9.1.10 dst=198.18.0.10 sport=33794 dport=8080 src=198.18.0.10 dst=198.18.0.1 sport=8080 dport=33794 [ASSURED]";
    const FIN: &str = " [UPDATE] ipv4     2 tcp      6 120 FIN_WAIT src=10.9.1.10 dst=198.18.0.10 sport=33794 dport=8080 src=198.18.0.10 dst=198.18.0.1 sport=8080 dport=33794 [ASSURED]";
    const LISTED: &str = "ipv4     2 tcp      6 599 ESTABLISHED src=10.9.1.10 dst=198.18.0.10 sport=40000 dport=9090 src=198.18.0.10 dst=198.18.0.2 sport=9090 dport=40001 [ASSURED] mark=0 use=1";
    const UDP: &str = "    [NEW] ipv4     2 udp      17 30 src=10.9.1.10 dst=198.18.0.10 sport=5000 dport=53 [UNREPLIED] src=198.18.0.10 dst=198.18.0.1 sport=53 dport=5000";
    const UDP_REPLIED: &str = " [UPDATE] ipv4     2 udp      17 30 src=10.9.1.10 dst=198.18.0.10 sport=5000 dport=53 src=198.18.0.10 dst=198.18.0.1 sport=53 dport=5000";
    const UDP_STREAM: &str = " [UPDATE] ipv4     2 udp      17 120 src=10.9.1.10 dst=198.18.0.10 sport=5000 dport=53 src=198.18.0.10 dst=198.18.0.1 sport=53 dport=5000 [ASSURED]";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy(c: char) -> Policy {
        Policy {
            keys: Some(Keys {
                current: Key::new(&c.to_string().repeat(40)).unwrap(),
                previous: None,
            }),
            ..Policy::default()
        }
    }

    #[test]
    fn events_and_listed_entries_parse_into_their_tuples_and_mapping() {
        let e = parse_event(EST).unwrap();
        assert!(e.established() && e.translated() && !e.destroyed);
        assert_eq!(e.conn.src, Ipv4Addr::new(10, 9, 1, 10));
        assert_eq!((e.conn.sport, e.conn.dport), (33794, 8080));
        assert_eq!(e.reply_to.addr, Ipv4Addr::new(198, 18, 0, 1));
        assert!(!parse_event(NEW).unwrap().established());
        let l = parse_event(LISTED).unwrap();
        assert!(l.established());
        assert_eq!(l.reply_to.port, 40001);
        let d = parse_event(&FIN.replace("[UPDATE]", "[DESTROY]")).unwrap();
        assert!(d.destroyed && !d.established());
        // A UDP flow counts once the kernel calls it a stream (assured).
        let u = parse_event(UDP).unwrap();
        assert_eq!((u.conn.proto, u.established()), (Proto::Udp, false));
        assert!(!parse_event(UDP_REPLIED).unwrap().established());
        let u = parse_event(UDP_STREAM).unwrap();
        assert!(u.established() && u.translated());
        assert_eq!((u.conn.dport, u.reply_to.port), (53, 5000));
        assert!(
            !parse_event(&UDP_STREAM.replace("[UPDATE]", "[DESTROY]"))
                .unwrap()
                .established()
        );
        assert_eq!(e.conn.proto, Proto::Tcp);
        assert_eq!(parse_event(&EST.replace(" tcp ", " icmp ")), None);
        assert_eq!(parse_event("conntrack v1.4.7: 7 flow events"), None);
        assert_eq!(parse_event(""), None);
    }

    #[test]
    fn a_connection_is_copied_once_old_enough_and_withdrawn_when_it_closes() {
        let mut o = Outbox::default();
        let ours = |a: Ipv4Addr| a == Ipv4Addr::new(198, 18, 0, 1);
        o.on_event(&parse_event(NEW).unwrap(), secs(0), ours);
        o.on_event(&parse_event(EST).unwrap(), secs(1), ours);
        assert!(o.due(secs(2), secs(2)).is_empty(), "too young");
        let c = o.due(secs(3), secs(2));
        assert_eq!(c.add.len(), 1);
        assert!(o.due(secs(4), secs(2)).is_empty(), "sent once");
        assert_eq!(o.all_sent().add.len(), 1);
        o.on_event(&parse_event(FIN).unwrap(), secs(5), ours);
        assert_eq!(o.due(secs(6), secs(2)).remove.len(), 1);
        assert_eq!(o.counts(), (0, 0));
        // One that closes before it was sent is never mentioned.
        o.on_event(&parse_event(EST).unwrap(), secs(7), ours);
        o.on_event(&parse_event(FIN).unwrap(), secs(8), ours);
        assert!(o.due(secs(20), secs(2)).is_empty());
        // A connection translated to an address that is not ours is not copied.
        // The listing finds one whose closing was missed.
        o.on_event(&parse_event(EST).unwrap(), secs(30), ours);
        assert_eq!(o.due(secs(40), secs(2)).add.len(), 1);
        o.reconcile(&HashSet::new());
        assert_eq!(o.due(secs(41), secs(2)).remove.len(), 1);
        assert_eq!(o.counts(), (0, 0));
        o.on_event(&parse_event(LISTED).unwrap(), secs(9), ours);
        assert_eq!(o.counts(), (0, 0));
    }

    fn sender() -> Sender {
        Sender {
            instance: InstanceId("i-0a".into()),
            az: "eu-west-1a".into(),
            allocation: Some("eipalloc-1".into()),
        }
    }

    fn changes(n: u16) -> Changes {
        Changes {
            add: (0..n)
                .map(|i| {
                    let c = Conn {
                        proto: if i % 2 == 0 { Proto::Tcp } else { Proto::Udp },
                        src: Ipv4Addr::new(10, 0, 1, 10),
                        sport: 40000 + i,
                        dst: Ipv4Addr::new(203, 0, 113, 10),
                        dport: 443,
                    };
                    (
                        c,
                        Mapping {
                            addr: Ipv4Addr::new(10, 0, 0, 5),
                            port: 40000 + i,
                        },
                    )
                })
                .collect(),
            remove: vec![Conn {
                proto: Proto::Udp,
                src: Ipv4Addr::new(10, 0, 1, 11),
                sport: 1,
                dst: Ipv4Addr::new(203, 0, 113, 10),
                dport: 443,
            }],
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn batches_round_trip_in_datagrams_of_bounded_size() {
        let p = policy('a');
        let mut seq = 0;
        let all = changes(50);
        let grams = Batch::seal_all(&sender(), &all, false, 7, &mut seq, NOW, &p).unwrap();
        assert_eq!(grams.len(), 3);
        assert_eq!(seq, 3);
        let mut got = Changes::default();
        for g in &grams {
            assert!(g.len() < 1400, "{} bytes", g.len());
            let b = Batch::open(g, &p, NOW + 5).unwrap();
            assert_eq!(b.from, sender());
            got.add.extend(b.changes.add);
            got.remove.extend(b.changes.remove);
        }
        assert_eq!(got, all);
    }

    #[test]
    fn everything_ends_with_a_last_part_even_when_empty_and_marks_the_sender_synced() {
        let p = policy('a');
        let mut seq = 0;
        let none = Changes::default();
        assert_eq!(
            Batch::seal_all(&sender(), &none, false, 7, &mut seq, NOW, &p)
                .unwrap()
                .len(),
            0,
            "nothing changed: nothing sent"
        );
        let grams = Batch::seal_all(&sender(), &none, true, 7, &mut seq, NOW, &p).unwrap();
        assert_eq!(grams.len(), 1);
        let mut r = Replicas::default();
        let me = InstanceId("i-0a".into());
        let grams = Batch::seal_all(&sender(), &changes(30), true, 7, &mut seq, NOW, &p).unwrap();
        let parts: Vec<Part> = (grams.iter())
            .map(|g| Batch::open(g, &p, NOW).unwrap().part)
            .collect();
        assert_eq!(
            parts,
            [Part::Full { last: false }, Part::Full { last: true }]
        );
        r.apply(&Batch::open(&grams[0], &p, NOW).unwrap(), secs(1), 100);
        assert!(!r.synced(&me));
        r.apply(&Batch::open(&grams[1], &p, NOW).unwrap(), secs(1), 100);
        assert!(r.synced(&me));
        let hello = Batch::lone(&sender(), Part::Hello, 7, &mut seq, NOW, &p).unwrap();
        let h = Batch::open(&hello, &p, NOW).unwrap();
        assert_eq!((h.part, h.changes.is_empty()), (Part::Hello, true));
    }

    #[test]
    fn forged_altered_stale_and_unsigned_batches_are_rejected() {
        let (good, bad) = (policy('a'), policy('b'));
        let mut seq = 0;
        let forged =
            Batch::seal_all(&sender(), &changes(1), false, 7, &mut seq, NOW, &bad).unwrap();
        assert!(matches!(
            Batch::open(&forged[0], &good, NOW),
            Err(Rejected::UnknownKey(_))
        ));
        let real = Batch::seal_all(&sender(), &changes(1), false, 7, &mut seq, NOW, &good).unwrap();
        let text = String::from_utf8(real[0].clone()).unwrap();
        // A line changed: the far end's address swapped for another.
        let altered = text.replace("203.0.113.10", "203.0.113.66");
        assert_eq!(
            Batch::open(altered.as_bytes(), &good, NOW),
            Err(Rejected::BadMac)
        );
        let late = Batch::open(&real[0], &good, NOW + 60_000);
        assert!(matches!(late, Err(Rejected::Stale { .. })));
        assert_eq!(
            Batch::seal_all(
                &sender(),
                &changes(1),
                false,
                7,
                &mut seq,
                NOW,
                &Policy::default()
            ),
            None,
            "never sent unsigned"
        );
        assert_eq!(Batch::open(b"junk", &good, NOW), Err(Rejected::Malformed));
    }

    #[test]
    fn a_lost_copy_is_asked_for_at_the_next_tally_and_everything_replaces_what_was_held() {
        let p = policy('a');
        let (me, mut seq, mut r) = (InstanceId("i-0a".into()), 0, Replicas::default());
        let open = |g: &[u8]| Batch::open(g, &p, NOW).unwrap();
        // Ten copied; the datagram with the last three is lost.
        let all = changes(10);
        let first = Changes {
            add: all.add[..7].to_vec(),
            remove: vec![],
        };
        for g in Batch::seal_all(&sender(), &first, false, 7, &mut seq, NOW, &p).unwrap() {
            r.apply(&open(&g), secs(1), 100);
        }
        let tally = open(
            &Batch::lone(&sender(), Part::Tally { copied: 10 }, 7, &mut seq, NOW, &p).unwrap(),
        );
        assert_eq!(tally.part, Part::Tally { copied: 10 });
        assert!(r.tally(&me, 10, secs(2), 100), "7 held of 10: ask");
        assert!(!r.tally(&me, 10, secs(3), 100), "asked within ASK_EVERY");
        // A withdrawal lost too: the one held of a closed connection goes
        // with everything, which has 9 (the first closed).
        let mut everything = all.clone();
        everything.add.remove(0);
        for g in Batch::seal_all(&sender(), &everything, true, 7, &mut seq, NOW, &p).unwrap() {
            r.apply(&open(&g), secs(4), 100);
        }
        let az_a: Ipv4Cidr = "10.0.1.0/24".parse().unwrap();
        everything.add.sort_by_key(|(c, _)| *c);
        assert_eq!(r.to_commit(&me, &[az_a]), everything.add);
        assert!(!r.tally(&me, 9, secs(10), 100), "adds up: no ask");
        // More than this NAT keeps of a peer: never asked for again.
        assert!(!r.tally(&me, 500, secs(20), 9));
    }

    #[test]
    fn replicas_commit_only_the_taken_networks_and_are_bounded_and_expire() {
        let mut r = Replicas::default();
        let b = Batch {
            from: sender(),
            stamp: Stamp {
                epoch: 1,
                seq: 1,
                sent_ms: NOW,
            },
            part: Part::Delta,
            changes: changes(10),
        };
        assert_eq!(r.apply(&b, secs(1), 8), 2, "two over the bound dropped");
        let me = InstanceId("i-0a".into());
        let az_a: Ipv4Cidr = "10.0.1.0/24".parse().unwrap();
        let az_b: Ipv4Cidr = "10.0.3.0/24".parse().unwrap();
        assert_eq!(r.to_commit(&me, &[az_a]).len(), 8);
        assert!(r.to_commit(&me, &[az_b]).is_empty());
        assert!(r.to_commit(&InstanceId("i-0b".into()), &[az_a]).is_empty());
        assert_eq!(r.allocation(&me), Some("eipalloc-1"));
        r.expire(secs(100), secs(60));
        assert!(r.is_empty());
    }
}
