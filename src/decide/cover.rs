//! Covering an AZ whose own NAT cannot serve it, as pure rules: who is
//! dead, who covers its AZ ([`decide`]), and what each kind of take may
//! touch and while when ([`Guard`], [`gate`]). The daemon reads, asks these,
//! and writes; nothing here reads a clock or the network, so every rule is
//! tested as a table and the whole as a property (see the tests).
//!
//! **Who is dead.** A peer that says so itself (`failing`, `exiting`), or
//! that EC2 or Auto Scaling says is gone (terminated, left its group, or
//! impaired by EC2's status checks while silent). Silence alone (a
//! partition) is only a suspicion for EC2 to confirm: it never moves a route.
//!
//! **Who covers a dead peer's AZ.** Nobody, if the AZ has a NAT that says
//! `ok` (a replacement). Else the first NAT that says `ok` in the AZs after
//! it in name order (wrapping): exactly one, as every NAT computes the same
//! ring from the same heartbeats. When no NAT says `ok`, the first daemon
//! still running at or after the AZ points it at the AZ's fallback NAT
//! Gateway instead.
//!
//! **What each take may touch.** A missing default route is always created;
//! an existing one is replaced only where the row allows, and every write
//! is preceded by asking whether the row's condition still holds (a stale
//! decision then writes nothing).
//!
//! | take | routes it may replace | each write only while |
//! |---|---|---|
//! | own AZ ([`Guard::OwnAz`]) | any of its AZ's; held back by [`gate`]: all until this NAT's own probe passes, and during `failback = drain:D` those of a running NAT or a NAT Gateway | this NAT's verdict is the one the plan was made on, and it still holds its AZ (no newer NAT of the AZ runs: [`super::holder`]) |
//! | adoption ([`Guard::Adopt`]) | the dead peer's (interface or instance), blackholes, the AZ's fallback NAT Gateway | this NAT says `ok`, and no NAT of the dead peer's AZ (it, or its replacement) is heard saying `ok` |
//! | fallback ([`Guard::FallBack`]: a dead peer's AZ, or this NAT's own when it fails or leaves and no peer says `ok`, [`own_az_falls_back`]) | blackholes, this NAT's, NATs known dead | no NAT instance says `ok`, this one included |
//!
//! The safety this buys, checked by the property tests: a route held by a
//! NAT that says `ok`, is heard, and that EC2 counts as running in its
//! group is never taken by a cover; and an AZ whose NAT is dead is covered
//! by exactly one NAT when the NATs hear each other.

use super::backoff::COVER_RETRY;
use super::peers::{Peer, View};
use super::routes::{Action, Plan};
use crate::domain::{EniId, Identity, InstanceId, Route, RouteTarget, Status};
use std::collections::HashSet;
use std::time::Duration;

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
    suspect_after: Duration,
) -> Decision {
    let mut d = Decision::default();
    // What each peer said within `suspect_after`; nothing for one EC2 says is gone.
    let said = |p: &Peer| match gone.contains(&p.instance) {
        true => None,
        false => view.fresh(&p.instance, now, suspect_after),
    };
    let ring = |counts: &dyn Fn(Option<Status>) -> bool| ring(me, my_status, peers, &said, counts);
    // Healthy NATs, this one included when it forwards.
    let healthy = ring(&|s| s == Some(Status::Ok));
    // Daemons still running, whatever their verdict: when no NAT is
    // healthy, one of them points an orphaned AZ at its fallback NAT
    // Gateway. Those leaving act for others only when no other runs.
    let mut running = ring(&|s| s.is_some_and(|s| s != Status::Exiting));
    if running.is_empty() {
        running = ring(&|s| s == Some(Status::Exiting));
    }
    for p in peers {
        // What it said, gone or not.
        let heard = view.fresh(&p.instance, now, suspect_after);
        let dead =
            gone.contains(&p.instance) || matches!(heard, Some(Status::Failing | Status::Exiting));
        if !dead {
            if heard.is_none() {
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
            // A NAT that still speaks (it said it fails or leaves) points
            // its own AZ at the fallback itself ([`own_az_falls_back`]);
            // for one that is gone, the first running daemon at or after
            // its AZ in the ring does.
            if said(p).is_some() {
                continue;
            }
            if next_in(&running, &p.az, true) == Some(&me.instance_id) {
                d.fallback.push(p.clone());
            }
            continue;
        }
        if next_in(&healthy, &p.az, false) == Some(&me.instance_id) {
            d.adopt.push(p.clone());
        }
    }
    d
}

/// The NATs (this one on `my_status`, each peer on what it `said`) whose
/// word `counts`, by AZ then instance: the ring adoption goes round.
fn ring<'a>(
    me: &'a Identity,
    my_status: Status,
    peers: &'a [Peer],
    said: &dyn Fn(&Peer) -> Option<Status>,
    counts: &dyn Fn(Option<Status>) -> bool,
) -> Vec<(&'a str, &'a InstanceId)> {
    let mut v: Vec<(&str, &InstanceId)> = peers
        .iter()
        .filter(|p| counts(said(p)))
        .map(|p| (p.az.as_str(), &p.instance))
        .collect();
    if counts(Some(my_status)) {
        v.push((me.availability_zone.as_str(), &me.instance_id));
    }
    v.sort();
    v
}

