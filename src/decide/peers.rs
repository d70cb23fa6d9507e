//! Peers: the NAT instances of the same deployment in other AZs, and the
//! pure logic that decides when this NAT adopts another AZ's routes.
//!
//! Every daemon sends a one-line UDP heartbeat to every peer each
//! `peers.interval`, carrying its own forwarding verdict, and at once
//! when that verdict changes; a heartbeat counts only if [`super::auth`]
//! accepts it (signed, fresh, not replayed) and it comes from the address
//! EC2 gives for the instance it names. A peer is **dead** when it says so itself
//! (`failing`, `exiting`) or when it has gone silent *and* EC2 confirms its
//! instance is gone: silence alone (a partition) never moves a route. The
//! AZ of a dead peer is adopted by exactly one healthy NAT: the next AZ after
//! it in name order (wrapping) that has one. Route changes are planned by
//! [`super::routes::plan_with`] so they only take routes that point at the
//! dead peer, are blackholes or are missing: a stale decision is harmless.
//! When no NAT is healthy at all, one daemon that still runs points the
//! orphaned AZ at its fallback NAT Gateway (if configured) instead.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

pub use super::auth::Message;
use super::auth::{Policy, Replay};
use super::backoff::COVER_RETRY;
use super::flows::SILENCE;
use crate::domain::{EniId, Identity, InstanceId, RouteTarget, Status};

/// What to make of a heartbeat that arrived from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A known peer, from its own address: record it.
    Record,
    /// An instance not (yet) in the peer list: refresh the list, record
    /// nothing until it is known.
    Unknown,
    /// It names a known peer but comes from another address: ignore it.
    /// (A signed heartbeat relayed by someone else, or, with unauthenticated
    /// heartbeats accepted, a forgery by a host that cannot forge its
    /// source address.)
    WrongSender,
}

/// Classify a heartbeat by who it claims to be and where it came from.
pub fn arrival(peers: &[Peer], msg: &Message, from: Ipv4Addr) -> Arrival {
    match peers.iter().find(|p| p.instance == msg.instance) {
        None => Arrival::Unknown,
        Some(p) if p.ip == from => Arrival::Record,
        Some(_) => Arrival::WrongSender,
    }
}

/// A NAT instance of the same deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub instance: InstanceId,
    pub az: String,
    pub eni: EniId,
    pub ip: Ipv4Addr,
}

impl Peer {
    /// The two ways a route can point at this NAT: its interface, or its
    /// instance.
    pub fn route_targets(&self) -> [RouteTarget; 2] {
        [
            RouteTarget::Eni(self.eni.clone()),
            RouteTarget::Instance(self.instance.clone()),
        ]
    }
}

/// What this daemon has heard from its peers, with times on its own
/// monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct View {
    heard: HashMap<InstanceId, (Duration, Status)>,
}

impl View {
    pub fn record(&mut self, msg: &Message, now: Duration) {
        self.heard.insert(msg.instance.clone(), (now, msg.status));
    }

    /// How long since the peer was last heard, if ever.
    pub fn silence(&self, id: &InstanceId, now: Duration) -> Option<Duration> {
        self.heard.get(id).map(|(at, _)| now.saturating_sub(*at))
    }

    /// The peer's last status if heard within `fresh`, else `None` (silent).
    pub fn fresh(&self, id: &InstanceId, now: Duration, fresh: Duration) -> Option<Status> {
        self.heard
            .get(id)
            .filter(|(at, _)| now.saturating_sub(*at) < fresh)
            .map(|(_, s)| *s)
    }
}

/// What to do about the peers this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Dead peers whose AZ this NAT must adopt.
    pub adopt: Vec<Peer>,
    /// Silent peers whose instance state EC2 must confirm.
    pub suspects: Vec<InstanceId>,
    /// Dead peers, whoever adopts them (for logs).
    pub dead: Vec<InstanceId>,
    /// Dead peers whose AZ no healthy NAT can adopt and that this daemon
    /// must point at the AZ's fallback NAT Gateway, if it has one.
    pub fallback: Vec<Peer>,
}

