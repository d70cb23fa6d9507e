//! The real `hanat` binary on a NAT instance in network namespaces, with
//! moto as EC2/Auto Scaling and an IMDSv2 emulator: the states a user cares
//! about (where routes point, whether packets get through, which source the
//! internet sees, what Auto Scaling is told). Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use hanat_lab::lab::{Lab, LabOptions};

async fn lab() -> Lab {
    lab_with(|_| {}).await
}

async fn lab_with(change: impl FnOnce(&mut LabOptions)) -> Lab {
    let mut opts = LabOptions::new(env!("CARGO_BIN_EXE_hanat"));
    opts.grace = Duration::from_secs(20);
    change(&mut opts);
    Lab::build(opts).await.expect("lab builds")
}

/// A lab whose daemon has started and serves its AZ, and that NAT.
async fn serving_lab() -> (Lab, hanat_lab::lab::NatInfo) {
    let lab = lab().await;
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(30)).await.unwrap();
    let nat = lab.nat(0).unwrap();
    (lab, nat)
}

fn plan(lab: &Lab) -> String {
    let nat = lab.nat(0).unwrap();
    let out = lab
        .nat_command(0, env!("CARGO_BIN_EXE_hanat"))
        .unwrap()
        .args(["plan", "--config"])
        .arg(&nat.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "plan failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_takes_over_forwards_masquerades_and_blocks_inbound() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // With a fallback NAT Gateway configured: a healthy NAT never uses it.
    let lab = lab_with(|o| o.fallback_nat_gateway = true).await;
    let rt = lab.azs[0].private_route_table.clone();

    // Before the daemon: no route, no egress; `hanat plan` changes nothing.
    assert_eq!(lab.cloud.default_route(&rt).await.unwrap(), None);
    assert!(lab.whoami(0, Duration::from_millis(500)).is_err());
    let p = plan(&lab);
    assert!(
        p.contains(&format!("would create 0.0.0.0/0 in {rt}")),
        "{p}"
    );
    assert!(
        p.contains("would set net.ipv4.ip_forward = 1 (now 0)"),
        "{p}"
    );
    assert!(p.contains("would create nftables table ip hanat\n"), "{p}");
    let secret = lab.key_secret().unwrap();
    assert!(
        p.contains(&format!("heartbeat key: readable from {secret} (key ")),
        "{p}"
    );
    assert!(
        p.contains("would put this instance under application status check asc-")
            && p.contains("(GET /health on 0.0.0.0:7472)"),
        "{p}"
    );
    assert!(
        p.contains("would create nftables table ip hanat_metrics (traffic counters"),
        "{p}"
    );
    assert!(
        p.contains("would publish the NAT Gateway's metrics, VerdictOk, ConntrackFillPercent and ForwardingNat to CloudWatch namespace hanat every 1m"),
        "{p}"
    );
    assert_eq!(
        lab.cloud.default_route(&rt).await.unwrap(),
        None,
        "plan changed nothing"
    );

    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(30)).await.unwrap();
    let nat = lab.nat(0).unwrap();
    assert_eq!(
        lab.route_target(0).await.unwrap().as_deref(),
        Some(nat.instance.eni.as_str())
    );
    assert!(
        !lab.cloud
            .source_dest_check(&nat.instance.eni)
            .await
            .unwrap()
    );

    // The internet sees the AZ's Elastic IP, never the private host.
    let eip = lab.azs[0].eip.1;
    assert_eq!(lab.whoami(0, Duration::from_secs(2)).unwrap(), eip);
    assert_eq!(
        lab.whoami_udp(0, Duration::from_secs(2)).unwrap(),
        eip,
        "UDP is NATed too"
    );

    // Nothing from outside can open a connection to a private host through
    // the NAT; the same host is reachable when the NAT is not in the path.
    let listener = lab.azs[0]
        .host
        .bind_tcp("0.0.0.0:2222".parse().unwrap())
        .unwrap();
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

    // A healthy NAT stays Healthy, and says its fallback is usable.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lab.cloud.health(&nat.instance.id).await.unwrap(), "Healthy");
    let log = lab.nat_log(0);
    assert!(log.contains("fallback NAT Gateway available"), "{log}");
    // It put itself under the status check (through the SDK and the API
    // proxy, which plays EC2's application status checks).
    assert!(
        lab.api()
            .witness()
            .associated
            .get(&nat.instance.id)
            .is_some_and(|(check, _)| check.starts_with("asc-")),
        "{log}"
    );
    assert!(
        log.contains("health endpoint watched by the application status check"),
        "{log}"
    );
    assert_eq!(
        lab.route_target(0).await.unwrap(),
        Some(nat.instance.eni.clone())
    );

    // Converged: `hanat plan` now has nothing to change.
    let p = plan(&lab);
    assert!(p.contains("\n0 change(s)"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_forwarding_is_healed_or_reported_unhealthy() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let (lab, nat) = serving_lab().await;
    let log = || std::fs::read_to_string(&nat.log_path).unwrap_or_default();

    // Someone turns forwarding off: the daemon turns it back on, and the
    // instance stays Healthy.
    lab.nat_exec(0, "sysctl", &["-qw", "net.ipv4.ip_forward=0"])
        .unwrap();
    lab.wait_for("ip_forward restored", Duration::from_secs(15), || async {
        Ok(lab
            .nat_exec(0, "cat", &["/proc/sys/net/ipv4/ip_forward"])?
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
    assert_eq!(lab.cloud.health(&nat.instance.id).await.unwrap(), "Healthy");
    // Repaired by the first failed probe round, before any `failing`.
    lab.wait_for("drift repaired", Duration::from_secs(10), || async {
        Ok(log().contains("drift repaired"))
    })
    .await
    .unwrap();
    assert!(!log().contains("forwarding probe failing"), "{}", log());
    let repaired = log()
        .lines()
        .find(|l| l.contains("drift repaired"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        repaired.contains("net.ipv4.ip_forward=1"),
        "says what had drifted: {repaired}"
    );

    // One failed round with nothing drifted (a foreign table drops the
    // forwarded probes, and is gone again by the next rounds): the daemon
    // re-applies its config, finds it as it left it, and says the failure
    // was transient instead of calling it a repair.
    let reapplied = |l: &str| {
        l.matches("re-applying the kernel NAT config at once")
            .count()
    };
    let before = reapplied(&log());
    // Each blip lasts 150 ms: shorter than the 250 ms between rounds (a
    // round's handshake takes a millisecond in the lab), so it fails one
    // round at most, never the `fall` (2) in a row that would say
    // `failing`; it may fall between two rounds' handshakes and fail none,
    // so it is tried again until a round has failed.
    let seen = std::time::Instant::now();
    while reapplied(&log()) == before && seen.elapsed() < Duration::from_secs(10) {
        lab.nat_exec(
            0,
            "nft",
            &["add table inet blip; add chain inet blip drop_all { type filter hook forward priority -10; policy drop; }"],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        lab.nat_exec(0, "nft", &["delete table inet blip"]).unwrap();
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(
        reapplied(&log()) > before,
        "the probe round failed: {}",
        log()
    );
    lab.wait_for("a transient failure", Duration::from_secs(10), || async {
        Ok(log().contains("failed round was transient"))
    })
    .await
    .unwrap();
    assert_eq!(log().matches("drift repaired").count(), 1, "{}", log());
    assert!(!log().contains("forwarding probe failing"), "{}", log());
    assert_eq!(lab.cloud.health(&nat.instance.id).await.unwrap(), "Healthy");

    // A table that is not ours drops everything forwarded: the daemon cannot
    // (and must not) fix that, so it reports the instance Unhealthy within
    // fall × interval plus slack, and leaves the foreign table alone.
    lab.nat_exec(
        0,
        "nft",
        &["add table inet chaos; add chain inet chaos drop_all { type filter hook forward priority -10; policy drop; }"],
    )
    .unwrap();
    let start = std::time::Instant::now();
    let reported = format!("{} Unhealthy", nat.instance.id);
    lab.wait_for("Unhealthy", Duration::from_secs(15), || async {
        Ok(lab.events().iter().any(|(_, e)| e.contains(&reported)))
    })
    .await
    .unwrap();
    let took = start.elapsed();
    eprintln!("marked Unhealthy {took:?} after forwarding broke");
    // fall (2) failed rounds, then one more after reconverging: rounds
    // start 250 ms apart and fail 300 ms after they start, so the third
    // fails no sooner than 300 + 2 × 250 ms after the table went in.
    assert!(
        took >= Duration::from_millis(800),
        "reported too early: {took:?}"
    );
    let log = log();
    assert!(log.contains("re-applying kernel NAT config"), "{log}");
    assert!(log.contains("marking instance Unhealthy"), "{log}");
    assert!(
        log.contains("instance reported Unhealthy to Auto Scaling"),
        "{log}"
    );
    assert!(
        !log.contains("chaos") && !log.contains("blip"),
        "the daemon never touched the foreign tables"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_lose_no_request() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let (lab, nat) = serving_lab().await;
    let log = || std::fs::read_to_string(&nat.log_path).unwrap_or_default();
    let meter = lab.meter(0, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9: the kernel keeps forwarding; the lab's systemd restarts the
    // daemon, which adopts routes, rules and sysctls. The probe namespace
    // died with the daemon's private mount namespace, as under systemd; the
    // new daemon makes it again before its first probe.
    lab.kill_daemon(0).unwrap();
    assert!(probe_handle_is_stale(&nat.probe_namespace));
    lab.wait_for("restart after kill", Duration::from_secs(10), || async {
        Ok(log().matches("kernel NAT configured").count() == 2)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SIGTERM: a clean exit that leaves everything in place.
    let status = lab.terminate_daemon(0).unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(log().contains("stopping; routes, rules and sysctls stay in place"));
    lab.wait_for("restart after SIGTERM", Duration::from_secs(10), || async {
        Ok(log().matches("kernel NAT configured").count() == 3)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let report = meter.finish();
    eprintln!("meter: {report:?}");
    assert!(report.sent >= 100, "{report:?}");
    assert_eq!(report.lost, 0, "requests lost across restarts: {report:?}");
    assert_eq!(report.sources, vec![lab.azs[0].eip.1]);
    assert!(lab.nat(0).unwrap().running);
    assert_eq!(lab.cloud.health(&nat.instance.id).await.unwrap(), "Healthy");
    assert!(
        !log().contains("probe round failed"),
        "no probe failed across restarts:\n{}",
        log()
    );
}

/// Whether `ip` fails on the probe namespace's handle the way issue 10
/// describes: the file is there, the namespace behind it is not.
fn probe_handle_is_stale(name: &str) -> bool {
    let path = std::path::Path::new("/run/netns").join(name);
    let ip = hanat_lab::netns::sh("ip", &["-n", name, "link", "show"]);
    path.is_file() && ip.is_err_and(|e| e.to_string().contains("Invalid argument"))
}

/// Issue 10: under the unit's sandbox a daemon's `ip netns add` mounts the
/// probe namespace in its private mount namespace, so a `kill -9` leaves a
/// plain file at /run/netns/NAME. Three restarts in a row must each come
/// back whole: probing, repairing routes, reporting broken forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kill_restarts_under_the_sandbox_each_recover_fully() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    // The lab leaves an Unhealthy instance running, so the same NAT can be
    // reported again after each restart.
    let lab = lab_with(|o| o.replace_unhealthy = false).await;
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(30)).await.unwrap();
    let nat = lab.nat(0).unwrap();
    let id = nat.instance.id.clone();
    let rt = lab.azs[0].private_route_table.clone();
    let log = || std::fs::read_to_string(&nat.log_path).unwrap_or_default();
    let verified = || log().matches("forwarding verified").count();
    let drop_all = "add table inet chaos; add chain inet chaos drop_all { type filter hook forward priority -10; policy drop; }";
    assert_eq!(verified(), 1, "{}", log());

    for restart in 1..=3 {
        lab.kill_daemon(0).unwrap();
        assert!(
            probe_handle_is_stale(&nat.probe_namespace),
            "restart {restart}: the killed daemon's probe namespace is gone, its handle left"
        );
        lab.wait_for(
            "the new daemon's probe passes",
            Duration::from_secs(20),
            || async { Ok(verified() == restart + 1) },
        )
        .await
        .unwrap_or_else(|e| panic!("restart {restart}: {e}\n{}", log()));

        // It takes back a hijacked route.
        let igw = hanat_lab::cloud::DefaultTarget::Gateway(&lab.igw_id);
        lab.cloud.set_default_route(&rt, igw).await.unwrap();
        lab.wait_for("route taken back", Duration::from_secs(20), || async {
            Ok(lab.route_target(0).await?.as_deref() == Some(nat.instance.eni.as_str()))
        })
        .await
        .unwrap_or_else(|e| panic!("restart {restart}: {e}\n{}", log()));

        // It reports forwarding it cannot repair.
        lab.nat_exec(0, "nft", &[drop_all]).unwrap();
        lab.wait_for("reported Unhealthy", Duration::from_secs(20), || async {
            Ok(lab.cloud.health(&id).await? == "Unhealthy")
        })
        .await
        .unwrap_or_else(|e| panic!("restart {restart}: {e}\n{}", log()));
        lab.nat_exec(0, "nft", &["delete table inet chaos"])
            .unwrap();
        lab.cloud.set_health(&id, "Healthy").await.unwrap();
    }
    let log = log();
    assert_eq!(
        log.matches("not a live namespace").count(),
        3,
        "each restart replaced the stale handle:\n{log}"
    );
    assert!(!log.contains("cannot configure kernel NAT"), "{log}");
    assert!(!log.contains("kernel converge failed"), "{log}");
    // And the NAT still forwards, with its Elastic IP.
    lab.wait_for("egress", Duration::from_secs(10), || async {
        Ok(lab.whoami(0, Duration::from_millis(500)).ok() == Some(lab.azs[0].eip.1))
    })
    .await
    .unwrap();
}

/// A stale handle found at the very first start (a crashed daemon of an
/// older version, or a reboot-less redeploy) is no reason not to start; and
/// `hanat plan` says what `run` will do about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_probe_handle_at_start_is_replaced() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let lab = lab().await;
    let nat = lab.nat(0).unwrap();
    let handle = std::path::Path::new("/run/netns").join(&nat.probe_namespace);
    std::fs::create_dir_all("/run/netns").unwrap();
    std::fs::write(&handle, b"").unwrap();
    assert!(probe_handle_is_stale(&nat.probe_namespace));
    let p = plan(&lab);
    assert!(
        p.contains(&format!(
            "note: {} is not a live namespace from here",
            handle.display()
        )),
        "{p}"
    );

    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(30)).await.unwrap();
    lab.wait_for("probe passes", Duration::from_secs(10), || async {
        Ok(lab.nat_log(0).contains("forwarding verified"))
    })
    .await
    .unwrap();
    let log = lab.nat_log(0);
    assert!(log.contains("not a live namespace"), "{log}");
    assert_eq!(
        lab.whoami(0, Duration::from_secs(2)).unwrap(),
        lab.azs[0].eip.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_watchdog_and_capabilities() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let lab = lab().await;
    let nat = lab.nat(0).unwrap();
    // In the lab's directory: the unit's PrivateTmp hides the host's /tmp.
    let sock_path = lab.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // In the unit's sandbox: readiness, watchdog pings, and a clean stop on
    // SIGTERM.
    let mut child = lab
        .daemon_command(0, None)
        .unwrap()
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while seen
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = sock.recv(&mut buf).expect("notify message within 10 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen[0].starts_with("READY=1\nSTATUS="), "{seen:?}");
    // It does its work with those capabilities: the route becomes ours.
    lab.wait_for("the route", Duration::from_secs(15), || async {
        Ok(lab.route_target(0).await? == Some(nat.instance.eni.clone()))
    })
    .await
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(child.wait().unwrap().success());

    // Without CAP_SYS_ADMIN the probe namespace cannot be made (the one
    // above died with its daemon's mount namespace): a clear error and exit
    // code 71, not a daemon that pretends to be healthy.
    let out = lab
        .daemon_command(0, Some("net_admin"))
        .unwrap()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(71), "{err}");
    assert!(
        err.contains("hanat: cannot configure kernel NAT: `ip netns add"),
        "{err}"
    );
}

/// A boot script that is not hanat, reading instance metadata with curl the
/// way the seed design's takeover script does (IMDSv2 token, the identity
/// document grepped line by line, the VPC CIDR path), gets the instance's
/// real values; without a token it gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_metadata_serves_what_boot_scripts_read() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let (lab, nat) = serving_lab().await;
    let script = r#"
                URL=http://169.254.169.254/latest
        TOKEN=$(curl -m 5 -s -X PUT $URL/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")
        H="X-aws-ec2-metadata-token: $TOKEN"
        REGION=$(curl -m 5 -s -H "$H" $URL/dynamic/instance-identity/document | grep region | awk -F\" '{print $4}')
        MAC=$(curl -m 5 -s -H "$H" $URL/meta-data/mac)
        CIDR=$(curl -m 5 --retry 3 --silent --fail -H "$H" $URL/meta-data/network/interfaces/macs/$MAC/vpc-ipv4-cidr-block)
        echo "region=$REGION"
        echo "cidr=$CIDR"
        for p in instance-id placement/availability-zone placement/availability-zone-id instance-type ami-id hostname public-ipv4; do
            echo "$p=$(curl -m 5 -s --fail -H "$H" $URL/meta-data/$p)"
        done
        echo "listing=$(curl -m 5 -s --fail -H "$H" $URL/meta-data/ | tr '\n' ' ')"
        echo "no-token=$(curl -m 5 -s -o /dev/null -w '%{http_code}' $URL/meta-data/instance-id)"
        echo "bad-ttl=$(curl -m 5 -s -o /dev/null -w '%{http_code}' -X PUT $URL/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 21601')"
        echo "missing=$(curl -m 5 -s -o /dev/null -w '%{http_code}' -H "$H" $URL/meta-data/no-such-path)"
    "#;
    let out = lab.nat_exec(0, "sh", &["-c", script]).unwrap();
    eprintln!("{out}");
    let got: std::collections::HashMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(got["region"], hanat_lab::lab::REGION, "{out}");
    assert_eq!(got["cidr"], hanat_lab::lab::VPC_CIDR, "{out}");
    assert_eq!(got["instance-id"], nat.instance.id, "{out}");
    assert_eq!(got["placement/availability-zone"], lab.azs[0].name, "{out}");
    assert_eq!(got["placement/availability-zone-id"], "use1-az1", "{out}");
    assert_eq!(got["instance-type"], nat.instance.instance_type, "{out}");
    assert!(!nat.instance.instance_type.is_empty(), "{out}");
    assert_eq!(got["ami-id"], nat.instance.image_id, "{out}");
    assert!(got["ami-id"].starts_with("ami-"), "{out}");
    let host = format!(
        "ip-{}.ec2.internal",
        nat.instance.private_ip.replace('.', "-")
    );
    assert_eq!(got["hostname"], host, "{out}");
    // The Elastic IP the daemon claimed, as the internet sees it.
    assert_eq!(got["public-ipv4"], lab.azs[0].eip.1.to_string(), "{out}");
    for entry in [
        "ami-id",
        "instance-id",
        "placement/",
        "network/",
        "services/",
    ] {
        assert!(
            got["listing"].split(' ').any(|e| e == entry),
            "{entry} not listed: {out}"
        );
    }
    assert_eq!(got["no-token"], "401", "{out}");
    assert_eq!(got["bad-ttl"], "400", "{out}");
    assert_eq!(got["missing"], "404", "{out}");
}

/// Conntrack's timeouts as configured, in the NAT's own network namespace
/// (per namespace on this kernel, as on an instance): an answered UDP flow
/// through the NAT keeps its entry for `kernel.udp_timeout`, not the
/// kernel's 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_timeouts_are_set_and_a_flow_keeps_its_entry_that_long() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let lab = lab_with(|o| {
        o.kernel_extra = "tcp_timeout_time_wait = \"31s\"\nudp_timeout = \"47s\"\n\
                          udp_timeout_stream = \"5m50s\"\ntcp_timeout_established = \"6m\"\n"
            .into()
    })
    .await;
    lab.start_daemons().unwrap();
    lab.wait_converged(Duration::from_secs(30)).await.unwrap();
    let sysctl = |leaf: &str| {
        lab.nat_exec(
            0,
            "cat",
            &[&format!("/proc/sys/net/netfilter/nf_conntrack_{leaf}")],
        )
        .unwrap()
        .trim()
        .to_owned()
    };
    for (leaf, want) in [
        ("tcp_timeout_time_wait", "31"),
        ("udp_timeout", "47"),
        ("udp_timeout_stream", "350"),
        ("tcp_timeout_established", "360"),
    ] {
        assert_eq!(sysctl(leaf), want, "{leaf}");
    }
    assert_eq!(
        lab.whoami_udp(0, Duration::from_secs(2)).unwrap(),
        lab.azs[0].eip.1
    );
    let table = lab.nat_exec(0, "cat", &["/proc/net/nf_conntrack"]).unwrap();
    let server = hanat_lab::lab::SERVERS[1].to_string();
    let entry = table
        .lines()
        .find(|l| l.contains(" udp ") && l.contains(&format!("dst={server} ")))
        .unwrap_or_else(|| panic!("no UDP entry to {server}:\n{table}"));
    // `ipv4 2 udp 17 <seconds left> src=…`
    let left: u64 = entry.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!((40..=47).contains(&left), "{left} s left: {entry}");
}
