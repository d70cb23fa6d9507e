//! The CloudFormation templates deployed into a real moto server, and the
//! result asserted: what an operator gets after `aws cloudformation deploy`.
//! Where moto does not model a property (lifecycle hooks, EIP tags,
//! MapPublicIpOnLaunch, the associations CloudFormation makes), the template text is checked instead
//! and the gap is named.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;

use aws_sdk_ec2::types::Filter;
use hanat_lab::alarms::{Declared, declared};
use hanat_lab::cloud::Cloud;
use hanat_lab::moto::Moto;

const VPC: &str = include_str!("../cloudformation/vpc.yaml");
const EXISTING: &str = include_str!("../cloudformation/existing-vpc.yaml");
const FIS: &str = include_str!("../cloudformation/fis.yaml");
/// moto resolves `!GetAZs ""` to us-east-1's zones.
const REGION: &str = "us-east-1";

fn list(out: &HashMap<String, String>, key: &str) -> Vec<String> {
    out.get(key)
        .unwrap_or_else(|| panic!("output {key}"))
        .split(',')
        .map(str::to_owned)
        .collect()
}

async fn stack_resources(cloud: &Cloud, stack: &str) -> Vec<(String, String, String)> {
    let out = cloud
        .cfn
        .list_stack_resources()
        .stack_name(stack)
        .send()
        .await
        .unwrap();
    out.stack_resource_summaries()
        .iter()
        .map(|r| {
            (
                r.logical_resource_id().unwrap_or_default().to_owned(),
                r.resource_type().unwrap_or_default().to_owned(),
                r.resource_status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The three alarms of AZ `x` (a, b, c) as `alarms::declared` reads them
/// with every expression left as written (and no description): moto's
/// CloudFormation does not model AWS::CloudWatch::Alarm (it deploys the
/// stack without them), so the text is checked, against the metric names
/// the daemon publishes.
fn az_alarms(x: char, i: usize, existing: bool) -> Vec<Declared> {
    use hanat::daemon::publish::{CONNTRACK_FILL, FORWARDING_NAT};
    let big = x.to_ascii_uppercase();
    let (vpc, az) = match existing {
        true => (
            "!Ref VpcId".to_owned(),
            format!(r#"!Select [{i}, !Split [",", !Ref AvailabilityZones]]"#),
        ),
        false => (
            "!Ref Vpc".to_owned(),
            format!(r#"!Select [{i}, !GetAZs ""]"#),
        ),
    };
    let missing = match existing {
        true => "breaching",
        false => "!If [Scheduled, notBreaching, breaching]",
    };
    let actions = "!If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref AWS::NoValue]";
    let group = (
        "AutoScalingGroupName".to_owned(),
        format!("!Ref NatGroup{big}"),
    );
    let in_az = ("AvailabilityZone".to_owned(), az);
    let alarm = |id: &str, name: &str, metric: &str, first: (String, String)| Declared {
        id: format!("{id}{big}"),
        condition: if x == 'c' { "AlarmedThree" } else { "Alarmed" }.into(),
        name: format!(r#"!Sub "${{Name}}-nat-{x}-{name}""#),
        description: String::new(),
        namespace: "hanat".into(),
        metric: metric.into(),
        dimensions: vec![first, in_az.clone()],
        statistic: "Maximum".into(),
        period: 60,
        evaluation_periods: 1,
        threshold: 0.0,
        comparison: String::new(),
        missing: "notBreaching".into(),
        actions: actions.into(),
        ok_actions: actions.into(),
    };
    vec![
        Declared {
            evaluation_periods: 3,
            threshold: 1.0,
            comparison: "LessThanThreshold".into(),
            missing: missing.into(),
            ..alarm(
                "NoForwardingNatAlarm",
                "no-forwarding-nat",
                FORWARDING_NAT,
                ("VpcId".into(), vpc),
            )
        },
        Declared {
            statistic: "Sum".into(),
            comparison: "GreaterThanThreshold".into(),
            ..alarm(
                "PortAllocationAlarm",
                "port-allocation",
                "ErrorPortAllocation",
                group.clone(),
            )
        },
        Declared {
            threshold: 90.0,
            comparison: "GreaterThanOrEqualToThreshold".into(),
            ..alarm(
                "ConntrackFullAlarm",
                "conntrack-full",
                CONNTRACK_FILL,
                group,
            )
        },
    ]
}

/// Everything the VPC template promises, for `azs` AZs.
async fn check_vpc_stack(cloud: &Cloud, stack: &str, azs: usize, scheduled: bool) {
    let ami = cloud.image().await.unwrap();
    let n = azs.to_string();
    let out = cloud
        .deploy_stack(
            stack,
            VPC,
            &[
                ("Name", stack),
                ("AmiId", &ami),
                ("NumberOfAZs", &n),
                ("ScheduleEnabled", if scheduled { "true" } else { "false" }),
            ],
        )
        .await
        .unwrap();
    let vpc = out["VpcId"].clone();
    let (public, private) = (list(&out, "PublicSubnets"), list(&out, "PrivateSubnets"));
    let (tables, groups) = (list(&out, "PrivateRouteTables"), list(&out, "NatGroups"));
    assert_eq!(public.len(), azs);
    assert_eq!(private.len(), azs);
    assert_eq!(tables.len(), azs);
    assert_eq!(list(&out, "ElasticIps").len(), azs);

    // Private subnets: tagged network=private, one per AZ.
    let subnets = cloud
        .ec2
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .send()
        .await
        .unwrap();
    let az_of: HashMap<String, String> = subnets
        .subnets()
        .iter()
        .map(|s| {
            (
                s.subnet_id().unwrap().to_owned(),
                s.availability_zone().unwrap().to_owned(),
            )
        })
        .collect();
    let tagged: Vec<&str> = subnets
        .subnets()
        .iter()
        .filter(|s| {
            s.tags()
                .iter()
                .any(|t| t.key() == Some("network") && t.value() == Some("private"))
        })
        .map(|s| s.subnet_id().unwrap())
        .collect();
    let mut want: Vec<&str> = private.iter().map(String::as_str).collect();
    want.sort();
    let mut tagged = tagged;
    tagged.sort();
    assert_eq!(
        tagged, want,
        "exactly the private subnets carry network=private"
    );
    let mut private_azs: Vec<&String> = private.iter().map(|s| &az_of[s]).collect();
    private_azs.dedup();
    assert_eq!(private_azs.len(), azs, "one private subnet per AZ");

    // One NAT group per AZ, in that AZ's public subnet, of one instance and
    // room for a second while one replaces the other, the older going first.
    let described = cloud
        .asg
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(Some(groups.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(described.auto_scaling_groups().len(), azs);
    for (i, g) in groups.iter().enumerate() {
        let d = described
            .auto_scaling_groups()
            .iter()
            .find(|d| d.auto_scaling_group_name() == Some(g.as_str()))
            .unwrap();
        assert_eq!(
            (d.min_size(), d.max_size(), d.desired_capacity()),
            (Some(1), Some(2), Some(1)),
            "{g}"
        );
        assert_eq!(d.termination_policies(), ["OldestInstance"], "{g}");
        assert_eq!(
            d.vpc_zone_identifier(),
            Some(public[i].as_str()),
            "{g} lives in its AZ's public subnet"
        );
        assert_eq!(d.health_check_type(), Some("EC2"));
        assert_eq!(d.instances().len(), 1);
        assert!(
            d.tags()
                .iter()
                .any(|t| t.key() == Some("hanat:stack") && t.propagate_at_launch() == Some(true))
        );
    }

    // The launch template requires IMDSv2 with a hop limit of 1.
    let lt = cloud
        .ec2
        .describe_launch_template_versions()
        .launch_template_name(format!("{stack}-nat"))
        .send()
        .await
        .unwrap();
    let data = lt.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    let md = data.metadata_options().unwrap();
    assert_eq!(md.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(md.http_put_response_hop_limit(), Some(1));
    assert!(data.iam_instance_profile().is_some());
    assert!(
        data.key_name().is_none(),
        "no SSH key by default: SSM instead"
    );

    // The security group admits nothing from outside the VPC.
    let sgs = cloud
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .filters(
            Filter::builder()
                .name("group-name")
                .values(format!("{stack}*"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let nat_sgs: Vec<_> = sgs
        .security_groups()
        .iter()
        .filter(|g| {
            g.description() == Some("hanat NAT instances - accept traffic from the VPC only")
        })
        .collect();
    assert_eq!(nat_sgs.len(), 1);
    assert!(
        !nat_sgs[0].ip_permissions().is_empty(),
        "the VPC is admitted"
    );
    for perm in nat_sgs[0].ip_permissions() {
        for r in perm.ip_ranges() {
            assert_eq!(
                r.cidr_ip(),
                Some("10.0.0.0/16"),
                "ingress only from the VPC"
            );
        }
        assert!(perm.ipv6_ranges().is_empty());
    }

    // S3 goes through a gateway endpoint on every private route table.
    let eps = cloud
        .ec2
        .describe_vpc_endpoints()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .send()
        .await
        .unwrap();
    let s3 = &eps.vpc_endpoints()[0];
    assert_eq!(
        s3.service_name(),
        Some(format!("com.amazonaws.{REGION}.s3").as_str())
    );
    let mut ep_tables: Vec<String> = s3.route_table_ids().to_vec();
    ep_tables.sort();
    let mut want_tables = tables.clone();
    want_tables.sort();
    assert_eq!(ep_tables, want_tables);

    // The role allows exactly what the daemon calls.
    let resources = stack_resources(cloud, stack).await;
    assert!(
        resources.iter().all(|(_, _, st)| st == "CREATE_COMPLETE"),
        "{resources:?}"
    );
    let assoc = resources
        .iter()
        .filter(|(_, t, _)| t == "AWS::EC2::SubnetRouteTableAssociation")
        .count();
    assert_eq!(assoc, 2 * azs, "public and private associations");
    let schedules = cloud.asg.describe_scheduled_actions().send().await.unwrap();
    let ours = schedules
        .scheduled_update_group_actions()
        .iter()
        .filter(|a| groups.contains(&a.auto_scaling_group_name().unwrap_or_default().to_owned()))
        .count();
    assert_eq!(
        ours,
        if scheduled { 2 * azs } else { 0 },
        "scheduled start/stop per group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpc_template_deploys_with_two_and_three_azs() {
    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    check_vpc_stack(&cloud, "two", 2, false).await;
    check_vpc_stack(&cloud, "three", 3, true).await;
}

const STATUS_CHECK_ARN: &str =
    "arn:aws:ec2:us-east-1:123456789012:application-status-check/asc-0123456789abcdef0";

/// Run the launch template's user data with `/etc/hanat` moved to a
/// temporary directory and `systemctl` a no-op; the config it wrote.
/// `script` with every `${NatStatusCheck…}` (the templates' logical id, or
/// the CDK construct's with its hash) replaced by what AWS's Ref gives.
fn status_check_resolved(script: &str) -> String {
    let mut out = String::new();
    let mut rest = script;
    while let Some(at) = rest.find("${NatStatusCheck") {
        let end = at + rest[at..].find('}').expect("a closing brace");
        out.push_str(&rest[..at]);
        out.push_str(STATUS_CHECK_ARN);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

async fn config_from_user_data(cloud: &Cloud, template: &str) -> hanat::config::Config {
    let lt = cloud
        .ec2
        .describe_launch_template_versions()
        .launch_template_name(template)
        .send()
        .await
        .unwrap();
    let encoded = lt.launch_template_versions()[0]
        .launch_template_data()
        .and_then(|d| d.user_data())
        .expect("user data")
        .to_owned();
    let decoded = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(encoded.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    // moto's CloudFormation skips AWS::EC2::ApplicationStatusCheck and
    // leaves its Ref unresolved: put in what AWS's Ref gives, its ARN.
    let script = status_check_resolved(&String::from_utf8(decoded.stdout).unwrap());
    // One directory per call: tests run in parallel in this process.
    let dir =
        std::env::temp_dir().join(format!("hanat-userdata-{}-{template}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = script
        .replace("/etc/hanat", &dir.join("etc").display().to_string())
        .replace("systemctl ", "true ");
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("etc/hanat.toml")).unwrap_or_default();
    let config = hanat::config::Config::load(&dir.join("etc/hanat.toml"));
    let _ = std::fs::remove_dir_all(&dir);
    config.unwrap_or_else(|e| panic!("user data writes a config hanat rejects: {e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_writes_a_config_hanat_accepts() {
    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let ami = cloud.image().await.unwrap();
    for (stack, fallbacks, allow) in [
        ("plain", "", ""),
        (
            "fallback",
            "us-east-1a=nat-0abc123,us-east-1b=nat-0def456",
            "10.0.0.0/24,10.0.1.0/24",
        ),
        // A regional NAT Gateway for every AZ.
        ("regional", "*=nat-0reg789", ""),
    ] {
        cloud
            .deploy_stack(
                stack,
                VPC,
                &[
                    ("Name", stack),
                    ("AmiId", &ami),
                    ("FallbackNatGateways", fallbacks),
                    ("MetricsAllow", allow),
                ],
            )
            .await
            .unwrap();
        let config = config_from_user_data(&cloud, &format!("{stack}-nat")).await;
        // MetricsAllow empty: the key unset, so the VPC may connect.
        let allowed = config.metrics.allow.as_ref().map(|a| {
            a.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        assert_eq!(
            allowed,
            (!allow.is_empty()).then(|| allow.to_owned()),
            "{stack}"
        );
        assert_eq!(config.probe.targets.len(), 3, "{stack}");
        // The heartbeat key's secret (moto does not create the secret, so
        // what its Ref gives is all there is to check here).
        assert!(config.peers.key_secret.is_some(), "{stack}");
        assert!(!config.peers.accept_unauthenticated, "{stack}");
        assert_eq!(
            config.peers.status_check.as_deref(),
            Some(STATUS_CHECK_ARN),
            "{stack}"
        );
        let got: Vec<String> = config
            .peers
            .fallback_nat_gateway_id
            .iter()
            .map(|(az, id)| format!("{az}={id}"))
            .collect();
        assert_eq!(got.join(","), fallbacks, "{stack}");
    }
}

/// With `AddressesPerNat = 4`, each AZ gets four Elastic IPs and the spare
/// (`SpareAddress`, on by default), `AllElasticIps` lists all fifteen, and
/// the user data asks the daemon for four addresses; the default stays at
/// one, and `SpareAddress = false` makes no spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_per_nat_makes_that_many_elastic_ips_per_az() {
    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let ami = cloud.image().await.unwrap();
    for (stack, n, spare) in [("four", "4", "true"), ("one", "1", "false")] {
        let out = cloud
            .deploy_stack(
                stack,
                VPC,
                &[
                    ("Name", stack),
                    ("AmiId", &ami),
                    ("NumberOfAZs", "3"),
                    ("AddressesPerNat", n),
                    ("SpareAddress", spare),
                ],
            )
            .await
            .unwrap();
        let n: usize = n.parse().unwrap();
        let pool = n + usize::from(spare == "true");
        let made: Vec<String> = stack_resources(&cloud, stack)
            .await
            .into_iter()
            .filter(|(_, kind, _)| kind == "AWS::EC2::EIP")
            .map(|(id, _, _)| id)
            .collect();
        for x in ['A', 'B', 'C'] {
            let mine = made
                .iter()
                .filter(|id| id.strip_prefix(&format!("ElasticIp{x}")).is_some())
                .count();
            assert_eq!(mine, pool, "{stack}: Elastic IPs of AZ {x}: {made:?}");
        }
        // moto renders AWS::NoValue in a list as "None" where AWS drops
        // the element.
        let mut all = list(&out, "AllElasticIps");
        all.retain(|a| a != "None");
        assert_eq!(all.len(), 3 * pool, "{stack}: {all:?}");
        let mut distinct = all.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), all.len(), "{stack}: {all:?}");
        assert_eq!(list(&out, "ElasticIps").len(), 3, "{stack}");
        let config = config_from_user_data(&cloud, &format!("{stack}-nat")).await;
        assert_eq!(usize::from(config.snat.addresses), n, "{stack}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The stack deploys with every choice of the monitoring parameters (the
/// alarms themselves moto skips: see `az_alarms`), and the user data turns
/// publishing on or off as chosen.
async fn cloudwatch_publishing_and_alarms_follow_their_parameters() {
    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let ami = cloud.image().await.unwrap();
    let topic = "arn:aws:sns:us-east-1:123456789012:nat-alarms";
    for (stack, metrics, topic_arn) in [
        ("full", None, ""),
        ("cheap", Some("alarms"), topic),
        ("quiet", Some("off"), ""),
    ] {
        let mut params = vec![
            ("Name", stack),
            ("AmiId", ami.as_str()),
            ("AlarmTopicArn", topic_arn),
        ];
        params.extend(metrics.map(|m| ("CloudWatchMetrics", m)));
        let out = cloud.deploy_stack(stack, VPC, &params).await.unwrap();
        let config = config_from_user_data(&cloud, &format!("{stack}-nat")).await;
        let cw = &config.cloudwatch;
        match metrics {
            None | Some("alarms") => {
                assert!(cw.enabled, "{stack}");
                assert_eq!(cw.namespace, "hanat", "the namespace the role may put into");
                let set = match metrics {
                    None => hanat::config::MetricSet::All,
                    _ => hanat::config::MetricSet::Alarms,
                };
                assert_eq!(cw.metrics, set, "{stack}");
            }
            _ => assert!(!cw.enabled, "{stack}"),
        }
        assert_eq!(list(&out, "NatGroups").len(), 2);
    }
}

#[test]
fn what_moto_does_not_model_is_in_the_template() {
    // Public subnets give instances public addresses (moto ignores it).
    assert_eq!(VPC.matches("MapPublicIpOnLaunch: true").count(), 3);
    for (name, t) in [("vpc.yaml", VPC), ("existing-vpc.yaml", EXISTING)] {
        // A termination lifecycle hook on every group (moto ignores them).
        let groups = t
            .matches("Type: AWS::AutoScaling::AutoScalingGroup")
            .count();
        assert_eq!(groups, 3, "{name}");
        assert_eq!(
            t.matches("LifecycleTransition: autoscaling:EC2_INSTANCE_TERMINATING")
                .count(),
            groups,
            "{name}"
        );
        // Two NATs of a group while one replaces the other: launched first
        // (moto ignores the maintenance and update policies), the older
        // one terminated.
        for want in [
            "InstanceMaintenancePolicy:\n        MinHealthyPercentage: 100\n        MaxHealthyPercentage: 200",
            "AutoScalingRollingUpdate:\n        MinInstancesInService: 1\n        MaxBatchSize: 1",
            "TerminationPolicies: [OldestInstance]",
        ] {
            assert_eq!(t.matches(want).count(), groups, "{name}: {want}");
        }
        assert!(
            t.contains("DependsOn: NatGroupA") && t.contains("DependsOn: NatGroupB"),
            "{name}: updated one AZ at a time"
        );
        // Every Elastic IP tagged for the pool and its group (moto drops
        // EIP tags): eight per AZ and a spare, as many made as
        // AddressesPerNat and SpareAddress say.
        let eips = t.matches("Type: AWS::EC2::EIP").count();
        assert_eq!(eips, 3 * 9, "{name}");
        assert_eq!(t.matches(r#"Key: "hanat:pool""#).count(), eips, "{name}");
        assert_eq!(t.matches(r#"Key: "hanat:group""#).count(), eips, "{name}");
        assert_eq!(
            t.matches(r#"- { Key: "hanat:spare", Value: "true" }"#)
                .count(),
            3,
            "{name}: the spares are marked, so a NAT alone in its AZ leaves them"
        );
        // A public address on launch, whatever the subnet maps: the NAT
        // reaches the AWS API before it holds its Elastic IP (the lab's
        // no-public-address); in an existing VPC, unless the stack's
        // interface endpoints carry the calls instead.
        let public = match name {
            "vpc.yaml" => "AssociatePublicIpAddress: true",
            _ => "AssociatePublicIpAddress: !If [Endpoints, false, true]",
        };
        assert!(
            t.contains(&format!(
                "NetworkInterfaces:\n          - DeviceIndex: 0\n            {public}"
            )),
            "{name}"
        );
        // IMDSv2 only.
        assert!(
            t.contains("HttpTokens: required") && t.contains("HttpPutResponseHopLimit: 1"),
            "{name}"
        );
        // Exactly the daemon's API calls, mutating ones scoped by condition.
        for action in [
            "ec2:DescribeSubnets",
            "ec2:DescribeRouteTables",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeInstances",
            "ec2:DescribeInstanceStatus",
            "ec2:AssociateApplicationStatusCheck",
            "ec2:DescribeAddresses",
            "ec2:DescribeNatGateways",
            "ec2:AssociateAddress",
            "ec2:AssignPrivateIpAddresses",
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeAutoScalingGroups",
            "ec2:CreateRoute",
            "ec2:ReplaceRoute",
            "ec2:ModifyNetworkInterfaceAttribute",
            "autoscaling:SetInstanceHealth",
            "cloudwatch:PutMetricData",
        ] {
            assert!(t.contains(action), "{name} grants {action}");
        }
        let actions = t
            .lines()
            .filter(|l| {
                l.trim_start().starts_with("- ec2:") || l.trim_start().starts_with("- autoscaling:")
            })
            .count()
            + t.lines()
                .filter(|l| {
                    l.trim_start().starts_with("Action: ec2:")
                        || l.trim_start().starts_with("Action: autoscaling:")
                        || l.trim_start().starts_with("Action: cloudwatch:")
                })
                .count();
        assert_eq!(
            actions, 19,
            "{name}: no action beyond the daemon's (plus CompleteLifecycleAction for the hook)"
        );
        // (existing-vpc.yaml's route statement chooses its condition:
        // the_existing_vpc_role_can_be_scoped_to_tagged_route_tables)
        let chosen = usize::from(t.contains("Condition: !If\n                  - RoutesTagged"));
        assert_eq!(
            t.matches("Condition:\n                  StringEquals:")
                .count()
                + chosen,
            8,
            "{name}: every mutating statement is conditioned"
        );
        assert!(
            t.contains(r#""cloudwatch:namespace": hanat"#),
            "{name}: metrics only into the namespace the user data names"
        );
        // Three alarms per AZ, on the metrics the daemon publishes.
        assert_eq!(
            t.matches("Type: AWS::CloudWatch::Alarm").count(),
            9,
            "{name}"
        );
        let written = declared(t, |_| Ok(true), |v| Ok(v.to_owned())).unwrap();
        for (i, x) in ['a', 'b', 'c'].into_iter().enumerate() {
            for want in az_alarms(x, i, name == "existing-vpc.yaml") {
                let got = written.iter().find(|a| a.id == want.id);
                let got = got.unwrap_or_else(|| panic!("{name}: no {}", want.id));
                let got = Declared {
                    description: String::new(),
                    ..got.clone()
                };
                assert_eq!(got, want, "{name}");
            }
        }
        // The outside witness: EC2's application status check on /health
        // (moto's CloudFormation skips it; the lab plays it with the same
        // figures), named in the config so the NAT associates itself.
        assert_eq!(
            t.matches("Type: AWS::EC2::ApplicationStatusCheck").count(),
            1,
            "{name}"
        );
        use hanat_lab::lab::witness;
        for property in [
            "Protocol: http".to_owned(),
            format!("Port: {}", witness::PORT),
            format!("Path: {}", witness::PATH),
            "Interval: 60".to_owned(),
            format!("Timeout: {}", witness::TIMEOUT.as_secs()),
            format!("SuccessThreshold: {}", witness::SUCCESS_THRESHOLD),
            "FailureThreshold: !Ref StatusCheckFailures".to_owned(),
            "Aggregation: included".to_owned(),
        ] {
            assert!(
                t.contains(&format!("\n      {property}\n")),
                "{name}: NatStatusCheck {property}"
            );
        }
        assert!(
            t.contains(&format!(
                "StatusCheckFailures:\n    Type: Number\n    Default: {}\n",
                witness::FAILURE_THRESHOLD
            )),
            "{name}"
        );
        assert!(t.contains("status_check = \"${NatStatusCheck}\""), "{name}");
        // The heartbeat key: a generated secret (moto's CloudFormation does
        // not create AWS::SecretsManager::Secret; the lab makes it through
        // the API), readable by the NAT role and nothing wider, and named
        // in the config the user data writes.
        assert_eq!(
            t.matches("Type: AWS::SecretsManager::Secret").count(),
            1,
            "{name}"
        );
        assert!(
            t.contains("GenerateSecretString:\n        PasswordLength: 64"),
            "{name}"
        );
        assert_eq!(t.matches("secretsmanager:").count(), 1, "{name}");
        assert!(
            t.contains(
                "Action: secretsmanager:GetSecretValue\n                Resource: !Ref PeerKeySecret"
            ),
            "{name}: the read is scoped to the key's secret"
        );
        assert!(t.contains("key_secret = \"${PeerKeySecret}\""), "{name}");
    }
}

/// In an existing VPC, the role may change the route tables of the whole
/// VPC, or (`RouteScope = tagged`) only those the user tagged for the stack
/// (moto does not evaluate IAM: the policy is checked as text, and the
/// stack below deploys with each choice).
#[test]
fn the_existing_vpc_role_can_be_scoped_to_tagged_route_tables() {
    let statement = EXISTING
        .split("- Sid: ")
        .find(|s| s.starts_with("TakeOverPrivateRoutesOfThisVpc"))
        .unwrap();
    assert!(statement.contains("Condition: !If\n                  - RoutesTagged"));
    assert!(statement.contains(r#""ec2:ResourceTag/hanat:stack": !Ref AWS::StackName"#));
    assert!(statement.contains(r#""ec2:Vpc": !Sub"#));
    assert!(EXISTING.contains("RoutesTagged: !Equals [!Ref RouteScope, tagged]"));
}

/// `InterfaceEndpoints`: the four APIs the daemon calls, in the public
/// subnets with private DNS, HTTPS from the VPC only, and NATs launched
/// without a public address (the lab's `no-public-address-endpoints`; the
/// stack below deploys with them).
#[test]
fn interface_endpoints_cover_every_api_the_daemon_calls() {
    for svc in ["ec2", "autoscaling", "secretsmanager", "monitoring"] {
        let want = format!("ServiceName: !Sub \"com.amazonaws.${{AWS::Region}}.{svc}\"");
        assert!(EXISTING.contains(&want), "{want}");
    }
    assert_eq!(
        EXISTING
            .matches("Type: AWS::EC2::VPCEndpoint\n    Condition: Endpoints")
            .count(),
        4
    );
    assert_eq!(EXISTING.matches("PrivateDnsEnabled: true").count(), 4);
    assert!(EXISTING.contains("AssociatePublicIpAddress: !If [Endpoints, false, true]"));
    assert!(
        EXISTING.contains("FromPort: 443\n          ToPort: 443\n          CidrIp: !Ref VpcCidr")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_vpc_template_adds_nats_to_a_vpc() {
    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let vpc = cloud.vpc("10.20.0.0/16").await.unwrap();
    let a = cloud
        .subnet(&vpc, "10.20.0.0/24", &cloud.az(0), &[])
        .await
        .unwrap();
    let b = cloud
        .subnet(&vpc, "10.20.1.0/24", &cloud.az(1), &[])
        .await
        .unwrap();
    let ami = cloud.image().await.unwrap();
    let out = cloud
        .deploy_stack(
            "existing",
            EXISTING,
            &[
                ("AmiId", &ami),
                ("VpcId", &vpc),
                ("VpcCidr", "10.20.0.0/16"),
                ("PublicSubnetA", &a),
                ("PublicSubnetB", &b),
            ],
        )
        .await
        .unwrap();
    let groups = list(&out, "NatGroups");
    assert_eq!(
        groups,
        vec!["hanat-nat-a".to_owned(), "hanat-nat-b".to_owned()]
    );
    let azs = format!("{},{}", cloud.az(0), cloud.az(1));
    cloud
        .deploy_stack(
            "existing-alarmed",
            EXISTING,
            &[
                ("Name", "alarmed"),
                ("AmiId", &ami),
                ("VpcId", &vpc),
                ("VpcCidr", "10.20.0.0/16"),
                ("PublicSubnetA", &a),
                ("PublicSubnetB", &b),
                ("AvailabilityZones", &azs),
                (
                    "AlarmTopicArn",
                    "arn:aws:sns:us-east-1:123456789012:nat-alarms",
                ),
                ("CloudWatchMetrics", "alarms"),
                ("RouteScope", "tagged"),
                ("InterfaceEndpoints", "true"),
            ],
        )
        .await
        .unwrap();
    let config = config_from_user_data(&cloud, "alarmed-nat").await;
    assert!(config.cloudwatch.enabled);
    assert_eq!(config.cloudwatch.metrics, hanat::config::MetricSet::Alarms);
    assert_eq!(list(&out, "ElasticIps").len(), 2);
    let config = config_from_user_data(&cloud, "hanat-nat").await;
    assert_eq!(config.probe.targets.len(), 3);
    assert!(config.peers.fallback_nat_gateway_id.is_empty());
    let described = cloud
        .asg
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(Some(groups))
        .send()
        .await
        .unwrap();
    let zones: Vec<&str> = described
        .auto_scaling_groups()
        .iter()
        .filter_map(|g| g.vpc_zone_identifier())
        .collect();
    assert_eq!(zones, vec![a.as_str(), b.as_str()]);
    let sg = &out["SecurityGroup"];
    let sgs = cloud
        .ec2
        .describe_security_groups()
        .group_ids(sg)
        .send()
        .await
        .unwrap();
    assert!(!sgs.security_groups()[0].ip_permissions().is_empty());
    for perm in sgs.security_groups()[0].ip_permissions() {
        for r in perm.ip_ranges() {
            assert_eq!(r.cidr_ip(), Some("10.20.0.0/16"));
        }
    }
}

/// `fis.yaml` deployed beside a NAT stack, as a user would, with the NAT
/// stack's outputs: moto's CloudFormation creates the SSM document and the
/// FIS role, and skips `AWS::FIS::ExperimentTemplate` (it has no such
/// resource; its FIS API runs nothing), so the five experiments are checked
/// from the template's text, resolved with the same parameters, as
/// `hanat-lab fis` plays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fis_template_deploys_beside_a_nat_stack() {
    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let vpc = cloud.vpc("10.30.0.0/16").await.unwrap();
    let a = cloud
        .subnet(&vpc, "10.30.0.0/24", &cloud.az(0), &[])
        .await
        .unwrap();
    let b = cloud
        .subnet(&vpc, "10.30.1.0/24", &cloud.az(1), &[])
        .await
        .unwrap();
    let ami = cloud.image().await.unwrap();
    let nats = cloud
        .deploy_stack(
            "nats",
            EXISTING,
            &[
                ("Name", "nats"),
                ("AmiId", &ami),
                ("VpcId", &vpc),
                ("VpcCidr", "10.30.0.0/16"),
                ("PublicSubnetA", &a),
                ("PublicSubnetB", &b),
            ],
        )
        .await
        .unwrap();
    let role = nats["NatRoleArn"].clone();
    assert!(role.starts_with("arn:aws:iam::"), "{role}");
    let az = cloud.az(0);
    let params = [
        ("Name", "nats"),
        ("NatStackName", "nats"),
        ("VpcId", vpc.as_str()),
        ("TargetAz", az.as_str()),
        ("NatRoleArn", role.as_str()),
    ];
    let out = cloud.deploy_stack("chaos", FIS, &params).await.unwrap();
    assert!(out["FisRoleArn"].starts_with("arn:aws:iam::"), "{out:?}");
    let made = cloud.stack_resource_ids("chaos").await.unwrap();
    // (moto lists what it skipped with no logical id.)
    let mut kinds: Vec<&str> = (made.keys().map(String::as_str))
        .filter(|k| !k.is_empty())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["FisRole", "StopForwardingDocument"], "{made:?}");

    let given: HashMap<String, String> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let template = hanat_lab::fis::read(FIS).unwrap();
    let facts = hanat_lab::fis::Facts {
        stack: "nats".into(),
        vpc: vpc.clone(),
        azs: vec![cloud.az(0), cloud.az(1)],
        nat_role: role.clone(),
    };
    for name in template.experiments() {
        let exp = template.resolve(&name, &given).unwrap();
        assert_eq!(
            exp.stop_alarms,
            [
                "nats-nat-a-no-forwarding-nat",
                "nats-nat-b-no-forwarding-nat"
            ],
            "{name}"
        );
        let steps = hanat_lab::fis::plan(&exp, &facts).unwrap();
        assert!(!steps.is_empty(), "{name}");
    }
}

/// The CDK construct (cdk/): its example app, synthesized by `npm run
/// synth` (after `npm ci` if cdk/ has no node_modules), deploys into moto
/// like the templates: a group per AZ, the private route tables, and user
/// data that writes a config hanat accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdk_construct_deploys_into_moto() {
    let cdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cdk");
    let npm = |args: &[&str]| {
        let out = std::process::Command::new("npm")
            .args(args)
            .current_dir(&cdk)
            .output()
            .expect("npm (Node.js 20) on the machine");
        assert!(
            out.status.success(),
            "npm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !cdk.join("node_modules").exists() {
        npm(&["ci", "--no-audit", "--no-fund"]);
    }
    let file = std::env::temp_dir().join(format!("hanat-cdk-{}.json", std::process::id()));
    npm(&[
        "run",
        "--silent",
        "synth",
        "--",
        &file.display().to_string(),
    ]);
    let template = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);

    let moto = Moto::start().unwrap();
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let ami = cloud.image().await.unwrap();
    let out = cloud
        .deploy_stack("cdk", &template, &[("AmiId", &ami)])
        .await
        .unwrap();
    assert_eq!(list(&out, "NatGroups").len(), 2, "{out:?}");
    assert_eq!(list(&out, "PrivateRouteTables").len(), 2, "{out:?}");
    assert!(out["NatRoleArn"].starts_with("arn:aws:iam::"), "{out:?}");
    let templates = cloud.ec2.describe_launch_templates().send().await.unwrap();
    let names: Vec<&str> = (templates.launch_templates().iter())
        .filter_map(|t| t.launch_template_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let config = config_from_user_data(&cloud, names[0]).await;
    assert_eq!(config.probe.targets.len(), 3);
    assert!(config.peers.key_secret.is_some());
    assert_eq!(config.peers.status_check.as_deref(), Some(STATUS_CHECK_ARN));
    assert!(config.peers.fallback_nat_gateway_id.is_empty());
}
