//! Probes that travel the NAT path.
//!
//! Each round runs on a fresh OS thread that first enters the probe network
//! namespace (`setns`, which affects only that thread) and then drives a
//! single-threaded tokio runtime: every socket it opens belongs to the probe
//! namespace, so its packets are forwarded and masqueraded by the NAT like a
//! private host's. All targets are probed concurrently, each bounded by the
//! timeout; the round is good if any target answers, so one slow or dead
//! target is not mistaken for a NAT outage. Errors (cannot enter the
//! namespace, refused connections) are results, never panics.
//!
//! A probe that fails is one of two things ([`Miss`]): *unanswered* — it
//! left and nothing came back in time (a timeout, a refusal, an
//! unreachable network): evidence about the NAT path; or *unsent* — this
//! process could not send it (out of file descriptors or memory, a
//! sandbox's `EPERM`, no thread): evidence about the daemon, none about
//! forwarding. A round is judged ([`Round::result`]) on the probes that
//! were sent: it fails only when every target was sent and none answered.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::domain::ProbeTarget;

/// Why a probe has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Sent, and nothing came back in time: evidence about the path.
    Unanswered(String),
    /// Never sent: this process could not (a local resource or permission
    /// failure). Says nothing about whether packets flow.
    Unsent(String),
}

impl Miss {
    pub fn sent(&self) -> bool {
        matches!(self, Miss::Unanswered(_))
    }
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Unanswered(why) => f.write_str(why),
            Miss::Unsent(why) => write!(f, "not sent: {why}"),
        }
    }
}

/// Errors that say this process could not send, not that the path is
/// broken: no descriptor (`EMFILE`, `ENFILE`), no memory (`ENOMEM`,
/// `ENOBUFS`), not allowed (`EPERM`, `EACCES`: a sandbox), an address
/// family refused (`EAFNOSUPPORT`), no local port left (`EADDRNOTAVAIL`,
/// `EAGAIN`).
const LOCAL_ERRNOS: [nix::errno::Errno; 9] = {
    use nix::errno::Errno::*;
    [
        EMFILE,
        ENFILE,
        ENOMEM,
        ENOBUFS,
        EPERM,
        EACCES,
        EAFNOSUPPORT,
        EADDRNOTAVAIL,
        EAGAIN,
    ]
};

/// Whether `errno` is a local failure (`LOCAL_ERRNOS`).
pub fn is_local(errno: i32) -> bool {
    LOCAL_ERRNOS.iter().any(|e| *e as i32 == errno)
}

/// An I/O error as a [`Miss`]: unsent when its errno is local.
fn miss(e: &std::io::Error) -> Miss {
    match e.raw_os_error() {
        Some(errno) if is_local(errno) => Miss::Unsent(e.to_string()),
        _ => Miss::Unanswered(e.to_string()),
    }
}

/// The outcome of one probe of one target.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub target: ProbeTarget,
    /// Round-trip time, or why there is none.
    pub outcome: Result<Duration, Miss>,
}

/// What one round says about forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundResult {
    /// Some target answered: packets flow.
    Passed,
    /// Every target was sent a probe and none answered.
    Failed,
    /// None answered and some probe could not be sent: the round says
    /// nothing about forwarding (that target might have answered).
    Unsent,
}

/// The outcome of one round.
#[derive(Debug, Clone)]
pub struct Round {
    pub results: Vec<TargetResult>,
}

impl Round {
    /// How many targets answered.
    pub fn answered(&self) -> usize {
        self.results.iter().filter(|r| r.outcome.is_ok()).count()
    }

    /// Healthy when any target answered.
    pub fn ok(&self) -> bool {
        self.result() == RoundResult::Passed
    }

    /// What the round says: passed if any target answered, failed only if
    /// every probe was sent and went unanswered.
    pub fn result(&self) -> RoundResult {
        let outcomes = || self.results.iter().map(|r| &r.outcome);
        if outcomes().any(|o| o.is_ok()) {
            RoundResult::Passed
        } else if outcomes().all(|o| o.as_ref().err().is_some_and(Miss::sent)) {
            RoundResult::Failed
        } else {
            RoundResult::Unsent
        }
    }

