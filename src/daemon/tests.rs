//! The loops under paused time against the fake cloud: timing and
//! decisions that the root lab can only show in seconds of real time per
//! case, here in milliseconds and exactly.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::ctx::Ctx;
use super::flows::FlowHandoff;
use super::peers::PeersLoop;
use super::routes::RoutesLoop;
use crate::aws::cloud::Cloud;
use crate::aws::fake::{FakeCloud, vpc};
use crate::config::Config;
use crate::decide::backoff::jittered;
use crate::decide::peers::Message;
use crate::domain::{
    EniId, Identity, InstanceId, Ipv4Cidr, Route, RouteTableId, RouteTarget, Status, VpcId,
};

const S: Duration = Duration::from_secs(1);

/// The NAT of `az` in the fake's VPC, with `config`.
fn ctx(cloud: &Arc<FakeCloud>, az: &str, config: Config) -> Arc<Ctx> {
    let info = cloud
        .state()
        .instances
        .iter()
        .find(|i| i.info.az == az)
        .map(|i| i.info.clone())
        .expect("the fake has a NAT in that AZ");
    let me = Identity {
        instance_id: info.id,
        region: "test-1".into(),
        availability_zone: az.into(),
        mac: "02:00:00:00:00:01".into(),
        eni: info.eni.expect("an interface"),
        vpc_id: VpcId("vpc-1".into()),
        vpc_cidrs: vec!["10.0.0.0/16".parse::<Ipv4Cidr>().expect("a CIDR")],
        subnet_id: "subnet-public".into(),
        private_ip: info.ip.expect("an address"),
    };
    Ctx::new(cloud.clone(), me, config, FlowHandoff::default())
}

fn config() -> Config {
    let mut c = Config::default();
    c.eip.claim = false;
    c.routes.reconcile_interval = 30 * S;
    c.peers.suspect_after = S;
    c
}

fn eni(az: &str) -> Option<RouteTarget> {
    Some(RouteTarget::Eni(EniId(format!("eni-{az}"))))
}

/// `who` (in `az`, at 10.0.0.`ip`) says `status` to `ctx`'s NAT.
fn hear(ctx: &Ctx, who: &str, az: &str, ip: u8, status: Status) {
    let msg = Message {
        instance: InstanceId(who.into()),
        az: az.into(),
        status,
        seq: 1,
    };
    let from = Ipv4Addr::new(10, 0, 0, ip);
    ctx.peers().hear(&msg, from, ctx.now());
}

/// A two-AZ VPC in which AZ b's NAT is `ok` and its peers loop runs.
fn az_b_with_its_peers_loop() -> (Arc<FakeCloud>, Arc<Ctx>, tokio::task::JoinHandle<()>) {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let me = ctx(&cloud, "az-b", config());
    me.status.send_replace(Status::Ok);
    let task = tokio::spawn(PeersLoop::without_socket(me.clone(), "test").run());
    (cloud, me, task)
}

