//! EC2: subnet and route-table discovery, route takeover, source/dest check.
//!
//! Read calls (`DescribeSubnets`, `DescribeRouteTables`,
//! `DescribeNetworkInterfaces`) are paginated and filtered server-side to
//! our VPC (and AZ and tag for subnets), then checked again here. Each
//! mutating call changes exactly one route or one attribute, so a failure
//! can never leave a route table half-changed; the next reconcile simply
//! tries again. Retries and backoff are the SDK's, quicker for the route
//! writes a failover waits on ([`URGENT_BACKOFF`]); a silent peer's
//! confirmation is tried once per call, the peers loop retrying it.

use std::net::Ipv4Addr;

use aws_config::retry::RetryConfig;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, RouteState};

use super::AwsError;
use super::meter::{ApiMeter, metered_client};
use crate::domain::{
    Address, EniId, InstanceHealth, InstanceId, InstanceInfo, Ipv4Cidr, Route, RouteTable,
    RouteTableId, RouteTarget, SPARE_TAG, SubnetId, VpcId,
};

/// The destination every NAT owns.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// The EC2 client, bound to one region.
#[derive(Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    /// The same, retrying on [`URGENT_BACKOFF`]: for the route writes a
    /// failover waits on, which are made only when a route must move.
    urgent: aws_sdk_ec2::Client,
    /// The same, with one attempt per call: for a silent peer's
    /// confirmation, which the peers loop retries on its own schedule
    /// (`decide::backoff::CONFIRM_RETRY`).
    once: aws_sdk_ec2::Client,
}

/// The first and the longest wait between attempts of an urgent call. The
/// SDK's standard waits (1 s doubling to 20 s) are right for the loops'
/// routine reads, which retry again on their own schedule; a failover whose
/// call waits out 1 + 2 + 4 + 8 s behind a throttled attempt leaves an AZ
/// dark for all of it (the FIS `ThrottleApi` experiment saw 7-13 s in 3
/// runs of 12, the peer's confirmation retrying inside the SDK).
pub const URGENT_BACKOFF: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(2),
);

/// Set the target of a CreateRoute or ReplaceRoute request (two builder
/// types with the same setters).
macro_rules! with_target {
    ($req:expr, $to:expr) => {
        match $to {
            RouteTarget::Eni(e) => $req.network_interface_id(&e.0),
            RouteTarget::Instance(i) => $req.instance_id(&i.0),
            RouteTarget::NatGateway(n) => $req.nat_gateway_id(n),
            RouteTarget::Other(g) => $req.gateway_id(g),
        }
    };
}

/// An AZ's tagged subnets, with their networks.
pub type Subnets = Vec<(SubnetId, Option<Ipv4Cidr>)>;

/// Per AZ, its tagged subnets with their networks.
pub type TaggedSubnets = std::collections::BTreeMap<String, Subnets>;

impl Ec2 {
    pub fn new(sdk: &aws_config::SdkConfig, meter: &ApiMeter) -> Self {
        let attempts = sdk.retry_config().map_or(3, |r| r.max_attempts());
        let (first, longest) = URGENT_BACKOFF;
        let with = |retry: RetryConfig| sdk.to_builder().retry_config(retry).build();
        let urgent = with(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(first)
                .with_max_backoff(longest),
        );
        let once = with(RetryConfig::standard().with_max_attempts(1));
        Self {
            client: metered_client!(aws_sdk_ec2, sdk, meter),
            urgent: metered_client!(aws_sdk_ec2, &urgent, meter),
            once: metered_client!(aws_sdk_ec2, &once, meter),
        }
    }