/// The first NAT of `ring` in an AZ after `az` (or at it, `inclusive`),
/// wrapping round.
fn next_in<'a>(
    ring: &[(&str, &'a InstanceId)],
    az: &str,
    inclusive: bool,
) -> Option<&'a InstanceId> {
    ring.iter()
        .find(|(a, _)| *a > az || (inclusive && *a == az))
        .or(ring.first())
        .map(|(_, id)| *id)
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

/// What a take may do, and while when: [`Guard::may_take`] is asked of each
/// existing route when the take is planned, [`Guard::holds`] before each
/// write. One variant per row of the module's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// This NAT's own AZ, planned while its verdict was `planned`.
    OwnAz { planned: Status },
    /// A dead peer's AZ, taken by this NAT; `fallback`: the AZ's fallback
    /// NAT Gateway, which only stands in until a NAT instance is healthy.
    Adopt {
        dead: Peer,
        fallback: Option<RouteTarget>,
    },
    /// An AZ pointed at its fallback NAT Gateway. `me`: this NAT's route
    /// targets (interface, instance); `dead`: those of NATs known dead.
    FallBack {
        me: [RouteTarget; 2],
        dead: Vec<RouteTarget>,
    },
}

/// What [`Guard::holds`] reads at the moment of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// This NAT's verdict now.
    pub status: Status,
    /// Interfaces of the peers heard saying `ok` now (and not gone).
    pub live: Vec<EniId>,
    /// Their AZs.
    pub live_azs: Vec<String>,
    /// This NAT holds its own AZ ([`super::holder::own_az`]).
    pub holds_az: bool,
}

impl Guard {
    /// Whether this take may replace an existing default route.
    pub fn may_take(&self, r: &Route) -> bool {
        match self {
            Guard::OwnAz { .. } => true,
            Guard::Adopt { dead, fallback } => {
                r.blackhole
                    || dead.route_targets().contains(&r.target)
                    || Some(&r.target) == fallback.as_ref()
            }
            Guard::FallBack { me, dead } => {
                r.blackhole || me.contains(&r.target) || dead.contains(&r.target)
            }
        }
    }

    /// Whether the decision the take was planned on still holds.
    pub fn holds(&self, now: &Moment) -> bool {
        match self {
            Guard::OwnAz { planned } => now.status == *planned && now.holds_az,
            // A NAT of the dead peer's AZ that says `ok` (its replacement)
            // takes the AZ itself: an adoption planned before it was heard
            // must not write over it.
            Guard::Adopt { dead, .. } => {
                now.status == Status::Ok
                    && !now.live.contains(&dead.eni)
                    && !now.live_azs.contains(&dead.az)
            }
            Guard::FallBack { .. } => now.status != Status::Ok && now.live.is_empty(),
        }
    }
}