/// Times between consecutive instants.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dead_only_after_suspect_after_and_ec2s_word_and_is_adopted_once() {
    let (cloud, me, task) = az_b_with_its_peers_loop();
    // The peer speaks for 5 s, then falls silent (frozen, or gone).
    let t0 = Instant::now();
    while t0.elapsed() < 5 * S {
        hear(&me, "i-az-a", "az-a", 10, Status::Ok);
        sleep(Duration::from_millis(250)).await;
    }
    let silent_from = Instant::now();
    let asked = |from: Instant, to: Instant| {
        cloud
            .calls("DescribeInstanceStatus", "i-az-a")
            .into_iter()
            .filter(|t| *t >= from && *t < to)
            .count()
    };
    sleep(S * 3 / 4).await;
    assert_eq!(
        asked(silent_from, Instant::now()),
        0,
        "asked EC2 before suspect_after"
    );
    sleep(S).await;
    assert!(
        asked(silent_from, Instant::now()) >= 1,
        "EC2 asked after suspect_after"
    );
    // EC2 says it runs: silence alone moves nothing.
    sleep(20 * S).await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-a"));
    assert!(cloud.calls("ReplaceRoute", "").is_empty());
    // It is gone: adopted, exactly once, within the confirmation backoff.
    cloud.state().instances[0].info.alive = false;
    let gone_at = Instant::now();
    sleep(40 * S).await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-b"));
    let replaced = cloud.calls("ReplaceRoute", "rtb-az-a");
    assert_eq!(replaced.len(), 1, "adopted exactly once");
    // Asked at 1 s, 2 s, 4 s, then every 5 s in the first minutes of
    // silence: at most 5 s late.
    assert!(
        replaced[0] - gone_at <= 5 * S,
        "{:?}",
        replaced[0] - gone_at
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_its_status_check_calls_impaired_is_adopted_then_left_alone_once_heard() {
    let (cloud, me, task) = az_b_with_its_peers_loop();
    hear(&me, "i-az-a", "az-a", 10, Status::Ok);
    // Frozen: silent, and EC2 still says it runs and its checks pass.
    sleep(60 * S).await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-a"), "silence alone");
    // The application status check concludes: impaired.
    cloud.state().instances[0].impaired = vec!["application"];
    let impaired_at = Instant::now();
    sleep(10 * S).await;
    let replaced = cloud.calls("ReplaceRoute", "rtb-az-a");
    assert_eq!(replaced.len(), 1, "adopted once");
    assert!(
        replaced[0] - impaired_at <= 5 * S,
        "{:?}",
        replaced[0] - impaired_at
    );
    assert_eq!(cloud.target("rtb-az-a"), eni("az-b"));
    // It thaws before Auto Scaling replaces it, passes its own probe and
    // takes its AZ back (its routes loop, played here): heard again, it is
    // alive, and the adopter does not take the AZ back from it.
    let t = Instant::now();
    let mut took_back = false;
    while t.elapsed() < 60 * S {
        hear(&me, "i-az-a", "az-a", 10, Status::Ok);
        if !took_back {
            cloud
                .replace_default_route(&RouteTableId("rtb-az-a".into()), &eni("az-a").unwrap())
                .await
                .unwrap();
            took_back = true;
        }
        sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(cloud.target("rtb-az-a"), eni("az-a"), "no fight");
    assert_eq!(cloud.calls("ReplaceRoute", "rtb-az-a").len(), 2);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_impaired_peer_whose_checks_pass_again_is_not_fought_over_even_unheard() {
    let (cloud, me, task) = az_b_with_its_peers_loop();
    hear(&me, "i-az-a", "az-a", 10, Status::Ok);
    sleep(10 * S).await;
    cloud.state().instances[0].impaired = vec!["application"];
    sleep(10 * S).await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-b"), "adopted");
    // It thaws and takes its AZ back, but a partition keeps it unheard:
    // EC2's checks pass again, and that is all there is to go by.
    cloud.state().instances[0].impaired = Vec::new();
    sleep(10 * S).await;
    cloud
        .replace_default_route(&RouteTableId("rtb-az-a".into()), &eni("az-a").unwrap())
        .await
        .unwrap();
    sleep(120 * S).await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-a"), "no fight");
    assert_eq!(cloud.calls("ReplaceRoute", "rtb-az-a").len(), 2);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_long_silence_is_asked_about_every_5s_for_5_minutes_then_every_reconcile_interval() {
    let (cloud, me, task) = az_b_with_its_peers_loop();
    hear(&me, "i-az-a", "az-a", 10, Status::Ok);
    // A partition: silent, running, not impaired, for 15 minutes.
    sleep(15 * 60 * S).await;
    let asked = cloud.calls("DescribeInstanceStatus", "i-az-a");
    let first = asked[0];
    let gaps: Vec<(Duration, Duration)> = asked
        .windows(2)
        .map(|w| (w[0] - first, w[1] - w[0]))
        .collect();
    for (at, gap) in &gaps {
        if *at + *gap < 5 * 60 * S {
            assert!(*gap <= 5 * S, "{gap:?} at {at:?}");
        } else if *at > 6 * 60 * S {
            assert!(jittered(*gap, 30 * S), "{gap:?} at {at:?}");
        }
    }
    // About 60 calls in the window, then 2 a minute.
    assert!((60..=90).contains(&asked.len()), "{}", asked.len());
    assert_eq!(cloud.target("rtb-az-a"), eni("az-a"));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_status_check_association_is_retried_on_its_schedule_until_ec2_accepts() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    cloud.state().failures.insert(
        "AssociateApplicationStatusCheck",
        (3, "UnauthorizedOperation".into()),
    );
    let mut c = config();
    c.peers.status_check =
        Some("arn:aws:ec2:test-1:123456789012:application-status-check/asc-0a".into());
    let me = ctx(&cloud, "az-b", c);
    super::witness::associate(&me).await;
    let calls = cloud.calls("AssociateApplicationStatusCheck", "asc-0a");
    assert_eq!(calls.len(), 4, "three refusals, then accepted");
    for (gap, step) in gaps(&calls).into_iter().zip([1, 2, 4]) {
        assert!(jittered(gap, step * S), "{gap:?} for a {step} s step");
    }
    assert_eq!(
        cloud.state().status_checks,
        [("asc-0a".to_owned(), InstanceId("i-az-b".into()))]
    );
    assert_eq!(me.board().status_check.as_deref(), Some("asc-0a"));
}

#[tokio::test(start_paused = true)]
async fn adoption_never_takes_a_route_a_healthy_nat_holds() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b", "az-c"])));
    // AZ a's table points at AZ c's NAT (say, an adopter that has not let
    // go yet): AZ a's own NAT says it fails.
    cloud.state().tables[0].default_route = Some(Route {
        target: eni("az-c").unwrap_or(RouteTarget::Other("?".into())),
        blackhole: false,
    });
    let me = ctx(&cloud, "az-b", config());
    me.status.send_replace(Status::Ok);
    let mut peers = PeersLoop::without_socket(me.clone(), "test");
    peers.tick().await;
    hear(&me, "i-az-a", "az-a", 10, Status::Failing);
    hear(&me, "i-az-c", "az-c", 12, Status::Ok);
    peers.tick().await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-c"));
    assert!(cloud.calls("ReplaceRoute", "").is_empty());
    // Once it points at the failing NAT (or nowhere), it is taken.
    cloud.state().tables[0].default_route = Some(Route {
        target: RouteTarget::Eni(EniId("eni-az-a".into())),
        blackhole: false,
    });
    sleep(31 * S).await;
    hear(&me, "i-az-a", "az-a", 10, Status::Failing);
    hear(&me, "i-az-c", "az-c", 12, Status::Ok);
    peers.tick().await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-b"));
}

#[tokio::test(start_paused = true)]
async fn failback_waits_for_the_own_probe_and_for_the_drain() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    // AZ b's NAT adopted AZ a while AZ a's NAT was replaced.
    cloud.state().tables[0].default_route = Some(Route {
        target: eni("az-b").unwrap_or(RouteTarget::Other("?".into())),
        blackhole: false,
    });
    let mut c = config();
    c.peers.failback = 60 * S;
    let me = ctx(&cloud, "az-a", c);
    let task = tokio::spawn(RoutesLoop::new(me.clone()).run());
    sleep(100 * S).await;
    assert_eq!(
        cloud.target("rtb-az-a"),
        eni("az-b"),
        "taken before the probe passed"
    );
    me.status.send_replace(Status::Ok);
    let ok_at = Instant::now();
    sleep(59 * S).await;
    assert_eq!(
        cloud.target("rtb-az-a"),
        eni("az-b"),
        "taken during the drain"
    );
    sleep(2 * S).await;
    assert_eq!(
        cloud.target("rtb-az-a"),
        eni("az-a"),
        "not taken after the drain"
    );
    let taken = cloud.calls("ReplaceRoute", "rtb-az-a");
    assert_eq!(taken.len(), 1);
    assert!(taken[0] - ok_at >= 60 * S, "{:?}", taken[0] - ok_at);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_failing_pass_backs_off_on_the_documented_schedule_and_never_spins() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    cloud.fail("DescribeSubnets", u32::MAX, "RequestLimitExceeded");
    let me = ctx(&cloud, "az-a", config());
    me.status.send_replace(Status::Ok);
    let task = tokio::spawn(RoutesLoop::new(me.clone()).run());
    sleep(600 * S).await;
    let tries = cloud.calls("DescribeSubnets", "");
    let got = gaps(&tries);
    // ROUTES_RETRY capped at the reconcile interval (30 s), jittered.
    let want: Vec<Duration> = [1, 2, 4, 8, 16, 30, 30, 30]
        .iter()
        .map(|s| *s * S)
        .collect();
    for (got, step) in got.iter().zip(&want) {
        assert!(jittered(*got, *step), "{got:?} for a step of {step:?}");
    }
    // 5 tries in the first 31 s, then one every 24-30 s at most.
    assert!(tries.len() <= 29, "{} calls in 10 min", tries.len());
    // Throttling ends: passes succeed, and the next failure starts the
    // schedule over at 1 s.
    cloud.fail("DescribeSubnets", 0, "");
    sleep(60 * S).await;
    let failed_from = Instant::now();
    cloud.fail("DescribeRouteTables", 1, "RequestLimitExceeded");
    sleep(60 * S).await;
    let after: Vec<Instant> = cloud
        .calls("DescribeRouteTables", "")
        .into_iter()
        .filter(|t| *t >= failed_from)
        .collect();
    assert!(after.len() >= 2, "{after:?}");
    assert!(
        jittered(after[1] - after[0], S),
        "the backoff started over at 1 s: {:?}",
        after[1] - after[0]
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_fails_is_covered_without_asking_ec2() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let me = ctx(&cloud, "az-b", config());
    me.status.send_replace(Status::Ok);
    let mut peers = PeersLoop::without_socket(me.clone(), "test");
    peers.tick().await;
    let listed = cloud.calls("DescribeInstances", "").len();
    hear(&me, "i-az-a", "az-a", 10, Status::Failing);
    peers.tick().await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-b"));
    assert_eq!(
        cloud.calls("DescribeInstances", "").len(),
        listed,
        "a peer that says it fails needs no confirmation"
    );
    // A heartbeat from another address is not the peer's word.
    let me2 = ctx(&cloud, "az-b", config());
    let mut peers2 = PeersLoop::without_socket(me2.clone(), "test");
    peers2.tick().await;
    hear(&me2, "i-az-a", "az-a", 99, Status::Failing);
    cloud.state().tables[0].default_route = Some(Route {
        target: RouteTarget::Eni(EniId("eni-az-a".into())),
        blackhole: false,
    });
    peers2.tick().await;
    assert_eq!(cloud.target("rtb-az-a"), eni("az-a"));
}

/// A peer's silence is noticed when it begins, not at the peers loop's
/// next round: EC2 is asked `suspect_after` after the last heartbeat, even
/// with rounds far apart.
#[tokio::test(start_paused = true)]
async fn ec2_is_asked_the_moment_a_peer_turns_silent() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let mut c = config();
    c.peers.interval = Duration::from_millis(450);
    let me = ctx(&cloud, "az-b", c);
    me.status.send_replace(Status::Ok);
    let task = tokio::spawn(PeersLoop::without_socket(me.clone(), "test").run());
    sleep(5 * S).await;
    let last = Instant::now() + Duration::from_millis(130);
    sleep(Duration::from_millis(130)).await;
    hear(&me, "i-az-a", "az-a", 10, Status::Ok);
    sleep(3 * S).await;
    let asked = (cloud.calls("DescribeInstanceStatus", "i-az-a").into_iter())
        .find(|t| *t > last)
        .expect("EC2 asked about the silent peer");
    assert_eq!(
        asked - last,
        S,
        "asked {:?} after the last heartbeat",
        asked - last
    );
    task.abort();
}

/// The routes loop keeps every peer's AZ read: once EC2 says a silent
/// peer is gone, its AZ is written in the same round with nothing read in
/// between, and a private subnet that appears in that AZ afterwards is
/// covered once the subnets are read again (`aws.refresh_interval`).
#[tokio::test(start_paused = true)]
async fn a_dead_peers_az_is_written_from_the_last_reading_and_a_later_subnet_by_the_next_refresh() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    cloud.state().latency = Duration::from_millis(50);
    let mut c = config();
    c.aws.refresh_interval = 60 * S;
    let me = ctx(&cloud, "az-b", c);
    me.status.send_replace(Status::Ok);
    let mut peers = PeersLoop::without_socket(me.clone(), "test");
    peers.tick().await;
    hear(&me, "i-az-a", "az-a", 10, Status::Ok);
    RoutesLoop::new(me.clone()).tick().await;
    let read_at = cloud.calls("DescribeRouteTables", "");
    assert_eq!(read_at.len(), 1, "one reading for both AZs");
    cloud.state().instances[0].info.alive = false;
    sleep(2 * S).await;
    peers.tick().await;
    let replaced = cloud.calls("ReplaceRoute", "rtb-az-a");
    assert_eq!(
        replaced.len(),
        1,
        "adopted in the round EC2 said it is gone"
    );
    assert_eq!(cloud.target("rtb-az-a"), eni("az-b"));
    // EC2's word: the last question about the peer before the write.
    let confirmed = (cloud.calls("DescribeInstanceStatus", "i-az-a").into_iter())
        .filter(|t| *t < replaced[0])
        .max()
        .expect("EC2 was asked");
    let between = |op: &str| {
        cloud
            .calls(op, "")
            .into_iter()
            .filter(|t| *t > confirmed && *t < replaced[0])
            .count()
    };
    assert_eq!(
        between("DescribeRouteTables"),
        0,
        "read between EC2's word and the write"
    );
    assert_eq!(
        between("DescribeSubnets"),
        0,
        "read between EC2's word and the write"
    );
    assert_eq!(
        replaced[0] - confirmed,
        Duration::from_millis(50),
        "one call's latency"
    );
    // A new private subnet of the dead peer's AZ, its table still on the
    // dead NAT.
    {
        let mut st = cloud.state();
        st.subnets.push(crate::aws::fake::Subnet {
            id: crate::domain::SubnetId("subnet-new-a".into()),
            vpc: VpcId("vpc-1".into()),
            az: "az-a".into(),
            tags: vec![("network".into(), "private".into())],
            cidr: "10.0.9.0/24".parse().expect("a CIDR"),
        });
        st.tables.push(crate::domain::RouteTable {
            id: RouteTableId("rtb-new-a".into()),
            vpc_id: VpcId("vpc-1".into()),
            is_main: false,
            subnets: vec![crate::domain::SubnetId("subnet-new-a".into())],
            default_route: Some(Route {
                target: RouteTarget::Eni(EniId("eni-az-a".into())),
                blackhole: false,
            }),
        });
    }
    let added = Instant::now();
    while cloud.target("rtb-new-a") != eni("az-b") {
        assert!(
            added.elapsed() < 120 * S,
            "the new subnet's table was never covered"
        );
        sleep(S).await;
        peers.tick().await;
    }
    assert!(added.elapsed() <= 60 * S + 30 * S, "{:?}", added.elapsed());
    assert_eq!(
        cloud.calls("ReplaceRoute", "rtb-az-a").len(),
        1,
        "the first table once only"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_api_stretches_passes_but_never_overlaps_them() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    cloud.state().latency = 10 * S;
    let me = ctx(&cloud, "az-a", config());
    me.status.send_replace(Status::Ok);
    let task = tokio::spawn(RoutesLoop::new(me.clone()).run());
    sleep(590 * S).await;
    // In steady state a pass reads only the route tables: 10 s; then the
    // loop waits its jittered interval (27–33 s). The subnets and the
    // interface's check are read once, at the first pass.
    let passes = cloud.calls("DescribeRouteTables", "");
    for gap in gaps(&passes).into_iter().skip(1) {
        assert!(gap >= 37 * S && gap <= 43 * S, "{gap:?} between passes");
    }
    assert!(passes.len() >= 13, "{} passes in 10 min", passes.len());
    assert_eq!(cloud.calls("DescribeSubnets", "").len(), 1);
    assert_eq!(cloud.calls("DescribeNetworkInterfaces", "").len(), 1);
    task.abort();
}

/// The fake's heartbeat key secret, with `current` (and `previous`).
fn keys_in(cloud: &FakeCloud, current: &str, previous: Option<&str>) {
    let mut s = cloud.state();
    s.secrets
        .insert((KEY_SECRET.into(), "AWSCURRENT".into()), current.into());
    match previous {
        Some(p) => s
            .secrets
            .insert((KEY_SECRET.into(), "AWSPREVIOUS".into()), p.into()),
        None => s.secrets.remove(&(KEY_SECRET.into(), "AWSPREVIOUS".into())),
    };
}

const KEY_SECRET: &str = "hanat-peer-key";

fn keyed_config() -> Config {
    let mut c = config();
    c.peers.key_secret = Some(KEY_SECRET.into());
    c.aws.refresh_interval = 60 * S;
    c
}

/// The key id heartbeats are signed with now.
fn signing(ctx: &Ctx) -> String {
    let msg = Message {
        instance: InstanceId("i-x".into()),
        az: "az-b".into(),
        status: Status::Ok,
        seq: 1,
    };
    let stamp = crate::decide::auth::Stamp {
        epoch: 1,
        seq: 1,
        sent_ms: 1,
    };
    let text = crate::decide::auth::encode(&msg, stamp, &ctx.heartbeats.policy());
    text.split(' ').nth(7).unwrap_or_default().to_owned()
}

fn id(key: &str) -> String {
    crate::decide::auth::Key::new(key).unwrap().id().to_owned()
}

#[tokio::test(start_paused = true)]
async fn without_a_key_failover_is_off_unless_unauthenticated_heartbeats_are_accepted() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let me = ctx(&cloud, "az-b", config());
    assert_eq!(super::peers::keys::policy(&me).await, None);
    let mut c = config();
    c.peers.accept_unauthenticated = true;
    let me = ctx(&cloud, "az-b", c);
    let p = super::peers::keys::policy(&me).await.unwrap();
    assert!(p.accept_unauthenticated && p.keys.is_none());
    assert!(cloud.calls("GetSecretValue", "").is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_key_is_waited_for_with_backoff() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let me = ctx(&cloud, "az-b", keyed_config());
    let reading = tokio::spawn({
        let me = me.clone();
        async move { super::peers::keys::policy(&me).await }
    });
    sleep(20 * S).await;
    assert!(!reading.is_finished(), "no key, no failover");
    let tries = cloud.calls("GetSecretValue", KEY_SECRET);
    // 1 s, 2 s, 4 s, 8 s apart (jittered): 5 reads in 20 s, not a storm.
    assert!((4..=6).contains(&tries.len()), "{tries:?}");
    // A key too short is refused too, and named as the problem.
    keys_in(&cloud, "short", None);
    sleep(20 * S).await;
    assert!(!reading.is_finished());
    let key = "k".repeat(40);
    keys_in(&cloud, &key, None);
    sleep(40 * S).await;
    let p = reading.await.unwrap().unwrap();
    assert_eq!(p.keys.unwrap().current.id(), id(&key));
}

#[tokio::test(start_paused = true)]
async fn a_rotated_key_is_read_then_signed_with_one_refresh_interval_later() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let (old, new) = ("o".repeat(40), "n".repeat(40));
    keys_in(&cloud, &old, None);
    let me = ctx(&cloud, "az-b", keyed_config());
    *me.heartbeats.policy() = super::peers::keys::policy(&me).await.unwrap();
    assert_eq!(signing(&me), id(&old));
    let mut peers = PeersLoop::without_socket(me.clone(), "test");

    keys_in(&cloud, &new, Some(&old));
    sleep(61 * S).await;
    peers.tick().await;
    let keys = me.heartbeats.policy().keys.clone().unwrap();
    assert_eq!(keys.current.id(), id(&new));
    assert_eq!(keys.previous.map(|k| k.id().to_owned()), Some(id(&old)));
    // Peers that have not read the new key yet still hear this NAT.
    assert_eq!(signing(&me), id(&old));
    sleep(61 * S).await;
    peers.tick().await;
    assert_eq!(signing(&me), id(&new));

    // A heartbeat signed with an unknown key has the keys read again, at
    // most once a minute however many arrive.
    sleep(61 * S).await;
    peers.tick().await;
    let before = cloud.calls("GetSecretValue", KEY_SECRET).len();
    for _ in 0..5 {
        me.heartbeats.want_keys();
        sleep(S).await;
        peers.tick().await;
    }
    let after = cloud.calls("GetSecretValue", KEY_SECRET).len();
    assert_eq!(after - before, 0, "read a minute ago: not again yet");
    sleep(55 * S).await;
    me.heartbeats.want_keys();
    peers.tick().await;
    let later = cloud.calls("GetSecretValue", KEY_SECRET).len();
    assert_eq!(later - after, 2, "current and previous, once");
}

#[tokio::test]
async fn cloudwatch_gets_what_the_counters_grew_by_and_a_failed_call_loses_none_of_it() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a", "az-b"])));
    let mut c = config();
    c.cloudwatch.enabled = true;
    let me = ctx(&cloud, "az-b", c);
    me.status.send_replace(Status::Ok);
    let t = &me.metrics;
    t.kernel(&[("bytes_out_to_destination", 1000)]);
    let mut publisher = super::publish::PublishLoop::start(me.clone()).await;
    t.kernel(&[("bytes_out_to_destination", 1500)]);
    cloud.fail("PutMetricData", 1, "Throttling");
    assert!(publisher.tick().await.is_err());
    t.kernel(&[("bytes_out_to_destination", 4000)]);
    assert!(publisher.tick().await.is_ok());
    t.kernel(&[("bytes_out_to_destination", 4100)]);
    assert!(publisher.tick().await.is_ok());
    let puts = cloud.state().metric_data.clone();
    let sent: Vec<(String, Option<f64>)> = puts
        .iter()
        .map(|(_, ns, data)| {
            let bytes = data.iter().find(|d| d.name == "BytesOutToDestination");
            (ns.clone(), bytes.map(|d| d.value))
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("hanat".into(), Some(3000.0)),
            ("hanat".into(), Some(100.0))
        ],
        "the growth before start is not sent, the failed call's is carried"
    );
    let group = puts[0].2.iter().find(|d| d.name == "VerdictOk");
    assert_eq!(
        group.map(|d| d.dimensions[0].clone()),
        Some(("AutoScalingGroupName", "nat-az-b".into()))
    );
}

