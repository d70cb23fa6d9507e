//! The flow hand-off tunnel against the real kernel, in a network namespace
//! of its own: the device, rules, routes, neighbour and forwarding entries
//! and nftables table converge to exactly what is asked, and go away again,
//! touching nothing else. (That packets really flow through it is shown by
//! `lab_e2e::stop_with_handoff_moves_routes_first_and_keeps_connections`.)
//! Needs root; skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::Ipv4Addr;

use hanat::kernel::tunnel::{self, DEVICE, Handoff, mark};
use hanat_lab::netns::{Netns, in_netns, unique_prefix};

/// Run `f` (async) inside `ns`, on a runtime of its own thread.
fn inside<T: Send + 'static, F>(ns: &Netns, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    in_netns(&ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .unwrap()
}

fn cidr(s: &str) -> hanat::domain::Ipv4Cidr {
    s.parse().unwrap()
}

fn vpc() -> Vec<hanat::domain::Ipv4Cidr> {
    vec![cidr("10.0.0.0/16")]
}

#[test]
fn tunnel_state_converges_both_ways_and_touches_nothing_else() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let ns = Netns::new(&format!("{}-tun", unique_prefix())).unwrap();
    // No dummy driver in every kernel: one end of a veth pair will do.
    ns.ip("link add eth0 type veth peer name eth1").unwrap();
    ns.ip("link set eth0 mtu 9001 up").unwrap();
    ns.ip("addr add 10.0.0.4/24 dev eth0").unwrap();
    // Someone else's rule and table: must survive.
    ns.ip("rule add priority 100 fwmark 0x1 lookup 100")
        .unwrap();
    let sh = |cmd: &str| {
        let v: Vec<&str> = cmd.split_whitespace().collect();
        ns.exec(v[0], &v[1..]).unwrap()
    };
    sh("nft add table ip theirs");

    // Nothing to hand off and no device yet: a no-op, not an error.
    inside(&ns, || async {
        tunnel::converge("eth0", 7471, &vpc(), &[]).await
    })
    .unwrap();

    let local = Ipv4Addr::new(10, 0, 0, 4);
    for _ in 0..2 {
        inside(&ns, move || async move {
            tunnel::ensure_device(local, 7471, "eth0").await
        })
        .unwrap();
    }
    let link = ns.ip(&format!("-d link show {DEVICE}")).unwrap();
    assert!(link.contains("vxlan id 7470 local 10.0.0.4"), "{link}");
    assert!(link.contains("dstport 7471"), "{link}");
    assert!(link.contains("mtu 9001"), "{link}");
    assert!(link.contains("02:68:0a:00:00:04"), "{link}");
    assert!(link.contains("UP"), "{link}");

    let peers = [Ipv4Addr::new(10, 0, 2, 4), Ipv4Addr::new(10, 0, 4, 4)];
    let both = vec![
        Handoff {
            peer: peers[0],
            sources: vec![cidr("10.0.1.0/24")],
        },
        Handoff {
            peer: peers[1],
            sources: vec![cidr("10.0.3.0/24"), cidr("10.0.5.0/24")],
        },
    ];
    for _ in 0..2 {
        let h = both.clone();
        inside(&ns, move || async move {
            tunnel::converge("eth0", 7471, &vpc(), &h).await
        })
        .unwrap();
    }
    let rules = ns.ip("rule show priority 7470").unwrap();
    assert_eq!(
        rules.lines().count(),
        2,
        "one rule per peer, not repeated:\n{rules}"
    );
    for p in peers {
        let table = mark(p).to_string();
        assert!(
            rules.contains(&format!("fwmark {:#x} iif eth0 lookup {table}", mark(p))),
            "{rules}"
        );
        let route = ns.ip(&format!("route show table {table}")).unwrap();
        assert!(
            route.contains(&format!("default via {p} dev {DEVICE} onlink")),
            "{route}"
        );
        let neigh = ns.ip(&format!("neigh show {p} dev {DEVICE}")).unwrap();
        assert!(
            neigh.contains(&tunnel::mac(p)) && neigh.contains("PERMANENT"),
            "{neigh}"
        );
    }
    let fdb = sh(&format!("bridge fdb show dev {DEVICE}"));
    for p in peers {
        assert!(
            fdb.contains(&format!("{} dst {p}", tunnel::mac(p))),
            "{fdb}"
        );
    }
    let table = sh(&format!("nft list table ip {}", tunnel::NFT_TABLE));
    assert!(table.contains("10.0.1.0/24 : 0x68000204"), "{table}");
    assert!(table.contains("10.0.5.0/24 : 0x68000404"), "{table}");
    assert!(table.contains("elements = { 10.0.0.0/16 }"), "{table}");
    assert!(
        table.contains("udp dport 7471 ip saddr != @tunnel_sources drop"),
        "{table}"
    );

    // What a restarted daemon reads back is what was set.
    let mut now = inside(&ns, || async { tunnel::current().await });
    now.sort_by_key(|h| h.peer);
    assert_eq!(now, both, "read back");

    // Setting the device up again must not drop the neighbour entries.
    inside(&ns, move || async move {
        tunnel::ensure_device(local, 7471, "eth0").await
    })
    .unwrap();
    let neigh = ns.ip(&format!("neigh show dev {DEVICE}")).unwrap();
    assert_eq!(neigh.matches("PERMANENT").count(), 2, "{neigh}");

    // One hand-off ends: only its state goes.
    let one = vec![both[1].clone()];
    inside(&ns, move || async move {
        tunnel::converge("eth0", 7471, &vpc(), &one).await
    })
    .unwrap();
    let rules = ns.ip("rule show priority 7470").unwrap();
    assert_eq!(rules.lines().count(), 1, "{rules}");
    assert!(!rules.contains(&mark(peers[0]).to_string()), "{rules}");
    let gone = ns
        .ip(&format!("route show table {}", mark(peers[0])))
        .unwrap_or_default();
    assert!(gone.trim().is_empty(), "{gone}");
    let neigh = ns.ip(&format!("neigh show dev {DEVICE}")).unwrap();
    assert!(!neigh.contains(&peers[0].to_string()), "{neigh}");
    let fdb = sh(&format!("bridge fdb show dev {DEVICE}"));
    assert!(!fdb.contains(&peers[0].to_string()), "{fdb}");

    // All end.
    inside(&ns, || async {
        tunnel::converge("eth0", 7471, &vpc(), &[]).await
    })
    .unwrap();
    assert!(ns.ip("rule show priority 7470").unwrap().trim().is_empty());
    let table = sh(&format!("nft list table ip {}", tunnel::NFT_TABLE));
    assert!(!table.contains(" : 0x68"), "no hand-off left: {table}");

    // Not ours: untouched.
    let theirs = ns.ip("rule show priority 100").unwrap();
    assert!(theirs.contains("lookup 100"), "{theirs}");
    assert!(sh("nft list tables").contains("table ip theirs"));
}

