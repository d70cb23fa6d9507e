//! The decision core: what must change so that this NAT owns its AZ's
//! private routes. Pure: no I/O, no clock; tested with tables of situations.
//!
//! Safety rules live here, in one place:
//! - only route tables *explicitly* associated with a tagged subnet of our
//!   VPC and AZ are candidates;
//! - the VPC's main route table is never modified (a tagged subnet that
//!   falls back to it is reported instead);
//! - a route table that also serves a subnet outside our tagged set (another
//!   AZ, or an untagged subnet) is never modified: taking it would steal
//!   traffic that is not ours;
//! - a route table of another VPC is never modified.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::domain::{EniId, Identity, Ipv4Cidr, RouteTableId, SubnetId};
use crate::domain::{Route, RouteTable, RouteTarget};

/// What was read from EC2 in one reconcile.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Tagged subnets of our VPC and AZ.
    pub tagged_subnets: Vec<SubnetId>,
    /// Their IPv4 networks (for flow hand-off).
    pub subnet_cidrs: BTreeMap<SubnetId, Ipv4Cidr>,
    /// Route tables explicitly associated with any of them.
    pub route_tables: Vec<RouteTable>,
    /// Source/destination check on our ENI; `None` if it could not be read.
    pub source_dest_check: Option<bool>,
}

impl Observed {
    /// A reading of `subnets` (the tagged ones, with their networks where
    /// known) before anything else is read.
    pub fn of_subnets(subnets: &[(SubnetId, Option<Ipv4Cidr>)]) -> Observed {
        Observed {
            tagged_subnets: subnets.iter().map(|(s, _)| s.clone()).collect(),
            subnet_cidrs: (subnets.iter())
                .filter_map(|(s, c)| Some((s.clone(), (*c)?)))
                .collect(),
            ..Observed::default()
        }
    }

    /// The part of this reading about `subnets` (one AZ's, of a reading of
    /// several): those subnets and the route tables associated with any of
    /// them; the source/destination check only `with_check`.
    pub fn part(&self, subnets: &[(SubnetId, Option<Ipv4Cidr>)], with_check: bool) -> Observed {
        let ids: BTreeSet<&SubnetId> = subnets.iter().map(|(s, _)| s).collect();
        Observed {
            route_tables: (self.route_tables.iter())
                .filter(|rt| rt.subnets.iter().any(|s| ids.contains(s)))
                .cloned()
                .collect(),
            source_dest_check: self.source_dest_check.filter(|_| with_check),
            ..Observed::of_subnets(subnets)
        }
    }
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The table has no `0.0.0.0/0`: create one to our ENI.
    CreateRoute { route_table: RouteTableId },
    /// `0.0.0.0/0` points elsewhere (or is a blackhole): point it at us.
    ReplaceRoute {
        route_table: RouteTableId,
        from: RouteTarget,
        blackhole: bool,
    },
    /// Source/destination check is on: a NAT must have it off.
    DisableSourceDestCheck { eni: EniId },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateRoute { route_table } => {
                write!(f, "create 0.0.0.0/0 in {route_table} (no default route)")
            }
            Action::ReplaceRoute {
                route_table,
                from,
                blackhole,
            } => write!(
                f,
                "replace 0.0.0.0/0 in {route_table} (now {from}{})",
                if *blackhole { ", blackhole" } else { "" }
            ),
            Action::DisableSourceDestCheck { eni } => {
                write!(f, "disable source/destination check on {eni}")
            }
        }
    }
}

/// Something an operator should know about but hanat will not fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A tagged subnet uses the main route table implicitly.
    NoExplicitTable { subnet: SubnetId },
    /// A tagged subnet is explicitly associated with the main route table.
    MainTable {
        route_table: RouteTableId,
        subnet: SubnetId,
    },
    /// The table also serves subnets outside our tagged set in this AZ.
    SharedTable {
        route_table: RouteTableId,
        foreign: Vec<SubnetId>,
    },
    /// The table belongs to another VPC (only a broken endpoint returns it).
    OtherVpc { route_table: RouteTableId },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NoExplicitTable { subnet } => write!(
                f,
                "{subnet} is tagged but has no route table of its own; it uses the VPC's main \
                 route table, which hanat never modifies: associate it with a private route table"
            ),
            Finding::MainTable {
                route_table,
                subnet,
            } => write!(
                f,
                "{subnet} is associated with the main route table {route_table}, which hanat never modifies"
            ),
            Finding::SharedTable {
                route_table,
                foreign,
            } => {
                let list: Vec<String> = foreign.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{route_table} also serves {} (other AZ or untagged); hanat will not take it over",
                    list.join(", ")
                )
            }
            Finding::OtherVpc { route_table } => {
                write!(f, "{route_table} belongs to another VPC; ignored")
            }
        }
    }
}