/// A free Elastic IP `eipalloc-<n>` in AZ a's group's pool.
fn add_pool_address(cloud: &FakeCloud, n: u8) {
    let a = crate::domain::Address {
        allocation_id: format!("eipalloc-{n}"),
        public_ip: format!("198.51.100.{}", 10 + n),
        eni: None,
        instance: None,
        private_ip: None,
        spare: false,
    };
    let tags = vec![("hanat:group".to_owned(), "nat-az-a".to_owned())];
    cloud.state().addresses.push((a, tags));
}

/// With `snat.addresses = 3` and two Elastic IPs in the group's pool, the
/// NAT assigns itself two secondary addresses, puts the two Elastic IPs on
/// the primary and the first secondary, and translates to those two only;
/// a third Elastic IP added to the pool is taken at the next pass.
#[tokio::test(start_paused = true)]
async fn each_address_gets_an_elastic_ip_and_only_those_are_translated_to() {
    use super::eip::EipClaim;
    use super::log::LogThrottle;
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    add_pool_address(&cloud, 0);
    add_pool_address(&cloud, 1);
    let mut c = config();
    c.eip.claim = true;
    c.snat.addresses = 3;
    let me = ctx(&cloud, "az-a", c);
    let primary = me.me.private_ip;
    let (mut claim, mut throttle) = (EipClaim::default(), LogThrottle::default());
    claim.keep(&me, &mut throttle).await;
    let secondary = cloud.state().secondary_ips[&me.me.eni].clone();
    assert_eq!(secondary.len(), 2);
    assert_eq!(me.snat(), vec![primary, secondary[0]]);
    let on = |id: &str| {
        let s = cloud.state();
        let (a, _) = s
            .addresses
            .iter()
            .find(|(a, _)| a.allocation_id == id)
            .expect("in the pool");
        (a.eni.clone(), a.private_ip)
    };
    assert_eq!(on("eipalloc-0"), (Some(me.me.eni.clone()), Some(primary)));
    assert_eq!(
        on("eipalloc-1"),
        (Some(me.me.eni.clone()), Some(secondary[0]))
    );
    assert_eq!(me.board().elastic_ips, Some((2, 3)));

    add_pool_address(&cloud, 2);
    claim.keep(&me, &mut throttle).await;
    assert_eq!(me.snat(), vec![primary, secondary[0], secondary[1]]);
    assert_eq!(
        on("eipalloc-2"),
        (Some(me.me.eni.clone()), Some(secondary[1]))
    );
    assert_eq!(me.board().elastic_ips, Some((3, 3)));
    // The addresses were assigned once; the held ones were not moved.
    assert_eq!(cloud.calls("AssignPrivateIpAddresses", "").len(), 1);
    assert_eq!(cloud.calls("AssociateAddress", "").len(), 3);
}

