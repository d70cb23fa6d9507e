//! Which of an AZ's NATs holds its routes, when Auto Scaling runs more
//! than one there: a launch-before-terminate instance refresh, a Standby
//! without decrement, a group whose maximum is above one. Every NAT of the
//! AZ applies the same rule to what it has heard, so they agree without
//! talking about it, and no route passes back and forth:
//!
//! 1. A NAT that says `failing` or `exiting`, or that EC2 says is gone,
//!    holds nothing (it is dead or leaving: the cover rules apply).
//! 2. Of the others, the **newest** (launch time, then instance id) holds
//!    the AZ: it is the one Auto Scaling means to keep (the templates'
//!    termination policy is `OldestInstance`, and a refresh or a Standby's
//!    replacement launches the new one). A newer NAT still `starting` is
//!    waited for: the older one leaves the routes where they are rather
//!    than take them back and give them away again a moment later.
//! 3. Except that a newer NAT which holds none of its group's Elastic IPs
//!    (each is held by a running NAT: the pool has no spare) leaves the AZ
//!    to an older one that says `ok`: traffic leaves only from the pool's
//!    addresses. The older one yields too (it cannot know), so neither
//!    writes and the routes stay where they are until the older one leaves;
//!    the templates give each pool a spare address so this does not arise.
//!
//! Silence alone changes nothing here either: a NAT last heard `ok` or
//! `starting` keeps its place until it says otherwise or EC2 says it is
//! gone (the peers loop asks EC2 about every silent peer).

use std::collections::HashSet;

use super::peers::{Peer, View};
use crate::domain::{Identity, InstanceId, Status};

/// Whether this NAT holds its own AZ's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// It does: its own-AZ pass takes them.
    Hold,
    /// Another NAT of the AZ does: this one leaves them alone.
    Yield { to: InstanceId, why: Why },
}

/// Why a NAT yields its AZ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A newer NAT of the AZ runs (rule 2).
    Newer,
    /// This NAT has no Elastic IP of its group yet and an older one that
    /// says `ok` has (rule 3).
    NoAddress,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Newer => "a newer NAT of this AZ holds it",
            Why::NoAddress => {
                "this NAT holds none of its group's Elastic IPs yet (each is held by a running NAT): the AZ stays with the one that does"
            }
        })
    }
}

/// Launch order: later launch time, then greater instance id, is newer.
/// An unknown launch time counts as oldest.
fn seniority(launched: Option<i64>, id: &InstanceId) -> (Option<i64>, &InstanceId) {
    (launched, id)
}

