//! Writing copied connections into the real kernel's connection table, in
//! a network namespace of its own: every copy lands with its translation,
//! TCP and UDP, in one `conntrack -R`; written again with some the kernel
//! has already, the new ones still land and the old ones count as there.
//! Needs root; skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::Ipv4Addr;

use hanat::domain::{Conn, Mapping, Proto};
use hanat::kernel::conntrack;
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