/// A NAT whose secondary addresses cannot be assigned (no permission, a
/// full subnet) still claims its primary address's Elastic IP, translates
/// to that one only, says 1 of 3, and assigns them at a later pass.
#[tokio::test(start_paused = true)]
async fn the_primary_address_is_claimed_even_when_no_secondary_can_be_assigned() {
    use super::eip::EipClaim;
    use super::log::LogThrottle;
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    for n in 0..3 {
        add_pool_address(&cloud, n);
    }
    cloud.fail("AssignPrivateIpAddresses", 1, "UnauthorizedOperation");
    let mut c = config();
    c.eip.claim = true;
    c.snat.addresses = 3;
    let me = ctx(&cloud, "az-a", c);
    let (mut claim, mut throttle) = (EipClaim::default(), LogThrottle::default());
    claim.keep(&me, &mut throttle).await;
    assert_eq!(me.snat(), vec![me.me.private_ip]);
    assert_eq!(me.board().elastic_ips, Some((1, 3)));
    assert_eq!(me.board().elastic_ip, Some(true));
    // Not held in full: the next pass tries again, and succeeds.
    claim.keep(&me, &mut throttle).await;
    assert_eq!(me.snat().len(), 3);
    assert_eq!(me.board().elastic_ips, Some((3, 3)));
}

