//! Writing copied connections into the real kernel's connection table, in
//! a network namespace of its own: every copy lands with its translation,
//! TCP and UDP, in one `conntrack -R`; written again with some the kernel
//! has already, the new ones still land and the old ones count as there.
//! And watching it: a flow made before the watcher started is reported
//! when it becomes a stream, with the setting hanat makes.
//! Needs root; skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::Ipv4Addr;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hanat::decide::replicate::parse_event;
use hanat::domain::{Conn, Conntrack, Mapping, Proto};
use hanat::kernel::{conntrack, sysctl};
use hanat_lab::netns::{Netns, in_netns, unique_prefix};

/// `n` copies from one private host to one server, TCP and UDP in turn,
/// translated to 198.51.100.7 with the same port; ports from `first`.
fn copies(first: u16, n: u16) -> Vec<(Conn, Mapping)> {
    (first..first + n)
        .map(|port| {
            let conn = Conn {
                proto: if port % 2 == 0 {
                    Proto::Tcp
                } else {
                    Proto::Udp
                },
                src: Ipv4Addr::new(10, 0, 1, 10),
                sport: port,
                dst: Ipv4Addr::new(203, 0, 113, 10),
                dport: 443,
            };
            let to = Mapping {
                addr: Ipv4Addr::new(198, 51, 100, 7),
                port,
            };
            (conn, to)
        })
        .collect()
}

fn write(ns: &Netns, entries: Vec<(Conn, Mapping)>) -> (usize, Option<String>) {
    in_netns(&ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (n, e) = rt.block_on(conntrack::insert_all(&entries));
        Ok((n, e.map(|e| e.to_string())))
    })
    .unwrap()
}

#[test]
fn copies_land_in_the_kernel_with_their_translation_and_again_without_harm() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let ns = Netns::new(&format!("{}-ct", unique_prefix())).unwrap();
    // Source NAT in the namespace, as on a NAT.
    for cmd in [
        "add table ip nat",
        "add chain ip nat post { type nat hook postrouting priority srcnat; }",
    ] {
        ns.exec("nft", &[cmd]).unwrap();
    }
    let listed = |ns: &Netns| ns.exec("conntrack", &["-L", "-o", "extended"]).unwrap();

    assert_eq!(write(&ns, copies(40000, 1000)), (1000, None));
    let table = listed(&ns);
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("src=10.0.1.10"))
        .collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!(lines.iter().filter(|l| l.contains(" udp ")).count(), 500);
    // Each one's reply goes to its translated address and port.
    let tcp = (lines.iter())
        .find(|l| l.contains("sport=40000 "))
        .expect("the first copy");
    assert!(
        tcp.contains("ESTABLISHED")
            && tcp.contains("src=203.0.113.10 dst=198.51.100.7 sport=443 dport=40000"),
        "{tcp}"
    );
    let udp = (lines.iter())
        .find(|l| l.contains("sport=40001 "))
        .expect("the second copy");
    assert!(
        udp.contains("[ASSURED]")
            && udp.contains("src=203.0.113.10 dst=198.51.100.7 sport=443 dport=40001"),
        "{udp}"
    );

    // A reply that reached the NAT's address before the copy of its flow
    // (the NAT had just taken the Elastic IP): the kernel made an entry of
    // its own for it, which holds the copy's reply side.
    let stray = "-I -p udp -s 203.0.113.10 --sport 443 -d 198.51.100.7 --dport 41001 -t 30";
    ns.exec("conntrack", &stray.split(' ').collect::<Vec<_>>())
        .unwrap();

    // Again, with 5 more: the batch stops at the first one the kernel has,
    // and the copies are written one by one: 5 new (the stray entry gave
    // way to its flow's copy), none lost.
    assert_eq!(write(&ns, copies(40000, 1005)), (5, None));
    let table = listed(&ns);
    let ours = |l: &&str| l.contains("src=10.0.1.10");
    assert_eq!(table.lines().filter(ours).count(), 1005);
    let copied = (table.lines().filter(ours))
        .find(|l| l.contains("sport=41001 "))
        .expect("the copy of the flow whose reply came first");
    assert!(
        copied.contains("src=203.0.113.10 dst=198.51.100.7 sport=443 dport=41001"),
        "{copied}"
    );
    assert!(
        !table.contains("src=203.0.113.10 dst=198.51.100.7 sport=443 dport=41001 [UNREPLIED]"),
        "the stray entry is gone"
    );
}

/// A namespace whose kernel tracks connections (a rule that reads the
/// table, as a NAT's do), with hanat's sysctls for replication on or off.
fn tracking(name: &str, replication: bool) -> Netns {
    let ns = Netns::new(&format!("{}-{name}", unique_prefix())).unwrap();
    for cmd in [
        "add table ip track",
        "add chain ip track out { type filter hook output priority 0; }",
        "add rule ip track out ct state new counter",
    ] {
        ns.exec("nft", &[cmd]).unwrap();
    }
    let ct = Conntrack {
        max: None,
        buckets: None,
        tcp_established: 7440,
        tcp_time_wait: 120,
        udp: 30,
        udp_stream: 120,
        events: replication,
    };
    in_netns(&ns.path(), move || {
        sysctl::apply(&sysctl::desired("lo", &ct))?;
        Ok(())
    })
    .unwrap();
    ns
}

/// Whether hanat's watcher, started 0.5 s into a UDP exchange (every
/// 100 ms, each answered), is told within 4 s that it became a stream.
fn stream_reported(ns: &Netns) -> bool {
    in_netns(&ns.path(), || {
        let server = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
        client.connect(server.local_addr()?)?;
        server.set_read_timeout(Some(Duration::from_secs(1)))?;
        client.set_read_timeout(Some(Duration::from_secs(1)))?;
        let port = client.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let until = stop.clone();
        let exchange = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while !until.load(Ordering::Relaxed) {
                let _ = client.send(b"q");
                if let Ok((_, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(b"a", from);
                }
                let _ = client.recv(&mut buf);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let reported = rt.block_on(async {
            let (_child, mut lines) = conntrack::events()?;
            let watch = async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if parse_event(&line).is_some_and(|e| e.conn.sport == port && e.established()) {
                        return true;
                    }
                }
                false
            };
            let seen = tokio::time::timeout(Duration::from_secs(4), watch).await;
            anyhow::Ok(seen.unwrap_or(false))
        });
        stop.store(true, Ordering::Relaxed);
        exchange.join().ok();
        reported
    })
    .unwrap()
}

/// A UDP flow becomes a stream (assured) about 2 s after its first
/// answer; replication copies it then. A flow made before the watcher
/// started (the daemon started or restarted, or its `conntrack -E` did)
/// is reported only with `nf_conntrack_events = 1`, which hanat sets with
/// replication on; under the kernel's default (2) it is not, and its copy
/// would wait for the next resync (60 s).
#[test]
fn a_flow_made_before_the_watcher_is_reported_when_it_becomes_a_stream() {
    if !hanat_lab::can_run_kernel_tests() {
        return;
    }
    let on = tracking("ev1", true);
    assert_eq!(
        on.exec("sysctl", &["-n", "net.netfilter.nf_conntrack_events"])
            .unwrap()
            .trim(),
        "1"
    );
    assert!(stream_reported(&on), "reported with replication's setting");

    // The kernel's default, where it is 2: the same flow goes unreported.
    let off = tracking("ev2", false);
    let default = off
        .exec("sysctl", &["-n", "net.netfilter.nf_conntrack_events"])
        .unwrap();
    if default.trim() == "2" {
        assert!(!stream_reported(&off), "unreported under the default");
    }
}
