//! Authenticated heartbeats (`hanat/2`): who may speak for a peer.
//!
//! A heartbeat moves routes (`failing`, `exiting`) or holds them back
//! (`ok` from a NAT that is in fact dead), so it must come from the peer it
//! names. The source address alone does not prove that: any instance with
//! the source/destination check off (a NAT, a VPN or firewall appliance, a
//! Kubernetes node with some CNIs) can forge it. So a `hanat/2` heartbeat
//! carries an HMAC-SHA256 over its text, keyed with a secret shared by the
//! deployment's NATs, and a stamp that makes every message count once:
//!
//! ```text
//! hanat/2 <instance> <az> <status> <epoch> <seq> <sent_ms> <key id> <mac>
//! ```
//!
//! - `epoch`: the sender's start (Unix ms), `seq`: counts from 1 per start;
//!   a receiver accepts a peer's message only if it is newer than the last
//!   it accepted from that peer ([`Replay`]);
//! - `sent_ms`: the sender's clock (Unix ms); a message more than
//!   [`MAX_SKEW`] away from the receiver's clock is stale (NATs keep time
//!   with the Amazon Time Sync Service, far closer than that);
//! - `key id`: which key signed it ([`Key::id`]), so two keys can be valid
//!   at once while one replaces the other;
//! - `mac`: HMAC-SHA256 of everything before it (hex), compared in constant
//!   time.
//!
//! Pure: clocks and keys are passed in.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::domain::{InstanceId, Status};

/// The farthest a heartbeat's clock may be from the receiver's.
pub const MAX_SKEW: Duration = Duration::from_secs(10);
/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

const MAGIC: &str = "hanat/2";

/// What a heartbeat says, and its unauthenticated wire form
/// `hanat/1 <instance> <az> <status> <seq>`; [`super::auth`] signs it as
/// `hanat/2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub instance: InstanceId,
    pub az: String,
    pub status: Status,
    pub seq: u64,
}

const MAGIC_V1: &str = "hanat/1";

impl Message {
    pub fn encode(&self) -> String {
        format!(
            "{MAGIC_V1} {} {} {} {}",
            self.instance, self.az, self.status, self.seq
        )
    }

    /// `None` for anything that is not a well-formed heartbeat.
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split_ascii_whitespace();
        if parts.next()? != MAGIC_V1 {
            return None;
        }
        let instance = parts.next()?;
        let az = parts.next()?;
        let status = Status::parse(parts.next()?)?;
        let seq = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !instance.starts_with("i-") || az.is_empty() {
            return None;
        }
        Some(Message {
            instance: InstanceId(instance.to_owned()),
            az: az.to_owned(),
            status,
            seq,
        })
    }
}

/// A heartbeat key. Its `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl Key {
    /// A key from a secret's text (surrounding whitespace ignored); an
    /// error says why it is unusable without showing it.
    pub fn new(secret: &str) -> Result<Key, String> {
        let secret = secret.trim().as_bytes();
        if secret.len() < MIN_KEY_LEN {
            return Err(format!(
                "is {} bytes long; a heartbeat key needs at least {MIN_KEY_LEN}",
                secret.len()
            ));
        }
        let digest = Sha256::new()
            .chain_update(b"hanat heartbeat key id\0")
            .chain_update(secret)
            .finalize();
        Ok(Key {
            id: hex(&digest[..4]),
            secret: secret.to_vec(),
        })
    }

    /// 8 hex digits naming the key in messages and logs: a hash of it, which
    /// reveals nothing usable about it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        #[allow(clippy::expect_used)]
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC accepts any key length")
    }
}

/// The keys valid now: heartbeats are signed with `current`; `previous`
/// (the one `current` replaced) is still accepted, so NATs that have not
/// yet read the new key keep being heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub current: Key,
    pub previous: Option<Key>,
}

impl Keys {
    fn find(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

/// What a receiver accepts. The default accepts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `None`: no key (only with `accept_unauthenticated`).
    pub keys: Option<Keys>,
    /// Also accept `hanat/1` heartbeats, which anyone who can forge the
    /// sender's address can fake (a rolling upgrade from a version without
    /// keys).
    pub accept_unauthenticated: bool,
    /// Sign with the previous key: for a while after this NAT read a new
    /// one, so peers that have not read it yet still accept what it sends.
    pub sign_with_previous: bool,
}

/// When and in which run of its sender a heartbeat was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: u64,
    pub seq: u64,
    pub sent_ms: u64,
}

impl Stamp {
    /// A stamp from its three wire fields (decimal numbers).
    pub fn parse(epoch: &str, seq: &str, sent_ms: &str) -> Result<Stamp, Rejected> {
        let number = |s: &str| s.parse::<u64>().map_err(|_| Rejected::Malformed);
        Ok(Stamp {
            epoch: number(epoch)?,
            seq: number(seq)?,
            sent_ms: number(sent_ms)?,
        })
    }
}