    /// Subnets of `vpc` in each of `azs` tagged `key=value`, with their
    /// networks where EC2 gives a readable one, in one call: every AZ asked
    /// for has an entry.
    pub async fn tagged_subnets(
        &self,
        vpc: &VpcId,
        azs: &[String],
        key: &str,
        value: &str,
    ) -> Result<TaggedSubnets, AwsError> {
        let mut out: TaggedSubnets = azs.iter().map(|az| (az.clone(), Vec::new())).collect();
        if azs.is_empty() {
            return Ok(out);
        }
        let resource = format!("{vpc} {} tag:{key}={value}", azs.join(","));
        let mut pages = self
            .client
            .describe_subnets()
            .filters(filter("vpc-id", &vpc.0))
            .filters(
                Filter::builder()
                    .name("availability-zone")
                    .set_values(Some(azs.to_vec()))
                    .build(),
            )
            .filters(filter(&format!("tag:{key}"), value))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("DescribeSubnets", &resource, e))?;
            for s in page.subnets() {
                // Filters are applied by the server; check again so a
                // misbehaving endpoint cannot widen what we touch.
                let tagged = s
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value));
                let in_vpc = s.vpc_id() == Some(vpc.0.as_str());
                let listed = s.availability_zone().and_then(|az| out.get_mut(az));
                if let (true, true, Some(list), Some(id)) = (tagged, in_vpc, listed, s.subnet_id())
                {
                    let cidr = s.cidr_block().and_then(|c| c.parse().ok());
                    list.push((SubnetId(id.to_owned()), cidr));
                }
            }
        }
        for list in out.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            list.dedup_by(|a, b| a.0 == b.0);
        }
        Ok(out)
    }

    /// Route tables of `vpc` explicitly associated with any of `subnets`.
    pub async fn route_tables_for(
        &self,
        vpc: &VpcId,
        subnets: &[SubnetId],
    ) -> Result<Vec<RouteTable>, AwsError> {
        if subnets.is_empty() {
            return Ok(Vec::new());
        }
        // Filter by VPC on the server and by association here: one call
        // either way (a VPC holds at most a few hundred tables), and it does
        // not depend on multi-value `association.subnet-id` filtering, which
        // moto gets wrong for tables with several associations.
        let resource = format!("{vpc}");
        let mut pages = self
            .client
            .describe_route_tables()
            .filters(filter("vpc-id", &vpc.0))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("DescribeRouteTables", &resource, e))?;
            out.extend(
                page.route_tables()
                    .iter()
                    .filter_map(route_table)
                    .filter(|rt| rt.subnets.iter().any(|s| subnets.contains(s))),
            );
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Create `0.0.0.0/0 → to` in a table that has no default route.
    pub async fn create_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError> {
        let req = self
            .urgent
            .create_route()
            .route_table_id(&rt.0)
            .destination_cidr_block(DEFAULT_ROUTE);
        let req = with_target!(req, to);
        req.send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateRoute", &rt.0, e))?;
        Ok(())
    }

    /// Point an existing `0.0.0.0/0` at `to`.
    pub async fn replace_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError> {
        let req = self
            .urgent
            .replace_route()
            .route_table_id(&rt.0)
            .destination_cidr_block(DEFAULT_ROUTE);
        let req = with_target!(req, to);
        req.send()
            .await
            .map_err(|e| AwsError::from_sdk("ReplaceRoute", &rt.0, e))?;
        Ok(())
    }

    /// The state (`available`, `deleted`…) and VPC of a NAT Gateway;
    /// `None` if EC2 does not know it.
    pub async fn nat_gateway(&self, id: &str) -> Result<Option<(String, VpcId)>, AwsError> {
        let out = self
            .client
            .describe_nat_gateways()
            .nat_gateway_ids(id)
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let e = AwsError::from_sdk("DescribeNatGateways", id, e);
                if e.code.as_deref().is_some_and(|c| c.contains("NotFound")) {
                    return Ok(None);
                }
                return Err(e);
            }
        };
        Ok(out
            .nat_gateways()
            .iter()
            .find(|n| n.nat_gateway_id() == Some(id))
            .map(|n| {
                (
                    n.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    VpcId(n.vpc_id().unwrap_or_default().to_owned()),
                )
            }))
    }

    /// Whether source/destination checking is on for `eni`.
    pub async fn source_dest_check(&self, eni: &EniId) -> Result<bool, AwsError> {
        let out = self
            .client
            .describe_network_interfaces()
            .network_interface_ids(&eni.0)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeNetworkInterfaces", &eni.0, e))?;
        let ni = out.network_interfaces().first().ok_or_else(|| AwsError {
            operation: "DescribeNetworkInterfaces",
            resource: eni.0.clone(),
            code: None,
            detail: "interface not found".into(),
        })?;
        // AWS leaves the field out for some interface types; the default is on.
        Ok(ni.source_dest_check().unwrap_or(true))
    }

    /// Turn source/destination checking off on `eni`. Works per interface,
    /// so it is right for instances with several interfaces.
    pub async fn disable_source_dest_check(&self, eni: &EniId) -> Result<(), AwsError> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(&eni.0)
            .source_dest_check(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ModifyNetworkInterfaceAttribute", &eni.0, e))?;
        Ok(())
    }

    /// Placement, primary interface and state of `ids`. Instances EC2 no
    /// longer knows are simply absent.
    pub async fn instances(&self, ids: &[InstanceId]) -> Result<Vec<InstanceInfo>, AwsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let resource = joined(ids);
        let mut pages = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids.iter().map(|i| i.0.clone()).collect()))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("DescribeInstances", &resource, e))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                let primary = i
                    .network_interfaces()
                    .iter()
                    .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                    .or_else(|| i.network_interfaces().first());
                let alive = alive(i.state());
                out.push(InstanceInfo {
                    id: InstanceId(id.to_owned()),
                    az: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_owned(),
                    eni: primary
                        .and_then(|n| n.network_interface_id())
                        .map(|e| EniId(e.to_owned())),
                    ip: primary
                        .and_then(|n| n.private_ip_address())
                        .and_then(|ip| ip.parse().ok()),
                    alive,
                    launched: i.launch_time().map(|t| t.secs()),
                });
            }
        }
        Ok(out)
    }

    /// State and status checks of `ids` (DescribeInstanceStatus, every
    /// state included). Instances EC2 no longer knows are absent.
    pub async fn instance_health(
        &self,
        ids: &[InstanceId],
    ) -> Result<Vec<InstanceHealth>, AwsError> {
        use aws_sdk_ec2::types::SummaryStatus;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let resource = joined(ids);
        let mut pages = self
            .once
            .describe_instance_status()
            .include_all_instances(true)
            .set_instance_ids(Some(ids.iter().map(|i| i.0.clone()).collect()))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                // One id EC2 has forgotten fails the whole call: ask the
                // other way, which leaves unknown ones out.
                Err(e) => {
                    let e = AwsError::from_sdk("DescribeInstanceStatus", &resource, e);
                    if !e.code.as_deref().is_some_and(|c| c.contains("NotFound")) {
                        return Err(e);
                    }
                    let infos = self.instances(ids).await?;
                    return Ok(infos
                        .into_iter()
                        .map(|i| InstanceHealth {
                            id: i.id,
                            alive: i.alive,
                            impaired: Vec::new(),
                        })
                        .collect());
                }
            };
            for s in page.instance_statuses() {
                let Some(id) = s.instance_id() else { continue };
                let alive = alive(s.instance_state());
                let summary = |x: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
                    x.and_then(|x| x.status()) == Some(&SummaryStatus::Impaired)
                };
                let mut impaired = Vec::new();
                if summary(s.system_status()) {
                    impaired.push("system");
                }
                if summary(s.instance_status()) {
                    impaired.push("instance");
                }
                if s.application_status().and_then(|a| a.status()) == Some(&SummaryStatus::Impaired)
                {
                    impaired.push("application");
                }
                out.push(InstanceHealth {
                    id: InstanceId(id.to_owned()),
                    alive,
                    impaired,
                });
            }
        }
        Ok(out)
    }

    /// Associate `instance` with application status check `check` (`asc-…`).
    /// The client token makes a repeat (a restarted daemon) harmless.
    pub async fn associate_status_check(
        &self,
        check: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError> {
        let out = self
            .client
            .associate_application_status_check()
            .application_status_check_id(check)
            .instance_ids(instance.0.clone())
            .client_token(format!("hanat-{check}-{instance}"))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AssociateApplicationStatusCheck", check, e))?;
        // The call succeeds with per-target failures listed; one that says
        // the instance is associated already is what a restart expects.
        let failed = out
            .unsuccessful_results()
            .iter()
            .filter_map(|u| u.reason())
            .find(|r| !r.to_ascii_lowercase().contains("already"));
        match failed {
            None => Ok(()),
            Some(reason) => Err(AwsError {
                operation: "AssociateApplicationStatusCheck",
                resource: check.to_owned(),
                code: Some("UnsuccessfulAssociation".into()),
                detail: reason.to_owned(),
            }),
        }
    }

    /// VPC Elastic IPs tagged `key=value`.
    pub async fn addresses_tagged(&self, key: &str, value: &str) -> Result<Vec<Address>, AwsError> {
        let resource = format!("tag:{key}={value}");
        let out = self
            .client
            .describe_addresses()
            .filters(filter(&format!("tag:{key}"), value))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeAddresses", &resource, e))?;
        let some = |s: Option<&str>| s.filter(|v| !v.is_empty()).map(str::to_owned);
        let mut v: Vec<Address> = out
            .addresses()
            .iter()
            .filter_map(|a| {
                Some(Address {
                    allocation_id: a.allocation_id()?.to_owned(),
                    public_ip: a.public_ip().unwrap_or_default().to_owned(),
                    eni: some(a.network_interface_id()).map(EniId),
                    instance: some(a.instance_id()).map(InstanceId),
                    private_ip: a.private_ip_address().and_then(|p| p.parse().ok()),
                    spare: a
                        .tags()
                        .iter()
                        .any(|t| t.key() == Some(SPARE_TAG) && t.value() == Some("true")),
                })
            })
            .collect();
        v.sort_by(|a, b| a.allocation_id.cmp(&b.allocation_id));
        Ok(v)
    }

    /// What EC2 says of interface `eni`; `None` if it does not know it.
    async fn network_interface(
        &self,
        eni: &EniId,
    ) -> Result<Option<aws_sdk_ec2::types::NetworkInterface>, AwsError> {
        let out = self
            .client
            .describe_network_interfaces()
            .filters(filter("network-interface-id", &eni.0))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeNetworkInterfaces", &eni.0, e))?;
        Ok(out.network_interfaces().first().cloned())
    }

    /// The instance `eni` is attached to; `None` if it is detached or gone.
    pub async fn eni_owner(&self, eni: &EniId) -> Result<Option<InstanceId>, AwsError> {
        Ok(self
            .network_interface(eni)
            .await?
            .as_ref()
            .and_then(|n| n.attachment())
            .and_then(|a| a.instance_id())
            .filter(|i| !i.is_empty())
            .map(|i| InstanceId(i.to_owned())))
    }

    /// `eni`'s private addresses, the primary one first.
    pub async fn interface_addresses(&self, eni: &EniId) -> Result<Vec<Ipv4Addr>, AwsError> {
        let interface = self.network_interface(eni).await?;
        let mut v: Vec<(bool, Ipv4Addr)> = interface
            .as_ref()
            .map(|n| n.private_ip_addresses())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| {
                let ip = a.private_ip_address()?.parse().ok()?;
                Some((a.primary() != Some(true), ip))
            })
            .collect();
        // Primary first; the secondaries in EC2's order.
        v.sort_by_key(|(secondary, _)| *secondary);
        Ok(v.into_iter().map(|(_, ip)| ip).collect())
    }

    /// `count` more secondary private addresses on `eni`, chosen by EC2.
    pub async fn assign_private_addresses(
        &self,
        eni: &EniId,
        count: usize,
    ) -> Result<(), AwsError> {
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(&eni.0)
            .secondary_private_ip_address_count(i32::try_from(count).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AssignPrivateIpAddresses", &eni.0, e))?;
        Ok(())
    }

    /// Associate an Elastic IP with `eni`'s `private_ip` (EC2 takes the
    /// primary one when `None`). Without `reassociate`, AWS refuses if
    /// someone holds it, so a stale decision cannot steal it.
    pub async fn associate_address(
        &self,
        allocation_id: &str,
        eni: &EniId,
        private_ip: Option<Ipv4Addr>,
        reassociate: bool,
    ) -> Result<(), AwsError> {
        self.client
            .associate_address()
            .allocation_id(allocation_id)
            .network_interface_id(&eni.0)
            .set_private_ip_address(private_ip.map(|p| p.to_string()))
            .allow_reassociation(reassociate)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AssociateAddress", allocation_id, e))?;
        Ok(())
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn route_table(rt: &aws_sdk_ec2::types::RouteTable) -> Option<RouteTable> {
    let id = RouteTableId(rt.route_table_id()?.to_owned());
    let vpc_id = VpcId(rt.vpc_id()?.to_owned());
    let is_main = rt.associations().iter().any(|a| a.main() == Some(true));
    let mut subnets: Vec<SubnetId> = rt
        .associations()
        .iter()
        .filter_map(|a| a.subnet_id())
        .map(|s| SubnetId(s.to_owned()))
        .collect();
    subnets.sort();
    let default_route = rt
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))
        .map(|r| {
            let target = if let Some(eni) = r.network_interface_id() {
                RouteTarget::Eni(EniId(eni.to_owned()))
            } else if let Some(i) = r.instance_id() {
                RouteTarget::Instance(InstanceId(i.to_owned()))
            } else if let Some(n) = r.nat_gateway_id() {
                RouteTarget::NatGateway(n.to_owned())
            } else {
                let other = r
                    .gateway_id()
                    .or(r.transit_gateway_id())
                    .or(r.vpc_peering_connection_id())
                    .unwrap_or("unknown");
                RouteTarget::Other(other.to_owned())
            };
            Route {
                target,
                blackhole: r.state() == Some(&RouteState::Blackhole),
            }
        });
    Some(RouteTable {
        id,
        vpc_id,
        is_main,
        subnets,
        default_route,
    })
}

/// Instance ids as one resource string for errors.
fn joined(ids: &[InstanceId]) -> String {
    ids.iter()
        .map(|i| i.0.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `pending` or `running`: it can still forward or soon will.
fn alive(state: Option<&aws_sdk_ec2::types::InstanceState>) -> bool {
    use aws_sdk_ec2::types::InstanceStateName::{Pending, Running};
    matches!(state.and_then(|s| s.name()), Some(Pending | Running))
}
