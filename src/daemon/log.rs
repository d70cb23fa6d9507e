//! Rate-limited logging: a flapping dependency must not flood the journal.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Suppresses identical log lines: the first is logged, repeats at most
/// once per [`LogThrottle::EVERY`], with how many were suppressed.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: HashMap<&'static str, (String, Instant, u32)>,
}

impl LogThrottle {
    pub const EVERY: Duration = Duration::from_secs(60);

    /// `Some(suppressed)` when `msg` under `key` should be logged now.
    pub fn check(&mut self, key: &'static str, msg: &str, now: Instant) -> Option<u32> {
        match self.last.get_mut(key) {
            Some((last, at, n)) if last == msg && now.duration_since(*at) < Self::EVERY => {
                *n += 1;
                None
            }
            Some(entry) => {
                let suppressed = if entry.0 == msg { entry.2 } else { 0 };
                *entry = (msg.to_owned(), now, 0);
                Some(suppressed)
            }
            None => {
                self.last.insert(key, (msg.to_owned(), now, 0));
                Some(0)
            }
        }
    }

    /// Forget `key`, so the next error under it is logged at once; whether
    /// there was one to forget (a recovery worth saying).
    pub fn clear(&mut self, key: &'static str) -> bool {
        self.last.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_suppresses_identical_repeats() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        assert_eq!(t.check("k", "boom", t0), Some(0));
        assert_eq!(t.check("k", "boom", t0 + Duration::from_secs(1)), None);
        assert_eq!(t.check("k", "boom", t0 + Duration::from_secs(2)), None);
        // A different message is logged at once.
        assert_eq!(t.check("k", "bang", t0 + Duration::from_secs(3)), Some(0));
        assert_eq!(t.check("k", "bang", t0 + Duration::from_secs(4)), None);
        // After a minute, the repeat is logged with the count.
        assert_eq!(t.check("k", "bang", t0 + Duration::from_secs(70)), Some(1));
        t.clear("k");
        assert_eq!(t.check("k", "bang", t0 + Duration::from_secs(71)), Some(0));
    }
}