/// The outcome of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Route tables this NAT is responsible for (whether or not they need a change).
    pub owned: Vec<RouteTableId>,
    pub actions: Vec<Action>,
    pub findings: Vec<Finding>,
}

/// Whether a default route already points at `to` (for this instance's
/// interface, pointing at the instance counts too).
pub fn points_at(target: &RouteTarget, to: &RouteTarget, id: &Identity) -> bool {
    target == to
        || (*to == RouteTarget::Eni(id.eni.clone())
            && *target == RouteTarget::Instance(id.instance_id.clone()))
}

/// Decide what to change so this NAT owns its AZ's private routes.
/// Deterministic: outputs are ordered by id.
pub fn plan(id: &Identity, observed: &Observed) -> Plan {
    plan_to(id, observed, &RouteTarget::Eni(id.eni.clone()), &|_| true)
}

/// What to change so `observed`'s routes point at `to` (this NAT, or a
/// fallback NAT Gateway), replacing an existing route only where
/// `may_take` allows (a take's guard: [`crate::decide::cover::Guard`]).
pub fn plan_to(
    id: &Identity,
    observed: &Observed,
    to: &RouteTarget,
    may_take: &dyn Fn(&Route) -> bool,
) -> Plan {
    let tagged: BTreeSet<&SubnetId> = observed.tagged_subnets.iter().collect();
    let mut out = Plan::default();
    let mut covered: BTreeSet<&SubnetId> = BTreeSet::new();

    let mut tables: Vec<&RouteTable> = observed.route_tables.iter().collect();
    tables.sort_by(|a, b| a.id.cmp(&b.id));
    for rt in tables {
        let ours: Vec<&SubnetId> = rt.subnets.iter().filter(|s| tagged.contains(s)).collect();
        if ours.is_empty() {
            continue;
        }
        covered.extend(ours.iter().copied());
        if rt.vpc_id != id.vpc_id {
            out.findings.push(Finding::OtherVpc {
                route_table: rt.id.clone(),
            });
            continue;
        }
        if rt.is_main {
            for s in ours {
                out.findings.push(Finding::MainTable {
                    route_table: rt.id.clone(),
                    subnet: s.clone(),
                });
            }
            continue;
        }
        let foreign: Vec<SubnetId> = rt
            .subnets
            .iter()
            .filter(|s| !tagged.contains(s))
            .cloned()
            .collect();
        if !foreign.is_empty() {
            out.findings.push(Finding::SharedTable {
                route_table: rt.id.clone(),
                foreign,
            });
            continue;
        }
        out.owned.push(rt.id.clone());
        match &rt.default_route {
            None => out.actions.push(Action::CreateRoute {
                route_table: rt.id.clone(),
            }),
            Some(r) if points_at(&r.target, to, id) && !r.blackhole => {}
            Some(r) if !may_take(r) => {}
            Some(r) => out.actions.push(Action::ReplaceRoute {
                route_table: rt.id.clone(),
                from: r.target.clone(),
                blackhole: r.blackhole,
            }),
        }
    }
    for s in &observed.tagged_subnets {
        if !covered.contains(s) {
            out.findings
                .push(Finding::NoExplicitTable { subnet: s.clone() });
        }
    }
    // First: traffic routed here before the check is off would be dropped
    // by EC2 (and a slow API makes that window long).
    if observed.source_dest_check == Some(true) {
        out.actions.insert(
            0,
            Action::DisableSourceDestCheck {
                eni: id.eni.clone(),
            },
        );
    }
    out
}

/// The networks of the subnets whose routes `plan` takes from `from` (a
/// NAT's interface or instance; blackholes excluded): the sources of the
/// connections that NAT still translates. Sorted, without duplicates.
pub fn sources_taken(observed: &Observed, plan: &Plan, from: &[RouteTarget]) -> Vec<Ipv4Cidr> {
    networks_of(observed, plan, |a| match a {
        Action::ReplaceRoute {
            from: f,
            blackhole: false,
            ..
        } => from.contains(f),
        _ => false,
    })
}