    /// `target: error` for each failure, for logs.
    pub fn failures(&self) -> String {
        self.results
            .iter()
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", r.target))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Sends probe rounds from inside a network namespace.
#[derive(Debug, Clone)]
pub struct Prober {
    /// `/run/netns/NAME`; `None` probes from the daemon's own namespace
    /// (only useful in tests of the probe code itself).
    pub netns: Option<PathBuf>,
    pub targets: Vec<ProbeTarget>,
    pub timeout: Duration,
}

impl Prober {
    /// Probe every target once.
    pub async fn round(&self) -> Round {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hanat-probe".into())
            .spawn(move || {
                let _ = tx.send(me.round_blocking());
            });
        if let Err(e) = spawned {
            return self.fail_all(Miss::Unsent(format!("cannot start probe thread: {e}")));
        }
        rx.await.unwrap_or_else(|_| {
            self.fail_all(Miss::Unsent("probe thread ended without a result".into()))
        })
    }

    /// A round in which every target failed for the same reason.
    pub fn fail_all(&self, why: Miss) -> Round {
        Round {
            results: self
                .targets
                .iter()
                .map(|t| TargetResult {
                    target: t.clone(),
                    outcome: Err(why.clone()),
                })
                .collect(),
        }
    }

    fn round_blocking(&self) -> Round {
        if let Some(path) = &self.netns {
            // A namespace that is missing is drift a converge repairs (a
            // failed round); one that cannot be opened for want of a
            // descriptor is this process's trouble (unsent).
            let entered = std::fs::File::open(path)
                .map_err(|e| {
                    let why = format!("cannot open probe namespace {}: {e}", path.display());
                    match miss(&e) {
                        Miss::Unsent(_) => Miss::Unsent(why),
                        Miss::Unanswered(_) => Miss::Unanswered(why),
                    }
                })
                .and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Miss::Unsent(format!(
                            "cannot enter probe namespace {}: {e}",
                            path.display()
                        ))
                    })
                });
            if let Err(why) = entered {
                return self.fail_all(why);
            }
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return self.fail_all(Miss::Unsent(format!("cannot start probe runtime: {e}")));
            }
        };
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, t) in self.targets.iter().enumerate() {
                let t = t.clone();
                let timeout = self.timeout;
                set.spawn(async move { (i, probe_one(&t, timeout).await) });
            }
            let mut outcomes: Vec<Option<Result<Duration, Miss>>> = vec![None; self.targets.len()];
            while let Some(joined) = set.join_next().await {
                if let Ok((i, outcome)) = joined {
                    outcomes[i] = Some(outcome);
                }
            }
            Round {
                results: self
                    .targets
                    .iter()
                    .zip(outcomes)
                    .map(|(t, o)| TargetResult {
                        target: t.clone(),
                        outcome: o.unwrap_or_else(|| Err(Miss::Unsent("probe task failed".into()))),
                    })
                    .collect(),
            }
        })
    }
}

async fn probe_one(target: &ProbeTarget, timeout: Duration) -> Result<Duration, Miss> {
    let start = Instant::now();
    let attempt = async {
        match target {
            ProbeTarget::Tcp { host, port } => connect(host, *port).await,
            ProbeTarget::Http { url } => {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| Miss::Unsent(e.to_string()))?;
                // Any HTTP answer, even an error status, proves the path works.
                client.get(url).send().await.map(drop).map_err(|e| {
                    use std::error::Error;
                    let mut msg = e.to_string();
                    let mut local = false;
                    let mut src = e.source();
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        if let Some(io) = s.downcast_ref::<std::io::Error>() {
                            local |= !miss(io).sent();
                        }
                        src = s.source();
                    }
                    match local {
                        true => Miss::Unsent(msg),
                        false => Miss::Unanswered(msg),
                    }
                })
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Miss::Unanswered(format!(
            "no answer within {}",
            crate::domain::human(timeout)
        ))),
    }
}

