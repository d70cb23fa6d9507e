//! Peers: the NAT instances of the same deployment in other AZs, as this
//! NAT knows them: the list from Auto Scaling and EC2, what each last said
//! in its heartbeat, which are gone. Pure.
//!
//! Every daemon sends a one-line UDP heartbeat to every peer each
//! `peers.interval`, carrying its own verdict, and at once when that
//! verdict changes; a heartbeat counts only if [`super::auth`] accepts it
//! (signed, fresh, not replayed) and it comes from the address EC2 gives
//! for the instance it names. Who is dead and who covers its AZ is
//! [`super::cover`]'s.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

pub use super::auth::Message;
use super::flows::SILENCE;

/// A peer that left its group stays listed while it was heard within
/// this long (it may be draining a planned exit) or its AZ has no NAT that
/// says `ok`.
pub const LISTED_AFTER_LEAVING: Duration = Duration::from_secs(10);
use crate::domain::{EniId, InstanceId, RouteTarget, Status};

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
    /// When EC2 says it was launched (Unix seconds).
    pub launched: Option<i64>,
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

    /// The peer's last status, however long ago it was heard.
    pub fn last(&self, id: &InstanceId) -> Option<Status> {
        self.heard.get(id).map(|(_, s)| *s)
    }

    /// When the first of the peers heard within `fresh` turns silent: the
    /// earliest `heard + fresh` still after `now`.
    pub fn next_silence(&self, now: Duration, fresh: Duration) -> Option<Duration> {
        self.heard
            .values()
            .map(|(at, _)| *at + fresh)
            .filter(|end| *end > now)
            .min()
    }

    /// The peer's last status if heard within `fresh`, else `None` (silent).
    pub fn fresh(&self, id: &InstanceId, now: Duration, fresh: Duration) -> Option<Status> {
        self.heard
            .get(id)
            .filter(|(at, _)| now.saturating_sub(*at) < fresh)
            .map(|(_, s)| *s)
    }
}

/// What this daemon knows of its peers: the list from Auto Scaling and EC2,
/// what each last said, and which are gone. Shared by the peers loop, which
/// keeps it, and the routes loop, which asks it who is alive. Pure; changed
/// only through its methods.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    peers: Vec<Peer>,
    view: View,
    /// Peers EC2 says are gone, or that left their group.
    gone: HashSet<InstanceId>,
    /// Of `gone`, the peers that were only silent while EC2's status checks
    /// called them impaired (a frozen instance EC2 still says runs): they
    /// are alive again the moment they are heard.
    impaired: HashSet<InstanceId>,
    /// When this NAT was launched, once EC2 said (Unix seconds).
    launched: Option<i64>,
}

impl PeerState {
    /// The peers, by AZ then instance.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// When this NAT was launched (Unix seconds), once EC2 said.
    pub fn launched(&self) -> Option<i64> {
        self.launched
    }

    /// EC2 says this NAT was launched at `at` (nothing if it did not say).
    pub fn set_launched(&mut self, at: Option<i64>) {
        self.launched = at.or(self.launched);
    }

    /// What each peer last said, and when.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether EC2 says `id` is gone (or impaired while silent).
    pub fn is_gone(&self, id: &InstanceId) -> bool {
        self.gone.contains(id)
    }

    /// The peers EC2 says are gone.
    pub fn gone(&self) -> &HashSet<InstanceId> {
        &self.gone
    }

    /// The peers dead only by impairment: asked about still.
    pub fn impaired(&self) -> impl Iterator<Item = &InstanceId> {
        self.impaired.iter()
    }

