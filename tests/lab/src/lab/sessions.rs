//! Long-lived sessions: many TCP connections from one private host to an
//! internet server's session port, as database clients, downloads and
//! websockets hold them. Each asks which address the server sees, waits
//! for the answer however long it takes (the host's own TCP retransmits
//! meanwhile), then asks again after a pause. So a connection a NAT change
//! kept shows as a stall, one it lost as a reset, or as a stall that never
//! ends. A broken connection is opened again, as an application would
//! (counted); only the first connection of each session counts as kept.
//!
//! The far end is a real kernel socket: a packet arriving from an address
//! or port it does not know (a connection translated afresh by another
//! NAT) is answered with a reset, as a server on the internet does.
//!
//! Beside them, one UDP stream (a VoIP call, a game, a VPN): a datagram
//! every `every`, each answered with the public address and port the
//! server saw. It is kept when every answer names the same one and the
//! answers go on to the end; a NAT change that translates it afresh
//! shows as a second address or port.

use super::*;

/// What happened to one session.
#[derive(Debug, Clone, Default)]
struct State {
    /// The first connection is open.
    opened: bool,
    /// How the first connection ended, if it did.
    broke: Option<Broke>,
    /// When the connection's unanswered question was asked.
    asked: Option<Instant>,
    /// Longest wait for an answer on the first connection (a wait that
    /// ended in its breaking included).
    longest: Duration,
    /// Resets, all connections of the session.
    resets: usize,
    /// Connections opened again after one broke.
    reconnects: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broke {
    Reset,
    /// Closed, timed out or another error.
    Other,
}

/// What the sessions of one host saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionsReport {
    pub sessions: usize,
    /// Sessions whose first connection went on to the end, answering.
    pub kept: usize,
    /// Sessions whose first connection was reset.
    pub reset: usize,
    /// Sessions whose first connection was still waiting for an answer at
    /// the end, for longer than [`STALLED`]: hung, as an application
    /// would be until its own timeout.
    pub stalled: usize,
    /// Connections opened again after one broke.
    pub reconnects: usize,
    /// Per session, the longest wait for an answer on its first connection
    /// (for a broken one, up to its breaking; for a stalled one, up to the
    /// end), longest first.
    pub longest_stalls: Vec<Duration>,
    /// The UDP stream beside the sessions, if there was one.
    pub stream: Option<StreamReport>,
}

/// What the UDP stream saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// The public addresses and ports the server saw it from, in order.
    pub seen: Vec<std::net::SocketAddrV4>,
    /// The longest time without an answer (up to the end, if unanswered
    /// then).
    pub longest_gap: Duration,
    /// Answered within [`STALLED`] of the end.
    pub answering: bool,
}

impl StreamReport {
    /// Kept: one public address and port throughout, answering at the end.
    pub fn kept(&self) -> bool {
        self.seen.len() == 1 && self.answering
    }
}

impl SessionsReport {
    /// `"kept/sessions"`.
    pub fn kept_of(&self) -> String {
        format!("{}/{}", self.kept, self.sessions)
    }
}

/// A wait for an answer still open at the end, longer than this, is a
/// stall: the lab's answers take milliseconds.
pub const STALLED: Duration = Duration::from_secs(1);

