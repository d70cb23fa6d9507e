//! The real `hanat` binary on a NAT instance in network namespaces, with
//! moto as EC2/Auto Scaling and an IMDSv2 emulator: the states a user cares
//! about (where routes point, whether packets get through, which source the
//! internet sees, what Auto Scaling is told). Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use hanat_lab::lab::{Lab, LabOptions};

fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("skipped: kernel tests need root (network namespaces, nftables)");
    false
}

async fn lab() -> Lab {
    let mut opts = LabOptions::new(env!("CARGO_BIN_EXE_hanat"));
    opts.grace = Duration::from_secs(20);
    Lab::build(opts).await.expect("lab builds")
}

/// Wait until AZ 0's private route table points at its NAT and egress works.
async fn converged(lab: &Lab) {
    let nat = lab.azs[0].nat.as_ref().unwrap();
    let (rt, eni) = (
        lab.azs[0].private_route_table.clone(),
        nat.instance.eni.clone(),
    );
    let cloud = lab.cloud.clone();
    lab.wait_for("route takeover", Duration::from_secs(30), || {
        let (cloud, rt, eni) = (cloud.clone(), rt.clone(), eni.clone());
        async move {
            Ok(cloud
                .default_route(&rt)
                .await?
                .is_some_and(|(t, _)| t == eni))
        }
    })
    .await
    .unwrap();
    lab.wait_for("egress", Duration::from_secs(30), || async {
        Ok(lab.whoami(0, Duration::from_millis(500)).is_ok())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_takes_over_forwards_masquerades_and_blocks_inbound() {
    if !root() {
        return;
    }
    let mut lab = lab().await;
    let nat_ip = lab.nat(0).instance.private_ip.clone();
    let rt = lab.azs[0].private_route_table.clone();

    // Before the daemon: no route, no egress; `hanat plan` changes nothing.
    assert_eq!(lab.cloud.default_route(&rt).await.unwrap(), None);
    assert!(lab.whoami(0, Duration::from_millis(500)).is_err());
    let nat = lab.nat(0);
    let out = nat
        .ns
        .command(env!("CARGO_BIN_EXE_hanat"))
        .args(["plan", "--config"])
        .arg(&nat.config_path)
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", hanat_lab::lab::MOTO_PROXY_PORT),
        )
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plan failed: {plan}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plan.contains(&format!("would create 0.0.0.0/0 in {rt}")),
        "{plan}"
    );
    assert!(
        plan.contains("would set net.ipv4.ip_forward = 1 (now 0)"),
        "{plan}"
    );
    assert!(
        plan.contains("would create nftables table ip hanat"),
        "{plan}"
    );
    assert_eq!(
        lab.cloud.default_route(&rt).await.unwrap(),
        None,
        "plan changed nothing"
    );

    lab.start_daemons().unwrap();
    converged(&lab).await;
    let nat = lab.azs[0].nat.as_ref().unwrap();
    assert!(
        !lab.cloud
            .source_dest_check(&nat.instance.eni)
            .await
            .unwrap()
    );

    // The internet sees the NAT's address, never the private host's.
    let seen = lab.whoami(0, Duration::from_secs(2)).unwrap();
    assert_eq!(seen.to_string(), nat_ip);
    assert_ne!(seen, lab.azs[0].host_ip);

    // Nothing from outside can open a connection to a private host through
    // the NAT; the same host is reachable when the NAT is not in the path.
    let host = &lab.azs[0].host;
    let listener = host.bind_tcp("0.0.0.0:2222".parse().unwrap()).unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
    lab.route_inbound_via_nat(0).unwrap();
    let inbound = lab.connect_inbound(0, 2222, Duration::from_secs(2));
    assert!(
        inbound.is_err(),
        "an inbound connection got through the NAT"
    );
    let direct = lab
        .rtr
        .connect_tcp((lab.azs[0].host_ip, 2222).into(), Duration::from_secs(2));
    assert!(
        direct.is_ok(),
        "control: the private host listens: {direct:?}"
    );

    // A healthy NAT stays Healthy.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lab.cloud.health(&nat.instance.id).await.unwrap(), "Healthy");

    // Converged: `hanat plan` now has nothing to change.
    let out = nat
        .ns
        .command(env!("CARGO_BIN_EXE_hanat"))
        .args(["plan", "--config"])
        .arg(&nat.config_path)
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", hanat_lab::lab::MOTO_PROXY_PORT),
        )
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("\n0 change(s)"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_forwarding_is_healed_or_reported_unhealthy() {
    if !root() {
        return;
    }
    let mut lab = lab().await;
    lab.start_daemons().unwrap();
    converged(&lab).await;
    let nat = lab.azs[0].nat.as_ref().unwrap();
    let id = nat.instance.id.clone();

    // Someone turns forwarding off: the daemon turns it back on, and the
    // instance stays Healthy.
    nat.ns.sysctl("net.ipv4.ip_forward", "0").unwrap();
    lab.wait_for("ip_forward restored", Duration::from_secs(15), || async {
        Ok(nat
            .ns
            .exec("cat", &["/proc/sys/net/ipv4/ip_forward"])?
            .trim()
            == "1")
    })
    .await
    .unwrap();
    lab.wait_for("egress back", Duration::from_secs(10), || async {
        Ok(lab.whoami(0, Duration::from_millis(500)).is_ok())
    })
    .await
    .unwrap();
    assert_eq!(lab.cloud.health(&id).await.unwrap(), "Healthy");
    lab.wait_for("heartbeat recovered", Duration::from_secs(10), || async {
        Ok(nat.log().contains("forwarding recovered") || !nat.log().contains("re-applying"))
    })
    .await
    .unwrap();

    // A table that is not ours drops everything forwarded: the daemon cannot
    // (and must not) fix that, so it reports the instance Unhealthy within
    // fall × interval plus slack, and leaves the foreign table alone.
    nat.ns
        .exec(
            "nft",
            &["add table inet chaos; add chain inet chaos drop_all { type filter hook forward priority -10; policy drop; }"],
        )
        .unwrap();
    let start = std::time::Instant::now();
    let cloud = lab.cloud.clone();
    lab.wait_for("Unhealthy", Duration::from_secs(15), || {
        let (cloud, id) = (cloud.clone(), id.clone());
        async move { Ok(cloud.health(&id).await? == "Unhealthy") }
    })
    .await
    .unwrap();
    let took = start.elapsed();
    eprintln!("marked Unhealthy {took:?} after forwarding broke");
    // fall (3) failed rounds, then one more after reconverging: 4 × 500 ms.
    assert!(
        took >= Duration::from_millis(1500),
        "reported too early: {took:?}"
    );
    assert!(
        nat.ns
            .exec("nft", &["list", "table", "inet", "chaos"])
            .is_ok(),
        "foreign table untouched"
    );
    let log = nat.log();
    assert!(log.contains("re-applying kernel NAT config"), "{log}");
    assert!(log.contains("marking instance Unhealthy"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_lose_no_request() {
    if !root() {
        return;
    }
    let mut lab = lab().await;
    lab.start_daemons().unwrap();
    converged(&lab).await;
    let bin = lab.opts.hanat_bin.clone();
    let port = lab.moto.port;
    let meter = lab.meter(0, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9: the kernel keeps forwarding; the probe namespace stays.
    lab.nat(0).kill();
    let probe = lab.nat(0).probe_namespace.clone();
    assert!(std::path::Path::new("/run/netns").join(&probe).exists());
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.nat(0).start(&bin, port).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        lab.nat(0).running(),
        "restarted daemon runs: {}",
        lab.nat(0).log()
    );

    // SIGTERM: a clean exit that leaves everything in place.
    let status = lab.nat(0).terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.nat(0).start(&bin, port).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let report = meter.finish();
    eprintln!("meter: {report:?}");
    assert!(report.sent >= 100, "{report:?}");
    assert_eq!(report.lost, 0, "requests lost across restarts: {report:?}");
    let nat = lab.nat(0);
    assert_eq!(
        report.sources,
        vec![
            nat.instance
                .private_ip
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
        ]
    );
    let log = nat.log();
    assert_eq!(log.matches("kernel NAT configured").count(), 3, "{log}");
    assert!(lab.nat(0).running());
    assert_eq!(
        lab.cloud
            .health(&lab.azs[0].nat.as_ref().unwrap().instance.id)
            .await
            .unwrap(),
        "Healthy"
    );
}
