//! Traffic: the internet servers, one-off requests, long-lived sessions,
//! and meters that send at a steady rate and record every answer.

use super::*;

/// A long-lived connection to an internet server's session port.
pub struct Session {
    pub(super) stream: std::net::TcpStream,
    pub(super) reader: std::io::BufReader<std::net::TcpStream>,
}

impl Session {
    /// Which source address the server sees for this connection now; an
    /// error if the connection was reset or timed out.
    pub fn ask(&mut self) -> Result<Ipv4Addr> {
        use std::io::{BufRead, Write};
        self.stream.write_all(b"who\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the server closed the connection");
        }
        line.trim()
            .parse()
            .with_context(|| format!("bad session answer {line:?}"))
    }
}

/// One request to the whoami server from inside `ns`.
pub fn whoami(ns: &Netns, server: Ipv4Addr, timeout: Duration) -> Result<Ipv4Addr> {
    let mut s = ns.connect_tcp(SocketAddr::from((server, WHOAMI_PORT)), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.trim()
        .parse()
        .with_context(|| format!("bad whoami answer {buf:?}"))
}

/// Requests sent at a steady rate from a private host, each recorded.
pub struct Meter {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) samples: Arc<Mutex<Vec<Sample>>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    pub started: Instant,
}

/// One metered request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the meter's start.
    pub at: Duration,
    /// The source address the server saw, or `None` if the request failed.
    pub seen: Option<Ipv4Addr>,
}

/// What a meter saw.
#[derive(Debug, Clone, Default)]
pub struct MeterReport {
    pub sent: usize,
    pub lost: usize,
    /// Longest time without an answer: between two answered requests, from
    /// the meter's start to the first answer if requests failed before it,
    /// and from the last answer to the meter's stop if requests failed after
    /// it (an outage still open when the measurement ends is one).
    pub longest_gap: Duration,
    /// Source addresses in the order first seen.
    pub sources: Vec<Ipv4Addr>,
    /// How often the seen source changed from one answer to the next.
    pub source_changes: usize,
    /// When the last failed request was sent (from the meter's start).
    pub last_failure: Option<Duration>,
    /// The first answered request after the last failure.
    pub first_success_after_last_failure: Option<Duration>,
    /// The host was still failing when the meter stopped: `longest_gap`
    /// includes that open gap, up to the stop.
    pub ended_failing: bool,
    /// Every request, in the order sent.
    pub samples: Vec<Sample>,
}

