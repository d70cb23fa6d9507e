//! The narrow interface the daemon's loops use to reach EC2 and Auto
//! Scaling: exactly the calls they make, in domain types. [`Sdk`] is the
//! real one (the AWS SDK, see [`super::ec2`] and [`super::autoscaling`]); a
//! stateful fake in the tests plays a whole account, with injectable errors
//! and latency, so the loops can be run under paused time.

use std::net::Ipv4Addr;

use async_trait::async_trait;

use super::AwsError;
use super::autoscaling::AutoScaling;
use super::cloudwatch::CloudWatch;
use super::ec2::Ec2;
use super::meter::ApiMeter;
use super::secrets::Secrets;
use crate::domain::{
    Address, Datum, EniId, InstanceHealth, InstanceId, InstanceInfo, RouteTable, RouteTableId,
    RouteTarget, SubnetId, VpcId,
};

pub use super::ec2::{Subnets, TaggedSubnets};

/// The EC2 and Auto Scaling calls of the loops.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Subnets of `vpc` in each of `azs` tagged `key=value`, with their
    /// networks, in one call; every AZ asked for has an entry.
    async fn tagged_subnets(
        &self,
        vpc: &VpcId,
        azs: &[String],
        key: &str,
        value: &str,
    ) -> Result<TaggedSubnets, AwsError>;
    /// The route tables of `vpc` explicitly associated with `subnets`.
    async fn route_tables_for(
        &self,
        vpc: &VpcId,
        subnets: &[SubnetId],
    ) -> Result<Vec<RouteTable>, AwsError>;
    async fn create_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError>;
    async fn replace_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError>;
    /// A NAT Gateway's state and VPC; `None` if EC2 does not know it.
    async fn nat_gateway(&self, id: &str) -> Result<Option<(String, VpcId)>, AwsError>;
    async fn source_dest_check(&self, eni: &EniId) -> Result<bool, AwsError>;
    async fn disable_source_dest_check(&self, eni: &EniId) -> Result<(), AwsError>;
    /// What EC2 says of these instances (unknown ones are left out).
    async fn instances(&self, ids: &[InstanceId]) -> Result<Vec<InstanceInfo>, AwsError>;
    /// State and status checks of these instances (unknown ones are left out).
    async fn instance_health(&self, ids: &[InstanceId]) -> Result<Vec<InstanceHealth>, AwsError>;
    /// Associate `instance` with application status check `check`.
    async fn associate_status_check(
        &self,
        check: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError>;
    async fn addresses_tagged(&self, key: &str, value: &str) -> Result<Vec<Address>, AwsError>;
    /// The instance an interface is attached to.
    async fn eni_owner(&self, eni: &EniId) -> Result<Option<InstanceId>, AwsError>;
    /// An interface's private addresses, the primary one first.
    async fn interface_addresses(&self, eni: &EniId) -> Result<Vec<Ipv4Addr>, AwsError>;
    /// Give an interface `count` more secondary private addresses, chosen
    /// by EC2.
    async fn assign_private_addresses(&self, eni: &EniId, count: usize) -> Result<(), AwsError>;
    /// Associate an Elastic IP with `eni`'s `private_ip` (its primary one
    /// when `None`).
    async fn associate_address(
        &self,
        allocation_id: &str,
        eni: &EniId,
        private_ip: Option<Ipv4Addr>,
        reassociate: bool,
    ) -> Result<(), AwsError>;
    async fn set_unhealthy(&self, instance: &InstanceId) -> Result<(), AwsError>;
    /// The Auto Scaling group of an instance, if any.
    async fn group_of(&self, instance: &InstanceId) -> Result<Option<String>, AwsError>;
    async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>, AwsError>;
    /// In-service instances of every group tagged `key=value`.
    async fn instances_of_groups_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<InstanceId>, AwsError>;
    async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError>;
    /// The text of a Secrets Manager secret's version labelled `stage`;
    /// `None` when there is no such version.
    async fn secret(&self, secret: &str, stage: &str) -> Result<Option<String>, AwsError>;
    /// CloudWatch: put `data` into `namespace`, stamped now.
    async fn put_metric_data(&self, namespace: &str, data: &[Datum]) -> Result<(), AwsError>;
}

/// The real control plane, through the AWS SDK.
#[derive(Clone)]
pub struct Sdk {
    pub ec2: Ec2,
    pub autoscaling: AutoScaling,
    pub secrets: Secrets,
    pub cloudwatch: CloudWatch,
}