/// A pool address of AZ a's group: `spare` or not, held by instance
/// `holder` (running or not) if given.
fn add_held_pool_address(cloud: &FakeCloud, id: &str, spare: bool, holder: Option<(&str, bool)>) {
    let mut s = cloud.state();
    if let Some((h, alive)) = holder {
        s.instances.push(crate::aws::fake::Instance {
            info: crate::domain::InstanceInfo {
                id: InstanceId(h.into()),
                az: "az-a".into(),
                eni: Some(EniId(format!("eni-{h}"))),
                ip: None,
                alive,
                launched: Some(1_600_000_000),
            },
            group: Some("nat-az-a".into()),
            health: "Healthy".into(),
            impaired: Vec::new(),
        });
    }
    let a = crate::domain::Address {
        allocation_id: id.into(),
        public_ip: "198.51.100.10".into(),
        eni: holder.map(|(h, _)| EniId(format!("eni-{h}"))),
        instance: None,
        private_ip: None,
        spare,
    };
    let tags = vec![("hanat:group".to_owned(), "nat-az-a".to_owned())];
    s.addresses.push((a, tags));
}

/// A replacement takes back the dead NAT's address (the one users see
/// first), not the free spare; a NAT launched beside a running one takes
/// the spare; with the spare held too, the pool reads as taken.
#[tokio::test(start_paused = true)]
async fn the_dead_nats_address_is_taken_back_before_the_spare() {
    use super::eip::EipClaim;
    use super::log::LogThrottle;
    let holder = |cloud: &FakeCloud, id: &str| {
        let s = cloud.state();
        s.addresses
            .iter()
            .find(|(a, _)| a.allocation_id == id)
            .and_then(|(a, _)| a.eni.clone())
    };
    let mut c = config();
    c.eip.claim = true;
    for (old_runs, want) in [(false, "eipalloc-0"), (true, "eipalloc-spare")] {
        let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
        add_held_pool_address(&cloud, "eipalloc-0", false, Some(("i-old", old_runs)));
        add_held_pool_address(&cloud, "eipalloc-spare", true, None);
        let me = ctx(&cloud, "az-a", c.clone());
        EipClaim::default()
            .keep(&me, &mut LogThrottle::default())
            .await;
        assert_eq!(
            holder(&cloud, want),
            Some(me.me.eni.clone()),
            "old runs: {old_runs}"
        );
        assert_eq!(me.board().elastic_ip, Some(true));
        assert!(!me.board().pool_taken);
    }
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    add_held_pool_address(&cloud, "eipalloc-0", false, Some(("i-old", true)));
    add_held_pool_address(&cloud, "eipalloc-spare", true, Some(("i-other", true)));
    let me = ctx(&cloud, "az-a", c);
    EipClaim::default()
        .keep(&me, &mut LogThrottle::default())
        .await;
    assert_eq!(me.board().elastic_ip, Some(false));
    assert!(me.board().pool_taken, "both held by running NATs");
}

