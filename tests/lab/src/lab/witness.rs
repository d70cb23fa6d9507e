//! EC2's application status check, played by the lab (moto has none).
//!
//! What the templates' `NatStatusCheck` asks of EC2 — `GET /health` on
//! port 7472 of every associated NAT, a [`TIMEOUT`] for the answer,
//! `impaired` after [`FAILURE_THRESHOLD`] failed check(s) and `ok` again
//! after [`SUCCESS_THRESHOLD`] passed ones — the lab does, every
//! `LabOptions::witness_interval` (60 s, AWS's only value, unless a test
//! shortens it), from the NAT's own public subnet (the VPC router's address
//! there: with no `HealthCheckPaths`, EC2 checks from the instance's
//! subnet). Checks start `witness_grace` after the daemon associated its
//! instance (AWS: `InitializationGracePeriodSeconds` after launch), at a
//! random phase within the first interval.
//!
//! The verdicts go to the API proxy ([`crate::api::Witness`]), which adds
//! them to `DescribeInstanceStatus`, and to the lab's Auto Scaling, which
//! replaces an `impaired` instance as AWS's does. Assumed, not known: EC2
//! publishes a verdict as soon as a check concludes.

use super::*;

/// The check's timeout (the template's `Timeout`).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Failed checks before `impaired` (the template's `FailureThreshold`).
pub const FAILURE_THRESHOLD: u32 = 1;
/// Passed checks before `ok` (the template's `SuccessThreshold`).
pub const SUCCESS_THRESHOLD: u32 = 2;
/// Where the check asks.
pub const PORT: u16 = 7472;
pub const PATH: &str = "/health";

struct Check {
    next: Instant,
    fails: u32,
    passes: u32,
}

/// Check every associated NAT on schedule until `stop`.
pub(super) async fn witness(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut checks: HashMap<String, Check> = HashMap::new();
    let rtr = PathBuf::from("/run/netns").join(&shared.rtr);
    while !stop.load(Ordering::Relaxed) {
        let w = shared.api.witness();
        let current: Vec<(usize, String, Ipv4Addr)> = shared
            .nats()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.as_ref()?;
                Some((
                    i,
                    n.instance.id.clone(),
                    n.instance.private_ip.parse().ok()?,
                ))
            })
            .collect();
        checks.retain(|id, _| current.iter().any(|(_, c, _)| c == id));
        let mut due = tokio::task::JoinSet::new();
        for (i, id, ip) in current {
            let Some((_, at)) = w.associated.get(&id) else {
                continue;
            };
            // EC2's checks run at their own phase: the first one comes at
            // a random point of the first interval after the grace, so a
            // fault injected at a fixed time after start meets every phase.
            let phase = shared.opts.witness_interval.mul_f64(fastrand::f64());
            let c = checks.entry(id.clone()).or_insert_with(|| Check {
                next: *at + shared.opts.witness_grace + phase,
                fails: 0,
                passes: 0,
            });
            if Instant::now() < c.next {
                continue;
            }
            c.next = Instant::now() + shared.opts.witness_interval;
            let rtr = rtr.clone();
            due.spawn_blocking(move || (i, id, check(&rtr, ip, TIMEOUT)));
        }
        while let Some(Ok((i, id, passed))) = due.join_next().await {
            let Some(c) = checks.get_mut(&id) else {
                continue;
            };
            let before = w.status.get(&id).map(|(s, _)| *s);
            let now = match passed.is_ok() {
                true => {
                    c.passes += 1;
                    c.fails = 0;
                    (c.passes >= SUCCESS_THRESHOLD).then_some("ok")
                }
                false => {
                    c.fails += 1;
                    c.passes = 0;
                    (c.fails >= FAILURE_THRESHOLD).then_some("impaired")
                }
            };
            if let Some(now) = now
                && before != Some(now)
            {
                shared.api.set_application_status(&id, now);
                let why = passed.err().map(|e| format!(" ({e})")).unwrap_or_default();
                shared.event(format!("az{i}: {id} application status {now}{why}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One check: does `GET /health` answer 200 within `within` (the
/// witness's [`TIMEOUT`])? If not, what it got instead.
pub(super) fn check(rtr: &Path, ip: Ipv4Addr, within: Duration) -> std::result::Result<(), String> {
    match crate::netns::http_get(rtr, SocketAddr::from((ip, PORT)), PATH, within) {
        Ok((200, _)) => Ok(()),
        Ok((code, body)) => Err(format!("{code}: {}", body.trim())),
        Err(e) => Err(format!("{e:#}")),
    }
}
