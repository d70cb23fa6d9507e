//! End-to-end tests of the lab (`hanat-lab`) with the real daemon: a
//! multi-AZ VPC whose private hosts reach the internet through their AZ's
//! NAT and Elastic IP, and every chaos scenario recovering by itself.
//! Bounds are generous; exact figures belong to `hanat-lab chaos --json`.
//! Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use hanat_lab::chaos::{self, ChaosOptions, Scenario};
use hanat_lab::cloud::DefaultTarget;
use hanat_lab::lab::{Lab, LabOptions, elastic_ip, nat_gateway_public_ip};

/// The lab's namespaces share one kernel and two cores: a test that floods
/// it (hundreds of thousands of flows, a port flooded as fast as it can
/// be) delays every other lab's packets. Flooding tests hold it alone;
/// tests that count every request hold it shared, so they never run
/// beside a flood.
static SHARED_KERNEL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn options(azs: usize) -> LabOptions {
    let mut o = LabOptions::new(env!("CARGO_BIN_EXE_hanat"));
    o.azs = azs;
    o.boot_delay = Duration::from_secs(3);
    o
}

/// A lab built with `opts`, its daemons started and every AZ served.
async fn serving(opts: LabOptions) -> Lab {
    let lab = Lab::build(opts).await.unwrap();
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(60)).await.unwrap();
    lab
}