/// Decide adoptions. `gone`: peers EC2 says are not running (or that left
/// their group). Pure and deterministic.
pub fn decide(
    me: &Identity,
    my_status: Status,
    peers: &[Peer],
    view: &View,
    gone: &HashSet<InstanceId>,
    now: Duration,
    dead_after: Duration,
) -> Decision {
    let mut d = Decision::default();
    // Healthy NATs by AZ, this one included when it forwards.
    let mut healthy: Vec<(&str, &InstanceId)> = peers
        .iter()
        .filter(|p| {
            !gone.contains(&p.instance)
                && view.fresh(&p.instance, now, dead_after) == Some(Status::Ok)
        })
        .map(|p| (p.az.as_str(), &p.instance))
        .collect();
    if my_status == Status::Ok {
        healthy.push((me.availability_zone.as_str(), &me.instance_id));
    }
    healthy.sort();
    // Daemons still running, whatever their verdict: when no NAT is
    // healthy, one of them points an orphaned AZ at its fallback NAT Gateway.
    let mut running: Vec<(&str, &InstanceId)> = peers
        .iter()
        .filter(|p| {
            !gone.contains(&p.instance)
                && matches!(
                    view.fresh(&p.instance, now, dead_after),
                    Some(Status::Starting | Status::Ok | Status::Failing)
                )
        })
        .map(|p| (p.az.as_str(), &p.instance))
        .collect();
    if my_status != Status::Exiting {
        running.push((me.availability_zone.as_str(), &me.instance_id));
    }
    running.sort();
    for p in peers {
        let said = view.fresh(&p.instance, now, dead_after);
        let dead =
            gone.contains(&p.instance) || matches!(said, Some(Status::Failing | Status::Exiting));
        if !dead {
            if said.is_none() {
                d.suspects.push(p.instance.clone());
            }
            continue;
        }
        d.dead.push(p.instance.clone());
        // An AZ that has another healthy NAT (a replacement) needs no adopter.
        if healthy.iter().any(|(az, _)| *az == p.az) {
            continue;
        }
        if healthy.is_empty() {
            // The AZ's own daemon, if it still runs, does this itself;
            // otherwise the next running one in the ring.
            let actor = running.iter().find(|(az, _)| *az >= p.az.as_str());
            if actor
                .or(running.first())
                .is_some_and(|(_, id)| **id == me.instance_id)
            {
                d.fallback.push(p.clone());
            }
            continue;
        }
        let after = healthy.iter().find(|(az, _)| *az > p.az.as_str());
        if after
            .or(healthy.first())
            .is_some_and(|(_, id)| **id == me.instance_id)
        {
            d.adopt.push(p.clone());
        }
    }
    d
}

/// What this daemon knows of its peers: the list from Auto Scaling and EC2,
/// what each last said, and which are gone. Shared by the peers loop, which
/// keeps it, and the routes loop, which asks it who is alive. Pure.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    pub peers: Vec<Peer>,
    pub view: View,
    /// Peers EC2 says are gone, or that left their group.
    pub gone: HashSet<InstanceId>,
    /// Of `gone`, the peers that were only silent while EC2's status checks
    /// called them impaired (a frozen instance EC2 still says runs): they
    /// are alive again the moment they are heard.
    pub impaired: HashSet<InstanceId>,
    /// A peer we do not know spoke: refresh the list.
    pub refresh_wanted: bool,
    /// Which heartbeats count (the keys, and whether `hanat/1` does).
    pub auth: Policy,
    /// The newest heartbeat accepted from each peer.
    pub replay: Replay,
    /// A heartbeat came signed with a key we do not know: read the keys
    /// again (a rotation may have started).
    pub key_wanted: bool,
}