/// Whether this NAT points its own AZ at the AZ's fallback NAT Gateway: it
/// fails or leaves, and no peer says `ok` to adopt the AZ instead.
pub fn own_az_falls_back(status: Status, live: &[EniId]) -> bool {
    matches!(status, Status::Failing | Status::Exiting) && live.is_empty()
}

/// Keep only what this NAT may do now with its own AZ's routes: nothing but
/// the source/destination check until its own forwarding is proven (`Ok`);
/// and while `drain_left` (`failback = drain:D`), no route held by a running
/// NAT (`holders`) or a fallback NAT Gateway. Returns the plan and how many
/// actions were held back.
pub fn gate(mut plan: Plan, status: Status, drain_left: bool, holders: &[EniId]) -> (Plan, usize) {
    let before = plan.actions.len();
    plan.actions.retain(|a| match a {
        Action::DisableSourceDestCheck { .. } => true,
        _ if status != Status::Ok => false,
        Action::ReplaceRoute {
            from: RouteTarget::Eni(e),
            blackhole: false,
            ..
        } if drain_left => !holders.contains(e),
        Action::ReplaceRoute {
            from: RouteTarget::NatGateway(_),
            blackhole: false,
            ..
        } => !drain_left,
        _ => true,
    });
    let held = before - plan.actions.len();
    (plan, held)
}