/// Sessions from one host, until [`Sessions::finish`].
pub struct Sessions {
    stop: Arc<AtomicBool>,
    states: Arc<Mutex<Vec<State>>>,
    stream: Arc<Mutex<Stream>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The UDP stream as it goes.
#[derive(Debug, Default)]
struct Stream {
    seen: Vec<std::net::SocketAddrV4>,
    last: Option<Instant>,
    longest_gap: Duration,
}

impl Sessions {
    /// `n` sessions from inside `ns` to `server`, each asking again `every`
    /// after its last answer.
    pub(super) fn start(ns: &Netns, server: Ipv4Addr, n: usize, every: Duration) -> Sessions {
        let stop = Arc::new(AtomicBool::new(false));
        let states = Arc::new(Mutex::new(vec![State::default(); n]));
        let stream = Arc::new(Mutex::new(Stream::default()));
        let (st, ss, sm) = (stop.clone(), states.clone(), stream.clone());
        let thread = crate::netns::spawn_in_netns(&ns.path(), move || async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                set.spawn(session(i, server, every, ss.clone()));
            }
            if n > 0 {
                set.spawn(udp_stream(server, every, sm));
            }
            while !st.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            set.abort_all();
            while set.join_next().await.is_some() {}
        });
        Sessions {
            stop,
            states,
            stream,
            thread: Some(thread),
        }
    }

    /// Whether every session has its first connection open.
    pub fn all_open(&self) -> bool {
        lock(&self.states).iter().all(|s| s.opened)
    }

    /// Whether a session's first connection, unbroken, has been waiting
    /// for an answer longer than [`STALLED`].
    pub fn waiting(&self) -> bool {
        let now = Instant::now();
        lock(&self.states).iter().any(|s| {
            s.opened
                && s.broke.is_none()
                && s.asked
                    .is_some_and(|at| now.saturating_duration_since(at) > STALLED)
        })
    }

    /// The longest any first connection, unbroken, has been waiting for
    /// an answer now.
    pub fn longest_wait(&self) -> Duration {
        let now = Instant::now();
        (lock(&self.states).iter())
            .filter(|s| s.opened && s.broke.is_none())
            .filter_map(|s| s.asked.map(|at| now.saturating_duration_since(at)))
            .max()
            .unwrap_or_default()
    }

    /// Stop and summarise; the measurement ends now.
    pub fn finish(mut self) -> SessionsReport {
        let now = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut r = summarize(&lock(&self.states), now);
        if r.sessions > 0 {
            let s = lock(&self.stream);
            let since = s.last.map(|at| now.saturating_duration_since(at));
            r.stream = Some(StreamReport {
                seen: s.seen.clone(),
                longest_gap: s.longest_gap.max(since.unwrap_or_default()),
                answering: since.is_some_and(|d| d <= STALLED),
            });
        }
        r
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Summarise sessions as they were at `now`. Pure.
fn summarize(states: &[State], now: Instant) -> SessionsReport {
    let mut r = SessionsReport {
        sessions: states.len(),
        ..SessionsReport::default()
    };
    for s in states {
        let open = match (s.broke, s.asked) {
            (None, Some(at)) => now.saturating_duration_since(at),
            _ => Duration::ZERO,
        };
        match s.broke {
            Some(Broke::Reset) => r.reset += 1,
            Some(Broke::Other) => {}
            None if !s.opened => {}
            None if open > STALLED => r.stalled += 1,
            None => r.kept += 1,
        }
        r.reconnects += s.reconnects;
        r.longest_stalls.push(s.longest.max(open));
    }
    r.longest_stalls.sort_unstable_by(|a, b| b.cmp(a));
    r
}

/// One session: connect, ask and wait, again and again; reconnect when the
/// connection breaks.
async fn session(i: usize, server: Ipv4Addr, every: Duration, states: Arc<Mutex<Vec<State>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut first = true;
    loop {
        let connect = tokio::net::TcpStream::connect(SocketAddr::from((server, SESSION_PORT)));
        let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
            tokio::time::sleep(every).await;
            continue;
        };
        {
            let s = &mut lock(&states)[i];
            match first {
                true => s.opened = true,
                false => s.reconnects += 1,
            }
        }
        let (r, mut w) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(r).lines();
        let broke = loop {
            let asked = Instant::now();
            lock(&states)[i].asked = Some(asked);
            let answer = match w.write_all(b"who\n").await {
                Ok(()) => lines.next_line().await,
                Err(e) => Err(e),
            };
            let waited = asked.elapsed();
            {
                let s = &mut lock(&states)[i];
                s.asked = None;
                if first {
                    s.longest = s.longest.max(waited);
                }
            }
            match answer {
                Ok(Some(_)) => tokio::time::sleep(every).await,
                Ok(None) => break Broke::Other,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Broke::Reset,
                Err(_) => break Broke::Other,
            }
        };
        let s = &mut lock(&states)[i];
        if broke == Broke::Reset {
            s.resets += 1;
        }
        if first {
            s.broke = Some(broke);
        }
        first = false;
    }
}

/// The UDP stream: a datagram every `every` from one socket, each answer
/// naming the public address and port the server saw.
async fn udp_stream(server: Ipv4Addr, every: Duration, stream: Arc<Mutex<Stream>>) {
    let Ok(socket) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
        return;
    };
    let to = SocketAddr::from((server, SESSION_PORT));
    let began = Instant::now();
    let mut buf = [0u8; 64];
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = socket.send_to(b"who", to).await;
            }
            got = socket.recv(&mut buf) => {
                let Ok(n) = got else { continue };
                let Ok(seen) = String::from_utf8_lossy(&buf[..n]).trim().parse() else {
                    continue;
                };
                let now = Instant::now();
                let s = &mut *lock(&stream);
                let gap = now.saturating_duration_since(s.last.unwrap_or(began));
                s.longest_gap = s.longest_gap.max(gap);
                s.last = Some(now);
                if s.seen.last() != Some(&seen) {
                    s.seen.push(seen);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_kept_reset_or_stalled() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let ago = |d| now.checked_sub(d).unwrap();
        let states = [
            // Answered after a 1.5 s stall, waiting 10 ms now: kept.
            State {
                opened: true,
                asked: Some(ago(ms(10))),
                longest: ms(1500),
                ..State::default()
            },
            // Reset after 800 ms, then reconnected twice.
            State {
                opened: true,
                broke: Some(Broke::Reset),
                longest: ms(800),
                resets: 2,
                reconnects: 2,
                ..State::default()
            },
            // Waiting 5 s for an answer: stalled.
            State {
                opened: true,
                asked: Some(ago(ms(5000))),
                longest: ms(3),
                ..State::default()
            },
            // Never connected: neither kept nor lost, but counted.
            State::default(),
        ];
        let r = summarize(&states, now);
        assert_eq!(r.sessions, 4);
        assert_eq!((r.kept, r.reset, r.stalled, r.reconnects), (1, 1, 1, 2));
        assert_eq!(r.longest_stalls, vec![ms(5000), ms(1500), ms(800), ms(0)]);
        assert_eq!(r.kept_of(), "1/4");
    }
}
