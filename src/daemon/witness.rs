//! The outside witness: EC2 application status checks. A check the
//! templates create probes this NAT's `/health` from its own subnet; the
//! daemon associates its own instance with it at start. Auto Scaling
//! replaces an instance whose application status is `impaired`, and peers
//! take a silent NAT that EC2 calls impaired as dead ([`super::peers`]):
//! a NAT that freezes while EC2 still says it runs is covered within
//! seconds of the check's verdict instead of waiting for EC2's own status
//! checks and a replacement.

use tokio::time::Instant;
use tracing::{info, warn};

use super::ctx::Ctx;
use super::log::LogThrottle;
use crate::config::status_check_id;
use crate::decide::backoff::STATUS_CHECK_ASSOCIATE;

/// Associate this instance with `peers.status_check`, retried (1 s
/// doubling to 5 min) until EC2 accepts. Forwarding never waits for it.
pub async fn associate(ctx: &Ctx) {
    let Some(check) = ctx
        .config
        .peers
        .status_check
        .as_deref()
        .and_then(status_check_id)
    else {
        return;
    };
    let mut backoff = STATUS_CHECK_ASSOCIATE.backoff();
    let mut throttle = LogThrottle::default();
    loop {
        match ctx
            .cloud
            .associate_status_check(check, &ctx.me.instance_id)
            .await
        {
            Ok(()) => {
                ctx.board().status_check = Some(check.to_owned());
                info!(
                    check,
                    "health endpoint watched by the application status check"
                );
                return;
            }
            Err(e) => {
                let wait = backoff.fail();
                if let Some(n) = throttle.check("associate", &e.to_string(), Instant::now()) {
                    warn!(suppressed = n, check, error = %e, retry_in = %crate::domain::human(wait), "cannot associate this instance with the application status check (peers.status_check): a freeze of this NAT is then only caught by EC2's own status checks; will retry");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}
