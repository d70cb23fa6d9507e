//! A stateful fake of the EC2 and Auto Scaling calls in [`Cloud`], for
//! tests of the daemon's loops under paused time: subnets, route tables,
//! instances, groups, addresses and NAT Gateways that the calls read and
//! change as AWS would, every call logged with its (tokio) time, and
//! injectable errors and latency.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::AwsError;
use super::cloud::{Cloud, TaggedSubnets};
use crate::domain::{
    Address, Datum, EniId, InstanceHealth, InstanceId, InstanceInfo, Ipv4Cidr, Route, RouteTable,
    RouteTableId, RouteTarget, SubnetId, VpcId,
};

pub struct Subnet {
    pub id: SubnetId,
    pub vpc: VpcId,
    pub az: String,
    pub tags: Vec<(String, String)>,
    pub cidr: Ipv4Cidr,
}

pub struct Instance {
    pub info: InstanceInfo,
    pub group: Option<String>,
    pub health: String,
    /// Status checks that say `impaired` (see [`InstanceHealth`]).
    pub impaired: Vec<&'static str>,
}

/// The account the fake plays.
#[derive(Default)]
pub struct State {
    pub subnets: Vec<Subnet>,
    pub tables: Vec<RouteTable>,
    pub instances: Vec<Instance>,
    /// Auto Scaling groups and their tags.
    pub groups: Vec<(String, Vec<(String, String)>)>,
    pub addresses: Vec<(Address, Vec<(String, String)>)>,
    /// NAT Gateways: id, state, VPC.
    pub nat_gateways: Vec<(String, String, VpcId)>,
    /// Source/destination check by interface (on when absent).
    pub source_dest_check: HashMap<EniId, bool>,
    /// Every call: when, which operation, on what.
    pub calls: Vec<(Instant, &'static str, String)>,
    /// Operation → (calls left to fail, `u32::MAX`: all; the AWS error code).
    pub failures: HashMap<&'static str, (u32, String)>,
    /// How long every call takes.
    pub latency: Duration,
    /// Secrets Manager: (secret, staging label) → value.
    pub secrets: HashMap<(String, String), String>,
    /// Application status check associations: (check, instance).
    pub status_checks: Vec<(String, InstanceId)>,
    /// CloudWatch: every put, when, into which namespace.
    pub metric_data: Vec<(Instant, String, Vec<Datum>)>,
    /// Secondary private addresses by interface (the primary one is the
    /// instance's `ip`); new ones are 10.0.200.x.
    pub secondary_ips: HashMap<EniId, Vec<Ipv4Addr>>,
}

impl State {
    /// The primary private address of the instance `eni` belongs to.
    fn primary_ip(&self, eni: &EniId) -> Option<Ipv4Addr> {
        self.instances
            .iter()
            .find(|i| i.info.eni.as_ref() == Some(eni))
            .and_then(|i| i.info.ip)
    }
}

#[derive(Default)]
pub struct FakeCloud {
    state: Mutex<State>,
}

impl FakeCloud {
    pub fn new(state: State) -> Self {
        FakeCloud {
            state: Mutex::new(state),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `0.0.0.0/0` of table `rt` points.
    pub fn target(&self, rt: &str) -> Option<RouteTarget> {
        self.state()
            .tables
            .iter()
            .find(|t| t.id.0 == rt)
            .and_then(|t| t.default_route.as_ref().map(|r| r.target.clone()))
    }

    /// When `op` was called (on a resource containing `on`).
    pub fn calls(&self, op: &str, on: &str) -> Vec<Instant> {
        self.state()
            .calls
            .iter()
            .filter(|(_, o, r)| *o == op && r.contains(on))
            .map(|(t, _, _)| *t)
            .collect()
    }

    /// Make the next `times` calls of `op` fail with `code`.
    pub fn fail(&self, op: &'static str, times: u32, code: &str) {
        self.state().failures.insert(op, (times, code.to_owned()));
    }

    /// Log the call, wait the latency, and fail it if told to.
    async fn call(&self, op: &'static str, on: String) -> Result<(), AwsError> {
        let latency = {
            let mut s = self.state();
            s.calls.push((Instant::now(), op, on.clone()));
            s.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut s = self.state();
        let Some((left, code)) = s.failures.get_mut(op) else {
            return Ok(());
        };
        if *left == 0 {
            return Ok(());
        }
        if *left != u32::MAX {
            *left -= 1;
        }
        Err(AwsError {
            operation: op,
            resource: on,
            code: Some(code.clone()),
            detail: "injected by the fake".into(),
        })
    }

    fn set_route(&self, rt: &RouteTableId, to: &RouteTarget, create: bool) -> Result<(), AwsError> {
        let mut s = self.state();
        let Some(t) = s.tables.iter_mut().find(|t| t.id == *rt) else {
            return Err(error("InvalidRouteTableID.NotFound", &rt.0));
        };
        match (create, &t.default_route) {
            (true, Some(_)) => return Err(error("RouteAlreadyExists", &rt.0)),
            (false, None) => return Err(error("InvalidRoute.NotFound", &rt.0)),
            _ => {}
        }
        t.default_route = Some(Route {
            target: to.clone(),
            blackhole: false,
        });
        Ok(())
    }
}

fn error(code: &str, on: &str) -> AwsError {
    AwsError {
        operation: "fake",
        resource: on.to_owned(),
        code: Some(code.to_owned()),
        detail: code.to_owned(),
    }
}

fn has_tag(tags: &[(String, String)], key: &str, value: &str) -> bool {
    tags.iter().any(|(k, v)| k == key && v == value)
}

#[async_trait]
impl Cloud for FakeCloud {
    async fn tagged_subnets(
        &self,
        vpc: &VpcId,
        azs: &[String],
        key: &str,
        value: &str,
    ) -> Result<TaggedSubnets, AwsError> {
        self.call("DescribeSubnets", format!("{vpc} {}", azs.join(",")))
            .await?;
        let state = self.state();
        Ok(azs
            .iter()
            .map(|az| {
                let list = (state.subnets.iter())
                    .filter(|s| s.vpc == *vpc && s.az == *az && has_tag(&s.tags, key, value))
                    .map(|s| (s.id.clone(), Some(s.cidr)))
                    .collect();
                (az.clone(), list)
            })
            .collect())
    }
    async fn route_tables_for(
        &self,
        vpc: &VpcId,
        subnets: &[SubnetId],
    ) -> Result<Vec<RouteTable>, AwsError> {
        self.call("DescribeRouteTables", vpc.to_string()).await?;
        Ok(self
            .state()
            .tables
            .iter()
            .filter(|t| t.vpc_id == *vpc && t.subnets.iter().any(|s| subnets.contains(s)))
            .cloned()
            .collect())
    }
    async fn create_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError> {
        self.call("CreateRoute", format!("{rt} {to}")).await?;
        self.set_route(rt, to, true)
    }
    async fn replace_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError> {
        self.call("ReplaceRoute", format!("{rt} {to}")).await?;
        self.set_route(rt, to, false)
    }
    async fn nat_gateway(&self, id: &str) -> Result<Option<(String, VpcId)>, AwsError> {
        self.call("DescribeNatGateways", id.to_owned()).await?;
        Ok(self
            .state()
            .nat_gateways
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, st, vpc)| (st.clone(), vpc.clone())))
    }
    async fn source_dest_check(&self, eni: &EniId) -> Result<bool, AwsError> {
        self.call("DescribeNetworkInterfaces", eni.to_string())
            .await?;
        Ok(*self.state().source_dest_check.get(eni).unwrap_or(&true))
    }
    async fn disable_source_dest_check(&self, eni: &EniId) -> Result<(), AwsError> {
        self.call("ModifyNetworkInterfaceAttribute", eni.to_string())
            .await?;
        self.state().source_dest_check.insert(eni.clone(), false);
        Ok(())
    }
    async fn instances(&self, ids: &[InstanceId]) -> Result<Vec<InstanceInfo>, AwsError> {
        let on: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.call("DescribeInstances", on.join(",")).await?;
        Ok(self
            .state()
            .instances
            .iter()
            .filter(|i| ids.contains(&i.info.id))
            .map(|i| i.info.clone())
            .collect())
    }
    async fn instance_health(&self, ids: &[InstanceId]) -> Result<Vec<InstanceHealth>, AwsError> {
        let on: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.call("DescribeInstanceStatus", on.join(",")).await?;
        Ok(self
            .state()
            .instances
            .iter()
            .filter(|i| ids.contains(&i.info.id))
            .map(|i| InstanceHealth {
                id: i.info.id.clone(),
                alive: i.info.alive,
                impaired: i.impaired.clone(),
            })
            .collect())
    }
    async fn associate_status_check(
        &self,
        check: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError> {
        self.call("AssociateApplicationStatusCheck", check.to_owned())
            .await?;
        let mut s = self.state();
        let pair = (check.to_owned(), instance.clone());
        if !s.status_checks.contains(&pair) {
            s.status_checks.push(pair);
        }
        Ok(())
    }
    async fn addresses_tagged(&self, key: &str, value: &str) -> Result<Vec<Address>, AwsError> {
        self.call("DescribeAddresses", format!("{key}={value}"))
            .await?;
        Ok(self
            .state()
            .addresses
            .iter()
            .filter(|(_, tags)| has_tag(tags, key, value))
            .map(|(a, _)| a.clone())
            .collect())
    }
    async fn eni_owner(&self, eni: &EniId) -> Result<Option<InstanceId>, AwsError> {
        self.call("DescribeNetworkInterfaces", eni.to_string())
            .await?;
        Ok(self
            .state()
            .instances
            .iter()
            .find(|i| i.info.eni.as_ref() == Some(eni))
            .map(|i| i.info.id.clone()))
    }
    async fn interface_addresses(&self, eni: &EniId) -> Result<Vec<Ipv4Addr>, AwsError> {
        self.call("DescribeNetworkInterfaces", eni.to_string())
            .await?;
        let s = self.state();
        let primary = s.primary_ip(eni);
        let secondary = s.secondary_ips.get(eni).cloned().unwrap_or_default();
        Ok(primary.into_iter().chain(secondary).collect())
    }
    async fn assign_private_addresses(&self, eni: &EniId, count: usize) -> Result<(), AwsError> {
        self.call("AssignPrivateIpAddresses", eni.to_string())
            .await?;
        let mut s = self.state();
        let taken: usize = s.secondary_ips.values().map(Vec::len).sum();
        let new = (taken..taken + count).map(|n| Ipv4Addr::new(10, 0, 200, 10 + n as u8));
        s.secondary_ips.entry(eni.clone()).or_default().extend(new);
        Ok(())
    }
    async fn associate_address(
        &self,
        allocation_id: &str,
        eni: &EniId,
        private_ip: Option<Ipv4Addr>,
        _reassociate: bool,
    ) -> Result<(), AwsError> {
        self.call("AssociateAddress", allocation_id.to_owned())
            .await?;
        let mut s = self.state();
        let primary = s.primary_ip(eni);
        if let Some((a, _)) = s
            .addresses
            .iter_mut()
            .find(|(a, _)| a.allocation_id == allocation_id)
        {
            a.eni = Some(eni.clone());
            a.instance = None;
            a.private_ip = private_ip.or(primary);
        }
        Ok(())
    }
    async fn set_unhealthy(&self, instance: &InstanceId) -> Result<(), AwsError> {
        self.call("SetInstanceHealth", instance.to_string()).await?;
        if let Some(i) = self
            .state()
            .instances
            .iter_mut()
            .find(|i| i.info.id == *instance)
        {
            i.health = "Unhealthy".into();
        }
        Ok(())
    }
    async fn group_of(&self, instance: &InstanceId) -> Result<Option<String>, AwsError> {
        self.call("DescribeAutoScalingInstances", instance.to_string())
            .await?;
        Ok(self
            .state()
            .instances
            .iter()
            .find(|i| i.info.id == *instance)
            .and_then(|i| i.group.clone()))
    }
    async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>, AwsError> {
        self.call("DescribeAutoScalingGroups", group.to_owned())
            .await?;
        Ok(self
            .state()
            .groups
            .iter()
            .find(|(g, _)| g == group)
            .and_then(|(_, tags)| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())))
    }
    async fn instances_of_groups_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<InstanceId>, AwsError> {
        self.call("DescribeAutoScalingGroups", format!("{key}={value}"))
            .await?;
        let s = self.state();
        let groups: Vec<&String> = s
            .groups
            .iter()
            .filter(|(_, tags)| has_tag(tags, key, value))
            .map(|(g, _)| g)
            .collect();
        Ok(s.instances
            .iter()
            .filter(|i| i.info.alive && i.group.as_ref().is_some_and(|g| groups.contains(&g)))
            .map(|i| i.info.id.clone())
            .collect())
    }
    async fn complete_lifecycle_action(
        &self,
        _group: &str,
        _hook: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError> {
        self.call("CompleteLifecycleAction", instance.to_string())
            .await
    }
    async fn secret(&self, secret: &str, stage: &str) -> Result<Option<String>, AwsError> {
        self.call("GetSecretValue", format!("{secret} {stage}"))
            .await?;
        Ok(self
            .state()
            .secrets
            .get(&(secret.to_owned(), stage.to_owned()))
            .cloned())
    }
    async fn put_metric_data(&self, namespace: &str, data: &[Datum]) -> Result<(), AwsError> {
        self.call("PutMetricData", namespace.to_owned()).await?;
        let mut s = self.state();
        s.metric_data
            .push((Instant::now(), namespace.to_owned(), data.to_vec()));
        Ok(())
    }
}

/// A VPC `vpc-1` (10.0.0.0/16) with one NAT per AZ in `azs`: AZ `i` has the
/// private subnet `subnet-<az>` (10.0.(i+1).0/24, tagged network=private)
/// with its own route table `rtb-<az>` pointing at its NAT `i-<az>`
/// (interface `eni-<az>`, 10.0.0.(10+i)), running in group `nat-<az>`
/// tagged `hanat:stack=test`.
pub fn vpc(azs: &[&str]) -> State {
    let mut s = State::default();
    for (i, az) in azs.iter().enumerate() {
        let n = u8::try_from(i).unwrap_or(0);
        let subnet = SubnetId(format!("subnet-{az}"));
        s.subnets.push(Subnet {
            id: subnet.clone(),
            vpc: VpcId("vpc-1".into()),
            az: (*az).to_owned(),
            tags: vec![("network".into(), "private".into())],
            cidr: Ipv4Cidr {
                addr: Ipv4Addr::new(10, 0, n + 1, 0),
                prefix: 24,
            },
        });
        let eni = EniId(format!("eni-{az}"));
        s.tables.push(RouteTable {
            id: RouteTableId(format!("rtb-{az}")),
            vpc_id: VpcId("vpc-1".into()),
            is_main: false,
            subnets: vec![subnet],
            default_route: Some(Route {
                target: RouteTarget::Eni(eni.clone()),
                blackhole: false,
            }),
        });
        s.instances.push(Instance {
            info: InstanceInfo {
                id: InstanceId(format!("i-{az}")),
                az: (*az).to_owned(),
                eni: Some(eni.clone()),
                ip: Some(Ipv4Addr::new(10, 0, 0, 10 + n)),
                alive: true,
                launched: Some(1_700_000_000),
            },
            group: Some(format!("nat-{az}")),
            health: "Healthy".into(),
            impaired: Vec::new(),
        });
        s.source_dest_check.insert(eni, false);
        s.groups.push((
            format!("nat-{az}"),
            vec![("hanat:stack".into(), "test".into())],
        ));
    }
    s
}