    /// EC2 says `id` is gone.
    pub fn confirm_gone(&mut self, id: &InstanceId) {
        self.gone.insert(id.clone());
    }

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
            .filter(|p| view.fresh(&p.instance, now, LISTED_AFTER_LEAVING) == Some(Status::Ok))
            .map(|p| p.az.clone())
            .collect();
        peers.retain(|p| {
            !gone.contains(&p.instance)
                || !live_azs.contains(&p.az)
                || view.fresh(&p.instance, now, LISTED_AFTER_LEAVING).is_some()
        });
        self.gone
            .retain(|id| peers.iter().any(|p| &p.instance == id));
        let gone = &self.gone;
        self.impaired.retain(|id| gone.contains(id));
        self.peers = peers;
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
    /// hand-off to it makes sense): heard lately saying it leaves (a NAT
    /// draining on a planned exit has left its group but still forwards,
    /// and says so), or neither heard saying it fails nor known to be gone.
    /// A NAT EC2 calls gone (terminated, or impaired while silent) forwards
    /// nothing, whatever it said last: mid-flow packets handed to it would
    /// go into silence instead of being reset here.
    pub fn may_forward(&self, p: &Peer, now: Duration) -> bool {
        match self.view.fresh(&p.instance, now, SILENCE) {
            Some(Status::Exiting) => true,
            Some(Status::Failing) => false,
            Some(Status::Ok | Status::Starting) | None => !self.gone.contains(&p.instance),
        }
    }

    /// Interfaces of peers heard recently saying they forward.
    pub fn live_enis(&self, now: Duration, fresh: Duration) -> Vec<EniId> {
        self.live(now, fresh).map(|p| p.eni.clone()).collect()
    }

    /// The AZs of the peers heard saying `ok` (and not gone).
    pub fn live_azs(&self, now: Duration, fresh: Duration) -> Vec<String> {
        let mut azs: Vec<String> = self.live(now, fresh).map(|p| p.az.clone()).collect();
        azs.sort();
        azs.dedup();
        azs
    }

    fn live(&self, now: Duration, fresh: Duration) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(move |p| {
            !self.gone.contains(&p.instance)
                && self.view.fresh(&p.instance, now, fresh) == Some(Status::Ok)
        })
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

    /// What each peer said, to be written by a test.
    #[cfg(test)]
    pub fn view_mut(&mut self) -> &mut View {
        &mut self.view
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
            Arrival::Unknown => (what, false),
            Arrival::WrongSender => (what, false),
        }
    }
}

#[cfg(test)]
impl Peer {
    /// A peer with the given instance id in `az`, for tests: interface
    /// `eni-<id>`, address 10.0.0.1.
    pub fn example(id: &str, az: &str) -> Peer {
        Peer {
            instance: InstanceId(id.into()),
            az: az.into(),
            eni: EniId(format!("eni-{id}")),
            ip: Ipv4Addr::new(10, 0, 0, 1),
            launched: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_silence_is_the_first_heard_peer_to_fall_silent() {
        let ms = Duration::from_millis;
        let mut view = View::default();
        let said = |id: &str| Message {
            instance: InstanceId(id.into()),
            az: "az-a".into(),
            status: Status::Ok,
            seq: 1,
        };
        assert_eq!(view.next_silence(ms(0), ms(300)), None, "nobody heard");
        view.record(&said("i-1"), ms(100));
        view.record(&said("i-2"), ms(250));
        assert_eq!(view.next_silence(ms(260), ms(300)), Some(ms(400)));
        assert_eq!(
            view.next_silence(ms(400), ms(300)),
            Some(ms(550)),
            "i-1 already silent"
        );
        assert_eq!(view.next_silence(ms(550), ms(300)), None, "both silent");
    }

    fn peer(id: &str, az: &str) -> Peer {
        Peer::example(id, az)
    }

    #[test]
    fn only_a_nat_that_may_still_forward_gets_its_connections_handed_back() {
        let ms = Duration::from_millis;
        // (last said, EC2 calls it gone, may forward?)
        let cases = [
            (Some(Status::Exiting), false, true),
            (Some(Status::Exiting), true, true), // left its group, draining
            (Some(Status::Ok), false, true),
            (Some(Status::Ok), true, false), // terminated a moment after its heartbeat
            (Some(Status::Starting), true, false),
            (Some(Status::Failing), false, false),
            (None, false, true),
            (None, true, false),
        ];
        for (said, gone, want) in cases {
            let p = peer("i-1", "az-a");
            let mut s = PeerState {
                peers: vec![p.clone()],
                ..PeerState::default()
            };
            if let Some(status) = said {
                let msg = Message {
                    instance: p.instance.clone(),
                    az: p.az.clone(),
                    status,
                    seq: 1,
                };
                s.view_mut().record(&msg, ms(1000));
            }
            if gone {
                s.confirm_gone(&p.instance);
            }
            assert_eq!(s.may_forward(&p, ms(1300)), want, "{said:?} gone={gone}");
        }
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
}