/// Apply the rule for this NAT (`me`, launched at `launched`), which
/// `has_address` unless each of its group's Elastic IPs is held by another
/// running NAT. `gone`: peers EC2 says are gone.
pub fn own_az(
    me: &Identity,
    launched: Option<i64>,
    has_address: bool,
    peers: &[Peer],
    view: &View,
    gone: &HashSet<InstanceId>,
) -> Holding {
    let mine = seniority(launched, &me.instance_id);
    // The AZ's other NATs that may hold it, with what they last said.
    let contenders: Vec<(&Peer, Status)> = peers
        .iter()
        .filter(|p| p.az == me.availability_zone && !gone.contains(&p.instance))
        .filter_map(|p| match view.last(&p.instance)? {
            s @ (Status::Ok | Status::Starting) => Some((p, s)),
            Status::Failing | Status::Exiting => None,
        })
        .collect();
    let newest = contenders
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| seniority(p.launched, &p.instance) > mine)
        .max_by(|a, b| seniority(a.launched, &a.instance).cmp(&seniority(b.launched, &b.instance)));
    if let Some(p) = newest {
        return Holding::Yield {
            to: p.instance.clone(),
            why: Why::Newer,
        };
    }
    if !has_address && let Some((p, _)) = contenders.iter().find(|(_, s)| *s == Status::Ok) {
        return Holding::Yield {
            to: p.instance.clone(),
            why: Why::NoAddress,
        };
    }
    Holding::Hold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::auth::Message;
    use std::time::Duration;

    fn me(launched: i64) -> (Identity, Option<i64>) {
        let mut id = Identity::example("i-me", "eni-me", "vpc-1");
        id.availability_zone = "az-a".into();
        (id, Some(launched))
    }

    fn peer(id: &str, az: &str, launched: i64) -> Peer {
        let mut p = Peer::example(id, az);
        p.launched = Some(launched);
        p
    }

    fn said(view: &mut View, p: &Peer, status: Status) {
        let m = Message {
            instance: p.instance.clone(),
            az: p.az.clone(),
            status,
            seq: 1,
        };
        view.record(&m, Duration::from_secs(1));
    }

    fn holding(
        launched: i64,
        has_address: bool,
        peers: &[(Peer, Option<Status>)],
        gone: &[&str],
    ) -> Holding {
        let (id, at) = me(launched);
        let mut view = View::default();
        for (p, s) in peers {
            if let Some(s) = s {
                said(&mut view, p, *s);
            }
        }
        let list: Vec<Peer> = peers.iter().map(|(p, _)| p.clone()).collect();
        let gone = gone.iter().map(|g| InstanceId((*g).into())).collect();
        own_az(&id, at, has_address, &list, &view, &gone)
    }

    fn yields(to: &str, why: Why) -> Holding {
        Holding::Yield {
            to: InstanceId(to.into()),
            why,
        }
    }

    #[test]
    fn alone_in_its_az_a_nat_holds_it_whatever_the_other_azs_say() {
        let other = peer("i-b", "az-b", 200);
        assert_eq!(holding(100, true, &[], &[]), Holding::Hold);
        assert_eq!(
            holding(100, true, &[(other, Some(Status::Ok))], &[]),
            Holding::Hold
        );
    }

    #[test]
    fn the_newer_nat_of_an_az_holds_it_and_the_older_yields() {
        let newer = peer("i-new", "az-a", 200);
        let older = peer("i-old", "az-a", 50);
        for s in [Status::Ok, Status::Starting] {
            assert_eq!(
                holding(100, true, &[(newer.clone(), Some(s))], &[]),
                yields("i-new", Why::Newer),
                "{s}"
            );
            assert_eq!(
                holding(100, true, &[(older.clone(), Some(s))], &[]),
                Holding::Hold,
                "{s}"
            );
        }
    }

    #[test]
    fn a_newer_nat_that_fails_leaves_is_gone_or_was_never_heard_takes_nothing() {
        let newer = peer("i-new", "az-a", 200);
        for s in [Some(Status::Failing), Some(Status::Exiting), None] {
            assert_eq!(
                holding(100, true, &[(newer.clone(), s)], &[]),
                Holding::Hold,
                "{s:?}"
            );
        }
        assert_eq!(
            holding(100, true, &[(newer, Some(Status::Ok))], &["i-new"]),
            Holding::Hold
        );
    }

    #[test]
    fn the_same_launch_second_is_broken_by_instance_id_the_same_way_by_both() {
        // Both NATs apply the rule: exactly one of them holds.
        let (a, b) = (peer("i-aaa", "az-a", 100), peer("i-zzz", "az-a", 100));
        let sees = |me: &Peer, other: &Peer| {
            let mut id = Identity::example(&me.instance.0, "eni-x", "vpc-1");
            id.availability_zone = "az-a".into();
            let mut view = View::default();
            said(&mut view, other, Status::Ok);
            own_az(
                &id,
                me.launched,
                true,
                std::slice::from_ref(other),
                &view,
                &HashSet::new(),
            )
        };
        assert_eq!(sees(&a, &b), yields("i-zzz", Why::Newer));
        assert_eq!(sees(&b, &a), Holding::Hold);
    }

    #[test]
    fn the_newest_of_three_is_named_and_an_unknown_launch_time_is_oldest() {
        let mut unknown = peer("i-unknown", "az-a", 0);
        unknown.launched = None;
        let peers = [
            (peer("i-2", "az-a", 200), Some(Status::Ok)),
            (peer("i-3", "az-a", 300), Some(Status::Starting)),
            (unknown, Some(Status::Ok)),
        ];
        assert_eq!(holding(100, true, &peers, &[]), yields("i-3", Why::Newer));
        assert_eq!(holding(400, true, &peers, &[]), Holding::Hold);
    }

    #[test]
    fn without_an_address_a_newer_nat_leaves_the_az_to_an_older_one_that_says_ok() {
        let older = peer("i-old", "az-a", 50);
        assert_eq!(
            holding(100, false, &[(older.clone(), Some(Status::Ok))], &[]),
            yields("i-old", Why::NoAddress)
        );
        // …but serves it when that one cannot.
        for s in [Status::Starting, Status::Failing, Status::Exiting] {
            assert_eq!(
                holding(100, false, &[(older.clone(), Some(s))], &[]),
                Holding::Hold,
                "{s}"
            );
        }
        assert_eq!(
            holding(100, false, &[(older, Some(Status::Ok))], &["i-old"]),
            Holding::Hold
        );
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        /// One NAT of an AZ: launch second (ties on purpose), verdict,
        /// whether EC2 says it is gone, whether it holds an Elastic IP.
        fn nat() -> impl Strategy<Value = (i64, Status, bool, bool)> {
            let status = prop_oneof![
                Just(Status::Starting),
                Just(Status::Ok),
                Just(Status::Failing),
                Just(Status::Exiting),
            ];
            (
                0i64..3,
                status,
                proptest::bool::weighted(0.2),
                proptest::bool::weighted(0.8),
            )
        }

        /// Which NATs of the AZ hold it: running (not gone), saying `ok`
        /// (the gate keeps any other from writing), and holding by the rule
        /// applied to what it hears from the others.
        fn holders(nats: &[(i64, Status, bool, bool)]) -> Vec<usize> {
            let peer = |j: usize| {
                let mut p = Peer::example(&format!("i-{j}"), "az-a");
                p.launched = Some(nats[j].0);
                p
            };
            (0..nats.len())
                .filter(|&k| nats[k].1 == Status::Ok && !nats[k].2)
                .filter(|&k| {
                    let mut me = Identity::example(&format!("i-{k}"), "eni-x", "vpc-1");
                    me.availability_zone = "az-a".into();
                    let mut view = View::default();
                    let mut gone = HashSet::new();
                    let others: Vec<Peer> = (0..nats.len()).filter(|&j| j != k).map(peer).collect();
                    for p in &others {
                        let j: usize = p.instance.0[2..].parse().unwrap_or(0);
                        said(&mut view, p, nats[j].1);
                        if nats[j].2 {
                            gone.insert(p.instance.clone());
                        }
                    }
                    own_az(&me, Some(nats[k].0), nats[k].3, &others, &view, &gone) == Holding::Hold
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// However many NATs an AZ has, whatever they say and hold, at
            /// most one of them takes its routes.
            #[test]
            fn at_most_one_nat_holds_an_az(nats in proptest::collection::vec(nat(), 1..=5)) {
                prop_assert!(holders(&nats).len() <= 1, "{:?}", holders(&nats));
            }

            /// And exactly one when every NAT has an address and the
            /// newest that has not failed, left or gone says `ok`: the AZ is
            /// never left without a holder that could serve it.
            #[test]
            fn the_newest_nat_that_says_ok_holds_an_az(nats in proptest::collection::vec(nat(), 1..=5)) {
                let nats: Vec<_> = nats.into_iter().map(|(l, s, g, _)| (l, s, g, true)).collect();
                let newest = (0..nats.len())
                    .filter(|&j| !nats[j].2 && matches!(nats[j].1, Status::Ok | Status::Starting))
                    .max_by_key(|&j| (nats[j].0, format!("i-{j}")));
                let want: Vec<usize> = newest.filter(|&j| nats[j].1 == Status::Ok).into_iter().collect();
                prop_assert_eq!(holders(&nats), want);
            }
        }
    }
}