/// Why a datagram on the heartbeat port was not taken as a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Not a heartbeat of any version.
    Malformed,
    /// A `hanat/1` heartbeat, and unauthenticated ones are not accepted.
    Unauthenticated,
    /// Signed with a key this NAT does not know (a key it has not read
    /// yet, or a forger's).
    UnknownKey(String),
    /// The MAC does not match: forged or altered.
    BadMac,
    /// Sent too long ago or too far in the future, by this clock.
    Stale { skew_ms: i64 },
    /// Not newer than the last accepted from the same peer.
    Replayed,
    /// A `hanat/2` heartbeat, and this NAT has no key to check it.
    NoKey,
}

impl Rejected {
    /// A name per kind of rejection, for rate-limiting its log line.
    pub fn label(&self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Unauthenticated => "unauthenticated",
            Rejected::UnknownKey(_) => "unknown key",
            Rejected::BadMac => "bad mac",
            Rejected::Stale { .. } => "stale",
            Rejected::Replayed => "replayed",
            Rejected::NoKey => "no key",
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Malformed => f.write_str("not a heartbeat"),
            Rejected::Unauthenticated => f.write_str(
                "unauthenticated (hanat/1) heartbeat, and peers.accept_unauthenticated is off",
            ),
            Rejected::UnknownKey(id) => write!(f, "signed with an unknown key {id}"),
            Rejected::BadMac => f.write_str("its MAC does not match (forged or altered)"),
            Rejected::Stale { skew_ms } => write!(
                f,
                "stale: its clock is {skew_ms} ms off ours (at most {} ms allowed)",
                MAX_SKEW.as_millis()
            ),
            Rejected::Replayed => f.write_str("replayed: not newer than the last one heard"),
            Rejected::NoKey => f.write_str("authenticated (hanat/2), and this NAT has no key"),
        }
    }
}

/// A heartbeat that passed [`open`]; `stamp` is `None` for `hanat/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub msg: Message,
    pub stamp: Option<Stamp>,
}

/// The `hanat/2` text of `msg`, signed with `key`.
pub fn seal(msg: &Message, stamp: Stamp, key: &Key) -> String {
    let body = format!(
        "{MAGIC} {} {} {} {} {} {} {}",
        msg.instance, msg.az, msg.status, stamp.epoch, stamp.seq, stamp.sent_ms, key.id
    );
    let tag = key
        .mac()
        .chain_update(body.as_bytes())
        .finalize()
        .into_bytes();
    format!("{body} {}", hex(&tag))
}

/// What to send under `policy`: signed when there is a key, else `hanat/1`.
pub fn encode(msg: &Message, stamp: Stamp, policy: &Policy) -> String {
    match &policy.keys {
        Some(Keys {
            previous: Some(previous),
            ..
        }) if policy.sign_with_previous => seal(msg, stamp, previous),
        Some(keys) => seal(msg, stamp, &keys.current),
        None => Message {
            seq: stamp.seq,
            ..msg.clone()
        }
        .encode(),
    }
}

/// Check a datagram against `policy` and the receiver's clock `now_ms`
/// (Unix ms). Replays are [`Replay`]'s business.
pub fn open(bytes: &[u8], policy: &Policy, now_ms: u64) -> Result<Opened, Rejected> {
    if let Some(msg) = Message::decode(bytes) {
        return match policy.accept_unauthenticated {
            true => Ok(Opened { msg, stamp: None }),
            false => Err(Rejected::Unauthenticated),
        };
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Rejected::Malformed)?;
    let (body, tag) = text
        .trim_end()
        .rsplit_once(' ')
        .ok_or(Rejected::Malformed)?;
    let parts: Vec<&str> = body.split(' ').collect();
    let [magic, instance, az, status, epoch, seq, sent_ms, key_id] = parts[..] else {
        return Err(Rejected::Malformed);
    };
    if magic != MAGIC {
        return Err(Rejected::Malformed);
    }
    let stamp = Stamp::parse(epoch, seq, sent_ms)?;
    let v1 = format!("hanat/1 {instance} {az} {status} {}", stamp.seq);
    let msg = Message::decode(v1.as_bytes()).ok_or(Rejected::Malformed)?;
    verify(body.as_bytes(), key_id, tag, stamp.sent_ms, policy, now_ms)?;
    Ok(Opened {
        msg,
        stamp: Some(stamp),
    })
}