impl PeerState {
    /// Take a fresh peer list (`list`: alive in our groups; `departed`:
    /// instances of our groups no longer alive). Peers that left stay while
    /// their AZ may still need covering: until the AZ has a NAT again that
    /// says `ok` (a replacement still starting serves nobody: the dead one
    /// must stay to be adopted meanwhile) and they are silent (one draining
    /// on a planned exit still forwards handed-off flows), so the list does
    /// not grow with every replacement.
    /// Returns whether the set of peers changed.
    pub fn merge(&mut self, list: Vec<Peer>, departed: Vec<InstanceId>, now: Duration) -> bool {
        let before: Vec<InstanceId> = self.peers.iter().map(|p| p.instance.clone()).collect();
        // One that left its group is gone for good, heard or not.
        self.impaired
            .retain(|id| list.iter().any(|p| &p.instance == id) && !departed.contains(id));
        let mut peers = list;
        for p in std::mem::take(&mut self.peers) {
            if !peers.iter().any(|q| q.instance == p.instance) {
                self.gone.insert(p.instance.clone());
                peers.push(p);
            }
        }
        self.gone.extend(departed);
        let (gone, view) = (&self.gone, &self.view);
        let live_azs: HashSet<String> = peers
            .iter()
            .filter(|p| !gone.contains(&p.instance))
            .filter(|p| view.fresh(&p.instance, now, SILENCE) == Some(Status::Ok))
            .map(|p| p.az.clone())
            .collect();
        peers.retain(|p| {
            !gone.contains(&p.instance)
                || !live_azs.contains(&p.az)
                || view.fresh(&p.instance, now, SILENCE).is_some()
        });
        self.gone
            .retain(|id| peers.iter().any(|p| &p.instance == id));
        let gone = &self.gone;
        self.impaired.retain(|id| gone.contains(id));
        self.replay
            .retain(|id| peers.iter().any(|p| &p.instance == id));
        self.peers = peers;
        self.refresh_wanted = false;
        let after: Vec<InstanceId> = self.peers.iter().map(|p| p.instance.clone()).collect();
        before != after
    }

    /// Addresses to send heartbeats to: every peer that may still be there.
    pub fn heartbeat_targets(&self) -> Vec<Ipv4Addr> {
        self.peers
            .iter()
            .filter(|p| !self.gone.contains(&p.instance))
            .map(|p| p.ip)
            .collect()
    }

    /// What each peer said within [`SILENCE`], by address (flow hand-offs
    /// last while their previous holder is heard from).
    pub fn heard_by_ip(&self, now: Duration) -> HashMap<Ipv4Addr, Status> {
        self.peers
            .iter()
            .filter_map(|p| Some((p.ip, self.view.fresh(&p.instance, now, SILENCE)?)))
            .collect()
    }

    /// Route targets of peers known to be dead: gone by EC2, or heard
    /// recently saying they fail or leave.
    pub fn dead_targets(&self, now: Duration, fresh: Duration) -> Vec<RouteTarget> {
        self.peers
            .iter()
            .filter(|p| {
                self.gone.contains(&p.instance)
                    || matches!(
                        self.view.fresh(&p.instance, now, fresh),
                        Some(Status::Failing | Status::Exiting)
                    )
            })
            .flat_map(Peer::route_targets)
            .collect()
    }

    /// Whether `p` may still forward the connections it translates (a flow
    /// hand-off to it makes sense): not heard saying it fails, and heard
    /// from recently or not known to be gone. A NAT draining on a planned
    /// exit has left its group but still forwards, and says so.
    pub fn may_forward(&self, p: &Peer, now: Duration) -> bool {
        match self.view.fresh(&p.instance, now, SILENCE) {
            Some(Status::Failing) => false,
            Some(_) => true,
            None => !self.gone.contains(&p.instance),
        }
    }

    /// Interfaces of peers heard recently saying they forward.
    pub fn live_enis(&self, now: Duration, fresh: Duration) -> Vec<EniId> {
        self.peers
            .iter()
            .filter(|p| {
                !self.gone.contains(&p.instance)
                    && self.view.fresh(&p.instance, now, fresh) == Some(Status::Ok)
            })
            .map(|p| p.eni.clone())
            .collect()
    }