/// The networks behind the routes `plan` writes: taken from `from` when
/// given (blackholes among them), else every one (a dead NAT's routes may
/// be blackholes or gone). Whose connections a copy kept of the previous
/// holder's may be written for ([`crate::decide::replicate`]).
pub fn networks_behind(
    observed: &Observed,
    plan: &Plan,
    from: Option<&[RouteTarget]>,
) -> Vec<Ipv4Cidr> {
    networks_of(observed, plan, |a| match (a, from) {
        (Action::ReplaceRoute { from: f, .. }, Some(from)) => from.contains(f),
        (Action::ReplaceRoute { .. } | Action::CreateRoute { .. }, None) => true,
        _ => false,
    })
}

fn networks_of(observed: &Observed, plan: &Plan, taken: impl Fn(&Action) -> bool) -> Vec<Ipv4Cidr> {
    let tables: BTreeSet<&RouteTableId> = plan
        .actions
        .iter()
        .filter(|a| taken(a))
        .filter_map(|a| match a {
            Action::ReplaceRoute { route_table, .. } | Action::CreateRoute { route_table } => {
                Some(route_table)
            }
            Action::DisableSourceDestCheck { .. } => None,
        })
        .collect();
    let mut out: Vec<Ipv4Cidr> = observed
        .route_tables
        .iter()
        .filter(|rt| tables.contains(&rt.id))
        .flat_map(|rt| rt.subnets.iter())
        .filter_map(|s| observed.subnet_cidrs.get(s).copied())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What to do about one of the group's Elastic IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressAction {
    /// It is on our interface, on this private address.
    Keep,
    /// Take it; `reassociate` when a dead holder still has it.
    Associate {
        allocation_id: String,
        reassociate: bool,
    },
    /// A healthy instance holds it: never take it.
    HeldByHealthy {
        allocation_id: String,
        holder: String,
    },
    /// The pool has no (further) address for us.
    NoAddress,
}

