//! Which loops are making progress: each loop says when it starts a round
//! ([`Progress::beat`]) and how long a round may take at most; the
//! supervisor pings the systemd watchdog only while no loop has overrun its
//! bound ([`Progress::stuck`]), so a loop wedged on any await gets the
//! daemon restarted, not just a wedged probe loop.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Progress {
    /// Per loop: when its current round started, and how long it may take.
    loops: Mutex<BTreeMap<&'static str, (Instant, Duration)>>,
}

impl Progress {
    /// `name` starts a round that ends within `bound`.
    pub fn beat(&self, name: &'static str, bound: Duration) {
        self.lock().insert(name, (Instant::now(), bound));
    }

    /// `name`'s current round started at `at` (a loop with several rounds
    /// in flight: its oldest).
    pub fn beat_since(&self, name: &'static str, at: Instant, bound: Duration) {
        self.lock().insert(name, (at, bound));
    }

    /// `name` is done for good (a one-shot task), or waits on nothing that
    /// can wedge (between rounds of a loop that sleeps).
    pub fn done(&self, name: &'static str) {
        self.lock().remove(name);
    }

    /// Loops whose round has run past its bound, with how long it has run.
    pub fn stuck(&self) -> Vec<(&'static str, Duration)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter_map(|(name, (at, bound))| {
                let ran = now.saturating_duration_since(*at);
                (ran > *bound).then_some((*name, ran))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, (Instant, Duration)>> {
        self.loops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_past_its_bound_is_stuck_until_it_beats_again() {
        let p = Progress::default();
        let s = Duration::from_secs;
        p.beat("routes", s(60));
        p.beat("heartbeat", s(5));
        tokio::time::advance(s(6)).await;
        assert_eq!(p.stuck(), vec![("heartbeat", s(6))]);
        p.beat("heartbeat", s(5));
        assert!(p.stuck().is_empty());
        tokio::time::advance(s(61)).await;
        let names: Vec<_> = p.stuck().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["heartbeat", "routes"]);
        p.done("routes");
        p.done("heartbeat");
        assert!(p.stuck().is_empty());
    }
}
