//! Bringing the metrics up to date when they are asked for (a scrape, a
//! CloudWatch call): the daemon's state from a snapshot, and the kernel's
//! counters, read at most every [`KERNEL_READ_EVERY`] whatever the scrapes
//! ask (each reading runs `nft`), with the active connections counted
//! off the async runtime.

use std::time::Duration;

use super::ctx::Ctx;
use super::snapshot::snapshot;
use crate::kernel::counters;
use crate::kernel::sysctl::conntrack_fill;
use crate::status::Snapshot;

/// The kernel's counters are read at most this often (each reading runs
/// `nft`): a scrape storm costs one reading per second.
pub const KERNEL_READ_EVERY: Duration = Duration::from_secs(1);

/// How often the active connections are counted at most once the
/// conntrack table holds more than [`ACTIVE_CHEAP`] entries. A count reads
/// the whole table as text, about 90 bytes per entry: with 250,000
/// entries, 23 MB and most of a second of CPU on the lab's machine. So it
/// runs off the async runtime, one at a time, and answers in between show
/// the last count.
const ACTIVE_RECOUNT: Duration = Duration::from_secs(10);

/// Up to this many conntrack entries (under 1 MB of text), the active
/// connections are counted at every refresh.
const ACTIVE_CHEAP: i64 = 10_000;

/// Whether the active connections are counted now, with `entries` in the
/// conntrack table and the last count `since` ago (`None`: never).
fn recount_due(entries: i64, since: Option<Duration>) -> bool {
    entries <= ACTIVE_CHEAP || since.is_none_or(|s| s >= ACTIVE_RECOUNT)
}

/// Bring every metric up to date and return the snapshot they were set
/// from: the daemon's state ([`snapshot`]) and the kernel's counters
/// ([`kernel_metrics`]).
pub async fn refresh(ctx: &Ctx) -> Snapshot {
    let snap = snapshot(ctx).await;
    ctx.metrics.show(&snap);
    kernel_metrics(ctx).await;
    snap
}

/// Read the kernel's traffic counters, conntrack statistics and active
/// connections into the metrics, unless they were read within
/// [`KERNEL_READ_EVERY`]: concurrent callers wait for the one reading.
/// What cannot be read is left as it was.
pub async fn kernel_metrics(ctx: &Ctx) {
    let mut last = ctx.metrics.kernel_read_at.lock().await;
    if last.is_some_and(|at| at.elapsed() < KERNEL_READ_EVERY) {
        return;
    }
    *last = Some(tokio::time::Instant::now());
    ctx.metrics.kernel_read();
    if let Ok(values) = counters::read_gateway().await {
        ctx.metrics.kernel(&values);
    }
    count_active(ctx).await;
}

/// Count the active connections into their gauge, unless a count is
/// running or [`recount_due`] says it is too soon. An unreadable table
/// counts none.
async fn count_active(ctx: &Ctx) {
    let Ok(mut last) = ctx.metrics.active_counted.try_lock() else {
        return;
    };
    if !recount_due(conntrack_fill().0, last.map(|at| at.elapsed())) {
        return;
    }
    let sources = ctx.me.vpc_cidrs.clone();
    let counted = tokio::task::spawn_blocking(move || {
        std::fs::File::open("/proc/net/nf_conntrack")
            .map(|f| counters::active_tcp(std::io::BufReader::new(f), &sources))
            .unwrap_or(0)
    })
    .await
    .unwrap_or(0);
    ctx.metrics.set_active(counted as i64);
    *last = Some(tokio::time::Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_conntrack_table_is_counted_at_most_every_ten_seconds() {
        let s = Duration::from_secs;
        // Small: every time.
        assert!(recount_due(0, Some(s(0))));
        assert!(recount_due(ACTIVE_CHEAP, Some(s(1))));
        // Big: the first time, then once 10 s have passed.
        assert!(recount_due(250_000, None));
        assert!(!recount_due(250_000, Some(s(9))));
        assert!(recount_due(250_000, Some(s(10))));
    }
}
