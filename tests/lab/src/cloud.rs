//! Control-plane helpers: create and inspect VPC resources in moto through
//! the real AWS SDK, exactly as an operator's tooling would on AWS.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_ec2::types::{
    AttributeBooleanValue, Filter, LaunchTemplateHttpTokensState,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};

/// EC2, Auto Scaling and CloudFormation clients bound to one endpoint and region.
#[derive(Clone)]
pub struct Cloud {
    pub ec2: aws_sdk_ec2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub cfn: aws_sdk_cloudformation::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub region: String,
}

/// A NAT instance's network identity, as EC2 reports it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub az: String,
    pub subnet: String,
    pub vpc: String,
    pub eni: String,
    pub mac: String,
    pub private_ip: String,
    /// What instance metadata serves besides (as EC2 has it).
    pub image_id: String,
    pub instance_type: String,
    pub owner_id: String,
    pub reservation_id: String,
    /// RFC 3339.
    pub launch_time: String,
    /// The interface's security groups: (id, name).
    pub security_groups: Vec<(String, String)>,
}

fn tag_spec(kind: ResourceType, tags: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

impl Cloud {
    pub async fn new(endpoint: &str, region: &str) -> Cloud {
        let sdk = crate::moto::sdk_config(endpoint, region).await;
        Cloud {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            asg: aws_sdk_autoscaling::Client::new(&sdk),
            cfn: aws_sdk_cloudformation::Client::new(&sdk),
            secrets: aws_sdk_secretsmanager::Client::new(&sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&sdk),
            region: region.to_owned(),
        }
    }

    /// CloudWatch's datapoints of `namespace`/`name` with exactly
    /// `dimensions`, by `stat` per `period` seconds from `since` to now,
    /// oldest first (through `GetMetricData`, as a dashboard or an alarm
    /// reads them).
    pub async fn metric(
        &self,
        namespace: &str,
        name: &str,
        dimensions: &[(&str, &str)],
        (stat, period): (&str, i32),
        since: std::time::SystemTime,
    ) -> Result<Vec<f64>> {
        use aws_sdk_cloudwatch::primitives::DateTime;
        use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
        let mut metric = Metric::builder().namespace(namespace).metric_name(name);
        for (k, v) in dimensions {
            metric = metric.dimensions(Dimension::builder().name(*k).value(*v).build());
        }
        let now = std::time::SystemTime::now();
        let out = self
            .cloudwatch
            .get_metric_data()
            .metric_data_queries(
                MetricDataQuery::builder()
                    .id("m")
                    .metric_stat(
                        MetricStat::builder()
                            .metric(metric.build())
                            .period(period)
                            .stat(stat)
                            .build(),
                    )
                    .build(),
            )
            .start_time(DateTime::from(since))
            .end_time(DateTime::from(now + std::time::Duration::from_secs(60)))
            .scan_by(ScanBy::TimestampAscending)
            .send()
            .await
            .context("GetMetricData")?;
        Ok(out
            .metric_data_results()
            .first()
            .map(|r| r.values().to_vec())
            .unwrap_or_default())
    }

    /// A heartbeat key secret as the templates' `PeerKeySecret` makes it
    /// (64 random letters and digits); its ARN.
    pub async fn create_peer_key(&self, name: &str) -> Result<String> {
        let value = self.random_key().await?;
        let out = self
            .secrets
            .create_secret()
            .name(name)
            .description("hanat heartbeat key (lab)")
            .secret_string(value)
            .send()
            .await?;
        out.arn()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("CreateSecret returned no ARN"))
    }

    /// Rotate the heartbeat key: a new current value, the old one becomes
    /// `AWSPREVIOUS`.
    pub async fn rotate_peer_key(&self, arn: &str) -> Result<()> {
        let value = self.random_key().await?;
        self.secrets
            .put_secret_value()
            .secret_id(arn)
            .secret_string(value)
            .send()
            .await?;
        Ok(())
    }

    async fn random_key(&self) -> Result<String> {
        let out = self
            .secrets
            .get_random_password()
            .password_length(64)
            .exclude_punctuation(true)
            .send()
            .await?;
        out.random_password()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("GetRandomPassword returned nothing"))
    }

    pub fn az(&self, i: usize) -> String {
        format!("{}{}", self.region, (b'a' + i as u8) as char)
    }

    pub async fn vpc(&self, cidr: &str) -> Result<String> {
        let out = self.ec2.create_vpc().cidr_block(cidr).send().await?;
        out.vpc()
            .and_then(|v| v.vpc_id())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("CreateVpc returned no id"))
    }

    pub async fn subnet(
        &self,
        vpc: &str,
        cidr: &str,
        az: &str,
        tags: &[(&str, &str)],
    ) -> Result<String> {
        let mut req = self
            .ec2
            .create_subnet()
            .vpc_id(vpc)
            .cidr_block(cidr)
            .availability_zone(az);
        if !tags.is_empty() {
            req = req.tag_specifications(tag_spec(ResourceType::Subnet, tags));
        }
        let out = req
            .send()
            .await
            .with_context(|| format!("CreateSubnet {cidr}"))?;
        out.subnet()
            .and_then(|s| s.subnet_id())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("CreateSubnet returned no id"))
    }

    /// A new route table, associated with `subnet` if given.
    pub async fn route_table(&self, vpc: &str, subnet: Option<&str>) -> Result<String> {
        let out = self.ec2.create_route_table().vpc_id(vpc).send().await?;
        let id = out
            .route_table()
            .and_then(|r| r.route_table_id())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("CreateRouteTable returned no id"))?;
        if let Some(s) = subnet {
            self.ec2
                .associate_route_table()
                .route_table_id(&id)
                .subnet_id(s)
                .send()
                .await?;
        }
        Ok(id)
    }

    pub async fn main_route_table(&self, vpc: &str) -> Result<String> {
        let out = self
            .ec2
            .describe_route_tables()
            .filters(Filter::builder().name("vpc-id").values(vpc).build())
            .filters(
                Filter::builder()
                    .name("association.main")
                    .values("true")
                    .build(),
            )
            .send()
            .await?;
        out.route_tables()
            .first()
            .and_then(|r| r.route_table_id())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no main route table for {vpc}"))
    }

    /// Any AMI moto knows.
    pub async fn image(&self) -> Result<String> {
        let out = self.ec2.describe_images().send().await?;
        out.images()
            .iter()
            .filter_map(|i| i.image_id())
            .next()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("moto has no images"))
    }

    /// A launch template requiring IMDSv2 and an Auto Scaling group of one
    /// instance in `subnet`. Returns the instance the group launched.
    pub async fn nat_group(&self, name: &str, subnet: &str) -> Result<Instance> {
        let image = self.image().await?;
        self.ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(image)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T4gNano)
                    .metadata_options(
                        LaunchTemplateInstanceMetadataOptionsRequest::builder()
                            .http_tokens(LaunchTemplateHttpTokensState::Required)
                            .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                            .http_put_response_hop_limit(1)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .context("CreateLaunchTemplate")?;
        self.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(name)
                    .version("$Latest")
                    .build(),
            )
            .min_size(1)
            .max_size(1)
            .desired_capacity(1)
            .vpc_zone_identifier(subnet)
            .health_check_type("EC2")
            .health_check_grace_period(30)
            .send()
            .await
            .context("CreateAutoScalingGroup")?;
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await?;
        let id = out
            .auto_scaling_groups()
            .first()
            .and_then(|g| g.instances().first())
            .and_then(|i| i.instance_id())
            .ok_or_else(|| anyhow!("group {name} launched no instance"))?
            .to_owned();
        self.instance(&id).await
    }

    /// A stand-alone instance in `subnet` (for decoys and adapter tests).
    pub async fn run_instance(&self, subnet: &str) -> Result<Instance> {
        let image = self.image().await?;
        let out = self
            .ec2
            .run_instances()
            .image_id(image)
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .send()
            .await?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| anyhow!("RunInstances returned no instance"))?
            .to_owned();
        self.instance(&id).await
    }

    pub async fn instance(&self, id: &str) -> Result<Instance> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await?;
        let i = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .ok_or_else(|| anyhow!("instance {id} not found"))?;
        let ni = i
            .network_interfaces()
            .first()
            .ok_or_else(|| anyhow!("instance {id} has no network interface"))?;
        let s = |o: Option<&str>, what: &str| {
            o.map(str::to_owned)
                .ok_or_else(|| anyhow!("{id}: no {what}"))
        };
        let reservation = out.reservations().first();
        Ok(Instance {
            id: id.to_owned(),
            az: s(i.placement().and_then(|p| p.availability_zone()), "AZ")?,
            subnet: s(i.subnet_id(), "subnet")?,
            vpc: s(i.vpc_id(), "VPC")?,
            eni: s(ni.network_interface_id(), "ENI")?,
            mac: s(ni.mac_address(), "MAC")?.to_ascii_lowercase(),
            private_ip: s(ni.private_ip_address(), "private IP")?,
            image_id: i.image_id().unwrap_or_default().to_owned(),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            owner_id: reservation
                .and_then(|r| r.owner_id())
                .unwrap_or("123456789012")
                .to_owned(),
            reservation_id: reservation
                .and_then(|r| r.reservation_id())
                .unwrap_or_default()
                .to_owned(),
            launch_time: i
                .launch_time()
                .and_then(|t| {
                    t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
                        .ok()
                })
                .unwrap_or_default(),
            security_groups: ni
                .groups()
                .iter()
                .map(|g| {
                    (
                        g.group_id().unwrap_or_default().to_owned(),
                        g.group_name().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        })
    }

    /// A subnet's IPv4 network.
    pub async fn subnet_cidr(&self, subnet: &str) -> Result<String> {
        let out = self
            .ec2
            .describe_subnets()
            .subnet_ids(subnet)
            .send()
            .await?;
        out.subnets()
            .first()
            .and_then(|s| s.cidr_block())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("subnet {subnet} not found"))
    }

    /// The `0.0.0.0/0` route of a table: (target id, state).
    pub async fn default_route(&self, rt: &str) -> Result<Option<(String, String)>> {
        let out = self
            .ec2
            .describe_route_tables()
            .route_table_ids(rt)
            .send()
            .await?;
        let table = out
            .route_tables()
            .first()
            .ok_or_else(|| anyhow!("{rt} not found"))?;
        Ok(table
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .map(|r| {
                let target = r
                    .network_interface_id()
                    .or(r.instance_id())
                    .or(r.nat_gateway_id())
                    .or(r.gateway_id())
                    .unwrap_or("?")
                    .to_owned();
                let state = r.state().map(|s| s.as_str().to_owned()).unwrap_or_default();
                (target, state)
            }))
    }

    pub async fn set_default_route(&self, rt: &str, target: DefaultTarget<'_>) -> Result<()> {
        let exists = self.default_route(rt).await?.is_some();
        macro_rules! with_target {
            ($req:expr) => {
                match target {
                    DefaultTarget::Eni(e) => $req.network_interface_id(e),
                    DefaultTarget::Gateway(g) => $req.gateway_id(g),
                    DefaultTarget::NatGateway(n) => $req.nat_gateway_id(n),
                }
            };
        }
        if exists {
            with_target!(
                self.ec2
                    .replace_route()
                    .route_table_id(rt)
                    .destination_cidr_block("0.0.0.0/0")
            )
            .send()
            .await?;
        } else {
            with_target!(
                self.ec2
                    .create_route()
                    .route_table_id(rt)
                    .destination_cidr_block("0.0.0.0/0")
            )
            .send()
            .await?;
        }
        Ok(())
    }

    pub async fn internet_gateway(&self, vpc: &str) -> Result<String> {
        let out = self.ec2.create_internet_gateway().send().await?;
        let id = out
            .internet_gateway()
            .and_then(|g| g.internet_gateway_id())
            .ok_or_else(|| anyhow!("no IGW id"))?
            .to_owned();
        self.ec2
            .attach_internet_gateway()
            .internet_gateway_id(&id)
            .vpc_id(vpc)
            .send()
            .await?;
        Ok(id)
    }

    pub async fn source_dest_check(&self, eni: &str) -> Result<bool> {
        let out = self
            .ec2
            .describe_network_interfaces()
            .network_interface_ids(eni)
            .send()
            .await?;
        Ok(out
            .network_interfaces()
            .first()
            .and_then(|n| n.source_dest_check())
            .unwrap_or(true))
    }

    pub async fn set_source_dest_check(&self, eni: &str, on: bool) -> Result<()> {
        self.ec2
            .modify_network_interface_attribute()
            .network_interface_id(eni)
            .source_dest_check(AttributeBooleanValue::builder().value(on).build())
            .send()
            .await?;
        Ok(())
    }

    /// Auto Scaling's health status of an instance (`Healthy`/`Unhealthy`).
    pub async fn health(&self, instance: &str) -> Result<String> {
        (self.scaling_instance(instance).await?)
            .and_then(|i| i.health_status().map(str::to_owned))
            .ok_or_else(|| anyhow!("{instance} is not in an Auto Scaling group"))
    }

    /// What Auto Scaling says of an instance, if it is in a group.
    async fn scaling_instance(
        &self,
        instance: &str,
    ) -> Result<Option<aws_sdk_autoscaling::types::AutoScalingInstanceDetails>> {
        let out = self
            .asg
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send()
            .await?;
        Ok(out.auto_scaling_instances().first().cloned())
    }

    /// Set an instance's Auto Scaling health (as an operator would after a
    /// false alarm).
    pub async fn set_health(&self, instance: &str, status: &str) -> Result<()> {
        self.asg
            .set_instance_health()
            .instance_id(instance)
            .health_status(status)
            .send()
            .await?;
        Ok(())
    }

    /// Put `instance` into Standby without lowering the group's desired
    /// capacity: the group launches a replacement for it (moto too).
    pub async fn enter_standby(&self, group: &str, instance: &str) -> Result<()> {
        self.asg
            .enter_standby()
            .auto_scaling_group_name(group)
            .instance_ids(instance)
            .should_decrement_desired_capacity(false)
            .send()
            .await?;
        Ok(())
    }

    /// The group's in-service, healthy instance.
    pub async fn group_instance(&self, group: &str) -> Result<Instance> {
        let id = self
            .members(group)
            .await?
            .into_iter()
            .find(|i| {
                i.health_status() == Some("Healthy")
                    && i.lifecycle_state()
                        == Some(&aws_sdk_autoscaling::types::LifecycleState::InService)
            })
            .and_then(|i| i.instance_id().map(str::to_owned))
            .ok_or_else(|| anyhow!("group {group} has no healthy in-service instance"))?;
        self.instance(&id).await
    }

    /// The group's instances as Auto Scaling lists them.
    async fn members(&self, group: &str) -> Result<Vec<aws_sdk_autoscaling::types::Instance>> {
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await?;
        Ok(out
            .auto_scaling_groups()
            .first()
            .map(|g| g.instances().to_vec())
            .unwrap_or_default())
    }

    pub async fn terminate(&self, instance: &str) -> Result<()> {
        self.ec2
            .terminate_instances()
            .instance_ids(instance)
            .send()
            .await?;
        Ok(())
    }

    /// A VPC Elastic IP with tags: (allocation id, moto's public address).
    pub async fn allocate_address(&self, tags: &[(&str, &str)]) -> Result<(String, String)> {
        let out = self
            .ec2
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .tag_specifications(tag_spec(ResourceType::ElasticIp, tags))
            .send()
            .await?;
        let alloc = out
            .allocation_id()
            .ok_or_else(|| anyhow!("no allocation id"))?;
        let ip = out.public_ip().ok_or_else(|| anyhow!("no public ip"))?;
        Ok((alloc.to_owned(), ip.to_owned()))
    }

    /// A managed NAT Gateway in `subnet` with a new Elastic IP:
    /// (gateway id, moto's public address of its Elastic IP).
    pub async fn nat_gateway(&self, subnet: &str) -> Result<(String, String)> {
        let (alloc, ip) = self.allocate_address(&[]).await?;
        let out = self
            .ec2
            .create_nat_gateway()
            .subnet_id(subnet)
            .allocation_id(alloc)
            .send()
            .await?;
        let id = out
            .nat_gateway()
            .and_then(|n| n.nat_gateway_id())
            .ok_or_else(|| anyhow!("no NAT gateway id"))?;
        Ok((id.to_owned(), ip))
    }

    /// Every associated Elastic IP: (moto public address, holder,
    /// allocation id), where the holder is an instance id or, when
    /// associated by interface, an ENI id.
    pub async fn address_associations(&self) -> Result<Vec<(String, String, String)>> {
        let out = self.ec2.describe_addresses().send().await?;
        Ok(out
            .addresses()
            .iter()
            .filter_map(|a| {
                let holder = a
                    .instance_id()
                    .filter(|i| !i.is_empty())
                    .or(a.network_interface_id().filter(|e| !e.is_empty()))?;
                Some((
                    a.public_ip()?.to_owned(),
                    holder.to_owned(),
                    a.allocation_id().unwrap_or_default().to_owned(),
                ))
            })
            .collect())
    }

    /// Create a CloudFormation stack from `template` and wait for it; the
    /// stack's outputs by key.
    pub async fn deploy_stack(
        &self,
        name: &str,
        template: &str,
        params: &[(&str, &str)],
    ) -> Result<HashMap<String, String>> {
        use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
        let mut req = self
            .cfn
            .create_stack()
            .stack_name(name)
            .template_body(template)
            .capabilities(Capability::CapabilityIam);
        for (k, v) in params {
            req = req.parameters(
                Parameter::builder()
                    .parameter_key(*k)
                    .parameter_value(*v)
                    .build(),
            );
        }
        req.send()
            .await
            .with_context(|| format!("CreateStack {name}"))?;
        for _ in 0..600 {
            let out = self.cfn.describe_stacks().stack_name(name).send().await?;
            let stack = out
                .stacks()
                .first()
                .ok_or_else(|| anyhow!("stack {name} vanished"))?;
            match stack.stack_status() {
                Some(StackStatus::CreateComplete) => return Ok(outputs(stack)),
                Some(StackStatus::CreateInProgress) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                other => bail!(
                    "stack {name}: {other:?}: {}",
                    stack.stack_status_reason().unwrap_or("no reason given")
                ),
            }
        }
        bail!("stack {name} did not complete in 60 s")
    }

    /// The outputs of stack `name`.
    pub async fn stack_outputs(&self, name: &str) -> Result<HashMap<String, String>> {
        let out = self.cfn.describe_stacks().stack_name(name).send().await?;
        let stack = out
            .stacks()
            .first()
            .ok_or_else(|| anyhow!("no stack {name}"))?;
        Ok(outputs(stack))
    }

    /// The internet gateway attached to `vpc`.
    pub async fn vpc_internet_gateway(&self, vpc: &str) -> Result<String> {
        let out = self
            .ec2
            .describe_internet_gateways()
            .filters(
                Filter::builder()
                    .name("attachment.vpc-id")
                    .values(vpc)
                    .build(),
            )
            .send()
            .await?;
        out.internet_gateways()
            .first()
            .and_then(|g| g.internet_gateway_id())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no internet gateway attached to {vpc}"))
    }

    pub async fn tag(&self, resource: &str, tags: &[(&str, &str)]) -> Result<()> {
        let mut req = self.ec2.create_tags().resources(resource);
        for (k, v) in tags {
            req = req.tags(Tag::builder().key(*k).value(*v).build());
        }
        req.send().await?;
        Ok(())
    }

    /// A stack's resources: logical id → physical id (an Elastic IP's is
    /// its public address).
    pub async fn stack_resource_ids(&self, stack: &str) -> Result<HashMap<String, String>> {
        let out = self
            .cfn
            .list_stack_resources()
            .stack_name(stack)
            .send()
            .await?;
        Ok(out
            .stack_resource_summaries()
            .iter()
            .filter_map(|r| {
                Some((
                    r.logical_resource_id()?.to_owned(),
                    r.physical_resource_id()?.to_owned(),
                ))
            })
            .collect())
    }

    /// The allocation id of the Elastic IP with moto's `public_ip`.
    pub async fn allocation_of(&self, public_ip: &str) -> Result<String> {
        let out = self
            .ec2
            .describe_addresses()
            .public_ips(public_ip)
            .send()
            .await?;
        out.addresses()
            .first()
            .and_then(|a| a.allocation_id())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no Elastic IP {public_ip}"))
    }

    /// The group's instances that are in service, in Auto Scaling's order.
    pub async fn in_service(&self, group: &str) -> Result<Vec<String>> {
        Ok(self
            .members(group)
            .await?
            .iter()
            .filter(|i| {
                i.lifecycle_state() == Some(&aws_sdk_autoscaling::types::LifecycleState::InService)
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect())
    }

    /// Set a group's desired capacity (Auto Scaling launches or terminates
    /// to match).
    pub async fn set_desired(&self, group: &str, desired: i32) -> Result<()> {
        self.asg
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(desired)
            .send()
            .await?;
        Ok(())
    }

    /// Terminate `instance` through its group with no replacement, as a
    /// scale-in or a refresh's last step: the desired capacity is lowered,
    /// unless the instance is in Standby (its place in the desired
    /// capacity was given to the instance launched for it; lowering it
    /// would have the group terminate that one).
    pub async fn terminate_in_group(&self, instance: &str) -> Result<()> {
        let standby = (self.scaling_instance(instance).await?)
            .is_some_and(|i| i.lifecycle_state() == Some("Standby"));
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance)
            .should_decrement_desired_capacity(!standby)
            .send()
            .await?;
        Ok(())
    }

    /// Whether launch template `name`'s latest version gives the primary
    /// interface a public address (`AssociatePublicIpAddress`), if it says.
    pub async fn launch_template_public_ip(&self, name: &str) -> Result<Option<bool>> {
        let out = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(name)
            .versions("$Latest")
            .send()
            .await?;
        Ok(out
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .map(|d| d.network_interfaces())
            .unwrap_or_default()
            .iter()
            .find(|n| n.device_index().unwrap_or(0) == 0)
            .and_then(|n| n.associate_public_ip_address()))
    }

    /// Scale a group to nothing (for AZs a lab does not use).
    pub async fn empty_group(&self, group: &str) -> Result<()> {
        self.asg
            .update_auto_scaling_group()
            .auto_scaling_group_name(group)
            .min_size(0)
            .max_size(0)
            .desired_capacity(0)
            .send()
            .await?;
        Ok(())
    }
}

/// What a test points a default route at.
#[derive(Debug, Clone, Copy)]
pub enum DefaultTarget<'a> {
    Eni(&'a str),
    Gateway(&'a str),
    NatGateway(&'a str),
}

/// A stack's outputs, by key.
fn outputs(stack: &aws_sdk_cloudformation::types::Stack) -> HashMap<String, String> {
    (stack.outputs().iter())
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect()
}