/// What arrives on the tunnel port from anywhere in the VPC is decapsulated
/// by the kernel; an inner datagram "from" a peer NAT would otherwise reach
/// the heartbeat socket, or be forwarded to another NAT, with a source
/// address its sender cannot use. Shown here first without hanat's table
/// (the forgery gets through), then with it (it does not).
#[test]
fn nothing_from_the_tunnel_reaches_a_socket_or_another_vpc_host() {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;

    use hanat_lab::lab::forge;
    use hanat_lab::netns::veth;

    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let prefix = unique_prefix();
    let nat = Netns::new(&format!("{prefix}-nat")).unwrap();
    let host = Netns::new(&format!("{prefix}-host")).unwrap();
    let far = Netns::new(&format!("{prefix}-far")).unwrap();
    veth(&nat, "eth0", &host, "eth0").unwrap();
    veth(&nat, "eth2", &far, "eth0").unwrap();
    nat.ip("addr add 10.0.0.4/24 dev eth0").unwrap();
    nat.ip("addr add 10.0.1.1/24 dev eth2").unwrap();
    // Like a NAT's, its default route points at the VPC's router.
    nat.ip("route add default via 10.0.0.7").unwrap();
    host.ip("addr add 10.0.0.7/24 dev eth0").unwrap();
    host.ip("route add 10.0.1.0/24 via 10.0.0.4").unwrap();
    far.ip("addr add 10.0.1.9/24 dev eth0").unwrap();
    far.ip("route add default via 10.0.1.1").unwrap();
    for ns in [&nat, &host, &far] {
        ns.ip("link set lo up").unwrap();
        for dev in ns.ip("-o link show").unwrap().lines() {
            if let Some(name) = dev
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or(""))
            {
                let _ = ns.ip(&format!("link set {name} up"));
            }
        }
    }
    nat.sysctl("net.ipv4.ip_forward", "1").unwrap();
    // Loose reverse-path filtering, as common distributions set it (strict
    // would happen to drop these forgeries, but is not what NATs run).
    for key in ["all", "default", "eth0", "eth2"] {
        nat.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "2")
            .unwrap();
    }
    let local = Ipv4Addr::new(10, 0, 0, 4);
    inside(&nat, move || async move {
        tunnel::ensure_device(local, 7471, "eth0").await
    })
    .unwrap();

    let listen = |ns: &Netns| {
        let s = ns.bind_udp(SocketAddr::from(([0, 0, 0, 0], 7470))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s
    };
    let (heartbeats, far_port) = (listen(&nat), listen(&far));
    let sender: UdpSocket = host.bind_udp(SocketAddr::from(([0, 0, 0, 0], 0))).unwrap();
    let received = |s: &UdpSocket| {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()));
        }
        got
    };
    let peer = Ipv4Addr::new(10, 0, 2, 4);
    let forge = |dst: Ipv4Addr, text: &str| {
        let inner = forge::ipv4_udp(peer, dst, 7470, 7470, text.as_bytes());
        let outer = forge::vxlan(forge::VNI, forge::tunnel_mac(local), &inner);
        sender.send_to(&outer, (local, 7471)).unwrap();
    };
    let far_ip = Ipv4Addr::new(10, 0, 1, 9);

    // Without hanat's table, both forgeries arrive "from" the peer.
    forge(local, "to the NAT");
    forge(far_ip, "through the NAT");
    let got = received(&heartbeats);
    assert!(
        got.contains(&("to the NAT".into(), peer.into())),
        "the forgery path exists in this kernel: {got:?}"
    );
    let got = received(&far_port);
    assert!(
        got.contains(&("through the NAT".into(), peer.into())),
        "{got:?}"
    );

    // With it, neither does; what comes in directly still does.
    inside(&nat, || async {
        tunnel::converge("eth0", 7471, &vpc(), &[]).await
    })
    .unwrap();
    let table = nat
        .exec("nft", &["list", "table", "ip", tunnel::NFT_TABLE])
        .unwrap();
    assert!(table.contains("iifname \"hanat0\" drop"), "{table}");
    forge(local, "to the NAT");
    forge(far_ip, "through the NAT");
    sender.send_to(b"direct", (local, 7470)).unwrap();
    sender.send_to(b"routed", (far_ip, 7470)).unwrap();
    let got = received(&heartbeats);
    assert_eq!(
        got,
        vec![("direct".to_owned(), Ipv4Addr::new(10, 0, 0, 7).into())]
    );
    let got = received(&far_port);
    assert_eq!(
        got,
        vec![("routed".to_owned(), Ipv4Addr::new(10, 0, 0, 7).into())]
    );
}