/// A claim that fails before anything is known (DescribeAddresses
/// refused) says the Elastic IP is not held rather than "not claimed".
#[tokio::test(start_paused = true)]
async fn a_failed_first_claim_reads_as_not_held() {
    use super::eip::EipClaim;
    use super::log::LogThrottle;
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    cloud.fail("DescribeAddresses", 1, "RequestLimitExceeded");
    let mut c = config();
    c.eip.claim = true;
    let me = ctx(&cloud, "az-a", c);
    EipClaim::default()
        .keep(&me, &mut LogThrottle::default())
        .await;
    assert_eq!(me.board().elastic_ip, Some(false));
    assert_eq!(me.board().elastic_ips, Some((0, 1)));
    assert_eq!(me.snat(), vec![me.me.private_ip]);
}

/// A scrape storm costs one reading of the kernel's counters (one `nft`
/// process) per second, not one per scrape.
#[tokio::test]
async fn a_scrape_storm_reads_the_kernel_counters_at_most_once_a_second() {
    let cloud = Arc::new(FakeCloud::new(vpc(&["az-a"])));
    let me = ctx(&cloud, "az-a", config());
    let reads = |me: &Ctx| {
        let text = me.metrics.encode_classic().expect("metrics encode");
        text.lines()
            .find_map(|l| l.strip_prefix("hanat_kernel_readings_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("the readings are counted")
    };
    let storm = |me: &Arc<Ctx>| {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let me = me.clone();
            set.spawn(async move { super::readings::refresh(&me).await });
        }
        set.join_all()
    };
    storm(&me).await;
    assert_eq!(reads(&me), 1);
    storm(&me).await;
    assert_eq!(reads(&me), 1);
    sleep(super::readings::KERNEL_READ_EVERY).await;
    storm(&me).await;
    assert_eq!(reads(&me), 2);
}
