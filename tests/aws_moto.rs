//! The EC2 and Auto Scaling adapters and the planner against a real moto
//! server, and instance identity against the lab's IMDSv2 emulator.
//! No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use std::sync::Arc;

use hanat::aws::cloud::{Cloud as _, Sdk};
use hanat::aws::imds::Imds as ImdsClient;
use hanat::aws::meter::ApiMeter;
use hanat::config::{Config, NatGatewayId};
use hanat::daemon::take::{apply, observe};
use hanat::decide::routes::{Action, Finding, plan};
use hanat::domain::RouteTarget;
use hanat::domain::{EniId, Identity, InstanceId, SubnetId, VpcId};
use hanat_lab::cloud::{Cloud, DefaultTarget};
use hanat_lab::imds::{Imds, InstanceMetadata};
use hanat_lab::moto::Moto;

const REGION: &str = "eu-west-1";

struct World {
    cloud: Cloud,
    me: Identity,
    vpc: String,
    /// Our AZ's private route tables (two subnets, two tables).
    ours: Vec<String>,
    /// Tables hanat must never touch.
    decoys: Vec<(&'static str, String)>,
    other_nat_eni: String,
    asg_instance: String,
}

/// A VPC with our AZ's tagged subnets and every decoy the issue names.
async fn world(moto: &Moto) -> World {
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let (a, b) = (cloud.az(0), cloud.az(1));
    let vpc = cloud.vpc("10.0.0.0/16").await.unwrap();
    let public = cloud.subnet(&vpc, "10.0.0.0/24", &a, &[]).await.unwrap();
    let priv1 = cloud
        .subnet(&vpc, "10.0.1.0/24", &a, &[("network", "private")])
        .await
        .unwrap();
    let priv2 = cloud
        .subnet(&vpc, "10.0.2.0/24", &a, &[("network", "private")])
        .await
        .unwrap();
    let rt1 = cloud.route_table(&vpc, Some(&priv1)).await.unwrap();
    let rt2 = cloud.route_table(&vpc, Some(&priv2)).await.unwrap();

    let other_az = cloud
        .subnet(&vpc, "10.0.11.0/24", &b, &[("network", "private")])
        .await
        .unwrap();
    let rt_other_az = cloud.route_table(&vpc, Some(&other_az)).await.unwrap();
    let untagged = cloud
        .subnet(&vpc, "10.0.3.0/24", &a, &[("network", "public")])
        .await
        .unwrap();
    let rt_untagged = cloud.route_table(&vpc, Some(&untagged)).await.unwrap();
    // Tagged but not explicitly associated: uses the main table.
    let _lonely = cloud
        .subnet(&vpc, "10.0.4.0/24", &a, &[("network", "private")])
        .await
        .unwrap();
    let rt_main = cloud.main_route_table(&vpc).await.unwrap();
    let vpc2 = cloud.vpc("10.1.0.0/16").await.unwrap();
    let foreign = cloud
        .subnet(&vpc2, "10.1.1.0/24", &a, &[("network", "private")])
        .await
        .unwrap();
    let rt_foreign = cloud.route_table(&vpc2, Some(&foreign)).await.unwrap();
    // A table shared between our tagged subnet and one in another AZ.
    let shared_a = cloud
        .subnet(&vpc, "10.0.5.0/24", &a, &[("network", "private")])
        .await
        .unwrap();
    let shared_b = cloud
        .subnet(&vpc, "10.0.15.0/24", &b, &[("network", "private")])
        .await
        .unwrap();
    let rt_shared = cloud.route_table(&vpc, Some(&shared_a)).await.unwrap();
    cloud
        .ec2
        .associate_route_table()
        .route_table_id(&rt_shared)
        .subnet_id(&shared_b)
        .send()
        .await
        .unwrap();

    let nat = cloud.nat_group("nat-a", &public).await.unwrap();
    let other_nat = cloud.run_instance(&public).await.unwrap();
    // Decoys start with a default route to the other NAT, so any change shows.
    for rt in [
        &rt_other_az,
        &rt_untagged,
        &rt_main,
        &rt_foreign,
        &rt_shared,
    ] {
        if rt == &rt_foreign {
            let igw = cloud.internet_gateway(&vpc2).await.unwrap();
            cloud
                .set_default_route(rt, DefaultTarget::Gateway(&igw))
                .await
                .unwrap();
        } else {
            cloud
                .set_default_route(rt, DefaultTarget::Eni(&other_nat.eni))
                .await
                .unwrap();
        }
    }
    let me = Identity {
        instance_id: InstanceId(nat.id.clone()),
        region: REGION.into(),
        availability_zone: a.clone(),
        mac: nat.mac.clone(),
        eni: EniId(nat.eni.clone()),
        vpc_id: VpcId(vpc.clone()),
        vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        subnet_id: SubnetId(public),
        private_ip: nat.private_ip.parse().unwrap(),
    };
    World {
        cloud,
        me,
        vpc,
        ours: vec![rt1, rt2],
        decoys: vec![
            ("other AZ", rt_other_az),
            ("untagged", rt_untagged),
            ("main", rt_main),
            ("other VPC", rt_foreign),
            ("shared with other AZ", rt_shared),
        ],
        other_nat_eni: other_nat.eni,
        asg_instance: nat.id,
    }
}

async fn adapters(moto: &Moto) -> Sdk {
    Sdk::new(&moto.sdk_config(REGION).await)
}

/// The daemon's fallback to the AZ's NAT Gateway, as `me` with `config`.
async fn fall_back(
    sdk: &Sdk,
    me: &Identity,
    config: &Config,
    az: &str,
    dead: &[RouteTarget],
) -> Result<Option<usize>, hanat::aws::AwsError> {
    let ctx = hanat::daemon::ctx::Ctx::new(
        Arc::new(sdk.clone()),
        me.clone(),
        config.clone(),
        hanat::daemon::flows::FlowHandoff::default(),
    );
    hanat::daemon::cover::fall_back(&ctx, az, dead, None).await
}

async fn decoy_routes(w: &World) -> Vec<Option<(String, String)>> {
    let mut v = Vec::new();
    for (_, rt) in &w.decoys {
        v.push(w.cloud.default_route(rt).await.unwrap());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_takeover_and_takeback_touch_only_our_tables() {
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let ec2 = adapters(&moto).await;
    let config = Config::default();
    let before = decoy_routes(&w).await;

    // rt1 has no default route; rt2 points at another NAT.
    w.cloud
        .set_default_route(&w.ours[1], DefaultTarget::Eni(&w.other_nat_eni))
        .await
        .unwrap();
    let observed = observe(&ec2, &w.me, &config).await.unwrap();
    let p = plan(&w.me, &observed);
    let mut owned: Vec<String> = p.owned.iter().map(|r| r.0.clone()).collect();
    owned.sort();
    let mut want = w.ours.clone();
    want.sort();
    assert_eq!(owned, want, "exactly our AZ's private tables are in scope");
    assert!(p.actions.contains(&Action::CreateRoute {
        route_table: hanat::domain::RouteTableId(w.ours[0].clone())
    }));
    assert!(p.actions.iter().any(
        |a| matches!(a, Action::ReplaceRoute { route_table, .. } if route_table.0 == w.ours[1])
    ));
    assert!(
        p.findings
            .iter()
            .any(|f| matches!(f, Finding::NoExplicitTable { .. })),
        "{:?}",
        p.findings
    );
    assert!(
        p.findings
            .iter()
            .any(|f| matches!(f, Finding::SharedTable { .. })),
        "{:?}",
        p.findings
    );

    apply(&ec2, &w.me, &p).await.unwrap();
    for rt in &w.ours {
        let (target, state) = w
            .cloud
            .default_route(rt)
            .await
            .unwrap()
            .expect("default route");
        assert_eq!(target, w.me.eni.0, "{rt} points at our ENI");
        assert_eq!(state, "active");
    }
    assert_eq!(decoy_routes(&w).await, before, "decoy tables unchanged");
    assert!(
        !w.cloud.source_dest_check(&w.me.eni.0).await.unwrap(),
        "source/dest check off"
    );

    // Converged: a second pass plans nothing.
    let again = plan(&w.me, &observe(&ec2, &w.me, &config).await.unwrap());
    assert!(again.actions.is_empty(), "{:?}", again.actions);

    // Someone repoints a table and turns the check back on: taken back.
    w.cloud
        .set_default_route(&w.ours[0], DefaultTarget::Eni(&w.other_nat_eni))
        .await
        .unwrap();
    w.cloud
        .set_source_dest_check(&w.me.eni.0, true)
        .await
        .unwrap();
    let p = plan(&w.me, &observe(&ec2, &w.me, &config).await.unwrap());
    assert_eq!(p.actions.len(), 2, "{:?}", p.actions);
    apply(&ec2, &w.me, &p).await.unwrap();
    assert_eq!(
        w.cloud.default_route(&w.ours[0]).await.unwrap().unwrap().0,
        w.me.eni.0
    );
    assert!(!w.cloud.source_dest_check(&w.me.eni.0).await.unwrap());
    assert_eq!(
        decoy_routes(&w).await,
        before,
        "decoy tables still unchanged"
    );
    let _ = &w.vpc;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_nat_gateway_stands_in_only_for_routes_no_healthy_nat_holds() {
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let ec2 = adapters(&moto).await;
    let before = decoy_routes(&w).await;
    let public = w.me.subnet_id.0.clone();
    let (gateway, _) = w.cloud.nat_gateway(&public).await.unwrap();
    let az = w.me.availability_zone.clone();
    let mut config = Config::default();
    let fallback = |config: &mut Config, id: &str| {
        config
            .peers
            .fallback_nat_gateway_id
            .insert(az.clone(), NatGatewayId(id.into()));
    };
    // rt1 points at us (we are failing), rt2 at a peer not known dead.
    w.cloud
        .set_default_route(&w.ours[0], DefaultTarget::Eni(&w.me.eni.0))
        .await
        .unwrap();
    w.cloud
        .set_default_route(&w.ours[1], DefaultTarget::Eni(&w.other_nat_eni))
        .await
        .unwrap();
    let alive: [RouteTarget; 0] = [];

    // Not configured, unknown, or another VPC's gateway: nothing moves.
    let targets = || async {
        let mut v = Vec::new();
        for rt in &w.ours {
            v.push(w.cloud.default_route(rt).await.unwrap().unwrap().0);
        }
        v
    };
    let start = targets().await;
    let none = fall_back(&ec2, &w.me, &config, &az, &alive).await;
    assert_eq!(none.unwrap(), None);
    fallback(&mut config, "nat-0000000000000dead");
    let unknown = fall_back(&ec2, &w.me, &config, &az, &alive).await;
    assert_eq!(unknown.unwrap(), None);
    let vpc2 = w.cloud.vpc("10.9.0.0/16").await.unwrap();
    let subnet2 = w
        .cloud
        .subnet(&vpc2, "10.9.0.0/24", &az, &[])
        .await
        .unwrap();
    let (foreign_gateway, _) = w.cloud.nat_gateway(&subnet2).await.unwrap();
    fallback(&mut config, &foreign_gateway);
    let foreign = fall_back(&ec2, &w.me, &config, &az, &alive).await;
    assert_eq!(foreign.unwrap(), None);
    assert_eq!(targets().await, start);

    // Our VPC's gateway: it takes our route, not the peer's.
    fallback(&mut config, &gateway);
    let moved = fall_back(&ec2, &w.me, &config, &az, &alive).await;
    assert_eq!(moved.unwrap(), Some(1));
    assert_eq!(
        targets().await,
        vec![gateway.clone(), w.other_nat_eni.clone()]
    );
    // Once that peer is known dead, its route follows; again: no-op.
    let dead = [RouteTarget::Eni(EniId(w.other_nat_eni.clone()))];
    let moved = fall_back(&ec2, &w.me, &config, &az, &dead).await;
    assert_eq!(moved.unwrap(), Some(1));
    assert_eq!(targets().await, vec![gateway.clone(), gateway.clone()]);
    let again = fall_back(&ec2, &w.me, &config, &az, &dead).await;
    assert_eq!(again.unwrap(), Some(0));
    assert_eq!(decoy_routes(&w).await, before, "decoy tables unchanged");

    // Healthy again, the NAT takes its routes back from the gateway.
    let p = plan(&w.me, &observe(&ec2, &w.me, &config).await.unwrap());
    apply(&ec2, &w.me, &p).await.unwrap();
    assert_eq!(
        targets().await,
        vec![w.me.eni.0.clone(), w.me.eni.0.clone()]
    );
    assert_eq!(
        decoy_routes(&w).await,
        before,
        "decoy tables still unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tag_selects_other_subnets() {
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let ec2 = adapters(&moto).await;
    let mut config = Config::default();
    config.discovery.tag_key = "network".into();
    config.discovery.tag_value = "public".into();
    let p = plan(&w.me, &observe(&ec2, &w.me, &config).await.unwrap());
    let untagged = &w.decoys[1].1;
    assert_eq!(
        p.owned.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        vec![untagged.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_instance_health_marks_unhealthy() {
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let asg = adapters(&moto).await;
    assert_eq!(w.cloud.health(&w.asg_instance).await.unwrap(), "Healthy");
    asg.set_unhealthy(&InstanceId(w.asg_instance.clone()))
        .await
        .unwrap();
    assert_eq!(w.cloud.health(&w.asg_instance).await.unwrap(), "Unhealthy");
    // An instance outside any group: a clear error, not a panic.
    let err = asg
        .set_unhealthy(&InstanceId("i-0000000000000dead".into()))
        .await
        .unwrap_err();
    assert_eq!(err.operation, "SetInstanceHealth");
    assert!(
        err.to_string()
            .starts_with("SetInstanceHealth i-0000000000000dead: "),
        "{err}"
    );
}

/// What peers ask EC2 about a silent NAT: its state and status checks.
/// (moto has no application status checks; the lab's API proxy adds them,
/// see hanat_lab::api.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_health_reads_state_and_status_checks_even_with_a_forgotten_id() {
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let ec2 = adapters(&moto).await;
    let nat = InstanceId(w.asg_instance.clone());
    let h = ec2
        .instance_health(std::slice::from_ref(&nat))
        .await
        .unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0].alive && h[0].impaired.is_empty(), "{h:?}");
    // An id EC2 does not know fails DescribeInstanceStatus whole; the
    // answer still covers the others, and leaves it out.
    let forgotten = InstanceId("i-0000000000000dead".into());
    let h = ec2
        .instance_health(&[nat.clone(), forgotten])
        .await
        .unwrap();
    assert_eq!(
        h.iter().map(|h| &h.id).collect::<Vec<_>>(),
        vec![&nat],
        "{h:?}"
    );
    w.cloud.terminate(&w.asg_instance).await.unwrap();
    let h = ec2
        .instance_health(std::slice::from_ref(&nat))
        .await
        .unwrap();
    assert!(h.iter().all(|h| h.id == nat && !h.alive), "{h:?}");
    // moto lacks the association call: a clear error, not a panic.
    let err = ec2
        .associate_status_check("asc-0123456789abcdef0", &nat)
        .await
        .unwrap_err();
    assert_eq!(err.operation, "AssociateApplicationStatusCheck");
}

/// `hanat_aws_call_seconds`: every call of the real SDK clients, by
/// service, operation and outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_timed_by_service_operation_and_outcome() {
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let meter = ApiMeter::default();
    let sdk = Sdk::metered(&moto.sdk_config(REGION).await, &meter);
    sdk.instance_health(&[InstanceId(w.asg_instance.clone())])
        .await
        .unwrap();
    sdk.group_of(&InstanceId(w.asg_instance.clone()))
        .await
        .unwrap();
    sdk.replace_default_route(
        &hanat::domain::RouteTableId("rtb-00000000000000000".into()),
        &RouteTarget::Eni(EniId("eni-00000000000000000".into())),
    )
    .await
    .unwrap_err();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("aws_call_seconds", "calls", meter.calls());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"aws_call_seconds_count{service="EC2",operation="DescribeInstanceStatus",outcome="ok"} 1"#,
        r#"aws_call_seconds_count{service="Auto Scaling",operation="DescribeAutoScalingInstances",outcome="ok"} 1"#,
        r#"aws_call_seconds_count{service="EC2",operation="ReplaceRoute",outcome="client_error"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_errors_carry_operation_resource_and_code() {
    let moto = Moto::start().unwrap();
    let ec2 = adapters(&moto).await;
    let err = ec2
        .replace_default_route(
            &hanat::domain::RouteTableId("rtb-00000000000000000".into()),
            &RouteTarget::Eni(EniId("eni-00000000000000000".into())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.operation, "ReplaceRoute");
    assert_eq!(err.resource, "rtb-00000000000000000");
    assert!(err.code.is_some(), "{err:?}");
}

fn metadata() -> InstanceMetadata {
    InstanceMetadata {
        instance_id: "i-0123456789abcdef0".into(),
        region: REGION.into(),
        az: "eu-west-1a".into(),
        mac: "02:00:00:aa:bb:cc".into(),
        eni: "eni-0123456789abcdef0".into(),
        vpc_id: "vpc-0123456789abcdef0".into(),
        vpc_cidrs: vec!["10.0.0.0/16".into(), "100.64.0.0/16".into()],
        subnet_id: "subnet-0123456789abcdef0".into(),
        private_ip: "10.0.0.10".into(),
        ..InstanceMetadata::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_from_imdsv2_with_tokens_enforced() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = Imds::serve(listener, metadata().values()).unwrap();
    let client = ImdsClient::with_endpoint(&format!("http://{}", imds.addr)).unwrap();
    let id = client.identity().await.unwrap();
    assert_eq!(id.instance_id.0, "i-0123456789abcdef0");
    assert_eq!(id.availability_zone, "eu-west-1a");
    assert_eq!(id.region, "eu-west-1");
    assert_eq!(id.eni.0, "eni-0123456789abcdef0");
    assert_eq!(id.vpc_id.0, "vpc-0123456789abcdef0");
    assert_eq!(
        id.vpc_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.0.0.0/16", "100.64.0.0/16"]
    );
    assert_eq!(id.private_ip.to_string(), "10.0.0.10");
    assert_eq!(
        imds.rejected_without_token(),
        0,
        "every GET carried a token"
    );

    // A plain GET without a token is refused by the emulator.
    let mut s = std::net::TcpStream::connect(imds.addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert_eq!(imds.rejected_without_token(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_waits_for_slow_imds_and_rejects_odd_answers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = Imds::serve(listener, metadata().values()).unwrap();
    let client = ImdsClient::with_endpoint(&format!("http://{}", imds.addr)).unwrap();

    // Down at boot, up 1.5 s later: the identity arrives.
    imds.set_unavailable(true);
    let up = imds.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        up.set_unavailable(false);
    });
    let id = hanat::aws::imds::identity_with_retry(&client, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(id.instance_id.0, "i-0123456789abcdef0");

    // Never up: gives up within the budget with the last error.
    imds.set_unavailable(true);
    let start = std::time::Instant::now();
    let err = hanat::aws::imds::identity_with_retry(&client, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(
        err.to_string()
            .contains("instance metadata not available after"),
        "{err}"
    );
    imds.set_unavailable(false);

    // A malformed value is reported with the path, at once.
    imds.set(
        "network/interfaces/macs/02:00:00:aa:bb:cc/vpc-ipv4-cidr-blocks",
        "10.0.0.0/99",
    );
    let err = hanat::aws::imds::identity_with_retry(&client, Duration::from_secs(30))
        .await
        .unwrap_err();
    let msg = hanat::report(&err);
    assert!(
        msg.contains("vpc-ipv4-cidr-blocks: unexpected value `10.0.0.0/99`"),
        "{msg}"
    );

    // Missing data (404) is permanent too.
    imds.remove("mac");
    let err = hanat::aws::imds::identity_with_retry(&client, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        hanat::report(&err).contains("/latest/meta-data/mac"),
        "{}",
        hanat::report(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_ip_is_claimed_but_never_taken_from_a_running_holder() {
    use hanat::daemon::eip::claim_address;
    use hanat::decide::routes::AddressAction;
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let ec2 = adapters(&moto).await;
    let (alloc, _) = w
        .cloud
        .allocate_address(&[("hanat:group", "nat-a")])
        .await
        .unwrap();
    let holder = |cloud: Cloud| async move {
        let out = cloud.ec2.describe_addresses().send().await.unwrap();
        out.addresses()[0]
            .network_interface_id()
            .unwrap_or_default()
            .to_owned()
    };

    // Free: claimed onto our interface; then kept.
    let a = claim_address(&ec2, &w.me, "hanat:group", "nat-a")
        .await
        .unwrap();
    assert!(
        matches!(
            a,
            AddressAction::Associate {
                reassociate: false,
                ..
            }
        ),
        "{a:?}"
    );
    assert_eq!(holder(w.cloud.clone()).await, w.me.eni.0);
    assert_eq!(
        claim_address(&ec2, &w.me, "hanat:group", "nat-a")
            .await
            .unwrap(),
        AddressAction::Keep
    );

    // Held by another running instance: left alone.
    let other = w.cloud.run_instance(&w.me.subnet_id.0).await.unwrap();
    let mut me2 = w.me.clone();
    me2.instance_id = InstanceId(other.id.clone());
    me2.eni = EniId(other.eni.clone());
    let a = claim_address(&ec2, &me2, "hanat:group", "nat-a")
        .await
        .unwrap();
    assert!(matches!(a, AddressAction::HeldByHealthy { .. }), "{a:?}");
    assert_eq!(
        holder(w.cloud.clone()).await,
        w.me.eni.0,
        "not taken from a running holder"
    );

    // The holder is terminated: the new NAT takes the address.
    w.cloud.terminate(&w.me.instance_id.0).await.unwrap();
    let a = claim_address(&ec2, &me2, "hanat:group", "nat-a")
        .await
        .unwrap();
    assert!(
        matches!(
            a,
            AddressAction::Associate {
                reassociate: true,
                ..
            }
        ),
        "{a:?}"
    );
    assert_eq!(holder(w.cloud.clone()).await, other.eni);

    // No address for a group: said, nothing changed.
    assert_eq!(
        claim_address(&ec2, &me2, "hanat:group", "nat-z")
            .await
            .unwrap(),
        AddressAction::NoAddress
    );
    let _ = alloc;
}

/// `snat.addresses = 3` against moto: the NAT's interface gets two
/// secondary private addresses once (primary listed first), and each of
/// the three gets one of the group's Elastic IPs on this interface; a
/// second pass assigns and associates nothing more. (moto ignores
/// `AssociateAddress`'s `PrivateIpAddress`, so which address each landed
/// on is the lab's to check, through its proxy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_addresses_are_assigned_once_and_each_gets_an_elastic_ip() {
    use hanat::aws::cloud::Cloud as _;
    use hanat::daemon::eip::{claim_addresses, private_addresses};
    use hanat::decide::routes::AddressAction;
    let moto = Moto::start().unwrap();
    let w = world(&moto).await;
    let ec2 = adapters(&moto).await;
    for _ in 0..3 {
        w.cloud
            .allocate_address(&[("hanat:group", "nat-a")])
            .await
            .unwrap();
    }
    let (privates, failed) = private_addresses(&ec2, &w.me, 3).await.unwrap();
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(privates.len(), 3, "{privates:?}");
    assert_eq!(privates[0], w.me.private_ip, "the primary first");
    assert_eq!(ec2.interface_addresses(&w.me.eni).await.unwrap(), privates);
    let claims = claim_addresses(&ec2, &w.me, "hanat:group", "nat-a", &privates)
        .await
        .unwrap();
    assert!(
        claims
            .iter()
            .all(|(_, a)| matches!(a, AddressAction::Associate { .. })),
        "{claims:?}"
    );
    let out = w.cloud.ec2.describe_addresses().send().await.unwrap();
    let on_me = out
        .addresses()
        .iter()
        .filter(|a| a.network_interface_id() == Some(w.me.eni.0.as_str()))
        .count();
    assert_eq!(on_me, 3);
    // Again: nothing more to assign.
    assert_eq!(private_addresses(&ec2, &w.me, 3).await.unwrap().0, privates);
    assert_eq!(ec2.interface_addresses(&w.me.eni).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_cloudwatch_as_a_dashboard_reads_them() {
    use hanat::domain::{Datum, Unit};
    let moto = Moto::start().unwrap();
    let meter = ApiMeter::default();
    let sdk = Sdk::metered(&moto.sdk_config(REGION).await, &meter);
    let dims = vec![
        ("AutoScalingGroupName", "nat-a".to_owned()),
        ("AvailabilityZone", "eu-west-1a".to_owned()),
    ];
    for bytes in [1500.0, 2500.0] {
        let data = [
            Datum {
                name: "BytesOutToDestination",
                dimensions: dims.clone(),
                value: bytes,
                unit: Unit::Bytes,
            },
            Datum {
                name: "ConntrackFillPercent",
                dimensions: dims.clone(),
                value: 12.5,
                unit: Unit::Percent,
            },
        ];
        sdk.put_metric_data("hanat", &data).await.unwrap();
    }
    let cloud = Cloud::new(&moto.endpoint(), REGION).await;
    let since = std::time::SystemTime::now() - Duration::from_secs(600);
    let by = [
        ("AutoScalingGroupName", "nat-a"),
        ("AvailabilityZone", "eu-west-1a"),
    ];
    let sum = cloud
        .metric("hanat", "BytesOutToDestination", &by, ("Sum", 60), since)
        .await
        .unwrap();
    assert_eq!(sum.iter().sum::<f64>(), 4000.0, "{sum:?}");
    let fill = cloud
        .metric("hanat", "ConntrackFillPercent", &by, ("Maximum", 60), since)
        .await
        .unwrap();
    assert!(
        !fill.is_empty() && fill.iter().all(|v| *v == 12.5),
        "{fill:?}"
    );
    let elsewhere = cloud
        .metric(
            "hanat",
            "BytesOutToDestination",
            &by[1..],
            ("Sum", 60),
            since,
        )
        .await
        .unwrap();
    assert!(
        elsewhere.is_empty(),
        "other dimensions, other metric: {elsewhere:?}"
    );
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("aws_call_seconds", "calls", meter.calls());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let line =
        r#"aws_call_seconds_count{service="CloudWatch",operation="PutMetricData",outcome="ok"} 2"#;
    assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
}
