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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::ProbeTarget;

/// The outcome of one probe of one target.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub target: ProbeTarget,
    /// Round-trip time, or why it failed.
    pub outcome: Result<Duration, String>,
}

/// The outcome of one round.
#[derive(Debug, Clone)]
pub struct Round {
    pub results: Vec<TargetResult>,
}

impl Round {
    /// Healthy when any target answered.
    pub fn ok(&self) -> bool {
        self.results.iter().any(|r| r.outcome.is_ok())
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
            return self.fail_all(format!("cannot start probe thread: {e}"));
        }
        rx.await
            .unwrap_or_else(|_| self.fail_all("probe thread ended without a result".into()))
    }

    /// A round in which every target failed for the same reason.
    fn fail_all(&self, why: String) -> Round {
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
            let entered = std::fs::File::open(path)
                .map_err(|e| format!("cannot open probe namespace {}: {e}", path.display()))
                .and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        format!("cannot enter probe namespace {}: {e}", path.display())
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
            Err(e) => return self.fail_all(format!("cannot start probe runtime: {e}")),
        };
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, t) in self.targets.iter().enumerate() {
                let t = t.clone();
                let timeout = self.timeout;
                set.spawn(async move { (i, probe_one(&t, timeout).await) });
            }
            let mut outcomes: Vec<Option<Result<Duration, String>>> =
                vec![None; self.targets.len()];
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
                        outcome: o.unwrap_or_else(|| Err("probe task failed".into())),
                    })
                    .collect(),
            }
        })
    }
}

async fn probe_one(target: &ProbeTarget, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let attempt = async {
        match target {
            ProbeTarget::Tcp { host, port } => {
                tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            ProbeTarget::Http { url } => {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| e.to_string())?;
                // Any HTTP answer, even an error status, proves the path works.
                client.get(url).send().await.map(drop).map_err(|e| {
                    use std::error::Error;
                    let mut msg = e.to_string();
                    let mut src = e.source();
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        src = s.source();
                    }
                    msg
                })
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
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

    #[tokio::test]
    async fn missing_namespace_fails_every_target_with_a_reason() {
        let prober = Prober {
            netns: Some("/run/netns/hanat-test-does-not-exist".into()),
            targets: vec!["tcp://127.0.0.1:1".parse().unwrap()],
            timeout: Duration::from_millis(200),
        };
        let round = prober.round().await;
        assert!(!round.ok());
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
