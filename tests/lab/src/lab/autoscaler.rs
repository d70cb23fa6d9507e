//! The lab's Auto Scaling (and systemd): replacing Unhealthy, impaired or vanished
//! instances after the boot delay, restarting dead daemons.

use super::*;

/// How long Auto Scaling takes to act on an `impaired` application status:
/// AWS publishes no figure; assumed, so that peers' adoption and Auto
/// Scaling's replacement stay distinct steps in the lab.
pub const IMPAIRED_TO_REPLACEMENT: Duration = Duration::from_secs(15);

/// Play Auto Scaling (and systemd): replace Unhealthy or vanished
/// instances after the boot delay, restart dead daemons.
pub(super) async fn autoscaler(
    shared: Arc<Shared>,
    groups: Vec<(usize, String)>,
    stop: Arc<AtomicBool>,
) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (i, group) in &groups {
            let i = *i;
            let current = shared.nats()[i].as_ref().map(|n| n.instance.id.clone());
            // An instance the daemon reported Unhealthy, or whose
            // application status is impaired, is terminated.
            if let Some(id) = &current
                && shared.opts.replace_unhealthy
            {
                let w = shared.api.witness();
                let impaired = w.status.get(id).is_some_and(|(s, t)| {
                    *s == "impaired" && t.elapsed() >= IMPAIRED_TO_REPLACEMENT
                });
                let why = if impaired {
                    Some("application status impaired")
                } else if shared.cloud.health(id).await.ok().as_deref() == Some("Unhealthy") {
                    Some("Unhealthy")
                } else {
                    None
                };
                if let Some(why) = why {
                    let nat = shared.nats()[i].take();
                    drop(nat);
                    let _ = shared.cloud.terminate(id).await;
                    shared.event(format!("az{i}: {id} {why}, terminated"));
                    continue;
                }
            }
            // A running daemon that died is restarted, like systemd would.
            if let Some(delay) = shared.opts.restart_delay {
                let mut nats = shared.nats();
                if let Some(n) = nats[i].as_mut() {
                    if n.daemon.is_some() && !n.running() {
                        n.daemon = None;
                        n.died_at.get_or_insert(Instant::now());
                    }
                    if n.daemon.is_none()
                        && n.died_at.is_some_and(|t| t.elapsed() >= delay)
                        && n.start(&shared.launch).is_ok()
                    {
                        drop(nats);
                        shared.event(format!("az{i}: daemon restarted"));
                    }
                }
            }
            if current.is_some() {
                continue;
            }
            let down = shared
                .az_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&i)
                .is_some_and(|until| Instant::now() < *until);
            if down {
                continue;
            }
            // No NAT: materialise the group's new instance after boot delay.
            let Ok(instance) = shared.cloud.group_instance(group).await else {
                continue;
            };
            let since = *pending
                .entry(instance.id.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < shared.opts.boot_delay {
                continue;
            }
            pending.remove(&instance.id);
            match launch_nat(&shared, i, instance).await {
                Ok(mut nat) => {
                    let started = nat.start(&shared.launch);
                    shared.event(format!(
                        "az{i}: {} booted (daemon {:?})",
                        nat.instance.id,
                        started.is_ok()
                    ));
                    shared.nats()[i] = Some(nat);
                }
                Err(e) => shared.event(format!("az{i}: launch failed: {e:#}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
