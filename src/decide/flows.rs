//! Flow hand-off's rules: how long connections are handed back to the NAT
//! routes were taken from (the kernel side is [`crate::kernel::tunnel`], the
//! state [`crate::daemon::flows`]).

use std::time::Duration;

use crate::domain::Status;

/// How long a previous holder may be silent before its hand-off ends. Longer
/// than `peers.suspect_after`: a NAT whose daemon restarts (`systemctl stop`
/// with hand-off, then start) keeps forwarding meanwhile, and one that has
/// just started may not have heard its peers yet. For a NAT that is really
/// gone, its connections are lost either way; this only delays the reset.
pub const SILENCE: Duration = Duration::from_secs(10);

/// Whether a hand-off that started `age` ago to a peer last heard saying
/// `heard` (within [`SILENCE`]; `None`: not heard) goes on. Only
/// heartbeats count: a NAT draining on a planned exit has left its group
/// but still forwards, and still says so. Pure.
pub fn keep(age: Duration, heard: Option<Status>, max: Duration) -> bool {
    if age >= max {
        return false;
    }
    match heard {
        Some(Status::Ok | Status::Exiting | Status::Starting) => true,
        Some(Status::Failing) => false,
        None => age < SILENCE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_lasts_while_the_previous_holder_forwards() {
        let max = Duration::from_secs(300);
        let s = Duration::from_secs;
        // (age, heard, keep?)
        let cases = [
            (s(1), Some(Status::Exiting), true),
            (s(100), Some(Status::Ok), true),
            (s(300), Some(Status::Ok), false),
            (s(1), Some(Status::Failing), false),
            (s(1), None, true),
            (SILENCE, None, false),
            (s(60), None, false),
        ];
        for (age, heard, want) in cases {
            assert_eq!(keep(age, heard, max), want, "{age:?} {heard:?}");
        }
    }
}