fn leftovers(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labs_each_az_egresses_through_its_own_elastic_ip() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // Two labs at once must not clash.
    let (a, b) = tokio::join!(Lab::build(options(2)), Lab::build(options(1)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.prefix, b.prefix);
    a.start_daemons().unwrap();
    b.start_daemons().unwrap();
    a.wait_converged(Duration::from_secs(60)).await.unwrap();
    b.wait_converged(Duration::from_secs(60)).await.unwrap();

    for lab in [&a, &b] {
        for az in &lab.azs {
            let seen = lab.whoami(az.index, Duration::from_secs(2)).unwrap();
            assert_eq!(
                seen, az.eip.1,
                "{} AZ {} egresses with its Elastic IP",
                lab.prefix, az.name
            );
            let nat = lab.nat(az.index).unwrap();
            assert_eq!(
                lab.route_target(az.index).await.unwrap(),
                Some(nat.instance.eni.clone())
            );
        }
    }
    assert_ne!(a.azs[0].eip.1, a.azs[1].eip.1, "one address per AZ");

    // An outsider cannot open connections inward through any NAT.
    for az in &a.azs {
        let listener = az.host.bind_tcp("0.0.0.0:2222".parse().unwrap()).unwrap();
        std::thread::spawn(move || for _ in listener.incoming() {});
        a.route_inbound_via_nat(az.index).unwrap();
        assert!(
            a.connect_inbound(az.index, 2222, Duration::from_secs(1))
                .is_err()
        );
    }

    // Everything goes away with the lab.
    let (pa, pb) = (a.prefix.clone(), b.prefix.clone());
    let probe = a.nat(0).unwrap().probe_namespace;
    assert!(leftovers(&pa).contains(&probe));
    drop(a);
    drop(b);
    assert_eq!(leftovers(&pa), Vec::<String>::new());
    assert_eq!(leftovers(&pb), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_failing_heartbeat_moves_no_route() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // Unauthenticated heartbeats accepted (an upgrade from a version
    // without keys): the sender's address is all that is checked.
    let mut opts = options(2);
    opts.peer_auth = false;
    let lab = serving(opts).await;
    let (nat0, nat1) = (lab.nat(0).unwrap(), lab.nat(1).unwrap());
    // A private host of the VPC (source/destination check on: it cannot
    // forge its address) claims to be AZ 0's NAT, failing, for 3 s.
    let forged = format!(
        "hanat/1 {} {} failing 999999",
        nat0.instance.id, lab.azs[0].name
    );
    let socket = lab.azs[0]
        .host
        .bind_udp("0.0.0.0:0".parse().unwrap())
        .unwrap();
    let target: std::net::SocketAddr = format!("{}:7470", nat1.instance.private_ip)
        .parse()
        .unwrap();
    let own = Some(nat0.instance.eni.clone());
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        socket.send_to(forged.as_bytes(), target).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            lab.route_target(0).await.unwrap(),
            own,
            "AZ 0's route moved"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lab.route_target(0).await.unwrap(), own);
    assert_eq!(
        lab.whoami(0, Duration::from_secs(2)).unwrap(),
        lab.azs[0].eip.1
    );
    let log = lab.nat_log(1);
    assert!(
        log.contains("ignored a heartbeat naming a peer but not sent from its address"),
        "{log}"
    );
}

async fn scenario(s: Scenario) -> chaos::Report {
    scenario_with(s, options(2)).await
}

async fn scenario_with(s: Scenario, lab: LabOptions) -> chaos::Report {
    let opts = ChaosOptions::new(lab, Duration::from_secs(90));
    let r = chaos::run(s, opts).await.unwrap();
    eprintln!("{}", r.json());
    assert!(r.recovered, "{}", r.human());
    assert!(r.sent > 50, "{}", r.human());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_none_and_kill_daemon_lose_nothing() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let r = scenario(Scenario::None).await;
    assert_eq!(r.lost, 0, "{}", r.human());
    let r = scenario(Scenario::KillDaemon).await;
    assert_eq!(r.lost, 0, "{}", r.human());
    assert!(
        r.events.iter().any(|e| e.contains("daemon restarted")),
        "{}",
        r.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_hijack_route_is_taken_back() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let r = scenario(Scenario::HijackRoute).await;
    // Reconcile every 5 s (±10%) plus slack.
    assert!(r.outage_ms < 15_000, "{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_dead_nats_are_covered_by_a_peer_then_replaced() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // A peer adopts the AZ within seconds, long before the replacement
    // boots; the replacement takes the routes and the Elastic IP back.
    for s in [
        Scenario::TerminateInstance,
        Scenario::StopForwarding,
        Scenario::AzOutage,
    ] {
        let r = scenario(s).await;
        assert!(r.outage_ms < 6_000, "{}", r.human());
        assert!(
            r.route_changes >= 2,
            "adopted, then taken back: {}",
            r.human()
        );
        if s == Scenario::AzOutage {
            continue;
        }
        // The long-lived sessions through the dead NAT go on: the adopter
        // wrote their copies into its kernel and carries the dead NAT's
        // Elastic IP, and the replacement wrote the adopter's copies before
        // taking its AZ back. A kept session is the same TCP connection
        // to the far end's socket, which resets any packet from another
        // address or port. None is left hanging either way.
        let t = &r.sessions;
        assert_eq!(t.sessions, 20, "{}", r.human());
        assert!(t.kept >= 19, "{}", r.human());
        assert_eq!(t.kept + t.reset, t.sessions, "{}", r.human());
        let longest = t.longest_stalls[0].as_millis() as u64;
        assert!(longest < r.outage_ms + 5_000, "{}", r.human());
        // The UDP stream beside them: the far end saw it from one public
        // address and port throughout (copied like the sessions).
        assert!(t.stream.as_ref().is_some_and(|s| s.kept()), "{}", r.human());
    }
    let r = scenario(Scenario::StopForwarding).await;
    assert!(
        r.events.iter().any(|e| e.contains("Unhealthy, terminated")),
        "{}",
        r.human()
    );
}

/// A host of the VPC that can forge a NAT's source address (its
/// source/destination check off) sends an adopter connection copies "from"
/// a NAT that then dies: signed with its own key, and unsigned. The copy
/// names a connection to AZ 0's private host; written into the adopter's
/// kernel it would let the far end reach the host. It is not, and the
/// genuine copies still keep the sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_forged_connection_copies_change_nothing() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let r = scenario(Scenario::ForgeReplication).await;
    assert!(
        r.events
            .iter()
            .any(|e| e.contains("forged connections in AZ 1's kernel: 0")),
        "{}",
        r.human()
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.contains("spoofed") && !e.contains(" 0 ")),
        "{}",
        r.human()
    );
    assert!(r.sessions.kept >= 19, "{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_planned_exits_lose_nothing() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    for s in [Scenario::ScaleIn, Scenario::SpotInterruption] {
        let r = scenario(s).await;
        // Nothing is lost, not even a request whose TCP handshake is in
        // flight at the instant its route moves to the other NAT: flow
        // hand-off sends its later packets back to the NAT that has its
        // translation (without it, about one route change in 40 lost one).
        assert_eq!(r.lost, 0, "{}", r.human());
        assert!(
            r.events
                .iter()
                .any(|e| e.contains("terminated after hand-off")),
            "{}",
            r.human()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_partition_and_az_isolation_move_no_route() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(2);
    opts.witness_interval = Duration::from_secs(5);
    for s in [Scenario::Partition, Scenario::AzIsolation] {
        let r = scenario_with(s, opts.clone()).await;
        assert_eq!(r.route_changes, 0, "{}", r.human());
        assert_eq!(r.lost, 0, "{}", r.human());
    }
}

/// The witness's worst case for a freeze: the check just passed, so the
/// next one is an interval away (the first one up to the grace and an
/// interval after the association) and fails after its timeout; peers ask
/// EC2 every WITNESS_POLL while a peer is silent; then an adoption.
fn freeze_bound(o: &LabOptions) -> Duration {
    o.witness_grace
        + o.witness_interval
        + hanat_lab::lab::witness::TIMEOUT
        + hanat::decide::backoff::WITNESS_POLL
        + Duration::from_secs(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_frozen_nat_is_covered_once_its_status_check_fails_then_replaced() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(2);
    opts.witness_interval = Duration::from_secs(10);
    opts.witness_grace = Duration::from_secs(1);
    let r = scenario_with(Scenario::Freeze, opts.clone()).await;
    let bound = freeze_bound(&opts);
    assert!(
        r.outage_ms <= bound.as_millis() as u64,
        "outage over {bound:?}: {}",
        r.human()
    );
    // Covered by the peer (its Elastic IP seen) before Auto Scaling
    // replaced the frozen instance, which then took its AZ back.
    assert!(
        r.sources.contains(&elastic_ip(1)) && r.route_changes >= 2,
        "{}",
        r.human()
    );
    // The long-lived sessions through the frozen NAT went on through the
    // adopter (which took the Elastic IP from the frozen instance) and
    // the replacement.
    assert!(r.sessions.kept >= 19, "{}", r.human());
    assert!(
        (r.sessions.stream.as_ref()).is_some_and(|s| s.kept()),
        "{}",
        r.human()
    );
    assert!(
        !r.logged("silent peer is impaired by EC2's status checks")
            .is_empty(),
        "{}",
        r.human()
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.contains("application status impaired, terminated")),
        "{}",
        r.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nat_that_thaws_before_its_replacement_takes_its_az_back_without_a_fight() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let mut opts = options(2);
    opts.witness_interval = Duration::from_secs(5);
    opts.witness_grace = Duration::from_secs(1);
    // Not replaced: it thaws first.
    opts.replace_unhealthy = false;
    let lab = serving(opts).await;
    let own = lab.nat(0).unwrap().instance.eni;
    let peer = lab.nat(1).unwrap().instance.eni;
    lab.freeze(0, true).unwrap();
    lab.wait_for(
        "the peer to adopt AZ 0",
        Duration::from_secs(30),
        || async { Ok(lab.route_target(0).await? == Some(peer.clone())) },
    )
    .await
    .unwrap();
    lab.freeze(0, false).unwrap();
    lab.wait_for(
        "AZ 0's NAT to take its AZ back",
        Duration::from_secs(30),
        || async { Ok(lab.route_target(0).await? == Some(own.clone())) },
    )
    .await
    .unwrap();
    // Then it stays there: the adopter does not take it again.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            lab.route_target(0).await.unwrap(),
            Some(own.clone()),
            "{}",
            lab.nat_log(1)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lab.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert!(
        lab.nat_log(1)
            .contains("silent peer is impaired by EC2's status checks"),
        "{}",
        lab.nat_log(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_handoff_moves_routes_first_and_keeps_connections() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(2);
    opts.handoff_on_stop = true;
    // Long enough to open a connection through the adopter before the
    // daemon is back and takes its routes back.
    opts.restart_delay = Some(Duration::from_secs(4));
    let lab = serving(opts).await;
    let peer_eni = lab.nat(1).unwrap().instance.eni;
    let (eip0, eip1) = (elastic_ip(0), elastic_ip(1));
    let meter = lab.meter(0, Duration::from_millis(50));
    // A connection opened through AZ 0's own NAT.
    let mut early = lab.session(0, Duration::from_secs(3)).unwrap();
    assert_eq!(early.ask().unwrap(), eip0);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // systemctl stop: the daemon hands AZ 0's routes to AZ 1, drains, exits 0.
    let status = lab.terminate_daemon(0).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        lab.route_target(0).await.unwrap(),
        Some(peer_eni),
        "routes were handed over before the exit"
    );
    lab.wait_for(
        "AZ 0's new connections to leave through AZ 1",
        Duration::from_secs(10),
        || async { Ok(lab.whoami(0, Duration::from_secs(2))? == eip1) },
    )
    .await
    .unwrap();
    // Its packets now reach AZ 1's NAT, which has no translation for them:
    // flow hand-off sends them through the tunnel to AZ 0's NAT, so the
    // connection lives on with its address.
    let got = early.ask();
    assert_eq!(
        got.expect("the early connection survives the hand-over"),
        eip0
    );
    let mut handed = lab.session(0, Duration::from_secs(3)).unwrap();
    assert_eq!(handed.ask().unwrap(), eip1, "opened through the adopter");
    // The adopter's daemon dies and comes back: it takes over the hand-off
    // the kernel still carries instead of resetting it.
    lab.kill_daemon(1).unwrap();
    lab.wait_for("the adopter to resume", Duration::from_secs(20), || async {
        Ok(lab.nat_log(1).contains("flow hand-off resumed"))
    })
    .await
    .unwrap();
    assert_eq!(
        early
            .ask()
            .expect("the early connection survives the adopter's restart"),
        eip0
    );
    // Past its first converge of the hand-off, the restarted daemon keeps it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rules = lab
        .nat_exec(1, "ip", &["rule", "show", "priority", "7470"])
        .unwrap();
    assert!(
        rules.contains("fwmark"),
        "hand-off dropped on restart: {rules:?}"
    );

    // The lab's systemd starts it again; it takes its routes back, and the
    // connection opened through the adopter goes on through it.
    lab.wait_converged(Duration::from_secs(30)).await.unwrap();
    assert_eq!(early.ask().unwrap(), eip0);
    let got = handed.ask();
    if got.is_err() {
        for i in [0, 1] {
            eprintln!("NAT {i} log\n{}", lab.nat_log(i));
            for cmd in [
                "ip rule",
                "nft list table ip hanat_handoff",
                "ip -s link show hanat0",
            ] {
                let v: Vec<&str> = cmd.split(' ').collect();
                eprintln!(
                    "NAT {i} $ {cmd}\n{}",
                    lab.nat_exec(i, v[0], &v[1..])
                        .unwrap_or_else(|e| e.to_string())
                );
            }
        }
    }
    assert_eq!(
        got.expect("the adopter's connection survives the take-back"),
        eip1
    );
    let r = meter.finish();
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(
        r.sources.len(),
        2,
        "AZ 1's address while handed over: {r:?}"
    );
    assert!(
        lab.nat_log(0)
            .contains("planned exit: handing this AZ's routes to a peer")
    );
    for i in [0, 1] {
        assert!(
            lab.nat_log(i).contains("flow hand-off: mid-flow packets"),
            "NAT {i}:\n{}",
            lab.nat_log(i)
        );
    }
}

/// A connection that went through a NAT now dead is reset by the adopter
/// at the first packet the host sends, as a NAT Gateway resets a connection
/// it no longer knows, even when the far end drops what it does not know
/// (a firewall, a load balancer) instead of resetting it. Before, the
/// adopter translated the packet afresh and the host retransmitted into
/// silence until its own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_through_a_dead_nat_is_reset_by_its_adopter_at_once() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    // With replication off, as with a connection too young to be copied.
    let lab = serving(LabOptions {
        replication: false,
        ..options(2)
    })
    .await;
    lab.inet
        .exec(
            "nft",
            &["add table ip far_end; \
               add chain ip far_end out { type filter hook output priority filter; }; \
               add rule ip far_end out tcp flags rst drop"],
        )
        .unwrap();
    let peer_eni = lab.nat(1).unwrap().instance.eni;
    let mut session = lab.session(0, Duration::from_secs(5)).unwrap();
    assert_eq!(session.ask().unwrap(), elastic_ip(0));

    lab.terminate_instance(0).await.unwrap();
    lab.wait_for("AZ 1 to adopt AZ 0", Duration::from_secs(30), || async {
        Ok(lab.route_target(0).await? == Some(peer_eni.clone())
            && lab.whoami(0, Duration::from_secs(1)).ok() == Some(elastic_ip(1)))
    })
    .await
    .unwrap();

    let asked = std::time::Instant::now();
    let err = session
        .ask()
        .expect_err("the adopter never saw this connection");
    let kind = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "{err:#} after {:?}\nthe adopter's ruleset:\n{}\nits rules:\n{}\nits log:\n{}",
        asked.elapsed(),
        lab.nat_exec(1, "nft", &["list ruleset"])
            .unwrap_or_else(|e| e.to_string()),
        lab.nat_exec(1, "ip", &["rule"])
            .unwrap_or_else(|e| e.to_string()),
        lab.nat_log(1),
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "reset after {:?}",
        asked.elapsed()
    );
    // New connections go on through the adopter.
    assert_eq!(
        lab.whoami(0, Duration::from_secs(3)).unwrap(),
        elastic_ip(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_drain_leaves_routes_with_the_adopter_for_a_while() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let mut opts = options(2);
    opts.failback = "drain:4s".into();
    let lab = serving(opts).await;
    let old = lab.nat(0).unwrap().instance.id;
    let peer_eni = lab.nat(1).unwrap().instance.eni;
    lab.terminate_instance(0).await.unwrap();

    // The replacement boots and proves it forwards; the peer keeps the
    // routes for the drain, then the replacement takes them.
    lab.wait_for(
        "the replacement to say it drains",
        Duration::from_secs(30),
        || async {
            Ok(lab.nat(0).is_some_and(|n| n.instance.id != old)
                && lab
                    .nat_log(0)
                    .contains("draining the adopter's connections before taking routes back"))
        },
    )
    .await
    .unwrap();
    let held_since = std::time::Instant::now();
    assert_eq!(
        lab.route_target(0).await.unwrap(),
        Some(peer_eni.clone()),
        "still with the adopter"
    );
    lab.wait_for("failback", Duration::from_secs(20), || async {
        Ok(lab.route_target(0).await? != Some(peer_eni.clone()))
    })
    .await
    .unwrap();
    let held = held_since.elapsed();
    assert!(
        held >= Duration::from_secs(2),
        "taken back after only {held:?} of a 4 s drain"
    );
    lab.wait_converged(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_lone_az_falls_back_to_its_nat_gateway() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // One AZ, no peer: its NAT Gateway carries the AZ from the moment the
    // NAT fails until the replacement (booting 8 s) has proven itself.
    let run = |s: Scenario| async move {
        let mut lab = options(1);
        lab.fallback_nat_gateway = true;
        lab.boot_delay = Duration::from_secs(8);
        let opts = ChaosOptions::new(lab, Duration::from_secs(90));
        let r = chaos::run(s, opts).await.unwrap();
        eprintln!("{}", r.json());
        assert!(r.recovered, "{}", r.human());
        r
    };
    let (eip, gateway) = (elastic_ip(0), nat_gateway_public_ip(0));
    let r = run(Scenario::StopForwarding).await;
    assert_eq!(r.sources, vec![eip, gateway], "{}", r.human());
    assert!(r.source_ip_changes >= 2, "{}", r.human());
    assert!(r.route_changes >= 2, "{}", r.human());
    // Well under the 8 s boot of the replacement.
    assert!(r.outage_ms < 6_000, "{}", r.human());
    // A planned exit hands the routes to the gateway before forwarding
    // stops: at most a request caught mid-handshake at each route switch.
    let r = run(Scenario::ScaleIn).await;
    assert_eq!(r.sources, vec![eip, gateway], "{}", r.human());
    assert!(r.lost <= r.route_changes, "{}", r.human());
}

/// A NAT that never reacts (its heartbeat would need a million failed
/// rounds, and no peer or gateway stands in) while forwarding is broken: the
/// run never recovers, and its outage is counted up to the end of the
/// measurement, not as the cadence of the requests answered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_that_never_ends_counts_to_the_end_of_the_run() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let mut lab = options(1);
    lab.fall = 1_000_000;
    lab.failover = "none".into();
    let opts = ChaosOptions::new(lab, Duration::from_secs(8));
    let r = chaos::run(Scenario::StopForwarding, opts).await.unwrap();
    eprintln!("{}", r.json());
    assert!(!r.recovered, "{}", r.human());
    assert!(r.ended_in_outage, "{}", r.human());
    assert!(r.measured_ms >= 8_000, "{}", r.human());
    assert!(
        r.outage_ms >= r.measured_ms,
        "outage {} ms < {} ms from the fault to the end\n{}",
        r.outage_ms,
        r.measured_ms,
        r.human()
    );
    assert!(r.human().contains("NOT recovered"), "{}", r.human());
    assert!(r.human().contains("still open"), "{}", r.human());
    // Nobody resets the long-lived sessions either: every one hangs.
    let n = r.sessions.sessions;
    assert_eq!(n, 20, "{}", r.human());
    assert_eq!(r.sessions.stalled, n, "{}", r.human());
    assert!(
        r.human().contains("0/20 kept, 0 reset, 20 left hanging"),
        "{}",
        r.human()
    );
    let row = chaos::bench_row(Scenario::StopForwarding, "none", &[r]);
    let table = chaos::bench_table(&[row]);
    assert!(
        table.contains("0/1 (NOT: 1), 1 ended in an outage") && table.contains("| 0/20 |"),
        "{table}"
    );
}

const IGNORED: &str = "ignored a heartbeat";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_forged_heartbeats_move_no_route() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    // Through the flow hand-off tunnel: dropped by the kernel before any
    // socket, so the daemon never even sees the forger's key.
    let r = scenario(Scenario::ForgeTunnel).await;
    assert_eq!(r.route_changes, 0, "{}", r.human());
    assert_eq!(r.lost, 0, "{}", r.human());
    assert!(r.logged("0badc0de").is_empty(), "{:#?}", r.logged(IGNORED));

    // With a NAT's own address, from a host with the source/destination
    // check off: rejected for want of the key.
    let r = scenario(Scenario::ForgeSpoof).await;
    assert_eq!(r.route_changes, 0, "{}", r.human());
    assert_eq!(r.lost, 0, "{}", r.human());
    let ignored = r.logged(IGNORED);
    for reason in [
        "unauthenticated (hanat/1) heartbeat",
        "signed with an unknown key 0badc0de",
    ] {
        assert!(
            ignored.iter().any(|l| l.contains(reason)),
            "{reason}: {ignored:#?}"
        );
    }
    // A forger's unknown key has the keys re-read at most once a minute:
    // besides the lab's 15 s refreshes, at most one read (2 calls) per NAT.
    let reads = r
        .api_calls()
        .into_iter()
        .find(|(a, _)| a == "GetSecretValue")
        .map_or(0, |(_, n)| n);
    assert!(reads <= 12, "{reads} GetSecretValue calls\n{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_replayed_heartbeats_are_rejected() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let r = scenario(Scenario::Replay).await;
    assert_eq!(r.route_changes, 0, "{}", r.human());
    assert_eq!(r.lost, 0, "{}", r.human());
    assert!(
        r.events.iter().any(|e| e.contains("replayed")),
        "{}",
        r.human()
    );
    let ignored = r.logged(IGNORED);
    for reason in ["replayed: not newer", "stale: its clock"] {
        assert!(
            ignored.iter().any(|l| l.contains(reason)),
            "{reason}: {ignored:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_the_tunnel_forgery_fails_even_with_unauthenticated_peers() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    // No key: only the tunnel's filters stand between the forger and the
    // heartbeat socket (before they existed, this moved 6 routes).
    let mut opts = options(2);
    opts.peer_auth = false;
    let r = scenario_with(Scenario::ForgeTunnel, opts).await;
    assert_eq!(r.route_changes, 0, "{}", r.human());
    assert_eq!(r.lost, 0, "{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_forged_ok_does_not_hide_a_dead_nat() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let r = scenario(Scenario::ForgeTunnelOk).await;
    // Adopted by AZ 1's NAT, then taken back by the replacement, as when
    // nobody lies; the gap stays that of terminate-instance.
    assert!((1..=2).contains(&r.route_changes), "{}", r.human());
    assert!(r.outage_ms < 15_000, "{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_leaves_every_nat_heard() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let lab = Lab::build(options(2)).await.unwrap();
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(60)).await.unwrap();
    let own = lab.route_target(0).await.unwrap();
    let secret = lab.key_secret().unwrap().to_owned();
    lab.cloud.rotate_peer_key(&secret).await.unwrap();
    // Each NAT reads the new key within a refresh (15 s in the lab) and
    // signs with it one refresh later.
    let logs = || (0..2).map(|i| lab.nat_log(i)).collect::<Vec<_>>();
    lab.wait_for(
        "every NAT to sign with the new key",
        Duration::from_secs(60),
        || async {
            Ok(logs()
                .iter()
                .all(|l| l.contains("signing heartbeats with the new key")))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for log in logs() {
        assert!(log.contains("heartbeat keys changed"), "{log}");
        assert!(!log.contains(IGNORED), "{log}");
        assert!(
            !log.contains("silence longer than peers.suspect_after"),
            "{log}"
        );
    }
    assert_eq!(lab.route_target(0).await.unwrap(), own);
    assert_eq!(
        lab.whoami(0, Duration::from_secs(2)).unwrap(),
        lab.azs[0].eip.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_filters_come_back_after_a_flushed_ruleset() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let lab = Lab::build(options(2)).await.unwrap();
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(60)).await.unwrap();
    let table = || lab.nat_exec(1, "nft", &["list", "table", "ip", "hanat_handoff"]);
    assert!(table().unwrap().contains("iifname \"hanat0\" drop"));
    // No hand-off is on: the table is back for its filters alone, within
    // a kernel converge (10 s in the lab).
    lab.nat_exec(1, "nft", &["flush", "ruleset"]).unwrap();
    assert!(table().is_err(), "flushed");
    lab.wait_for(
        "the hand-off table back",
        Duration::from_secs(30),
        || async { Ok(table().is_ok_and(|t| t.contains("iifname \"hanat0\" drop"))) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_follow_a_nat_that_stops_forwarding() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let mut opts = options(2);
    // Kept running after it reports itself Unhealthy, so its endpoints
    // can be read while it fails.
    opts.replace_unhealthy = false;
    let lab = serving(opts).await;
    let get = |i: usize, path: &str| {
        let url = format!("http://127.0.0.1:7472{path}");
        lab.nat_exec(
            i,
            "curl",
            &["-s", "-w", "\n%{http_code}", "--max-time", "5", &url],
        )
        .unwrap()
    };
    let metric = |text: &str, line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no `{line}` in\n{text}"))
    };
    let health = get(0, "/health");
    assert!(
        health.ends_with("\n200") && health.contains("\"healthy\":true"),
        "{health}"
    );
    // A real Prometheus scrapes both NATs; promtool finds the exposition
    // valid.
    let prometheus = lab.start_prometheus(Duration::from_secs(1)).unwrap();
    let m = get(0, "/metrics");
    let exposition = m.rsplit_once('\n').unwrap().0.to_owned() + "\n";
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    lab.wait_for(
        "Prometheus to scrape both NATs",
        Duration::from_secs(20),
        || async { Ok(prometheus.query("up == 1")?.len() == 2) },
    )
    .await
    .unwrap();
    assert_eq!(metric(&m, "hanat_verdict{state=\"ok\"}"), 1.0);
    assert_eq!(metric(&m, "hanat_routes{points_at=\"this_nat\"}"), 1.0);
    assert_eq!(metric(&m, "hanat_elastic_ip_held"), 1.0);
    let ok_probes = m
        .lines()
        .filter(|l| l.starts_with("hanat_probes_total{") && l.contains("result=\"ok\""))
        .count();
    assert!(ok_probes > 0, "{m}");
    assert!(m.contains("hanat_probe_rtt_seconds_bucket{"), "{m}");
    // Its AWS calls so far, as the API proxy counted them.
    let proxy_saw = lab
        .api()
        .calls()
        .iter()
        .filter(|c| c.nat == 0 && c.action == "DescribeRouteTables" && c.status == 200)
        .count();
    let timed = metric(
        &m,
        "hanat_aws_call_seconds_count{service=\"EC2\",operation=\"DescribeRouteTables\",outcome=\"ok\"}",
    );
    assert!(
        timed >= 1.0 && timed <= proxy_saw as f64,
        "{timed} of {proxy_saw}: {m}"
    );
    let peer = lab.nat(1).unwrap().instance.id;
    assert!(
        m.contains(&format!(
            "hanat_peer_verdict{{peer=\"{peer}\",az=\"{}\",state=\"ok\"}} 1",
            lab.azs[1].name
        )),
        "{m}"
    );

    // The NAT Gateway's counters follow the traffic: 20 requests, one
    // long-lived connection, and a datagram conntrack finds invalid (a
    // wrong UDP checksum), from AZ 0's private host.
    let total = |text: &str, name: &str| metric(text, &format!("hanat_{name}_total"));
    let before = get(0, "/metrics");
    for _ in 0..20 {
        lab.whoami(0, Duration::from_secs(2)).unwrap();
    }
    let mut session = lab.session(0, Duration::from_secs(2)).unwrap();
    session.ask().unwrap();
    let host = lab.azs[0].host_ip;
    let mut bad =
        hanat_lab::lab::forge::ipv4_udp(host, "203.0.113.10".parse().unwrap(), 5353, 53, b"bad");
    bad[26..28].copy_from_slice(&[0xde, 0xad]);
    hanat_lab::lab::forge::send_raw(&lab.azs[0].host.path(), vec![bad]).unwrap();
    // The kernel's counters are read at most once a second.
    tokio::time::sleep(hanat::daemon::readings::KERNEL_READ_EVERY + Duration::from_millis(100))
        .await;
    let after = get(0, "/metrics");
    for name in [
        "bytes_in_from_source",
        "bytes_out_to_destination",
        "bytes_in_from_destination",
        "bytes_out_to_source",
    ] {
        let grew = total(&after, name) - total(&before, name);
        assert!(grew >= 20.0 * 60.0, "{name} grew by {grew} bytes\n{after}");
    }
    for name in ["connection_attempts", "connections_established"] {
        let grew = total(&after, name) - total(&before, name);
        assert!(grew >= 21.0, "{name} grew by {grew}\n{after}");
    }
    assert!(
        total(&after, "packets_dropped") > total(&before, "packets_dropped"),
        "{after}"
    );
    assert!(metric(&after, "hanat_active_connections") >= 1.0, "{after}");
    drop(session);

    // `hanat status`, as an operator on the instance runs it.
    let nat = lab.nat(0).unwrap();
    let status = lab
        .nat_command(0, lab.opts.hanat_bin.to_str().unwrap())
        .unwrap()
        .args(["status", "--config", nat.config_path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for want in [
        format!("{} ({}): ok for", nat.instance.id, lab.azs[0].name),
        "healthy".to_owned(),
        format!("{} → this NAT", lab.azs[0].private_route_table),
        format!("{peer} {}", lab.azs[1].name),
        "Elastic IP held".to_owned(),
        "application status check asc-".to_owned(),
    ] {
        assert!(text.contains(&want), "{want}\n{text}");
    }

    // AZ 0 stops forwarding: its health, verdict and probe counters say so.
    stop_forwarding(&lab, 0);
    lab.wait_for(
        "AZ 0's health to turn 503",
        Duration::from_secs(20),
        || async { Ok(get(0, "/health").ends_with("\n503")) },
    )
    .await
    .unwrap();
    let health = get(0, "/health");
    assert!(
        health.contains("failing: its forwarding probes fail"),
        "{health}"
    );
    let m = get(0, "/metrics");
    assert_eq!(metric(&m, "hanat_verdict{state=\"failing\"}"), 1.0);
    assert!(
        m.lines()
            .any(|l| l.starts_with("hanat_probes_total{") && l.contains("result=\"failed\"")),
        "{m}"
    );
    // Its peer heard it.
    let me = nat.instance.id;
    lab.wait_for(
        "AZ 1 to show AZ 0 failing",
        Duration::from_secs(10),
        || async {
            Ok(get(1, "/metrics").contains(&format!(
                "hanat_peer_verdict{{peer=\"{me}\",az=\"{}\",state=\"failing\"}} 1",
                lab.azs[0].name
            )))
        },
    )
    .await
    .unwrap();
    let v = status_json(&lab, 1);
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["peers"][0]["verdict"], "failing", "{v}");

    // Prometheus saw it all: AZ 0's NAT was ok and is failing, its AZ's
    // route points at the other NAT (the adoption), and the peer heard it
    // and says it covers AZ 0.
    let az0 = format!("instance_id=\"{me}\"");
    let seen = |q: String| {
        let p = &prometheus;
        async move { Ok(p.value(&q)? == Some(1.0)) }
    };
    for q in [
        format!("max_over_time(hanat_verdict{{state=\"ok\",{az0}}}[10m])"),
        format!("hanat_verdict{{state=\"failing\",{az0}}}"),
        format!("hanat_routes{{points_at=\"other\",{az0}}}"),
        format!("hanat_peer_verdict{{peer=\"{me}\",state=\"failing\"}}"),
        format!(
            "hanat_covering{{az=\"{}\",via=\"this_nat\",instance_id=\"{peer}\"}}",
            lab.azs[0].name
        ),
    ] {
        lab.wait_for(&q.clone(), Duration::from_secs(30), || seen(q.clone()))
            .await
            .unwrap();
    }
}

/// AZ `i`'s NAT stops forwarding: a table of the test's drops everything
/// at the forward hook.
fn stop_forwarding(lab: &Lab, i: usize) {
    lab.stop_forwarding(i, "chaos").unwrap();
}

/// `hanat status --json` on AZ `i`'s NAT, as an operator there runs it.
fn status_json(lab: &Lab, i: usize) -> serde_json::Value {
    let out = lab
        .nat_command(i, lab.opts.hanat_bin.to_str().unwrap())
        .unwrap()
        .args([
            "status",
            "--json",
            "--config",
            lab.nat(i).unwrap().config_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Wait (a loaded machine publishes late) for the maximum of CloudWatch
/// metric `name` (namespace hanat, `dims`) from `since` on to be `want`: a
/// maximum only grows, so a wrong value seen at any time keeps it from ever
/// matching.
async fn until_max(
    lab: &Lab,
    what: impl AsRef<str>,
    name: &str,
    dims: Vec<(&'static str, String)>,
    since: std::time::SystemTime,
    want: f64,
) {
    let what = what.as_ref();
    let d: Vec<(&str, &str)> = dims.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let seen = std::sync::Mutex::new(Vec::new());
    let waited = lab
        .wait_for(what, Duration::from_secs(20), || async {
            // One window from `since` to now.
            let v = lab
                .cloud
                .metric("hanat", name, &d, ("Maximum", 3600), since)
                .await?;
            let done = v == [want];
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = v;
            Ok(done)
        })
        .await;
    assert!(
        waited.is_ok(),
        "{what}: saw {:?}",
        seen.lock().unwrap_or_else(|p| p.into_inner())
    );
}

/// What the templates' "no forwarding NAT" alarm reads, published by real
/// daemons into moto's CloudWatch: an AZ whose NAT fails but whose peer
/// adopted it is still forwarded (the alarm stays quiet); once the peer
/// fails too, nobody forwards it (the alarm's condition holds). The
/// gateway's traffic figures arrive under its names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_shows_an_adopted_az_forwarded_and_an_az_nobody_forwards() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let mut opts = options(2);
    opts.replace_unhealthy = false;
    opts.cloudwatch = Some(Duration::from_secs(1));
    let lab = serving(opts).await;
    let (az0, az1) = (lab.azs[0].name.clone(), lab.azs[1].name.clone());
    let of_nat = |i: usize| {
        [
            ("AutoScalingGroupName", lab.azs[i].group.clone()),
            ("AvailabilityZone", lab.azs[i].name.clone()),
        ]
    };
    let read = |name: &'static str, dims: Vec<(&'static str, String)>, stat, since| {
        let cloud = lab.cloud.clone();
        async move {
            let d: Vec<(&str, &str)> = dims.iter().map(|(k, v)| (*k, v.as_str())).collect();
            // One window from `since` to now.
            cloud.metric("hanat", name, &d, (stat, 3600), since).await
        }
    };
    // Settled from here: what the NATs publish from 2 s on.
    let settled = || std::time::SystemTime::now() + Duration::from_secs(2);
    let vpc_az = |az: &str| {
        vec![
            ("VpcId", lab.vpc.clone()),
            ("AvailabilityZone", az.to_owned()),
        ]
    };
    let health = |i: usize| {
        lab.nat_exec(
            i,
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "http://127.0.0.1:7472/health",
            ],
        )
    };
    lab.wait_for(
        "both NATs to be healthy",
        Duration::from_secs(30),
        || async { Ok(health(0)? == "200" && health(1)? == "200") },
    )
    .await
    .unwrap();

    // Healthy: traffic from AZ 0 arrives under the gateway's names, and
    // each AZ is forwarded.
    let start = settled();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..10 {
        lab.whoami(0, Duration::from_secs(2)).unwrap();
    }
    lab.wait_for(
        "AZ 0's NAT to publish the requests' bytes",
        Duration::from_secs(20),
        || async {
            let bytes = read("BytesOutToDestination", of_nat(0).to_vec(), "Sum", start).await?;
            Ok(bytes.iter().sum::<f64>() >= 10.0 * 60.0)
        },
    )
    .await
    .unwrap();
    for az in [&az0, &az1] {
        until_max(
            &lab,
            format!("{az} forwarded"),
            "ForwardingNat",
            vpc_az(az),
            start,
            1.0,
        )
        .await;
    }
    // The template's alarm, as the lab created it in moto's CloudWatch
    // (moto's CloudFormation skips alarms), applied to those data.
    let alarm = |x: char| format!("{}-nat-{x}-no-forwarding-nat", lab.prefix);
    for x in ['a', 'b'] {
        assert!(!lab.cloud.breaching(&alarm(x), start).await.unwrap(), "{x}");
    }
    // `hanat status` says it publishes, and when it last did.
    let v = status_json(&lab, 0);
    assert_eq!(v["cloudwatch"]["namespace"], "hanat", "{v}");
    let last = v["cloudwatch"]["last_put_s"].as_f64();
    assert!(last.is_some_and(|s| s < 10.0), "{v}");
    until_max(
        &lab,
        "AZ 0's NAT ok",
        "VerdictOk",
        of_nat(0).to_vec(),
        start,
        1.0,
    )
    .await;

    // AZ 0's NAT stops forwarding; its peer adopts AZ 0.
    stop_forwarding(&lab, 0);
    let peer_eni = lab.nat(1).unwrap().instance.eni;
    lab.wait_for(
        "AZ 1's NAT to adopt AZ 0",
        Duration::from_secs(30),
        || async { Ok(lab.route_target(0).await? == Some(peer_eni.clone())) },
    )
    .await
    .unwrap();
    let adopted = settled();
    // AZ 0's own NAT says it does not forward; the peer says it forwards
    // AZ 0: the alarm stays quiet.
    let said = "AZ 0's NAT not ok".to_owned();
    until_max(&lab, said, "VerdictOk", of_nat(0).to_vec(), adopted, 0.0).await;
    until_max(
        &lab,
        "AZ 0 forwarded by its peer",
        "ForwardingNat",
        vpc_az(&az0),
        adopted,
        1.0,
    )
    .await;
    assert!(!lab.cloud.breaching(&alarm('a'), adopted).await.unwrap());

    // The peer fails too: nobody forwards either AZ.
    stop_forwarding(&lab, 1);
    lab.wait_for("AZ 1's NAT to fail", Duration::from_secs(20), || async {
        Ok(health(1)? == "503")
    })
    .await
    .unwrap();
    let dark = settled();
    for (az, x) in [(&az0, 'a'), (&az1, 'b')] {
        until_max(
            &lab,
            format!("{az}: no NAT forwards it"),
            "ForwardingNat",
            vpc_az(az),
            dark,
            0.0,
        )
        .await;
        assert!(lab.cloud.breaching(&alarm(x), dark).await.unwrap(), "{x}");
    }
}

/// Port exhaustion, the NAT Gateway's ErrorPortAllocation: more UDP flows
/// to one destination (address, port) than the NAT has source ports for
/// (64,512 above 1023 on its one address). The kernel cannot translate the
/// rest; the metric counts them, and CloudWatch gets them under the
/// gateway's name (what the templates' alarm watches). The conntrack gauges
/// move with the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_out_of_ports_for_one_destination_counts_port_allocation_errors() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _alone = SHARED_KERNEL.write().await;
    let mut opts = options(1);
    opts.cloudwatch = Some(Duration::from_secs(1));
    let lab = serving(opts).await;
    let metrics = || lab.nat_metrics(0, Duration::from_secs(5)).unwrap();
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let before = metrics();
    let since = std::time::SystemTime::now();
    let alarm = format!("{}-nat-a-port-allocation", lab.prefix);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!lab.cloud.breaching(&alarm, since).await.unwrap());
    // Two private sources (the host and a second address of its subnet),
    // every port from 1024 up: 129,024 flows to one server's port 80.
    let host = lab.azs[0].host_ip;
    let second = std::net::Ipv4Addr::from(u32::from(host) + 100);
    lab.add_host_address(0, second).unwrap();
    let server = hanat_lab::lab::SERVERS[0];
    let flows: Vec<Vec<u8>> = [host, second]
        .into_iter()
        .flat_map(|src| {
            (1024..=u16::MAX)
                .map(move |port| hanat_lab::lab::forge::ipv4_udp(src, server, port, 80, b"port?"))
        })
        .collect();
    let sent = flows.len() as f64;
    hanat_lab::lab::forge::send_raw(&lab.azs[0].host.path(), flows).unwrap();
    // Read once the NAT has seen them all and its counters have settled
    // (within conntrack's 30 s for unanswered UDP): two readings, further
    // apart than the endpoint's cache of the kernel's counters, that agree
    // (but for the probes').
    // A reading taken while datagrams still arrive would count errors the
    // attempts counter, read a moment earlier, does not yet include.
    let attempts = |text: &str| value(text, "hanat_connection_attempts_total");
    let settle = Duration::from_millis(1500);
    let mut after = metrics();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(settle);
        let next = metrics();
        // The probes' own connections go on counting, a few a second.
        let settled = attempts(&next) - attempts(&after) < 50.0
            && value(&next, "hanat_port_allocation_errors_total")
                == value(&after, "hanat_port_allocation_errors_total");
        after = next;
        if settled && attempts(&after) - attempts(&before) >= sent * 0.99 {
            break;
        }
    }
    let grew = |name: &str| value(&after, name) - value(&before, name);
    let errors = grew("hanat_port_allocation_errors_total");
    let ports = f64::from(u16::MAX - 1023);
    // What reached the NAT (a datagram may be lost on the way, and the
    // probes' connections count too) beyond the ports it has.
    let reached = grew("hanat_connection_attempts_total");
    assert!(
        errors >= reached - ports - 100.0 && errors <= reached - ports,
        "{errors} port allocation errors for {reached} flows and {ports} ports\n{after}"
    );
    let dropped = grew("hanat_packets_dropped_total");
    assert!(
        dropped >= errors,
        "{dropped} packets dropped, {errors} untranslatable"
    );
    assert!(
        reached >= sent * 0.99,
        "{reached} of {sent} flows reached the NAT"
    );
    let entries = value(&after, "hanat_conntrack_entries");
    assert!(
        entries >= reached - errors && entries <= reached - errors + 1000.0,
        "{entries} tracked of {reached} flows, {errors} not translated"
    );
    let fill = value(&after, "hanat_conntrack_fill_ratio");
    let max = value(&after, "hanat_conntrack_max");
    assert!(
        (fill - entries / max).abs() < 0.01,
        "{fill} vs {entries}/{max}"
    );
    eprintln!(
        "{sent} flows to one destination, {reached} reached the NAT: {errors} port allocation errors, {entries} tracked ({:.1}% of the table)",
        100.0 * fill
    );
    // Other flows go on: TCP from the same host to the same server.
    assert_eq!(
        lab.whoami(0, Duration::from_secs(2)).unwrap(),
        lab.azs[0].eip.1
    );
    // What the alarm reads.
    let group = [
        ("AutoScalingGroupName", lab.azs[0].group.as_str()),
        ("AvailabilityZone", lab.azs[0].name.as_str()),
    ];
    lab.wait_for(
        "ErrorPortAllocation to reach CloudWatch",
        Duration::from_secs(20),
        || async {
            let sums = lab
                .cloud
                .metric("hanat", "ErrorPortAllocation", &group, ("Sum", 60), since)
                .await?;
            Ok(sums.iter().sum::<f64>() >= errors)
        },
    )
    .await
    .unwrap();
    assert!(lab.cloud.breaching(&alarm, since).await.unwrap());
}

/// The public addresses AZ `i`'s private host is seen from, over `n`
/// connections to one server.
fn seen_from(
    lab: &Lab,
    i: usize,
    n: usize,
) -> std::collections::BTreeMap<std::net::Ipv4Addr, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        if let Ok(ip) = lab.whoami(i, Duration::from_secs(2)) {
            *seen.entry(ip).or_default() += 1;
        }
    }
    seen
}

/// Wait until AZ `i`'s private host, connecting to one server, is seen
/// from exactly all the AZ's Elastic IPs.
async fn until_seen_from_all(lab: &Lab, i: usize, limit: Duration) {
    let want: Vec<std::net::Ipv4Addr> = {
        let mut v = lab.azs[i].elastic_ips();
        v.sort();
        v
    };
    let last = std::sync::Mutex::new(Default::default());
    let waited = lab
        .wait_for("connections seen from every address", limit, || async {
            let seen = seen_from(lab, i, 12);
            let done = seen.keys().copied().collect::<Vec<_>>() == want;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = seen;
            Ok(done)
        })
        .await;
    assert!(
        waited.is_ok(),
        "AZ {i}: want {want:?}, last seen {:?}\n{}",
        last.lock().unwrap_or_else(|p| p.into_inner()),
        lab.nat_log(i)
    );
}

/// With two public addresses per NAT (`snat.addresses = 2`; the template
/// deployed with `AddressesPerNat = 2`): one private host's connections to
/// one server leave from both of its AZ's Elastic IPs, about half each;
/// `hanat status` says so; and a replacement NAT (a new instance, with a
/// new secondary private address) takes both Elastic IPs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_addresses_spread_one_clients_connections_and_a_replacement_reclaims_both() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let mut opts = options(2);
    opts.addresses = 2;
    let lab = serving(opts).await;
    assert_eq!(lab.azs[0].elastic_ips().len(), 2);
    for i in [0, 1] {
        until_seen_from_all(&lab, i, Duration::from_secs(30)).await;
    }
    // Connections take the addresses in turn (the heartbeat's probes take
    // turns too, so not strictly alternately).
    let seen = seen_from(&lab, 0, 40);
    assert!(seen.values().all(|n| *n >= 8), "{seen:?}");
    let status = status_json(&lab, 0);
    assert_eq!(status["elastic_ips"], serde_json::json!([2, 2]), "{status}");
    assert_eq!(
        status["snat_addresses"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    let old = lab.nat(0).unwrap().instance;
    lab.terminate_instance(0).await.unwrap();
    lab.wait_for(
        "AZ 0's replacement to serve it",
        Duration::from_secs(120),
        || async { Ok(lab.nat(0).is_some_and(|n| n.instance.id != old.id) && lab.az_ok(0).await) },
    )
    .await
    .unwrap();
    until_seen_from_all(&lab, 0, Duration::from_secs(60)).await;
    let status = status_json(&lab, 0);
    assert_eq!(status["elastic_ips"], serde_json::json!([2, 2]), "{status}");
    let new = status["snat_addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !new.iter()
            .any(|a| a.as_str() == Some(old.private_ip.as_str())),
        "a new instance, new private addresses: {status}"
    );
}

/// A scale-in with two addresses per NAT: the AZ is handed to its peer
/// before the instance goes, and no request is lost; the replacement is
/// seen from both addresses again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_scale_in_with_two_addresses_loses_nothing() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(2);
    opts.addresses = 2;
    let r = scenario_with(Scenario::ScaleIn, opts).await;
    assert_eq!(r.lost, 0, "{}", r.human());
    let own: Vec<std::net::Ipv4Addr> = (0..2)
        .map(|k| hanat_lab::lab::nth_elastic_ip(0, k))
        .collect();
    assert!(
        own.iter().all(|a| r.sources.contains(a)),
        "AZ 0's both addresses before the scale-in: {}",
        r.human()
    );
}

/// `hanat-lab bench connections --addresses 2`, asserted: one NAT with two
/// addresses carries at least 2 × 60,000 concurrent UDP flows and TCP
/// connections from one private host to one server port, from both
/// addresses, and refuses the rest (the kernel's port allocation errors);
/// the host's conntrack limits are restored afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_addresses_carry_twice_the_connections_to_one_destination() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _alone = SHARED_KERNEL.write().await;
    let max = || std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").unwrap();
    let before = max();
    let rows = hanat_lab::connections::run(options(1), 2).await.unwrap();
    assert_eq!(max(), before, "nf_conntrack_max restored");
    assert_eq!(rows.len(), 2);
    for r in &rows {
        eprintln!("{}", r.json());
        assert!(
            r.distinct_public_pairs >= 2 * 60_000,
            "{}: {}",
            r.protocol,
            r.json()
        );
        assert!(r.distinct_public_pairs <= r.capacity(), "{}", r.json());
        assert_eq!(r.public_addresses, 2, "{}", r.json());
        assert_eq!(r.attempted, 3 * 64_512, "{}", r.json());
        assert!(r.failed >= 64_512 - 200, "{}", r.json());
        assert!(r.port_allocation_errors > 0, "{}", r.json());
    }
}

/// Changing `snat.addresses` on a running NAT (its config edited, the
/// daemon restarted) converges without dropping a connection: from 2 to
/// 1, new connections leave from the primary address's Elastic IP only
/// (either of the two: the daemon takes the pool in its order) while those
/// translated to the second address go on with it; back to 2, new ones
/// spread again, and every connection still answers with its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_number_of_addresses_keeps_every_connection() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(1);
    opts.addresses = 2;
    let lab = serving(opts).await;
    until_seen_from_all(&lab, 0, Duration::from_secs(30)).await;
    let mut sessions = Vec::new();
    let mut from = std::collections::BTreeSet::new();
    while (from.len() < 2 || sessions.len() < 4) && sessions.len() < 40 {
        let mut s = lab.session(0, Duration::from_secs(3)).unwrap();
        let ip = s.ask().unwrap();
        from.insert(ip);
        sessions.push((s, ip));
    }
    assert_eq!(from.len(), 2, "sessions from both addresses");
    let config = lab.nat(0).unwrap().config_path;
    let set = |from: u8, to: u8| {
        let text = std::fs::read_to_string(&config).unwrap();
        let was = format!("addresses = {from}");
        assert!(text.contains(&was), "{text}");
        std::fs::write(&config, text.replace(&was, &format!("addresses = {to}"))).unwrap();
    };
    let configured = || lab.nat_log(0).matches("kernel NAT configured").count();
    set(2, 1);
    lab.kill_daemon(0).unwrap();
    // The daemon's first converge at start takes the primary address only
    // until its claim: wait for it to be up and past that with N = 1.
    lab.wait_for("the daemon with N = 1", Duration::from_secs(30), || async {
        Ok(configured() == 2)
    })
    .await
    .unwrap();
    // Whichever of the two Elastic IPs the primary address got.
    lab.wait_for(
        "new connections to leave from the primary address only",
        Duration::from_secs(30),
        || async { Ok(seen_from(&lab, 0, 6).len() == 1) },
    )
    .await
    .unwrap();
    let only = seen_from(&lab, 0, 6);
    assert!(
        only.len() == 1 && only.keys().all(|a| from.contains(a)),
        "{only:?}"
    );
    for (s, ip) in &mut sessions {
        assert_eq!(s.ask().expect("the connection survives N = 1"), *ip);
    }
    set(1, 2);
    lab.kill_daemon(0).unwrap();
    until_seen_from_all(&lab, 0, Duration::from_secs(30)).await;
    for (s, ip) in &mut sessions {
        assert_eq!(s.ask().expect("the connection survives N = 2 again"), *ip);
    }
    // The daemon's own changes (a claim, a new N) and its converges every
    // 10 s are never called drift.
    assert_eq!(configured(), 3);
    let log = lab.nat_log(0);
    assert!(!log.contains("drifted="), "{log}");
}

/// The `/health` watch a scenario noted: (failed, slowest ms).
fn health_watch(r: &chaos::Report) -> (usize, u64) {
    let line = r
        .events
        .iter()
        .find(|e| e.contains("/health asked"))
        .unwrap_or_else(|| panic!("no health watch: {}", r.human()));
    let watch = &line[line.find("/health asked").unwrap()..];
    let number_before = |what: &str| -> u64 {
        let head = &watch[..watch.find(what).unwrap()];
        head.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (number_before(" failed") as usize, number_before(" ms"))
}

/// Nothing in the run asked Auto Scaling for a new instance, and AZ 0 kept
/// its NAT and its routes.
fn nat_kept(r: &chaos::Report) {
    assert_eq!(r.route_changes, 0, "{}", r.human());
    assert_eq!(r.lost, 0, "{}", r.human());
    assert!(
        r.logged("marking instance Unhealthy").is_empty(),
        "{}",
        r.human()
    );
    assert!(
        !r.events
            .iter()
            .any(|e| e.contains("Unhealthy") || e.contains("impaired") || e.contains("terminated")),
        "{}",
        r.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_flooded_endpoint_leaves_the_nat_healthy_and_answering_its_status_check() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _alone = SHARED_KERNEL.write().await;
    let r = scenario(Scenario::EndpointFlood).await;
    nat_kept(&r);
    let (failed, slowest_ms) = health_watch(&r);
    assert_eq!(failed, 0, "{}", r.human());
    assert!(slowest_ms < 1_000, "{}", r.human());
    // The flood did reach the endpoint.
    assert!(
        r.events
            .iter()
            .any(|e| e.contains("endpoint flood:") && !e.contains(" 0 connections opened")),
        "{}",
        r.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_daemon_out_of_descriptors_restarts_itself_and_no_nat_is_replaced() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // EC2's check is answered while the daemon is out of descriptors (the
    // watch below). The second or so of its restart is a window in which a
    // check fails (as for any daemon restart, docs/failure-behaviour.md),
    // so the lab's check is kept out of this run: it would replace the NAT
    // once in about 40 runs.
    let mut opts = options(2);
    opts.witness_grace = Duration::from_secs(600);
    let r = scenario_with(Scenario::FdExhaustion, opts).await;
    nat_kept(&r);
    assert!(
        !r.logged("cannot send probes").is_empty(),
        "the daemon says it cannot probe: {}",
        r.human()
    );
    assert!(
        !r.logged("could not send probes for").is_empty(),
        "and ends itself: {}",
        r.human()
    );
    assert!(
        r.events.iter().any(|e| e.contains("daemon restarted")),
        "{}",
        r.human()
    );
    // Its status check was answered while it had no descriptor to spare.
    let (failed, slowest_ms) = health_watch(&r);
    assert_eq!(failed, 0, "{}", r.human());
    assert!(slowest_ms < 1_000, "{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_flooded_heartbeat_port_does_not_slow_a_failover() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _alone = SHARED_KERNEL.write().await;
    let r = scenario(Scenario::HeartbeatFlood).await;
    // As chaos_dead_nats_are_covered_by_a_peer_then_replaced bounds a
    // terminate-instance without a flood.
    assert!(r.outage_ms < 6_000, "{}", r.human());
    assert!(r.route_changes >= 2, "{}", r.human());
    // The flood reached the NAT, and its kernel let at most 100 datagrams
    // a second through to the daemon (half of them unsigned heartbeats).
    let flood = r
        .events
        .iter()
        .find_map(|e| e.split("heartbeat flood: ").nth(1))
        .unwrap_or_else(|| panic!("no flood noted: {}", r.human()));
    let words: Vec<&str> = flood.split(' ').collect();
    let number = |i: usize| -> u64 { words[i].trim_end_matches(',').parse().unwrap_or(0) };
    let (sent, dropped, unsigned) = (number(0), number(6), number(11));
    assert!(sent > 10_000 && dropped > 10_000, "{}", r.human());
    assert!(unsigned <= 25 * 100, "{}", r.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_metrics_allow_reaches_the_endpoints() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // The public subnets only: EC2's status check (the router's address
    // there) may ask, the private hosts may not.
    let mut opts = options(1);
    opts.metrics_allow = Some("[\"10.0.0.0/24\"]".into());
    let lab = serving(opts).await;
    let nat: std::net::Ipv4Addr = lab.nat(0).unwrap().instance.private_ip.parse().unwrap();
    let endpoint = std::net::SocketAddr::from((nat, 7472));
    let (code, _) =
        hanat_lab::netns::http_get(&lab.rtr.path(), endpoint, "/health", Duration::from_secs(2))
            .unwrap();
    assert_eq!(code, 200);
    let refused = lab.azs[0]
        .host
        .connect_tcp(endpoint, Duration::from_secs(2))
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("timed out"),
        "dropped, not refused: {refused:#}"
    );
    // The same host still reaches the internet through that NAT.
    assert_eq!(
        lab.whoami(0, Duration::from_secs(2)).unwrap(),
        lab.azs[0].eip.1
    );
}

/// Two NATs in one AZ, as Auto Scaling makes them (a refresh that launches
/// before it terminates, a Standby's replacement, a group that runs two for
/// 30 s): the AZ moves once, to the newer NAT, with nothing lost; the
/// internet sees only the AZ's pool (its Elastic IP and the spare); a TCP
/// session open across the switch goes on through the older NAT (flow
/// hand-off); the older one leaves through its lifecycle hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nats_in_one_az_pass_it_once_to_the_newer_and_lose_nothing() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let pool = [elastic_ip(0), hanat_lab::lab::spare_elastic_ip(0)];
    for s in [
        Scenario::RefreshLaunchFirst,
        Scenario::StandbyNoDecrement,
        Scenario::TwoInAz,
    ] {
        let r = scenario_with(s, options(2)).await;
        let all = r.human();
        assert_eq!(r.lost, 0, "{all}");
        assert_eq!(r.route_changes, 1, "one switch, to the newer NAT: {all}");
        assert!(r.sources.iter().all(|ip| pool.contains(ip)), "{all}");
        for e in [
            "the newer NAT holds AZ 0",
            "terminated through its group (ok)",
        ] {
            assert!(r.events.iter().any(|x| x.contains(e)), "{e}: {all}");
        }
        assert!(
            !r.logged("leaving this AZ's routes to another NAT of the AZ")
                .is_empty(),
            "{all}"
        );
        if s == Scenario::RefreshLaunchFirst {
            assert!(
                r.events
                    .iter()
                    .any(|e| e.contains("session across the switch: kept")),
                "{all}"
            );
        }
    }
}

/// A roll through every AZ, launch first, one AZ after the other (a new
/// AMI, version or config through the templates' update policy): one route
/// change per AZ, nothing lost. (The roll from an older binary is run by
/// hand with `--hanat OLD --upgrade-to NEW`: docs/upgrade.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_moves_each_az_once_and_loses_nothing() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let r = scenario_with(Scenario::RollingUpgrade, options(2)).await;
    let all = r.human();
    assert_eq!(r.lost, 0, "{all}");
    assert_eq!(r.route_changes, 2, "{all}");
    for i in 0..2 {
        let e = format!("the newer NAT holds AZ {i}");
        assert!(r.events.iter().any(|x| x.contains(&e)), "{e}: {all}");
    }
}

/// `existing-vpc.yaml`'s NATs in public subnets that map no public address
/// (as subnets a user creates), reaching the AWS API as on AWS, through the
/// VPC and its internet gateway: the template's launch template gives each
/// NAT a public address, so it reaches AWS, claims its Elastic IP (the first of its
/// pool, not the spare) and serves. (Without it, the NATs never reached
/// AWS: docs/deploy.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_reach_aws_through_the_vpc_in_subnets_that_map_no_public_address() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    // Without and with the template's InterfaceEndpoints: a public address
    // on launch and the API through the internet gateway, or none and the
    // API through the endpoints, inside the VPC.
    for (s, public) in [
        (Scenario::NoPublicAddress, true),
        (Scenario::NoPublicAddressEndpoints, false),
    ] {
        let r = scenario_with(s, options(2)).await;
        let all = r.human();
        assert_eq!(r.lost, 0, "{all}");
        assert_eq!(r.sources, vec![elastic_ip(0)], "{all}");
        // The daemons' calls reached the API's proxy outside the instances
        // (the only one: they have none of their own here).
        // Over the whole run: the 4 s after the (empty) fault may hold none.
        assert!(!r.calls.is_empty(), "{all}");
        let said = format!("launched with a public address: Some({public})");
        assert!(r.events.iter().any(|e| e.contains(&said)), "{said}: {all}");
    }
}

/// From a NAT Gateway to hanat (docs/upgrade.md): a VPC whose private
/// routes go to each AZ's NAT Gateway gets the stack's NATs; each takes its
/// AZ from the gateway once it forwards, once, and the internet sees the
/// gateway's address, then the AZ's Elastic IP, with at most a request
/// caught mid-handshake at the switch (a gateway cannot hand over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_take_a_vpc_over_from_its_nat_gateways() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(2);
    opts.fallback_nat_gateway = true;
    let lab = Lab::build(opts).await.unwrap();
    for a in &lab.azs {
        let gw = a.nat_gateway.as_ref().unwrap().id.clone();
        lab.cloud
            .set_default_route(&a.private_route_table, DefaultTarget::NatGateway(&gw))
            .await
            .unwrap();
    }
    lab.wait_for("the gateways to serve", Duration::from_secs(10), || async {
        Ok(lab.whoami(0, Duration::from_millis(500))? == nat_gateway_public_ip(0))
    })
    .await
    .unwrap();
    let meter = lab.meter(0, Duration::from_millis(50));
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = meter.finish();
    assert_eq!(
        r.sources,
        vec![nat_gateway_public_ip(0), elastic_ip(0)],
        "lost {} of {}",
        r.lost,
        r.sent
    );
    assert_eq!(r.source_changes, 1, "one switch: {:?}", r.sources);
    assert!(r.lost <= 1, "lost {} of {}", r.lost, r.sent);
}

const FIS_TEMPLATE: &str = include_str!("../cloudformation/fis.yaml");

/// Every experiment of the shipped AWS FIS template, played in the lab as
/// written (`hanat-lab fis cloudformation/fis.yaml`): each recovers and
/// none is stopped by the NAT stack's no-forwarding alarms, evaluated over
/// their own 3 minutes on what the NATs publish every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_experiment_of_the_shipped_fis_template_runs_in_the_lab() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let template = hanat_lab::fis::read(FIS_TEMPLATE).unwrap();
    let given = std::collections::HashMap::new();
    let mut played = Vec::new();
    for name in template.experiments() {
        let mut lab = options(2);
        lab.cloudwatch = Some(Duration::from_secs(1));
        let opts = ChaosOptions::new(lab, Duration::from_secs(90));
        let r = hanat_lab::fis::run(&template, &name, &given, opts)
            .await
            .unwrap();
        eprintln!("{}", r.json());
        assert!(r.recovered, "{}", r.human());
        assert_eq!(r.stopped_by, None, "{}", r.human());
        let completed = format!("fis: experiment {name} completed");
        assert!(
            r.events.iter().any(|e| e.ends_with(&completed)),
            "{}",
            r.human()
        );
        played.push((name, r));
    }
    let report = |n: &str| &played.iter().find(|(name, _)| name == n).unwrap().1;
    // What each experiment did, seen from outside the NATs.
    for n in ["TerminateNat", "StopForwarding", "SpotInterruption"] {
        let r = report(n);
        assert!(
            r.route_changes >= 2,
            "{n}: adopted and taken back\n{}",
            r.human()
        );
        assert!(r.outage_ms < 5_000, "{n}\n{}", r.human());
    }
    // With half of the peer's confirmation and route calls throttled, a
    // run of throttled attempts now and then delays the adoption until the
    // replacement serves (by hand, since the confirmation retries on its
    // own schedule: see docs/chaos.md). It recovers, unstopped, with at
    // least the replacement's take-back.
    let r = report("ThrottleApi");
    assert!(r.route_changes >= 1, "{}", r.human());
    let isolated = report("DisruptAz");
    assert_eq!(isolated.route_changes, 0, "{}", isolated.human());
    assert_eq!(isolated.lost, 0, "{}", isolated.human());
    assert!(
        isolated
            .events
            .iter()
            .any(|e| e.contains("isolation healed")),
        "{}",
        isolated.human()
    );
    let throttled = report("ThrottleApi");
    // EC2's RequestLimitExceeded is a 503.
    let refused = throttled.calls.iter().filter(|c| c.status == 503).count();
    assert!(refused > 0, "no call was throttled\n{}", throttled.human());
}

/// An experiment whose stop-condition alarm fires is stopped at once, as
/// FIS does: here a user's own alarm in the experiment stack (10 s of no
/// NAT forwarding AZ 0), while the only NAT of the lab stops forwarding and
/// its replacement takes 30 s to boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fis_experiment_stops_when_its_stop_alarm_fires() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let quick = r#"Resources:
  QuickStop:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub "${Name}-quick-stop"
      Namespace: hanat
      MetricName: ForwardingNat
      Dimensions:
        - { Name: VpcId, Value: !Ref VpcId }
        - { Name: AvailabilityZone, Value: !Ref TargetAz }
      Statistic: Maximum
      Period: 10
      EvaluationPeriods: 1
      Threshold: 1
      ComparisonOperator: LessThanThreshold
      TreatMissingData: breaching
"#;
    let text = FIS_TEMPLATE
        .replace("Resources:\n", quick)
        .replace("${Name}-nat-a-no-forwarding-nat", "${Name}-quick-stop")
        .replace("${Name}-nat-b-no-forwarding-nat", "${Name}-quick-stop");
    let template = hanat_lab::fis::read(&text).unwrap();
    let mut lab = options(1);
    lab.cloudwatch = Some(Duration::from_secs(1));
    lab.boot_delay = Duration::from_secs(30);
    let opts = ChaosOptions::new(lab, Duration::from_secs(90));
    let given = std::collections::HashMap::new();
    let r = hanat_lab::fis::run(&template, "StopForwarding", &given, opts)
        .await
        .unwrap();
    eprintln!("{}", r.json());
    let alarm = r.stopped_by.clone().expect("stopped by its alarm");
    assert!(alarm.ends_with("-quick-stop"), "{}", r.human());
    assert!(r.human().contains("STOPPED by alarm"), "{}", r.human());
    let stopped = r
        .event_times
        .iter()
        .find(|(_, e)| e.contains("STOPPED"))
        .map(|(t, _)| *t)
        .expect("a stop event");
    // 10 s without forwarding, checked every second; well before the
    // 60 s the fault would have lasted.
    assert!(
        (9.0..25.0).contains(&stopped),
        "stopped at {stopped} s\n{}",
        r.human()
    );
    assert!(
        !r.events.iter().any(|e| e.contains("completed")),
        "{}",
        r.human()
    );
    assert!(r.recovered, "{}", r.human());
}

/// A regional NAT Gateway (one gateway for every AZ, `"*"` in
/// `peers.fallback_nat_gateway_id`) stands in when neither NAT forwards:
/// AZ 1's NAT fails and AZ 0's adopts its AZ, then AZ 0's fails too. Each
/// AZ's routes go to the one gateway, each AZ leaves through the gateway's
/// address in that AZ, and the NATs take their AZs back once they forward
/// again. (The failing NATs are not replaced here: the fallback is their
/// last act, and a NAT replaced in the middle of it would leave the test to
/// chance; two NATs that vanish at once leave no one to fall back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_nat_gateway_covers_every_az_when_no_nat_forwards() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    let mut opts = options(2);
    opts.fallback_nat_gateway = true;
    opts.regional_nat_gateway = true;
    opts.replace_unhealthy = false;
    let lab = serving(opts).await;
    let gateway = lab.azs[0].nat_gateway.as_ref().unwrap().id.clone();
    assert_eq!(lab.azs[1].nat_gateway.as_ref().unwrap().id, gateway);
    let config = std::fs::read_to_string(&lab.nat(0).unwrap().config_path).unwrap();
    assert!(
        config.contains(&format!("\"*\" = \"{gateway}\"")),
        "{config}"
    );
    let eni0 = lab.nat(0).unwrap().instance.eni;
    stop_forwarding(&lab, 1);
    lab.wait_for(
        "AZ 0's NAT to adopt AZ 1",
        Duration::from_secs(20),
        || async { Ok(lab.route_target(1).await? == Some(eni0.clone())) },
    )
    .await
    .unwrap();
    stop_forwarding(&lab, 0);
    for i in 0..2 {
        lab.wait_for(
            "the AZ's routes at the regional gateway",
            Duration::from_secs(20),
            || async { Ok(lab.route_target(i).await?.as_deref() == Some(gateway.as_str())) },
        )
        .await
        .unwrap();
    }
    // (The lab's router follows moto within 100 ms.)
    let leaves = |i: usize, via: std::net::Ipv4Addr| {
        let lab = &lab;
        async move {
            lab.wait_for(
                "the AZ to leave through the address",
                Duration::from_secs(5),
                || async { Ok(lab.whoami(i, Duration::from_millis(500)).ok() == Some(via)) },
            )
            .await
            .unwrap();
        }
    };
    for i in 0..2 {
        leaves(i, nat_gateway_public_ip(i)).await;
    }
    // Forwarding again, each NAT takes its AZ back from the gateway.
    for i in 0..2 {
        lab.nat_exec(i, "nft", &["delete table inet chaos"])
            .unwrap();
    }
    lab.wait_converged(Duration::from_secs(60)).await.unwrap();
    for i in 0..2 {
        leaves(i, lab.azs[i].eip.1).await;
    }
}

/// Connection copies lost on the way (here: every datagram to AZ 1's
/// replication port dropped while AZ 0's NAT copies its sessions) are
/// made good within seconds of the path coming back, by the tally: AZ 1's
/// NAT finds its copies do not add up and asks for everything. Without
/// it they would wait for the next resync (60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_copies_are_made_good_within_seconds() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let _quiet = SHARED_KERNEL.read().await;
    use hanat_lab::lab::abuse::metric;
    let lab = serving(options(2)).await;
    let nft = |args: &[&str]| lab.nat_exec(1, "nft", args).unwrap();
    nft(&["add", "table", "inet", "copyloss"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "copyloss",
        "in",
        "{ type filter hook input priority -10; }",
    ]);
    nft(&[
        "add", "rule", "inet", "copyloss", "in", "udp", "dport", "7473", "drop",
    ]);
    let n = 10;
    let sessions = lab.sessions(0, n, chaos::SESSION_EVERY);
    // The sessions and their UDP stream, which is copied once the kernel
    // calls it a stream (about 2 s after the TCP sessions).
    let made = n as u64 + 1;
    let sent = |lab: &Lab| metric(lab, 0, "hanat_replicated_connections").unwrap_or(0);
    let held = |lab: &Lab| metric(lab, 1, "hanat_replicas").unwrap_or(0);
    let began = std::time::Instant::now();
    while sent(&lab) < made && began.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sessions.all_open());
    let copied = sent(&lab);
    assert!(
        copied >= made,
        "AZ 0's NAT copied its sessions and stream: {copied} of {made}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(held(&lab), 0, "every copy was dropped on the way");
    nft(&["delete", "table", "inet", "copyloss"]);
    let healed = std::time::Instant::now();
    while held(&lab) < sent(&lab) && healed.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = healed.elapsed();
    let (held, copied) = (held(&lab), sent(&lab));
    assert!(
        held == copied && held >= made,
        "AZ 1's NAT holds every copy {took:?} after the path came back: {held} of {copied}"
    );
    eprintln!("AZ 1's NAT held every copy {took:?} after the path came back");
    drop(sessions);
}