/// The interfaces of NATs whose routes `plan` would take while the failback
/// drain lasts and that nobody has vouched for yet: `live` (heard saying
/// `ok`) are holders already, `dead` never are. The routes loop asks EC2
/// about these.
pub fn unvouched_holders(plan: &Plan, live: &[EniId], dead: &[RouteTarget]) -> Vec<EniId> {
    let mut v: Vec<EniId> = Vec::new();
    for action in &plan.actions {
        if let Action::ReplaceRoute {
            from: RouteTarget::Eni(e),
            blackhole: false,
            ..
        } = action
            && !live.contains(e)
            && !dead.contains(&RouteTarget::Eni(e.clone()))
            && !v.contains(e)
        {
            v.push(e.clone());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::auth::Message;

    const S: Duration = Duration::from_secs(1);

    fn me(az: &str) -> Identity {
        let mut id = Identity::example("i-me", "eni-me", "vpc-1");
        id.availability_zone = az.into();
        id
    }

    fn peer(id: &str, az: &str) -> Peer {
        Peer::example(id, az)
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

    /// [`decide`] for a NAT in `az`, with `suspect_after` = 2 s.
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
        // A failing or leaving peer's own AZ is left to that peer.
        let d = decide_in("az-b", Status::Failing, &peers, &view, &HashSet::new(), S);
        assert!(d.fallback.is_empty());
        let mut leaving = view.clone();
        heard(&mut leaving, "i-c", "az-c", Status::Exiting, S);
        let d = decide_in(
            "az-b",
            Status::Failing,
            &peers,
            &leaving,
            &HashSet::new(),
            S,
        );
        assert!(d.fallback.is_empty());
        // An exiting daemon acts for nobody; the next running one does.
        let d = decide_in("az-b", Status::Exiting, &peers, &view, &gone, S);
        assert!(d.fallback.is_empty());
        // ...unless no other runs.
        let d = decide_in("az-b", Status::Exiting, &peers[..1], &view, &gone, S);
        assert_eq!(ids(&d.fallback), vec!["i-a"]);
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
    fn a_nat_that_is_not_ok_adopts_nothing() {
        let peers = [peer("i-a", "az-a")];
        let mut view = View::default();
        heard(&mut view, "i-a", "az-a", Status::Failing, S);
        for status in [Status::Starting, Status::Failing, Status::Exiting] {
            let d = decide_in("az-b", status, &peers, &view, &HashSet::new(), S);
            assert!(d.adopt.is_empty(), "{status}");
        }
    }
    #[test]
    fn routes_wait_for_own_forwarding_and_for_the_drain() {
        let rt = || crate::domain::RouteTableId("rtb-1".into());
        let from_peer = Action::ReplaceRoute {
            route_table: rt(),
            from: RouteTarget::Eni(EniId("eni-peer".into())),
            blackhole: false,
        };
        let from_dead = Action::ReplaceRoute {
            route_table: rt(),
            from: RouteTarget::Eni(EniId("eni-dead".into())),
            blackhole: false,
        };
        let create = Action::CreateRoute { route_table: rt() };
        let sdc = Action::DisableSourceDestCheck {
            eni: EniId("eni-me".into()),
        };
        let plan = Plan {
            owned: vec![rt()],
            actions: vec![
                from_peer.clone(),
                from_dead.clone(),
                create.clone(),
                sdc.clone(),
            ],
            findings: vec![],
        };
        let from_gateway = Action::ReplaceRoute {
            route_table: rt(),
            from: RouteTarget::NatGateway("nat-1".into()),
            blackhole: false,
        };
        let plan = Plan {
            actions: [plan.actions, vec![from_gateway.clone()]].concat(),
            ..plan
        };
        let live = [EniId("eni-peer".into())];
        // Not proven yet: only the source/destination check.
        for status in [Status::Starting, Status::Failing, Status::Exiting] {
            let (p, held) = gate(plan.clone(), status, false, &live);
            assert_eq!(p.actions, vec![sdc.clone()], "{status}");
            assert_eq!(held, 4);
        }
        // Proven, draining: everything but the routes a live peer or the
        // fallback NAT Gateway holds.
        let (p, held) = gate(plan.clone(), Status::Ok, true, &live);
        assert_eq!(
            p.actions,
            vec![from_dead.clone(), create.clone(), sdc.clone()]
        );
        assert_eq!(held, 2);
        // Proven, drain over (or immediate failback): everything.
        let (p, held) = gate(plan.clone(), Status::Ok, false, &live);
        assert_eq!(p.actions, plan.actions);
        assert_eq!(held, 0);
    }

    #[test]
    fn a_dead_peer_stays_to_be_adopted_until_its_replacement_says_ok() {
        let mut s = crate::decide::peers::PeerState::default();
        let (old, new) = (peer("i-old", "a"), peer("i-new", "a"));
        let now = S * 100;
        s.merge(vec![old.clone()], vec![], now);
        // The old NAT is gone; its replacement is running but not ok yet
        // (a throttled EC2 kept the adopter from confirming it sooner).
        heard(s.view_mut(), "i-new", "a", Status::Starting, now);
        s.merge(vec![new.clone()], vec![old.instance.clone()], now);
        assert_eq!(
            ids(s.peers()),
            ["i-new", "i-old"],
            "kept while nobody serves AZ a"
        );
        let d = decide_in("b", Status::Ok, s.peers(), s.view(), s.gone(), now);
        assert_eq!(ids(&d.adopt), ["i-old"]);
        // The replacement says ok: the old one goes at the next refresh.
        heard(s.view_mut(), "i-new", "a", Status::Ok, now + S * 29);
        s.merge(vec![new], vec![], now + S * 30);
        assert_eq!(ids(s.peers()), ["i-new"]);
    }

    fn route(target: RouteTarget, blackhole: bool) -> Route {
        Route { target, blackhole }
    }

    #[test]
    fn each_guard_takes_only_its_rows_routes() {
        let dead = peer("i-dead", "az-a");
        let gw = RouteTarget::NatGateway("nat-a".into());
        let other_gw = RouteTarget::NatGateway("nat-b".into());
        let healthy = RouteTarget::Eni(EniId("eni-i-ok".into()));
        let me_eni = RouteTarget::Eni(EniId("eni-me".into()));
        let me_instance = RouteTarget::Instance(InstanceId("i-me".into()));
        let igw = RouteTarget::Other("igw-1".into());
        let [dead_eni, dead_instance] = dead.route_targets();
        let adopt = Guard::Adopt {
            dead: dead.clone(),
            fallback: Some(gw.clone()),
        };
        let fall_back = Guard::FallBack {
            me: [me_eni.clone(), me_instance.clone()],
            dead: vec![dead_eni.clone()],
        };
        let own = Guard::OwnAz {
            planned: Status::Ok,
        };
        // (route, adoption takes it, fallback takes it)
        let table = [
            (route(dead_eni.clone(), false), true, true),
            (route(dead_instance.clone(), false), true, false),
            (route(gw.clone(), false), true, false),
            (route(other_gw.clone(), false), false, false),
            (route(healthy.clone(), false), false, false),
            (route(healthy.clone(), true), true, true),
            (route(me_eni.clone(), false), false, true),
            (route(me_instance.clone(), false), false, true),
            (route(igw.clone(), false), false, false),
        ];
        for (r, by_adoption, by_fallback) in table {
            assert_eq!(adopt.may_take(&r), by_adoption, "adoption, {r:?}");
            assert_eq!(fall_back.may_take(&r), by_fallback, "fallback, {r:?}");
            assert!(own.may_take(&r), "own AZ, {r:?}");
        }
        // An adoption with no fallback gateway configured takes no gateway.
        let bare = Guard::Adopt {
            dead,
            fallback: None,
        };
        assert!(!bare.may_take(&route(gw, false)));
    }

    #[test]
    fn each_guard_holds_only_while_its_condition_does() {
        let dead = peer("i-dead", "az-a");
        // Each peer heard saying `ok`, by interface; its AZ is named after it.
        let at = |status, live: &[&str]| Moment {
            status,
            live: (live.iter())
                .map(|e| EniId(e.split('@').next().unwrap_or_default().into()))
                .collect(),
            live_azs: (live.iter())
                .map(|e| e.rsplit('@').next().unwrap_or_default().to_owned())
                .collect(),
            holds_az: true,
        };
        let adopt = Guard::Adopt {
            dead,
            fallback: None,
        };
        let fall_back = Guard::FallBack {
            me: [
                RouteTarget::Eni(EniId("eni-me".into())),
                RouteTarget::Instance(InstanceId("i-me".into())),
            ],
            dead: vec![],
        };
        let own = Guard::OwnAz {
            planned: Status::Failing,
        };
        // (moment, adoption holds, fallback holds, own AZ planned on failing holds)
        let table = [
            (at(Status::Ok, &[]), true, false, false),
            (at(Status::Ok, &["eni-i-other@az-b"]), true, false, false),
            (at(Status::Ok, &["eni-i-dead@az-a"]), false, false, false),
            // The dead peer's replacement says `ok`: it takes the AZ itself.
            (at(Status::Ok, &["eni-i-new@az-a"]), false, false, false),
            (at(Status::Starting, &[]), false, true, false),
            (at(Status::Failing, &[]), false, true, true),
            (
                at(Status::Failing, &["eni-i-other@az-b"]),
                false,
                false,
                true,
            ),
            (at(Status::Exiting, &[]), false, true, false),
        ];
        for (m, by_adoption, by_fallback, by_own) in table {
            assert_eq!(adopt.holds(&m), by_adoption, "adoption, {m:?}");
            assert_eq!(fall_back.holds(&m), by_fallback, "fallback, {m:?}");
            assert_eq!(own.holds(&m), by_own, "own AZ, {m:?}");
        }
        // A newer NAT of the AZ took over since the plan: nothing is written.
        let yielded = Moment {
            holds_az: false,
            ..at(Status::Failing, &[])
        };
        assert!(!own.holds(&yielded));
        assert!(own_az_falls_back(Status::Failing, &[]));
        assert!(own_az_falls_back(Status::Exiting, &[]));
        assert!(!own_az_falls_back(
            Status::Failing,
            &[EniId("eni-x".into())]
        ));
        assert!(!own_az_falls_back(Status::Starting, &[]));
        assert!(!own_az_falls_back(Status::Ok, &[]));
    }

    /// The property tests' world: NATs, what each says and whether it is
    /// heard and running, and every tagged route table of every AZ.
    mod world {
        use super::*;
        use crate::decide::routes::{Observed, plan_to};
        use crate::domain::{RouteTable, RouteTableId, SubnetId, VpcId};
        use proptest::prelude::*;

        pub const AZS: [&str; 3] = ["az-a", "az-b", "az-c"];
        pub const NOW: Duration = Duration::from_secs(100);
        pub const DEAD_AFTER: Duration = Duration::from_secs(1);

        #[derive(Debug, Clone)]
        pub struct Nat {
            pub az: usize,
            pub status: Status,
            /// Its heartbeats reach the others (fresh).
            pub heard: bool,
            /// EC2 or Auto Scaling says it is gone: its daemon does not run.
            pub gone: bool,
            /// What it says, and whether it is heard, a moment later: when
            /// the covering NAT writes what it decided on the first.
            pub later: (Status, bool),
        }

        #[derive(Debug, Clone)]
        pub struct World {
            pub nats: Vec<Nat>,
            /// Per AZ: each table's default route, as (what it points at,
            /// blackhole); what: a NAT's interface or instance (index), the
            /// AZ's fallback gateway, another gateway, an internet gateway.
            pub tables: Vec<Vec<Option<(Pointee, bool)>>>,
        }

        #[derive(Debug, Clone, Copy)]
        pub enum Pointee {
            Eni(usize),
            Instance(usize),
            Fallback,
            OtherGateway,
            Internet,
        }

        pub fn status() -> impl Strategy<Value = Status> {
            prop_oneof![
                Just(Status::Starting),
                Just(Status::Ok),
                Just(Status::Failing),
                Just(Status::Exiting),
            ]
        }

        /// Worlds of 1 to 5 NATs; with `one_per_az`, at most one per AZ
        /// (two NATs in one AZ is a fleet question of its own).
        pub fn world(one_per_az: bool, all_heard: bool) -> impl Strategy<Value = World> {
            let nat = (
                0..AZS.len(),
                status(),
                any::<bool>(),
                any::<bool>(),
                (status(), any::<bool>()),
            );
            proptest::collection::vec(nat, 1..=5)
                .prop_map(move |v| {
                    let mut seen = [false; 3];
                    v.into_iter()
                        .filter(|(az, ..)| !one_per_az || !std::mem::replace(&mut seen[*az], true))
                        .map(|(az, status, heard, gone, later)| Nat {
                            az,
                            status,
                            heard: if all_heard { !gone } else { heard },
                            gone,
                            later,
                        })
                        .collect::<Vec<_>>()
                })
                .prop_flat_map(|nats| {
                    let n = nats.len();
                    let pointee = prop_oneof![
                        (0..n).prop_map(Pointee::Eni),
                        (0..n).prop_map(Pointee::Instance),
                        Just(Pointee::Fallback),
                        Just(Pointee::OtherGateway),
                        Just(Pointee::Internet),
                    ];
                    let table =
                        proptest::option::weighted(0.9, (pointee, proptest::bool::weighted(0.1)));
                    let az = proptest::collection::vec(table, 1..=3);
                    let tables = proptest::collection::vec(az, AZS.len());
                    (Just(nats), tables).prop_map(|(nats, tables)| World { nats, tables })
                })
        }

        impl World {
            pub fn id(i: usize) -> InstanceId {
                InstanceId(format!("i-{i}"))
            }

            pub fn eni(i: usize) -> EniId {
                EniId(format!("eni-{i}"))
            }

            pub fn fallback(az: &str) -> RouteTarget {
                RouteTarget::NatGateway(format!("nat-{az}"))
            }

            pub fn peer(&self, i: usize) -> Peer {
                Peer {
                    instance: Self::id(i),
                    az: AZS[self.nats[i].az].into(),
                    eni: Self::eni(i),
                    ip: std::net::Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                    launched: None,
                }
            }

            pub fn me(&self, i: usize) -> Identity {
                let mut id = Identity::example(&Self::id(i).0, &Self::eni(i).0, "vpc-1");
                id.availability_zone = AZS[self.nats[i].az].into();
                id
            }

            /// A NAT that says `ok`, is heard, and runs: its routes are not
            /// to be taken.
            pub fn healthy(&self, i: usize) -> bool {
                let n = &self.nats[i];
                n.status == Status::Ok && n.heard && !n.gone
            }

            pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
                (0..self.nats.len()).filter(|i| !self.nats[*i].gone)
            }

            /// What NAT `k` knows of the others.
            pub fn seen_by(&self, k: usize) -> (Vec<Peer>, View, HashSet<InstanceId>) {
                let mut view = View::default();
                let mut peers = vec![];
                let mut gone = HashSet::new();
                for (j, n) in self.nats.iter().enumerate().filter(|(j, _)| *j != k) {
                    peers.push(self.peer(j));
                    if n.heard {
                        heard(&mut view, &Self::id(j).0, AZS[n.az], n.status, NOW);
                    }
                    if n.gone {
                        gone.insert(Self::id(j));
                    }
                }
                (peers, view, gone)
            }

            /// NAT `k`'s moment: its verdict, and the peers it hears say `ok`.
            pub fn moment(&self, k: usize) -> Moment {
                let live: Vec<usize> = (0..self.nats.len())
                    .filter(|j| *j != k && self.healthy(*j))
                    .collect();
                Moment {
                    status: self.nats[k].status,
                    live: live.iter().map(|j| Self::eni(*j)).collect(),
                    live_azs: live
                        .iter()
                        .map(|j| AZS[self.nats[*j].az].to_owned())
                        .collect(),
                    holds_az: true,
                }
            }

            pub fn observed(&self, az: usize) -> Observed {
                let target = |p: Pointee| match p {
                    Pointee::Eni(i) => RouteTarget::Eni(Self::eni(i)),
                    Pointee::Instance(i) => RouteTarget::Instance(Self::id(i)),
                    Pointee::Fallback => Self::fallback(AZS[az]),
                    Pointee::OtherGateway => RouteTarget::NatGateway("nat-elsewhere".into()),
                    Pointee::Internet => RouteTarget::Other("igw-1".into()),
                };
                let tables: Vec<RouteTable> = self.tables[az]
                    .iter()
                    .enumerate()
                    .map(|(t, r)| RouteTable {
                        id: RouteTableId(format!("rtb-{az}-{t}")),
                        vpc_id: VpcId("vpc-1".into()),
                        is_main: false,
                        subnets: vec![SubnetId(format!("subnet-{az}-{t}"))],
                        default_route: r.map(|(p, blackhole)| Route {
                            target: target(p),
                            blackhole,
                        }),
                    })
                    .collect();
                Observed {
                    tagged_subnets: tables.iter().flat_map(|t| t.subnets.clone()).collect(),
                    subnet_cidrs: Default::default(),
                    route_tables: tables,
                    source_dest_check: None,
                }
            }

            /// The world a moment later.
            pub fn later(&self) -> World {
                let mut w = self.clone();
                for n in &mut w.nats {
                    (n.status, n.heard) = n.later;
                    n.heard &= !n.gone;
                }
                w
            }

            /// The world a moment later, in which every NAT but `k` that
            /// runs says `ok` again and is heard.
            pub fn recovered(&self, k: usize) -> World {
                let mut w = self.clone();
                for (j, n) in w.nats.iter_mut().enumerate() {
                    if j != k && !n.gone {
                        (n.status, n.heard) = (Status::Ok, true);
                    }
                }
                w
            }

            /// Every take NAT `k` decides on in this world to cover other
            /// AZs, or its own by falling back, and writes in world `at`:
            /// (AZ index, guard), only those whose guard holds then.
            pub fn covers(&self, k: usize, at: &World) -> Vec<(usize, Guard)> {
                let (peers, view, gone) = self.seen_by(k);
                let me = self.me(k);
                let d = decide(
                    &me,
                    self.nats[k].status,
                    &peers,
                    &view,
                    &gone,
                    NOW,
                    DEAD_AFTER,
                );
                let az_of = |p: &Peer| AZS.iter().position(|a| *a == p.az).unwrap();
                let dead_targets: Vec<RouteTarget> = (0..self.nats.len())
                    .filter(|j| {
                        let n = &self.nats[*j];
                        *j != k
                            && (n.gone
                                || (n.heard
                                    && matches!(n.status, Status::Failing | Status::Exiting)))
                    })
                    .flat_map(|j| self.peer(j).route_targets())
                    .collect();
                let fall_back = || Guard::FallBack {
                    me: [
                        RouteTarget::Eni(Self::eni(k)),
                        RouteTarget::Instance(Self::id(k)),
                    ],
                    dead: dead_targets.clone(),
                };
                let mut takes: Vec<(usize, Guard)> = d
                    .adopt
                    .iter()
                    .map(|p| {
                        let guard = Guard::Adopt {
                            dead: p.clone(),
                            fallback: Some(Self::fallback(&p.az)),
                        };
                        (az_of(p), guard)
                    })
                    .chain(d.fallback.iter().map(|p| (az_of(p), fall_back())))
                    .collect();
                let decided = self.moment(k);
                if own_az_falls_back(self.nats[k].status, &decided.live) {
                    takes.push((self.nats[k].az, fall_back()));
                }
                let moment = at.moment(k);
                takes.retain(|(_, g)| g.holds(&moment));
                takes
            }

            /// A route NAT `k` takes, deciding in this world and writing in
            /// `then`, from a NAT healthy in `then`: what, where, from whom.
            pub fn taken_from_healthy(&self, k: usize, then: &World) -> Option<String> {
                for (az, guard) in self.covers(k, then) {
                    for from in self.replaced(k, az, &guard) {
                        let holder = (0..self.nats.len())
                            .find(|j| self.peer(*j).route_targets().contains(&from));
                        if let Some(j) = holder.filter(|j| then.healthy(*j)) {
                            return Some(format!(
                                "NAT {k} ({guard:?}) takes {from} in {} from healthy NAT {j}",
                                AZS[az]
                            ));
                        }
                    }
                }
                None
            }

            /// The routes NAT `k`'s take of `az` would replace: what each
            /// pointed at.
            pub fn replaced(&self, k: usize, az: usize, guard: &Guard) -> Vec<RouteTarget> {
                let to = match guard {
                    Guard::FallBack { .. } => Self::fallback(AZS[az]),
                    _ => RouteTarget::Eni(Self::eni(k)),
                };
                plan_to(&self.me(k), &self.observed(az), &to, &|r| guard.may_take(r))
                    .actions
                    .into_iter()
                    .filter_map(|a| match a {
                        Action::ReplaceRoute {
                            from,
                            blackhole: false,
                            ..
                        } => Some(from),
                        _ => None,
                    })
                    .collect()
            }
        }
    }

    mod properties {
        use super::world::*;
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// No cover ever takes a route a NAT that says `ok`, is heard,
            /// and runs, holds: whatever the verdicts, the silences and
            /// EC2's answers, two NATs in one AZ included, and whatever
            /// changed between the decision and the write.
            #[test]
            fn no_cover_takes_a_healthy_nats_route(w in world(false, false)) {
                let then = w.later();
                for k in w.running() {
                    prop_assert_eq!(w.taken_from_healthy(k, &then), None);
                }
            }

            /// A cover decided before the NATs it covers came back takes
            /// none of their routes when it comes to write.
            #[test]
            fn a_stale_cover_takes_nothing_from_a_nat_that_came_back(w in world(false, false)) {
                for k in w.running() {
                    prop_assert_eq!(w.taken_from_healthy(k, &w.recovered(k)), None);
                }
            }

            /// When the NATs hear each other and each AZ has at most one, an
            /// AZ whose NAT is dead (gone, failing or leaving) and that has
            /// no healthy one is covered by exactly one running NAT —
            /// adopted, or pointed at its fallback NAT Gateway — and an AZ
            /// whose NAT is healthy by none.
            #[test]
            fn a_dead_nats_az_is_covered_by_exactly_one(w in world(true, true)) {
                let covering = |az: usize| {
                    w.running()
                        .filter(|k| w.covers(*k, &w).iter().any(|(a, _)| *a == az))
                        .collect::<Vec<_>>()
                };
                for (az, name) in AZS.iter().enumerate() {
                    let Some(i) = w.nats.iter().position(|n| n.az == az) else {
                        continue;
                    };
                    let by = covering(az);
                    if w.healthy(i) || w.nats[i].status == Status::Starting && !w.nats[i].gone {
                        // Serving, or about to: nobody else's business.
                        prop_assert!(by.is_empty(), "{name} covered by {by:?}");
                    } else if w.running().next().is_some() {
                        prop_assert_eq!(by.len(), 1, "{} covered by {:?}", name, by);
                    }
                }
            }
        }
    }
}