    /// A silent peer EC2's status checks call impaired though it runs: dead
    /// until it is heard again or its checks pass. Whether that is news.
    pub fn impair(&mut self, id: &InstanceId) -> bool {
        self.gone.insert(id.clone());
        self.impaired.insert(id.clone())
    }

    /// The peer is alive again (heard, or its checks pass): whether it had
    /// been dead by impairment alone.
    pub fn unimpair(&mut self, id: &InstanceId) -> bool {
        let was = self.impaired.remove(id);
        if was {
            self.gone.remove(id);
        }
        was
    }

    /// Record a heartbeat that arrived from `from` (see [`arrival`]).
    /// Returns what was made of it, and whether the peer's status changed.
    pub fn hear(&mut self, msg: &Message, from: Ipv4Addr, now: Duration) -> (Arrival, bool) {
        let what = arrival(&self.peers, msg, from);
        match what {
            Arrival::Record => {
                self.unimpair(&msg.instance);
                let before = self.view.fresh(&msg.instance, now, Duration::MAX);
                self.view.record(msg, now);
                (what, before != Some(msg.status))
            }
            Arrival::Unknown => {
                self.refresh_wanted = true;
                (what, false)
            }
            Arrival::WrongSender => (what, false),
        }
    }
}

/// How a dead peer's AZ is covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// This NAT takes its routes.
    Adopt,
    /// No NAT is healthy: its fallback NAT Gateway does.
    Gateway,
}