impl Sdk {
    /// Clients whose calls no one times.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self::metered(sdk, &ApiMeter::default())
    }

    /// Clients whose every call `meter` times.
    pub fn metered(sdk: &aws_config::SdkConfig, meter: &ApiMeter) -> Self {
        Sdk {
            ec2: Ec2::new(sdk, meter),
            autoscaling: AutoScaling::new(sdk, meter),
            secrets: Secrets::new(sdk, meter),
            cloudwatch: CloudWatch::new(sdk, meter),
        }
    }
}

#[async_trait]
impl Cloud for Sdk {
    async fn tagged_subnets(
        &self,
        vpc: &VpcId,
        azs: &[String],
        key: &str,
        value: &str,
    ) -> Result<TaggedSubnets, AwsError> {
        self.ec2.tagged_subnets(vpc, azs, key, value).await
    }
    async fn route_tables_for(
        &self,
        vpc: &VpcId,
        subnets: &[SubnetId],
    ) -> Result<Vec<RouteTable>, AwsError> {
        self.ec2.route_tables_for(vpc, subnets).await
    }
    async fn create_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError> {
        self.ec2.create_default_route(rt, to).await
    }
    async fn replace_default_route(
        &self,
        rt: &RouteTableId,
        to: &RouteTarget,
    ) -> Result<(), AwsError> {
        self.ec2.replace_default_route(rt, to).await
    }
    async fn nat_gateway(&self, id: &str) -> Result<Option<(String, VpcId)>, AwsError> {
        self.ec2.nat_gateway(id).await
    }
    async fn source_dest_check(&self, eni: &EniId) -> Result<bool, AwsError> {
        self.ec2.source_dest_check(eni).await
    }
    async fn disable_source_dest_check(&self, eni: &EniId) -> Result<(), AwsError> {
        self.ec2.disable_source_dest_check(eni).await
    }
    async fn instances(&self, ids: &[InstanceId]) -> Result<Vec<InstanceInfo>, AwsError> {
        self.ec2.instances(ids).await
    }
    async fn instance_health(&self, ids: &[InstanceId]) -> Result<Vec<InstanceHealth>, AwsError> {
        self.ec2.instance_health(ids).await
    }
    async fn associate_status_check(
        &self,
        check: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError> {
        self.ec2.associate_status_check(check, instance).await
    }
    async fn addresses_tagged(&self, key: &str, value: &str) -> Result<Vec<Address>, AwsError> {
        self.ec2.addresses_tagged(key, value).await
    }
    async fn eni_owner(&self, eni: &EniId) -> Result<Option<InstanceId>, AwsError> {
        self.ec2.eni_owner(eni).await
    }
    async fn interface_addresses(&self, eni: &EniId) -> Result<Vec<Ipv4Addr>, AwsError> {
        self.ec2.interface_addresses(eni).await
    }
    async fn assign_private_addresses(&self, eni: &EniId, count: usize) -> Result<(), AwsError> {
        self.ec2.assign_private_addresses(eni, count).await
    }
    async fn associate_address(
        &self,
        allocation_id: &str,
        eni: &EniId,
        private_ip: Option<Ipv4Addr>,
        reassociate: bool,
    ) -> Result<(), AwsError> {
        self.ec2
            .associate_address(allocation_id, eni, private_ip, reassociate)
            .await
    }
    async fn set_unhealthy(&self, instance: &InstanceId) -> Result<(), AwsError> {
        self.autoscaling.set_unhealthy(instance).await
    }
    async fn group_of(&self, instance: &InstanceId) -> Result<Option<String>, AwsError> {
        self.autoscaling.group_of(instance).await
    }
    async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>, AwsError> {
        self.autoscaling.group_tag(group, key).await
    }
    async fn instances_of_groups_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<InstanceId>, AwsError> {
        self.autoscaling
            .instances_of_groups_tagged(key, value)
            .await
    }
    async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError> {
        self.autoscaling
            .complete_lifecycle_action(group, hook, instance)
            .await
    }
    async fn secret(&self, secret: &str, stage: &str) -> Result<Option<String>, AwsError> {
        self.secrets.value(secret, stage).await
    }
    async fn put_metric_data(&self, namespace: &str, data: &[Datum]) -> Result<(), AwsError> {
        self.cloudwatch.put(namespace, data).await
    }
}