impl Meter {
    /// Send a request every `every`, each on its own (so a slow or lost one
    /// does not delay the next), from inside `ns`.
    pub(super) fn start(ns: &Netns, server: Ipv4Addr, every: Duration) -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (st, sm) = (stop.clone(), samples.clone());
        let started = Instant::now();
        let thread = crate::netns::spawn_in_netns(&ns.path(), move || async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut inflight = tokio::task::JoinSet::new();
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = started.elapsed();
                let sm = sm.clone();
                inflight.spawn(async move {
                    let seen = one_request(server, Duration::from_secs(1)).await;
                    sm.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Sample { at, seen });
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        });
        Meter {
            stop,
            samples,
            thread: Some(thread),
            started,
        }
    }

    /// The report so far, without stopping.
    pub fn peek(&self) -> MeterReport {
        let ended = self.started.elapsed();
        summarize(
            &self.samples.lock().unwrap_or_else(|p| p.into_inner()),
            ended,
        )
    }

    /// Stop and summarise; the measurement ends now.
    pub fn finish(mut self) -> MeterReport {
        let ended = self.started.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        summarize(&samples, ended)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(super) async fn one_request(server: Ipv4Addr, timeout: Duration) -> Option<Ipv4Addr> {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(SocketAddr::from((server, WHOAMI_PORT)))
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        buf.trim().parse().ok()
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// Summarise samples (in any order) of a measurement that ended at
/// `ended` (from the meter's start): losses, the longest time without an
/// answer (see [`MeterReport::longest_gap`]), sources seen.
pub fn summarize(samples: &[Sample], ended: Duration) -> MeterReport {
    let mut samples = samples.to_vec();
    samples.sort_by_key(|s| s.at);
    let mut r = MeterReport {
        sent: samples.len(),
        ..MeterReport::default()
    };
    let mut last_ok: Option<&Sample> = None;
    for s in &samples {
        match s.seen {
            Some(ip) => {
                // Since the previous answer, or since the start if requests
                // failed before this first one.
                let since = match last_ok {
                    Some(prev) => Some(prev.at),
                    None => r.last_failure.map(|_| Duration::ZERO),
                };
                if let Some(since) = since {
                    r.longest_gap = r.longest_gap.max(s.at.saturating_sub(since));
                }
                if let Some(prev) = last_ok
                    && prev.seen != Some(ip)
                {
                    r.source_changes += 1;
                }
                if r.last_failure.is_some() && r.first_success_after_last_failure.is_none() {
                    r.first_success_after_last_failure = Some(s.at);
                }
                last_ok = Some(s);
                if !r.sources.contains(&ip) {
                    r.sources.push(ip);
                }
            }
            None => {
                r.lost += 1;
                r.last_failure = Some(s.at);
                r.first_success_after_last_failure = None;
            }
        }
    }
    // Failures after the last answer: the outage is still open.
    if r.last_failure.is_some() && r.first_success_after_last_failure.is_none() {
        r.ended_failing = true;
        let since = last_ok.map_or(Duration::ZERO, |s| s.at);
        r.longest_gap = r.longest_gap.max(ended.saturating_sub(since));
    }
    r.samples = samples;
    r
}

impl Lab {
    /// A listening socket on the internet namespace, for a server task.
    pub(super) fn listen_tcp(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        let l = self.inet.bind_tcp(addr)?;
        l.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(l)?)
    }

    /// Keep `task` for as long as the lab (aborted with it).
    pub(super) fn keep_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    pub(super) fn start_servers(&mut self) -> Result<()> {
        for s in SERVERS {
            // whoami: the source address seen, then close.
            let l = self.listen_tcp(SocketAddr::from((s, WHOAMI_PORT)))?;
            self.keep_task(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Ok((mut c, peer)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = c.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
                        let _ = c.shutdown().await;
                    });
                }
            }));
            // Session: the source address seen, once per line received.
            let l = self.listen_tcp(SocketAddr::from((s, SESSION_PORT)))?;
            self.keep_task(tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                while let Ok((c, peer)) = l.accept().await {
                    tokio::spawn(async move {
                        let (r, mut w) = c.into_split();
                        let mut lines = tokio::io::BufReader::new(r).lines();
                        while let Ok(Some(_)) = lines.next_line().await {
                            let answer = format!("{}\n", peer.ip());
                            if w.write_all(answer.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }));
            // The UDP stream's: the source address and port seen, for
            // each datagram.
            let u = self.inet.bind_udp(SocketAddr::from((s, SESSION_PORT)))?;
            u.set_nonblocking(true)?;
            let u = tokio::net::UdpSocket::from_std(u)?;
            self.keep_task(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok((_, peer)) = u.recv_from(&mut buf).await {
                    let _ = u.send_to(format!("{peer}\n").as_bytes(), peer).await;
                }
            }));
            let u = self.inet.bind_udp(SocketAddr::from((s, WHOAMI_PORT)))?;
            u.set_nonblocking(true)?;
            let u = tokio::net::UdpSocket::from_std(u)?;
            self.keep_task(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok((_, peer)) = u.recv_from(&mut buf).await {
                    let _ = u.send_to(format!("{}\n", peer.ip()).as_bytes(), peer).await;
                }
            }));
        }
        Ok(())
    }

    /// Ask an internet server, from AZ `i`'s private host, which source
    /// address it saw (TCP).
    pub fn whoami(&self, i: usize, timeout: Duration) -> Result<Ipv4Addr> {
        whoami(&self.azs[i].host, SERVERS[0], timeout)
    }

    /// Open a long-lived connection from AZ `i`'s private host to an
    /// internet server.
    pub fn session(&self, i: usize, timeout: Duration) -> Result<Session> {
        let s = self.azs[i]
            .host
            .connect_tcp(SocketAddr::from((SERVERS[0], SESSION_PORT)), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Session {
            reader: std::io::BufReader::new(s.try_clone()?),
            stream: s,
        })
    }

    /// The same over UDP.
    pub fn whoami_udp(&self, i: usize, timeout: Duration) -> Result<Ipv4Addr> {
        let s = self.azs[i].host.bind_udp("0.0.0.0:0".parse()?)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"who", SocketAddr::from((SERVERS[1], WHOAMI_PORT)))?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        String::from_utf8_lossy(&buf[..n])
            .trim()
            .parse()
            .context("bad UDP answer")
    }

    /// Make the router send traffic from outside for AZ `i`'s private
    /// subnet to its NAT (an attacker who can reach the NAT).
    pub fn route_inbound_via_nat(&self, i: usize) -> Result<()> {
        let nat = self.nat(i).ok_or_else(|| anyhow!("no NAT"))?;
        self.rtr.ip("rule add iif igw lookup 99 pref 99").ok();
        self.rtr.ip(&format!(
            "route replace 10.0.{}.0/24 via {} table 99",
            2 * i + 1,
            nat.instance.private_ip
        ))?;
        self.igw.ip(&format!(
            "route replace 10.0.{}.0/24 via 172.31.255.1",
            2 * i + 1
        ))?;
        self.inet.ip(&format!(
            "route replace 10.0.{}.0/24 via 203.0.113.1",
            2 * i + 1
        ))?;
        Ok(())
    }

    /// Try to open a TCP connection from the internet to AZ `i`'s private host.
    pub fn connect_inbound(&self, i: usize, port: u16, timeout: Duration) -> Result<()> {
        let host = SocketAddr::from((self.azs[i].host_ip, port));
        self.inet.connect_tcp(host, timeout).map(drop)
    }

    /// Start a steady stream of requests from AZ `i`'s private host.
    pub fn meter(&self, i: usize, every: Duration) -> Meter {
        Meter::start(&self.azs[i].host, SERVERS[0], every)
    }

    /// `n` long-lived sessions from AZ `i`'s private host, each asking
    /// `every` after its last answer (see [`Sessions`]).
    pub fn sessions(&self, i: usize, n: usize, every: Duration) -> Sessions {
        Sessions::start(&self.azs[i].host, SERVERS[0], n, every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_an_outage() {
        let ip = |n| Some(Ipv4Addr::new(198, 51, 100, n));
        let ms = Duration::from_millis;
        let samples: Vec<Sample> = [
            (0, ip(10)),
            (50, ip(10)),
            (100, None),
            (150, None),
            (200, ip(11)),
            (250, ip(11)),
        ]
        .into_iter()
        .map(|(t, seen)| Sample { at: ms(t), seen })
        .collect();
        let r = summarize(&samples, ms(300));
        assert_eq!(r.sent, 6);
        assert_eq!(r.lost, 2);
        assert_eq!(r.longest_gap, ms(150));
        assert_eq!(r.source_changes, 1);
        assert_eq!(r.last_failure, Some(ms(150)));
        assert_eq!(r.first_success_after_last_failure, Some(ms(200)));
        assert_eq!(r.sources.len(), 2);
        assert!(!r.ended_failing);

        // Never answered again: the open gap runs to the end of the run.
        let r = summarize(&samples[..4], ms(10_000));
        assert!(r.ended_failing);
        assert_eq!(r.longest_gap, ms(10_000 - 50));
        assert_eq!(r.first_success_after_last_failure, None);
        // Never answered at all: from the start.
        let r = summarize(&samples[2..4], ms(5_000));
        assert_eq!(r.longest_gap, ms(5_000));
        // Failing at the start, then answered: from the start.
        let r = summarize(&samples[2..], ms(300));
        assert_eq!(r.longest_gap, ms(200));
        assert!(!r.ended_failing);
    }
}