/// A MAC over `text` with the key that signs now (`None` without a key):
/// `(key id, hex MAC)`. For messages other than heartbeats, such as
/// replicated connection state, signed with the same keys.
pub fn sign(text: &[u8], policy: &Policy) -> Option<(String, String)> {
    let keys = policy.keys.as_ref()?;
    let key = match (&keys.previous, policy.sign_with_previous) {
        (Some(previous), true) => previous,
        _ => &keys.current,
    };
    let tag = key.mac().chain_update(text).finalize().into_bytes();
    Some((key.id.clone(), hex(&tag)))
}

/// Whether `tag` (hex) is the MAC of `text` under the key `key_id` of
/// `policy` ([`sign`]'s counterpart), and `sent_ms` is fresh at `now_ms`.
pub fn verify(
    text: &[u8],
    key_id: &str,
    tag: &str,
    sent_ms: u64,
    policy: &Policy,
    now_ms: u64,
) -> Result<(), Rejected> {
    let tag = unhex(tag).ok_or(Rejected::Malformed)?;
    let keys = policy.keys.as_ref().ok_or(Rejected::NoKey)?;
    let key = keys
        .find(key_id)
        .ok_or_else(|| Rejected::UnknownKey(key_id.to_owned()))?;
    key.mac()
        .chain_update(text)
        .verify_slice(&tag)
        .map_err(|_| Rejected::BadMac)?;
    let skew_ms = sent_ms as i64 - now_ms as i64;
    if skew_ms.unsigned_abs() > MAX_SKEW.as_millis() as u64 {
        return Err(Rejected::Stale { skew_ms });
    }
    Ok(())
}

/// The newest stamp accepted from each peer: a message counts only if it
/// is newer. Within one run of the sender that is a higher `seq`; a new run
/// (another `epoch`) must have been sent later than the last message heard.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    last: HashMap<InstanceId, Stamp>,
}

impl Replay {
    /// Accept `stamp` from `from` if it is newer, and remember it.
    pub fn check(&mut self, from: &InstanceId, stamp: Stamp) -> Result<(), Rejected> {
        if let Some(last) = self.last.get(from) {
            let newer = match stamp.epoch == last.epoch {
                true => stamp.seq > last.seq,
                false => stamp.sent_ms > last.sent_ms,
            };
            if !newer {
                return Err(Rejected::Replayed);
            }
        }
        self.last.insert(from.clone(), stamp);
        Ok(())
    }

