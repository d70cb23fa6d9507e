//! Building the VPC: the project's CloudFormation template deployed into
//! moto, and each AZ's data plane (subnets, hosts, NAT Gateway namespaces).

use super::*;

/// The VPC template, compiled in so the lab binary is self-contained.
pub const VPC_TEMPLATE: &str = include_str!("../../../../cloudformation/vpc.yaml");
/// The template that adds NATs to a VPC a user already has.
pub const EXISTING_VPC_TEMPLATE: &str =
    include_str!("../../../../cloudformation/existing-vpc.yaml");

/// The `Name` of the NAT stack: `prefix`, or with
/// [`LabOptions::existing_vpc`] the existing-VPC stack's own.
pub fn nat_stack_name(prefix: &str, opts: &LabOptions) -> String {
    match opts.existing_vpc {
        true => format!("{prefix}x"),
        false => prefix.to_owned(),
    }
}

/// Deploy `cloudformation/vpc.yaml` (at least 2 AZs: the template's minimum;
/// groups of AZs beyond `azs` are scaled to zero) and build each used AZ's
/// data plane. Returns the VPC, the AZs, and moto's EIP address → lab address.
pub(super) async fn deploy_vpc(
    cloud: &Cloud,
    prefix: &str,
    rtr: &Netns,
    opts: &LabOptions,
) -> Result<(String, Vec<Az>, HashMap<String, Ipv4Addr>)> {
    let azs = opts.azs;
    let ami = cloud.image().await?;
    let deployed = azs.max(2);
    let n = deployed.to_string();
    let mut params: Vec<(String, String)> = vec![
        ("Name".into(), prefix.into()),
        ("AmiId".into(), ami),
        ("NumberOfAZs".into(), n),
        ("VpcCidr".into(), VPC_CIDR.into()),
        ("AddressesPerNat".into(), opts.addresses.to_string()),
        (
            "CloudWatchMetrics".into(),
            match opts.cloudwatch {
                Some(_) => "all".into(),
                None => "off".into(),
            },
        ),
    ];
    for (i, az) in ["A", "B", "C"].iter().enumerate() {
        params.push((
            format!("PublicSubnetCidr{az}"),
            format!("10.0.{}.0/24", 2 * i),
        ));
        params.push((
            format!("PrivateSubnetCidr{az}"),
            format!("10.0.{}.0/24", 2 * i + 1),
        ));
    }
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = cloud.deploy_stack(prefix, VPC_TEMPLATE, &params).await?;
    let list = |key: &str| output_list(&out, key, deployed);
    let vpc = out
        .get("VpcId")
        .cloned()
        .ok_or_else(|| anyhow!("stack output VpcId missing"))?;
    let (public, private, tables) = (
        list("PublicSubnets")?,
        list("PrivateSubnets")?,
        list("PrivateRouteTables")?,
    );
    // With `existing_vpc`, the NATs come from `existing-vpc.yaml` deployed
    // into the VPC `vpc.yaml` made (whose own groups are emptied): a
    // deployment into a VPC someone else built.
    let (out, stack) = match opts.existing_vpc {
        false => (out, prefix.to_owned()),
        true => {
            for g in list("NatGroups")? {
                cloud.empty_group(&g).await?;
            }
            let stack = nat_stack_name(prefix, opts);
            let cidr = VPC_CIDR.to_owned();
            let mut p: Vec<(String, String)> = vec![
                ("Name".into(), stack.clone()),
                ("AmiId".into(), cloud.image().await?),
                ("VpcId".into(), vpc.clone()),
                ("VpcCidr".into(), cidr),
                ("NumberOfAZs".into(), deployed.to_string()),
                ("AddressesPerNat".into(), opts.addresses.to_string()),
                ("CloudWatchMetrics".into(), "off".into()),
                (
                    "InterfaceEndpoints".into(),
                    opts.interface_endpoints.to_string(),
                ),
            ];
            for (x, subnet) in ["A", "B", "C"].iter().zip(&public) {
                p.push((format!("PublicSubnet{x}"), subnet.clone()));
            }
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let nats = cloud
                .deploy_stack(&stack, EXISTING_VPC_TEMPLATE, &p)
                .await?;
            let mut merged = out.clone();
            for key in ["NatGroups", "ElasticIpAllocations", "ElasticIps"] {
                if let Some(v) = nats.get(key) {
                    merged.insert(key.to_owned(), v.clone());
                }
            }
            (merged, stack)
        }
    };
    let list = |key: &str| output_list(&out, key, deployed);
    let (groups, allocations, eips) = (
        list("NatGroups")?,
        list("ElasticIpAllocations")?,
        list("ElasticIps")?,
    );

    // moto's CloudFormation skips the alarms: create them as it would.
    let resolve = |value: &str| -> Result<String> {
        let unquoted = |v: &str| v.trim_matches('"').to_owned();
        if let Some(sub) = value.strip_prefix("!Sub ") {
            let v = unquoted(sub).replace("${Name}", prefix);
            return match v.contains("${") {
                true => Err(anyhow!("cannot resolve `{value}`")),
                false => Ok(v),
            };
        }
        if value == "!Ref Vpc" {
            return Ok(vpc.clone());
        }
        if let Some(x) = value.strip_prefix("!Ref NatGroup") {
            let i = "ABC".find(x).ok_or_else(|| anyhow!("no group `{value}`"))?;
            return groups
                .get(i)
                .cloned()
                .ok_or_else(|| anyhow!("no group {i}"));
        }
        if let Some(rest) = value.strip_prefix("!Select [")
            && let Some(i) = rest.strip_suffix(r#", !GetAZs ""]"#)
        {
            return Ok(cloud.az(i.parse()?));
        }
        // The lab runs no working-hours schedule.
        if value == "!If [Scheduled, notBreaching, breaching]" {
            return Ok("breaching".into());
        }
        // Nor an SNS topic for the alarms.
        if value == "!If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref AWS::NoValue]" {
            return Ok(String::new());
        }
        match value.starts_with('!') {
            true => Err(anyhow!("cannot resolve `{value}`")),
            false => Ok(unquoted(value)),
        }
    };
    let made = |condition: &str| match condition {
        "Alarmed" => Ok(opts.cloudwatch.is_some()),
        "AlarmedThree" => Ok(opts.cloudwatch.is_some() && deployed == 3),
        other => Err(anyhow!("unknown condition {other}")),
    };
    // (The existing-VPC stack is deployed without alarms: they need its
    // AZs as a parameter, and the lab's alarm tests use vpc.yaml's.)
    if !opts.existing_vpc {
        for alarm in crate::alarms::declared(VPC_TEMPLATE, made, resolve)? {
            cloud.put_alarm(&alarm).await?;
        }
    }

    // moto records CloudFormation's subnet/route-table associations apart
    // from the route tables, so DescribeRouteTables does not show them: make
    // them again through the API, as they are on AWS.
    for (rt, subnet) in tables.iter().zip(&private) {
        cloud
            .ec2
            .associate_route_table()
            .route_table_id(rt)
            .subnet_id(subnet)
            .send()
            .await?;
    }
    let mut out_azs = Vec::new();
    let mut eip_public = HashMap::new();
    let resources = cloud.stack_resource_ids(&stack).await?;
    for i in 0..deployed {
        if i >= azs {
            cloud.empty_group(&groups[i]).await?;
            continue;
        }
        let name = cloud.az(i);
        // moto drops tags on CloudFormation EIPs; put back what the
        // template declares.
        tag_pool(cloud, &allocations[i], &stack, &name, &groups[i], false).await?;
        let lab_ip = elastic_ip(i);
        eip_public.insert(eips[i].clone(), lab_ip);
        // The AZ's further addresses (AddressesPerNat > 1), from the
        // stack's resources: ElasticIpA2, A3, …
        let mut more_eips = Vec::new();
        for k in 1..usize::from(opts.addresses) {
            let logical = format!("ElasticIp{}{}", ["A", "B", "C"][i], k + 1);
            let moto_ip = resources
                .get(&logical)
                .ok_or_else(|| anyhow!("stack resource {logical} missing"))?;
            let allocation = cloud.allocation_of(moto_ip).await?;
            tag_pool(cloud, &allocation, &stack, &name, &groups[i], false).await?;
            let lab_ip = nth_elastic_ip(i, k);
            eip_public.insert(moto_ip.clone(), lab_ip);
            more_eips.push((allocation, lab_ip));
        }

        // The pool's spare (SpareAddress, the template's default): for a
        // NAT launched beside the AZ's current one.
        let logical = format!("ElasticIp{}Spare", ["A", "B", "C"][i]);
        let spare_eip = match resources.get(&logical) {
            Some(moto_ip) => {
                let allocation = cloud.allocation_of(moto_ip).await?;
                tag_pool(cloud, &allocation, &stack, &name, &groups[i], true).await?;
                eip_public.insert(moto_ip.clone(), spare_elastic_ip(i));
                Some((allocation, spare_elastic_ip(i)))
            }
            None => None,
        };

        // Router side: a bridge for the public subnet (NATs come and go), a
        // link to the private host, and the private subnet's own table.
        rtr.ip(&format!("link add bp{i} type bridge"))?;
        rtr.ip(&format!("addr add 10.0.{}.1/24 dev bp{i}", 2 * i))?;
        rtr.ip(&format!("link set bp{i} up"))?;
        let host = Netns::new(&format!("{prefix}-h{i}"))?;
        veth(rtr, &format!("prv{i}"), &host, "eth0")?;
        rtr.ip(&format!("addr add 10.0.{}.1/24 dev prv{i}", 2 * i + 1))?;
        let host_ip = Ipv4Addr::new(10, 0, (2 * i + 1) as u8, 10);
        host.ip(&format!("addr add {host_ip}/24 dev eth0"))?;
        host.ip(&format!("route add default via 10.0.{}.1", 2 * i + 1))?;
        let table = 100 + i;
        rtr.ip(&format!("rule add iif prv{i} lookup {table} pref {table}"))?;
        rtr.ip(&format!("route add unreachable default table {table}"))?;
        let (nat_gateway, nat_gateway_ns) = match opts.fallback_nat_gateway {
            true => {
                // A regional gateway: the one made for AZ 0, in every AZ.
                let regional = (opts.regional_nat_gateway)
                    .then(|| out_azs.first().and_then(|a: &Az| a.nat_gateway.clone()))
                    .flatten();
                let (id, moto_ip) = match regional {
                    Some(g) => (g.id, String::new()),
                    None => cloud.nat_gateway(&public[i]).await?,
                };
                let gw = NatGateway {
                    id,
                    private_ip: Ipv4Addr::new(10, 0, (2 * i) as u8, 250),
                    public_ip: nat_gateway_public_ip(i),
                };
                if !moto_ip.is_empty() {
                    eip_public.insert(moto_ip, gw.public_ip);
                }
                let ns = nat_gateway_plane(rtr, prefix, i, &gw)?;
                (Some(gw), Some(ns))
            }
            false => (None, None),
        };
        out_azs.push(Az {
            index: i,
            name,
            public_subnet: public[i].clone(),
            private_subnet: private[i].clone(),
            private_route_table: tables[i].clone(),
            group: groups[i].clone(),
            host,
            host_ip,
            eip: (allocations[i].clone(), lab_ip),
            more_eips,
            spare_eip,
            nat_gateway,
            _nat_gateway_ns: nat_gateway_ns,
        });
    }
    Ok((vpc, out_azs, eip_public))
}

/// AZ `i`'s NAT Gateway data plane: a namespace on the public subnet that
/// masquerades the VPC to its own address (the internet gateway maps that
/// to the gateway's Elastic IP).
pub(super) fn nat_gateway_plane(
    rtr: &Netns,
    prefix: &str,
    i: usize,
    gw: &NatGateway,
) -> Result<Netns> {
    let ns = Netns::new(&format!("{prefix}-gw{i}"))?;
    veth(rtr, &format!("gw{i}"), &ns, "eth0")?;
    rtr.ip(&format!("link set gw{i} master bp{i}"))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ns.ip(&format!("addr add {}/24 dev eth0", gw.private_ip))?;
    ns.ip(&format!("route add default via 10.0.{}.1", 2 * i))?;
    ns.exec(
        "nft",
        &[&format!(
            "add table ip labnatgw; add chain ip labnatgw post {{ type nat hook postrouting \
             priority srcnat; policy accept; }}; add rule ip labnatgw post \
             ip saddr {VPC_CIDR} ip daddr != {VPC_CIDR} masquerade"
        )],
    )?;
    Ok(ns)
}

/// The interface endpoints' data plane: a namespace on AZ 0's public subnet
/// at [`VPC_ENDPOINT`], where the lab serves the AWS API (what the
/// endpoints' private DNS names resolve to).
pub(super) fn endpoints_plane(rtr: &Netns, prefix: &str) -> Result<Netns> {
    let ns = Netns::new(&format!("{prefix}-vpce"))?;
    veth(rtr, "vpce", &ns, "eth0")?;
    rtr.ip("link set vpce master bp0")?;
    ns.ip(&format!("addr add {VPC_ENDPOINT}/24 dev eth0"))?;
    ns.ip("route add default via 10.0.0.1")?;
    Ok(ns)
}

/// A stack output that lists one value per AZ (comma-separated), checked to
/// have `deployed` of them.
fn output_list(out: &HashMap<String, String>, key: &str, deployed: usize) -> Result<Vec<String>> {
    let v: Vec<String> = out
        .get(key)
        .ok_or_else(|| anyhow!("stack output {key} missing"))?
        .split(',')
        .map(str::to_owned)
        .collect();
    if v.len() != deployed {
        bail!(
            "stack output {key} has {} entries, expected {deployed}",
            v.len()
        );
    }
    Ok(v)
}

/// Put back the tags the template declares on one of an AZ's pool
/// addresses (moto drops tags on CloudFormation's Elastic IPs).
async fn tag_pool(
    cloud: &Cloud,
    allocation: &str,
    stack: &str,
    az: &str,
    group: &str,
    spare: bool,
) -> Result<()> {
    let mut tags = vec![
        (EIP_POOL_TAG, stack),
        ("hanat:az", az),
        ("hanat:group", group),
    ];
    if spare {
        tags.push(("hanat:spare", "true"));
    }
    cloud.tag(allocation, &tags).await
}