/// Decide, for each of this NAT's private addresses (`privates`, the
/// primary one first), which of the pool's Elastic IPs it gets: the one
/// already associated with it, else the first free one, else the first
/// whose holder is gone (`holder_alive` false), in pool order with the
/// spare addresses last (a NAT alone in its AZ uses the addresses users
/// see first; the spare is for a second NAT of the AZ). An address on this
/// NAT's interface is never moved, even when it is associated with a
/// private address no longer wanted (its connections go on). Pure.
pub fn plan_addresses(
    id: &Identity,
    privates: &[Ipv4Addr],
    pool: &[crate::domain::Address],
    holder_alive: impl Fn(&crate::domain::Address) -> bool,
) -> Vec<(Ipv4Addr, AddressAction)> {
    let mut taken = vec![false; pool.len()];
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_by_key(|&i| pool[i].spare);
    privates
        .iter()
        .map(|&p| {
            if pool.iter().any(|a| a.is_on(id) && a.private_ip_of(id) == p) {
                return (p, AddressAction::Keep);
            }
            let mut refused = None;
            for (i, a) in order.iter().map(|&i| (i, &pool[i])) {
                if taken[i] || a.is_on(id) {
                    continue;
                }
                let held = a.is_held();
                if held && holder_alive(a) {
                    refused.get_or_insert_with(|| AddressAction::HeldByHealthy {
                        allocation_id: a.allocation_id.clone(),
                        holder: a
                            .instance
                            .as_ref()
                            .map(|i| i.0.clone())
                            .or(a.eni.as_ref().map(|e| e.0.clone()))
                            .unwrap_or_default(),
                    });
                    continue;
                }
                taken[i] = true;
                return (
                    p,
                    AddressAction::Associate {
                        allocation_id: a.allocation_id.clone(),
                        reassociate: held,
                    },
                );
            }
            (p, refused.unwrap_or(AddressAction::NoAddress))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::InstanceId;
    use crate::domain::VpcId;

    fn me() -> Identity {
        Identity::example("i-me", "eni-me", "vpc-1")
    }

    fn rt(id: &str, subnets: &[&str], route: Option<(RouteTarget, bool)>) -> RouteTable {
        RouteTable {
            id: RouteTableId(id.into()),
            vpc_id: VpcId("vpc-1".into()),
            is_main: false,
            subnets: subnets.iter().map(|s| SubnetId((*s).into())).collect(),
            default_route: route.map(|(target, blackhole)| Route { target, blackhole }),
        }
    }

    fn eni(e: &str) -> RouteTarget {
        RouteTarget::Eni(EniId(e.into()))
    }

    fn observed(tagged: &[&str], tables: Vec<RouteTable>, sdc: Option<bool>) -> Observed {
        Observed {
            tagged_subnets: tagged.iter().map(|s| SubnetId((*s).into())).collect(),
            subnet_cidrs: tagged
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let cidr = format!("10.0.{}.0/24", i + 1).parse().unwrap();
                    (SubnetId((*s).into()), cidr)
                })
                .collect(),
            route_tables: tables,
            source_dest_check: sdc,
        }
    }

    #[test]
    fn sources_taken_are_the_subnets_of_tables_taken_from_that_nat() {
        let peer = [
            eni("eni-p"),
            RouteTarget::Instance(InstanceId("i-p".into())),
        ];
        let obs = observed(
            &["subnet-a", "subnet-b", "subnet-c", "subnet-d", "subnet-e"],
            vec![
                // Two subnets on one table held by the peer's interface.
                rt(
                    "rtb-1",
                    &["subnet-a", "subnet-b"],
                    Some((eni("eni-p"), false)),
                ),
                // Held by the peer's instance id.
                rt(
                    "rtb-2",
                    &["subnet-c"],
                    Some((RouteTarget::Instance(InstanceId("i-p".into())), false)),
                ),
                // A blackhole to the peer: it is gone, nothing to hand to.
                rt("rtb-3", &["subnet-d"], Some((eni("eni-p"), true))),
                // Another NAT's route.
                rt("rtb-4", &["subnet-e"], Some((eni("eni-other"), false))),
            ],
            None,
        );
        let plan = plan(&me(), &obs);
        assert_eq!(plan.actions.len(), 4, "{:?}", plan.actions);
        let got: Vec<String> = sources_taken(&obs, &plan, &peer)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]);
        let none = sources_taken(&obs, &Plan::default(), &peer);
        assert!(none.is_empty());
    }

    #[test]
    fn route_decisions() {
        struct Case {
            name: &'static str,
            table: RouteTable,
            want: Vec<Action>,
        }
        let rtb = || RouteTableId("rtb-a".into());
        let cases = vec![
            Case {
                name: "missing route is created",
                table: rt("rtb-a", &["subnet-a"], None),
                want: vec![Action::CreateRoute { route_table: rtb() }],
            },
            Case {
                name: "route to us is left alone",
                table: rt("rtb-a", &["subnet-a"], Some((eni("eni-me"), false))),
                want: vec![],
            },
            Case {
                name: "route to our instance id is ours too",
                table: rt(
                    "rtb-a",
                    &["subnet-a"],
                    Some((RouteTarget::Instance(InstanceId("i-me".into())), false)),
                ),
                want: vec![],
            },
            Case {
                name: "route to another NAT is taken",
                table: rt("rtb-a", &["subnet-a"], Some((eni("eni-old"), false))),
                want: vec![Action::ReplaceRoute {
                    route_table: rtb(),
                    from: eni("eni-old"),
                    blackhole: false,
                }],
            },
            Case {
                name: "blackhole is replaced",
                table: rt("rtb-a", &["subnet-a"], Some((eni("eni-dead"), true))),
                want: vec![Action::ReplaceRoute {
                    route_table: rtb(),
                    from: eni("eni-dead"),
                    blackhole: true,
                }],
            },
            Case {
                name: "blackhole pointing at our own ENI is re-put",
                table: rt("rtb-a", &["subnet-a"], Some((eni("eni-me"), true))),
                want: vec![Action::ReplaceRoute {
                    route_table: rtb(),
                    from: eni("eni-me"),
                    blackhole: true,
                }],
            },
            Case {
                name: "NAT gateway route is taken",
                table: rt(
                    "rtb-a",
                    &["subnet-a"],
                    Some((RouteTarget::NatGateway("nat-1".into()), false)),
                ),
                want: vec![Action::ReplaceRoute {
                    route_table: rtb(),
                    from: RouteTarget::NatGateway("nat-1".into()),
                    blackhole: false,
                }],
            },
        ];
        for c in cases {
            let p = plan(&me(), &observed(&["subnet-a"], vec![c.table], Some(false)));
            assert_eq!(p.actions, c.want, "{}", c.name);
            assert_eq!(p.owned, vec![rtb()], "{}", c.name);
            assert!(p.findings.is_empty(), "{}: {:?}", c.name, p.findings);
        }
    }

    #[test]
    fn never_touches_main_shared_or_foreign_tables() {
        let mut main = rt("rtb-main", &["subnet-m"], Some((eni("eni-x"), false)));
        main.is_main = true;
        let shared = rt("rtb-shared", &["subnet-s", "subnet-other-az"], None);
        let mut foreign = rt("rtb-foreign", &["subnet-f"], None);
        foreign.vpc_id = VpcId("vpc-2".into());
        let untagged_only = rt("rtb-untagged", &["subnet-u"], None);
        let good = rt("rtb-good", &["subnet-g"], None);
        let p = plan(
            &me(),
            &observed(
                &[
                    "subnet-m",
                    "subnet-s",
                    "subnet-f",
                    "subnet-g",
                    "subnet-lonely",
                ],
                vec![main, shared, foreign, untagged_only, good],
                Some(false),
            ),
        );
        assert_eq!(p.owned, vec![RouteTableId("rtb-good".into())]);
        assert_eq!(
            p.actions,
            vec![Action::CreateRoute {
                route_table: RouteTableId("rtb-good".into())
            }]
        );
        assert_eq!(
            p.findings,
            vec![
                Finding::OtherVpc {
                    route_table: RouteTableId("rtb-foreign".into())
                },
                Finding::MainTable {
                    route_table: RouteTableId("rtb-main".into()),
                    subnet: SubnetId("subnet-m".into())
                },
                Finding::SharedTable {
                    route_table: RouteTableId("rtb-shared".into()),
                    foreign: vec![SubnetId("subnet-other-az".into())]
                },
                Finding::NoExplicitTable {
                    subnet: SubnetId("subnet-lonely".into())
                },
            ]
        );
    }

    #[test]
    fn one_table_serving_two_tagged_subnets_is_owned_once() {
        let p = plan(
            &me(),
            &observed(
                &["subnet-a", "subnet-b"],
                vec![rt("rtb-a", &["subnet-a", "subnet-b"], None)],
                None,
            ),
        );
        assert_eq!(p.owned.len(), 1);
        assert_eq!(p.actions.len(), 1);
        assert!(p.findings.is_empty());
    }

    #[test]
    fn source_dest_check() {
        for (sdc, want) in [(Some(true), true), (Some(false), false), (None, false)] {
            let p = plan(&me(), &observed(&[], vec![], sdc));
            let has = p.actions.contains(&Action::DisableSourceDestCheck {
                eni: EniId("eni-me".into()),
            });
            assert_eq!(has, want, "{sdc:?}");
        }
        // Before any route is pointed here.
        let p = plan(
            &me(),
            &observed(
                &["subnet-a"],
                vec![rt("rtb-a", &["subnet-a"], None)],
                Some(true),
            ),
        );
        assert!(
            matches!(
                p.actions.as_slice(),
                [
                    Action::DisableSourceDestCheck { .. },
                    Action::CreateRoute { .. }
                ]
            ),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn adoption_takes_only_what_the_predicate_allows() {
        let dead = eni("eni-dead");
        let tables = vec![
            rt("rtb-dead", &["subnet-a"], Some((dead.clone(), false))),
            rt("rtb-black", &["subnet-b"], Some((eni("eni-x"), true))),
            rt(
                "rtb-healthy",
                &["subnet-c"],
                Some((eni("eni-alive"), false)),
            ),
            rt("rtb-none", &["subnet-d"], None),
        ];
        let obs = observed(
            &["subnet-a", "subnet-b", "subnet-c", "subnet-d"],
            tables,
            None,
        );
        let to = RouteTarget::Eni(me().eni.clone());
        let p = plan_to(&me(), &obs, &to, &|r: &Route| {
            r.blackhole || r.target == dead
        });
        let touched: Vec<&str> =
            p.actions
                .iter()
                .map(|a| match a {
                    Action::CreateRoute { route_table }
                    | Action::ReplaceRoute { route_table, .. } => route_table.0.as_str(),
                    Action::DisableSourceDestCheck { .. } => "sdc",
                })
                .collect();
        assert_eq!(touched, vec!["rtb-black", "rtb-dead", "rtb-none"]);
    }

    /// The spare is taken last: a NAT alone in its AZ keeps the address
    /// users see first; a second NAT of the AZ gets the spare.
    #[test]
    fn the_spare_address_is_claimed_only_when_the_others_are_held() {
        use crate::domain::Address;
        let addr = |id: &str, spare: bool, held: bool| Address {
            allocation_id: id.into(),
            public_ip: "198.51.100.10".into(),
            eni: held.then(|| EniId("eni-other".into())),
            instance: None,
            private_ip: None,
            spare,
        };
        let primary = me().private_ip;
        let plan = |pool: &[Address]| {
            plan_addresses(&me(), &[primary], pool, |_| true)[0]
                .1
                .clone()
        };
        let take = |id: &str| AddressAction::Associate {
            allocation_id: id.into(),
            reassociate: false,
        };
        // The spare sorts first by allocation id, and is still left.
        let pool = [
            addr("eipalloc-a", true, false),
            addr("eipalloc-b", false, false),
        ];
        assert_eq!(plan(&pool), take("eipalloc-b"));
        let pool = [
            addr("eipalloc-a", true, false),
            addr("eipalloc-b", false, true),
        ];
        assert_eq!(plan(&pool), take("eipalloc-a"));
    }

    #[test]
    fn address_decisions() {
        use crate::domain::Address;
        let addr = |id: &str, eni: Option<&str>, on: Option<&str>| Address {
            allocation_id: id.into(),
            public_ip: "198.51.100.10".into(),
            eni: eni.map(|e| EniId(e.into())),
            instance: None,
            private_ip: on.map(|p| p.parse().unwrap()),
            spare: false,
        };
        let primary = me().private_ip;
        let one = |pool: &[Address], alive: bool| {
            let v = plan_addresses(&me(), &[primary], pool, |_| alive);
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].0, primary);
            v[0].1.clone()
        };
        let take = |id: &str, reassociate| AddressAction::Associate {
            allocation_id: id.into(),
            reassociate,
        };
        // One address: the AZ's Elastic IP, as before there were several.
        assert_eq!(one(&[], true), AddressAction::NoAddress);
        assert_eq!(
            one(&[addr("a", Some("eni-me"), None)], true),
            AddressAction::Keep
        );
        assert_eq!(one(&[addr("a", None, None)], true), take("a", false));
        assert_eq!(
            one(&[addr("a", Some("eni-old"), None)], true),
            AddressAction::HeldByHealthy {
                allocation_id: "a".into(),
                holder: "eni-old".into()
            }
        );
        assert_eq!(
            one(&[addr("a", Some("eni-old"), None)], false),
            take("a", true)
        );
        // Several: each private address keeps its own, then takes the
        // first free one, then one whose holder is gone; never one a
        // running instance holds.
        let ips: Vec<Ipv4Addr> = ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let pool = [
            addr("a", Some("eni-old"), Some("10.0.0.99")),
            addr("b", Some("eni-me"), Some("10.0.0.11")),
            addr("c", Some("eni-dead"), Some("10.0.0.7")),
            addr("d", None, None),
        ];
        let got = plan_addresses(&me(), &ips, &pool, |a| a.allocation_id == "a");
        assert_eq!(
            got,
            vec![
                (ips[0], take("c", true)),
                (ips[1], AddressAction::Keep),
                (ips[2], take("d", false)),
                (
                    ips[3],
                    AddressAction::HeldByHealthy {
                        allocation_id: "a".into(),
                        holder: "eni-old".into()
                    }
                ),
            ]
        );
        // Fewer wanted than held: the one on a private address no longer
        // wanted stays where it is (its connections go on).
        let held = [
            addr("a", Some("eni-me"), Some("10.0.0.10")),
            addr("b", Some("eni-me"), Some("10.0.0.13")),
        ];
        assert_eq!(
            plan_addresses(&me(), &ips[..2], &held, |_| false),
            vec![
                (ips[0], AddressAction::Keep),
                (ips[1], AddressAction::NoAddress)
            ]
        );
    }

    #[test]
    fn actions_read_well() {
        let a = Action::ReplaceRoute {
            route_table: RouteTableId("rtb-1".into()),
            from: eni("eni-2"),
            blackhole: true,
        };
        assert_eq!(
            a.to_string(),
            "replace 0.0.0.0/0 in rtb-1 (now eni-2, blackhole)"
        );
    }
}