/// A TCP connection to `host:port`. The socket is made before the
/// connection is tried, so a failure to make it (no descriptor, a
/// sandbox) is told from a connection that was tried and failed.
async fn connect(host: &str, port: u16) -> Result<(), Miss> {
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| miss(&e))?
        .find(std::net::SocketAddr::is_ipv4)
        .ok_or_else(|| Miss::Unanswered(format!("{host} has no IPv4 address")))?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| Miss::Unsent(e.to_string()))?;
    socket.connect(addr).await.map(drop).map_err(|e| miss(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_target_answering_is_healthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good = listener.local_addr().unwrap();
        // A port that was free a moment ago: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let prober = Prober {
            netns: None,
            targets: vec![
                format!("tcp://{closed}").parse().unwrap(),
                format!("tcp://{good}").parse().unwrap(),
            ],
            timeout: Duration::from_secs(2),
        };
        let round = prober.round().await;
        assert!(round.ok(), "{round:?}");
        assert!(round.results[0].outcome.is_err());
        assert!(round.results[1].outcome.is_ok());
        assert!(round.failures().contains(&closed.to_string()));

        let only_bad = Prober {
            targets: vec![format!("tcp://{closed}").parse().unwrap()],
            ..prober
        };
        assert!(!only_bad.round().await.ok());
    }

    #[test]
    fn a_round_fails_only_when_every_probe_was_sent_and_unanswered() {
        let ms = Duration::from_millis;
        let round = |outcomes: Vec<Result<Duration, Miss>>| Round {
            results: outcomes
                .into_iter()
                .map(|outcome| TargetResult {
                    target: "tcp://192.0.2.1:443".parse().unwrap(),
                    outcome,
                })
                .collect(),
        };
        let lost = || Err(Miss::Unanswered("no answer within 500ms".into()));
        let emfile = || Err(Miss::Unsent("Too many open files (os error 24)".into()));
        use RoundResult::*;
        for (outcomes, want) in [
            (vec![Ok(ms(3)), lost()], Passed),
            (vec![emfile(), Ok(ms(3))], Passed),
            (vec![lost(), lost()], Failed),
            // One target black-holed, the other never tried: no evidence.
            (vec![lost(), emfile()], Unsent),
            (vec![emfile(), emfile()], Unsent),
        ] {
            let r = round(outcomes);
            assert_eq!(r.result(), want, "{r:?}");
            assert_eq!(r.ok(), want == Passed);
        }
        assert!(
            round(vec![emfile()])
                .failures()
                .contains("not sent: Too many")
        );
    }

    #[test]
    fn local_errors_are_unsent_and_path_errors_unanswered() {
        use nix::errno::Errno::*;
        let miss_of = |e: nix::errno::Errno| miss(&std::io::Error::from_raw_os_error(e as i32));
        for local in [EMFILE, ENFILE, ENOBUFS, EPERM] {
            assert!(!miss_of(local).sent(), "{local}");
        }
        for path in [ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, ETIMEDOUT] {
            assert!(miss_of(path).sent(), "{path}");
        }
    }

    #[tokio::test]
    async fn missing_namespace_fails_every_target_with_a_reason() {
        let prober = Prober {
            netns: Some("/run/netns/hanat-test-does-not-exist".into()),
            targets: vec!["tcp://127.0.0.1:1".parse().unwrap()],
            timeout: Duration::from_millis(200),
        };
        let round = prober.round().await;
        // Missing is drift a converge repairs: a failed round, not unsent.
        assert_eq!(round.result(), RoundResult::Failed);
        assert!(
            round.failures().contains("probe namespace"),
            "{}",
            round.failures()
        );
    }

    #[tokio::test]
    async fn http_target_any_status_counts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        });
        let prober = Prober {
            netns: None,
            targets: vec![format!("http://{addr}/health").parse().unwrap()],
            timeout: Duration::from_secs(2),
        };
        let round = prober.round().await;
        assert!(round.ok(), "{round:?}");
    }
}