    /// Forget every peer but those `keep` says to keep (replaced instances
    /// never speak again).
    pub fn retain(&mut self, keep: impl Fn(&InstanceId) -> bool) {
        self.last.retain(|id, _| keep(id));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn key(c: char) -> Key {
        Key::new(&c.to_string().repeat(40)).unwrap()
    }

    fn msg(status: Status) -> Message {
        Message {
            instance: InstanceId("i-0a".into()),
            az: "eu-west-1a".into(),
            status,
            seq: 0,
        }
    }

    fn policy(current: Key, previous: Option<Key>) -> Policy {
        Policy {
            keys: Some(Keys { current, previous }),
            ..Policy::default()
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            epoch: NOW - 60_000,
            seq,
            sent_ms: NOW,
        }
    }

    #[test]
    fn a_sealed_heartbeat_opens_with_its_key_and_shows_no_secret() {
        let k = key('a');
        let text = seal(&msg(Status::Failing), stamp(7), &k);
        assert!(text.starts_with("hanat/2 i-0a eu-west-1a failing "));
        assert!(!text.contains("aaaaaaaa"), "{text}");
        assert!(!format!("{k:?}").contains("aaaa"));
        let opened = open(text.as_bytes(), &policy(k, None), NOW + 300).unwrap();
        assert_eq!(opened.msg.status, Status::Failing);
        assert_eq!(opened.msg.seq, 7);
        assert_eq!(opened.stamp, Some(stamp(7)));
    }

    #[test]
    fn forged_altered_and_foreign_heartbeats_are_rejected() {
        let (good, bad) = (key('a'), key('b'));
        let p = policy(good.clone(), None);
        // A forger with the wrong key.
        let forged = seal(&msg(Status::Failing), stamp(1), &bad);
        assert_eq!(
            open(forged.as_bytes(), &p, NOW),
            Err(Rejected::UnknownKey(bad.id().to_owned()))
        );
        // A forger who names the right key id but cannot compute its MAC.
        let claimed = forged.replace(bad.id(), good.id());
        assert_eq!(open(claimed.as_bytes(), &p, NOW), Err(Rejected::BadMac));
        // A genuine message with its status changed.
        let altered = seal(&msg(Status::Ok), stamp(1), &good).replace(" ok ", " failing ");
        assert_eq!(open(altered.as_bytes(), &p, NOW), Err(Rejected::BadMac));
        // Unauthenticated ones only when allowed.
        let v1 = msg(Status::Failing).encode();
        assert_eq!(open(v1.as_bytes(), &p, NOW), Err(Rejected::Unauthenticated));
        let lax = Policy {
            accept_unauthenticated: true,
            ..p
        };
        assert_eq!(open(v1.as_bytes(), &lax, NOW).unwrap().stamp, None);
        for junk in [
            "",
            "hanat/2",
            "hanat/2 i-0a az ok 1 2 3 id zz",
            "\u{1}\u{2}",
        ] {
            assert_eq!(open(junk.as_bytes(), &lax, NOW), Err(Rejected::Malformed));
        }
        let no_key = Policy {
            accept_unauthenticated: true,
            ..Policy::default()
        };
        assert_eq!(open(forged.as_bytes(), &no_key, NOW), Err(Rejected::NoKey));
    }

    #[test]
    fn stale_heartbeats_are_rejected_both_ways() {
        let k = key('a');
        let p = policy(k.clone(), None);
        let text = seal(&msg(Status::Ok), stamp(1), &k);
        let limit = MAX_SKEW.as_millis() as u64;
        assert!(open(text.as_bytes(), &p, NOW + limit).is_ok());
        assert_eq!(
            open(text.as_bytes(), &p, NOW + limit + 1),
            Err(Rejected::Stale {
                skew_ms: -(limit as i64) - 1
            })
        );
        assert!(matches!(
            open(text.as_bytes(), &p, NOW - limit - 1),
            Err(Rejected::Stale { .. })
        ));
    }

    #[test]
    fn the_previous_key_is_accepted_during_a_rotation() {
        let (old, new) = (key('o'), key('n'));
        let rotated = policy(new.clone(), Some(old.clone()));
        let by_old = seal(&msg(Status::Ok), stamp(1), &old);
        assert!(open(by_old.as_bytes(), &rotated, NOW).is_ok());
        assert!(encode(&msg(Status::Ok), stamp(2), &rotated).contains(new.id()));
        // Right after reading a new key, a NAT still signs with the old one.
        let grace = Policy {
            sign_with_previous: true,
            ..rotated.clone()
        };
        assert!(encode(&msg(Status::Ok), stamp(3), &grace).contains(old.id()));
        // Once the old key is gone, it is unknown.
        let after = policy(new, None);
        assert!(matches!(
            open(by_old.as_bytes(), &after, NOW),
            Err(Rejected::UnknownKey(_))
        ));
    }

    #[test]
    fn short_keys_are_refused() {
        let err = Key::new("  short  ").unwrap_err();
        assert!(
            err.contains("5 bytes") && err.contains("at least 32"),
            "{err}"
        );
        assert_eq!(Key::new(&"x".repeat(32)).unwrap().id().len(), 8);
    }

    #[test]
    fn each_stamp_counts_once_and_a_restart_must_be_newer() {
        let mut r = Replay::default();
        let a = InstanceId("i-0a".into());
        let b = InstanceId("i-0b".into());
        assert_eq!(r.check(&a, stamp(5)), Ok(()));
        assert_eq!(r.check(&a, stamp(5)), Err(Rejected::Replayed));
        assert_eq!(r.check(&a, stamp(4)), Err(Rejected::Replayed));
        assert_eq!(r.check(&b, stamp(4)), Ok(()), "per peer");
        assert_eq!(r.check(&a, stamp(6)), Ok(()));
        // The sender restarted: a new epoch, seq from 1, sent later.
        let restart = Stamp {
            epoch: NOW + 1_000,
            seq: 1,
            sent_ms: NOW + 1_000,
        };
        assert_eq!(r.check(&a, restart), Ok(()));
        // A message of the previous run, replayed now, is older.
        assert_eq!(r.check(&a, stamp(99)), Err(Rejected::Replayed));
    }

    /// What a datagram costs the receive loop before and with the MAC:
    /// junk, an unsigned heartbeat, one signed with an unknown key and one
    /// with a bad MAC. A measurement, run by hand:
    /// `cargo test --lib per_datagram -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn per_datagram_cost() {
        let p = policy(key('a'), None);
        let junk: Vec<u8> = (0..200u8).collect();
        let unsigned = msg(Status::Failing).encode();
        let foreign = seal(&msg(Status::Failing), stamp(1), &key('z'));
        let mut forged = seal(&msg(Status::Failing), stamp(1), &key('a'));
        forged.replace_range(forged.len() - 4.., "0000");
        for (what, bytes) in [
            ("junk", junk.as_slice()),
            ("unsigned", unsigned.as_bytes()),
            ("unknown key", foreign.as_bytes()),
            ("bad MAC", forged.as_bytes()),
        ] {
            let n = 200_000;
            let t = std::time::Instant::now();
            for _ in 0..n {
                assert!(open(std::hint::black_box(bytes), &p, NOW).is_err());
            }
            println!(
                "{what}: {:.2} µs per datagram",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
