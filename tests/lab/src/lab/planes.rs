//! Keeping the data plane in line with moto: the router follows the route
//! tables, the internet gateway the Elastic IP associations.

use super::*;

/// Keep the data plane in line with moto, every 100 ms: first the internet
/// gateway's 1:1 NAT (Elastic IP associations), then the router's per-AZ
/// tables (route tables). In that order, so an address claimed before a
/// route moved is in place before traffic follows the route.
pub(super) async fn plane_sync(
    shared: Arc<Shared>,
    tables: Vec<(usize, String)>,
    igw: String,
    stop: Arc<AtomicBool>,
) {
    let mut routes: HashMap<usize, String> = HashMap::new();
    let mut rules = String::new();
    while !stop.load(Ordering::Relaxed) {
        igw_step(&shared, &igw, &mut rules).await;
        router_step(&shared, &tables, &mut routes).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The router forwards each private subnet by its route table in moto.
pub(super) async fn router_step(
    shared: &Shared,
    tables: &[(usize, String)],
    applied: &mut HashMap<usize, String>,
) {
    // Live ENIs: those of materialised NATs.
    let live: HashMap<String, String> = shared
        .all_instances()
        .into_iter()
        .map(|(i, _)| (i.eni, i.private_ip))
        .collect();
    // A regional gateway has one id in every AZ: AZ i's own plane first.
    let gateway = |id: &str, i: usize| {
        (shared.gateways.iter().enumerate())
            .filter(|(_, (_, g))| g.id == id)
            .min_by_key(|(j, _)| *j != i)
            .map(|(_, (_, g))| g.private_ip.to_string())
    };
    for (i, rt) in tables {
        let Ok(route) = shared.cloud.default_route(rt).await else {
            continue;
        };
        let want = match route {
            Some((target, state)) if state != "blackhole" => {
                match live.get(&target).cloned().or_else(|| gateway(&target, *i)) {
                    Some(ip) => format!("default via {ip}"),
                    None => "unreachable default".into(),
                }
            }
            _ => "unreachable default".into(),
        };
        if applied.get(i) != Some(&want) {
            let cmd = format!("-n {} route replace {want} table {}", shared.rtr, 100 + i);
            if crate::netns::ip(&cmd).is_ok() {
                applied.insert(*i, want);
            }
        }
    }
}

/// The internet gateway maps each live instance's private addresses (and
/// each NAT Gateway's) 1:1 to public ones, statelessly as AWS's does (a
/// packet is rewritten by the mapping of the moment, whatever went
/// before, so an Elastic IP moved to another private address carries the
/// connections through it at once): the primary address to its
/// Elastic IP if moto has one associated, else an auto-assigned one if it
/// was launched with a public address (else to nothing); a
/// secondary address to the Elastic IP associated with it (the proxy
/// remembers which, see [`crate::api::Secondary`]), else to nothing.
pub(super) async fn igw_step(shared: &Shared, igw: &str, applied: &mut String) {
    let instances = shared.all_instances();
    let Ok(assoc) = shared.cloud.address_associations().await else {
        return;
    };
    let secondary = shared.api.secondary_associations();
    let mut map: Vec<(String, Ipv4Addr)> = Vec::new();
    for (inst, imds) in &instances {
        // (private address, lab public address) of each association.
        let held: Vec<(String, Ipv4Addr)> = assoc
            .iter()
            .filter(|(_, holder, _)| holder == &inst.id || holder == &inst.eni)
            .filter_map(|(moto_ip, _, allocation)| {
                let private = match secondary.get(allocation) {
                    Some((eni, ip)) if *eni == inst.eni => ip.clone(),
                    _ => inst.private_ip.clone(),
                };
                Some((private, *shared.eip_public.get(moto_ip)?))
            })
            .collect();
        for (private, public) in &held {
            let seen = map.iter().any(|(p, _)| p == private);
            if *private != inst.private_ip && !seen {
                map.push((private.clone(), *public));
            }
        }
        let eip = held
            .iter()
            .find(|(p, _)| *p == inst.private_ip)
            .map(|(_, public)| *public);
        let public = match eip {
            Some(ip) => {
                shared
                    .auto_public
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&inst.id);
                ip
            }
            None if !shared.public_on_launch => {
                // No public address: the internet gateway drops its traffic.
                imds.set_public_ipv4(&inst.mac, None);
                continue;
            }
            None => {
                let mut auto = shared.auto_public.lock().unwrap_or_else(|p| p.into_inner());
                let next = Ipv4Addr::new(192, 0, 2, 10 + auto.len() as u8);
                *auto.entry(inst.id.clone()).or_insert(next)
            }
        };
        // Instance metadata says what the internet sees, as on EC2.
        imds.set_public_ipv4(&inst.mac, Some(&public.to_string()));
        map.push((inst.private_ip.clone(), public));
    }
    for (_, g) in &shared.gateways {
        map.push((g.private_ip.to_string(), g.public_ip));
    }
    let rules = igw_ruleset(&map);
    if rules != *applied {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", igw, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(rules.as_bytes())?;
                }
                c.wait()
            })
            .is_ok_and(|s| s.success());
        if ok {
            *applied = rules;
        }
    }
}

pub(super) fn igw_ruleset(map: &[(String, Ipv4Addr)]) -> String {
    let snat: Vec<String> = map.iter().map(|(p, e)| format!("{p} : {e}")).collect();
    let dnat: Vec<String> = map.iter().map(|(p, e)| format!("{e} : {p}")).collect();
    let mapped: Vec<String> = map.iter().map(|(p, _)| p.clone()).collect();
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", v.join(", "))
        }
    };
    format!(
        "table ip labigw {{}}\ndelete table ip labigw\ntable ip labigw {{\n\
         map snat_map {{ type ipv4_addr : ipv4_addr; {} }}\n\
         map dnat_map {{ type ipv4_addr : ipv4_addr; {} }}\n\
         set mapped {{ type ipv4_addr; {} }}\n\
         chain pre {{ type filter hook prerouting priority raw; policy accept; iifname \"inet\" ip daddr set ip daddr map @dnat_map; }}\n\
         chain post {{ type filter hook postrouting priority srcnat; policy accept; oifname \"inet\" ip saddr set ip saddr map @snat_map; }}\n\
         chain filter {{ type filter hook forward priority filter; policy accept; oifname \"inet\" ip saddr {VPC_CIDR} ip saddr != @mapped drop; }}\n}}\n",
        elements(&snat),
        elements(&dnat),
        elements(&mapped),
    )
}