impl Cover {
    /// When to look at the dead peer's AZ again after covering it: each
    /// reconcile interval after a success, [`COVER_RETRY`] after an error.
    pub fn next_look(ok: bool, reconcile: Duration) -> Duration {
        if ok { reconcile } else { COVER_RETRY }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn me(az: &str) -> Identity {
        let mut id = crate::decide::routes::test_identity("i-me", "eni-me", "vpc-1");
        id.availability_zone = az.into();
        id
    }

    fn peer(id: &str, az: &str) -> Peer {
        Peer {
            instance: InstanceId(id.into()),
            az: az.into(),
            eni: EniId(format!("eni-{id}")),
            ip: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    fn heard(view: &mut View, id: &str, az: &str, status: Status, at: Duration) {
        view.record(
            &Message {
                instance: InstanceId(id.into()),
                az: az.into(),
                status,
                seq: 1,
            },
            at,
        );
    }

    /// [`decide`] for a NAT in `az`, with `dead_after` = 2 s.
    fn decide_in(
        az: &str,
        status: Status,
        peers: &[Peer],
        view: &View,
        gone: &HashSet<InstanceId>,
        now: Duration,
    ) -> Decision {
        decide(&me(az), status, peers, view, gone, now, S * 2)
    }

    fn ids(v: &[Peer]) -> Vec<&str> {
        v.iter().map(|p| p.instance.0.as_str()).collect()
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let m = Message {
            instance: InstanceId("i-0abc".into()),
            az: "eu-west-1a".into(),
            status: Status::Failing,
            seq: 42,
        };
        assert_eq!(m.encode(), "hanat/1 i-0abc eu-west-1a failing 42");
        assert_eq!(Message::decode(m.encode().as_bytes()), Some(m));
        for bad in [
            "",
            "hanat/2 i-1 a ok 1",
            "hanat/1 i-1 a fine 1",
            "hanat/1 x-1 a ok 1",
            "hanat/1 i-1 a ok",
            "hanat/1 i-1 a ok 1 extra",
        ] {
            assert_eq!(Message::decode(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(Message::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn heartbeats_count_only_from_the_peers_own_address() {
        let peers = [peer("i-a", "az-a")];
        let msg = |id: &str| Message {
            instance: InstanceId(id.into()),
            az: "az-a".into(),
            status: Status::Failing,
            seq: 1,
        };
        let own = Ipv4Addr::new(10, 0, 0, 1);
        let other = Ipv4Addr::new(10, 0, 3, 99);
        assert_eq!(arrival(&peers, &msg("i-a"), own), Arrival::Record);
        assert_eq!(arrival(&peers, &msg("i-a"), other), Arrival::WrongSender);
        assert_eq!(arrival(&peers, &msg("i-new"), other), Arrival::Unknown);
    }

    #[test]
    fn a_peer_that_says_it_fails_is_adopted_by_the_next_az() {
        let peers = [peer("i-a", "az-a"), peer("i-c", "az-c")];
        let mut view = View::default();
        heard(&mut view, "i-a", "az-a", Status::Failing, S * 10);
        heard(&mut view, "i-c", "az-c", Status::Ok, S * 10);
        // b is next after a: b adopts, c does not.
        let d = decide_in("az-b", Status::Ok, &peers, &view, &HashSet::new(), S * 10);
        assert_eq!(ids(&d.adopt), vec!["i-a"]);
        // Seen from c, with b healthy: c leaves it to b.
        let peers_c = [peer("i-a", "az-a"), peer("i-me-b", "az-b")];
        let mut view_c = view.clone();
        heard(&mut view_c, "i-me-b", "az-b", Status::Ok, S * 10);
        let d = decide_in(
            "az-c",
            Status::Ok,
            &peers_c,
            &view_c,
            &HashSet::new(),
            S * 10,
        );
        assert!(d.adopt.is_empty());
        assert_eq!(d.dead, vec![InstanceId("i-a".into())]);
    }

    #[test]
    fn ring_wraps_and_skips_unhealthy() {
        // c dies; a (first after wrap) adopts. From b's view b is not next.
        let peers = [peer("i-c", "az-c"), peer("i-b", "az-b")];
        let mut view = View::default();
        heard(&mut view, "i-c", "az-c", Status::Exiting, S);
        heard(&mut view, "i-b", "az-b", Status::Ok, S);
        let d = decide_in("az-a", Status::Ok, &peers, &view, &HashSet::new(), S);
        assert_eq!(ids(&d.adopt), vec!["i-c"]);
        // If a is not forwarding itself, b is the only healthy one: b adopts.
        let d = decide_in("az-a", Status::Failing, &peers, &view, &HashSet::new(), S);
        assert!(d.adopt.is_empty());
    }

    #[test]
    fn silence_alone_never_adopts() {
        let peers = [peer("i-a", "az-a")];
        let mut view = View::default();
        heard(&mut view, "i-a", "az-a", Status::Ok, S);
        // Partition: silent for 10 s, but EC2 says it runs.
        let d = decide_in("az-b", Status::Ok, &peers, &view, &HashSet::new(), S * 11);
        assert!(d.adopt.is_empty());
        assert_eq!(d.suspects, vec![InstanceId("i-a".into())]);
        // EC2 confirms it is gone: adopt.
        let gone: HashSet<InstanceId> = [InstanceId("i-a".into())].into();
        let d = decide_in("az-b", Status::Ok, &peers, &view, &gone, S * 11);
        assert_eq!(ids(&d.adopt), vec!["i-a"]);
    }

    #[test]
    fn a_healthy_replacement_in_the_az_means_no_adoption() {
        let peers = [peer("i-old", "az-a"), peer("i-new", "az-a")];
        let mut view = View::default();
        heard(&mut view, "i-new", "az-a", Status::Ok, S);
        let gone: HashSet<InstanceId> = [InstanceId("i-old".into())].into();
        let d = decide_in("az-b", Status::Ok, &peers, &view, &gone, S);
        assert!(d.adopt.is_empty());
        // A replacement still starting does not count: keep serving the AZ.
        heard(&mut view, "i-new", "az-a", Status::Starting, S);
        let d = decide_in("az-b", Status::Ok, &peers, &view, &gone, S);
        assert_eq!(ids(&d.adopt), vec!["i-old"]);
    }

    #[test]
    fn with_no_healthy_nat_one_running_daemon_falls_back() {
        // a is gone, b fails, c fails: nobody can adopt a. The first running
        // daemon at or after az-a in the ring (b) points it at the fallback.
        let gone: HashSet<InstanceId> = [InstanceId("i-a".into())].into();
        let peers = [peer("i-a", "az-a"), peer("i-c", "az-c")];
        let mut view = View::default();
        heard(&mut view, "i-c", "az-c", Status::Failing, S);
        let d = decide_in("az-b", Status::Failing, &peers, &view, &gone, S);
        assert!(d.adopt.is_empty());
        assert_eq!(ids(&d.fallback), vec!["i-a"]);
        // c leaves a to b; c's own AZ is c's to fall back (it still runs).
        let peers_c = [peer("i-a", "az-a"), peer("i-b", "az-b")];
        let mut view_c = View::default();
        heard(&mut view_c, "i-b", "az-b", Status::Failing, S);
        let d = decide_in("az-c", Status::Failing, &peers_c, &view_c, &gone, S);
        assert!(d.fallback.is_empty());
        // A failing peer's own AZ is left to that peer.
        let d = decide_in("az-b", Status::Failing, &peers, &view, &HashSet::new(), S);
        assert!(d.fallback.is_empty());
        // An exiting daemon acts for nobody; the next running one does.
        let d = decide_in("az-b", Status::Exiting, &peers, &view, &gone, S);
        assert!(d.fallback.is_empty());
        // The wrap: only a running daemon before the dead AZ.
        let peers_z = [peer("i-z", "az-z")];
        let gone_z: HashSet<InstanceId> = [InstanceId("i-z".into())].into();
        let d = decide_in(
            "az-a",
            Status::Starting,
            &peers_z,
            &View::default(),
            &gone_z,
            S,
        );
        assert_eq!(ids(&d.fallback), vec!["i-z"]);
        // As soon as one NAT is healthy, it adopts instead.
        heard(&mut view, "i-c", "az-c", Status::Ok, S);
        let d = decide_in("az-b", Status::Failing, &peers, &view, &gone, S);
        assert!(d.fallback.is_empty() && d.adopt.is_empty());
    }

    #[test]
    fn a_dead_peer_stays_to_be_adopted_until_its_replacement_says_ok() {
        let mut s = PeerState::default();
        let (old, new) = (peer("i-old", "a"), peer("i-new", "a"));
        let now = S * 100;
        s.merge(vec![old.clone()], vec![], now);
        // The old NAT is gone; its replacement is running but not ok yet
        // (a throttled EC2 kept the adopter from confirming it sooner).
        heard(&mut s.view, "i-new", "a", Status::Starting, now);
        s.merge(vec![new.clone()], vec![old.instance.clone()], now);
        assert_eq!(
            ids(&s.peers),
            ["i-new", "i-old"],
            "kept while nobody serves AZ a"
        );
        let d = decide_in("b", Status::Ok, &s.peers, &s.view, &s.gone, now);
        assert_eq!(ids(&d.adopt), ["i-old"]);
        // The replacement says ok: the old one goes at the next refresh.
        heard(&mut s.view, "i-new", "a", Status::Ok, now + S * 29);
        s.merge(vec![new], vec![], now + S * 30);
        assert_eq!(ids(&s.peers), ["i-new"]);
    }

    #[test]
    fn a_nat_that_is_not_ok_adopts_nothing() {
        let peers = [peer("i-a", "az-a")];
        let mut view = View::default();
        heard(&mut view, "i-a", "az-a", Status::Failing, S);
        for status in [Status::Starting, Status::Failing, Status::Exiting] {
            let d = decide_in("az-b", status, &peers, &view, &HashSet::new(), S);
            assert!(d.adopt.is_empty(), "{status}");
        }
    }
}
