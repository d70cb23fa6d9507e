//! The heartbeat keys: read from Secrets Manager before failover starts,
//! read again every `aws.refresh_interval` (sooner when a heartbeat names
//! a key we do not know), and rotated without a gap: after a rotation this
//! NAT signs with the previous key for one more refresh interval, so peers
//! that have not read the new one yet still hear it.

use tokio::time::Instant;
use tracing::{info, warn};

use super::PeersLoop;
use crate::daemon::ctx::Ctx;
use crate::decide::auth::{Key, Keys, Policy};
use crate::decide::backoff::{KEY_ON_DEMAND, KEY_READ};

impl PeersLoop {
    /// Read the heartbeat keys again every `aws.refresh_interval`, or sooner
    /// (at most every [`KEY_ON_DEMAND`]) when a heartbeat came signed with
    /// a key we do not know. A failed read keeps the keys we have.
    pub(super) async fn read_keys_if_due(&mut self) {
        let Some(secret) = self.ctx.config.peers.key_secret.clone() else {
            return;
        };
        {
            let mut auth = self.ctx.heartbeats.policy();
            if auth.sign_with_previous && Instant::now() >= self.sign_new_at {
                auth.sign_with_previous = false;
                let key = auth.keys.as_ref().map(|k| k.current.id().to_owned());
                info!(key = ?key, "signing heartbeats with the new key");
            }
        }
        let wanted = self.ctx.heartbeats.keys_wanted();
        if !self.keys.due(wanted, KEY_ON_DEMAND) {
            return;
        }
        self.ctx.heartbeats.keys_read();
        match read_keys(&self.ctx, &secret).await {
            Ok(keys) => {
                let mut auth = self.ctx.heartbeats.policy();
                if auth.keys.as_ref() != Some(&keys) {
                    // A rotation: the key we signed with is now the previous
                    // one. Keep signing with it until every peer has had a
                    // refresh interval to read the new one.
                    let rotated = auth.keys.as_ref().map(|k| &k.current) == keys.previous.as_ref();
                    info!(secret = %secret, key = keys.current.id(), previous = ?keys.previous.as_ref().map(|k| k.id()), "heartbeat keys changed");
                    auth.keys = Some(keys);
                    auth.sign_with_previous = rotated;
                    self.sign_new_at = Instant::now() + self.ctx.config.aws.refresh_interval;
                }
                self.keys.succeeded(self.ctx.config.aws.refresh_interval);
            }
            Err(e) => {
                let wait = self.keys.failed();
                if let Some(n) = self.throttle.check("keys", &e, Instant::now()) {
                    warn!(suppressed = n, secret = %secret, error = %e, retry_in = %crate::domain::human(wait), "cannot read the heartbeat keys again; keeping the ones read before");
                }
            }
        }
    }
}

/// Which heartbeats this NAT sends and accepts: signed with the key of
/// `peers.key_secret`, read before failover starts (retried on
/// [`KEY_READ`] for as long as it takes); without one, unauthenticated
/// only if `peers.accept_unauthenticated`, else `None`: failover is off.
pub async fn policy(ctx: &Ctx) -> Option<Policy> {
    let accept_unauthenticated = ctx.config.peers.accept_unauthenticated;
    let Some(secret) = &ctx.config.peers.key_secret else {
        if accept_unauthenticated {
            warn!(
                "peers.key_secret is not set: heartbeats are unauthenticated (hanat/1), and any host that can forge a NAT's address can fake its verdict"
            );
            return Some(Policy {
                accept_unauthenticated,
                ..Policy::default()
            });
        }
        warn!(
            "peers.key_secret is not set: peer failover is off (set it to the secret holding the heartbeat key; peers.accept_unauthenticated = true only during an upgrade from a version without keys)"
        );
        return None;
    };
    let mut backoff = KEY_READ.backoff();
    loop {
        match read_keys(ctx, secret).await {
            Ok(keys) => {
                info!(secret = %secret, key = keys.current.id(), previous = ?keys.previous.as_ref().map(|k| k.id()), unauthenticated_accepted = accept_unauthenticated, "heartbeat keys read");
                return Some(Policy {
                    keys: Some(keys),
                    accept_unauthenticated,
                    sign_with_previous: false,
                });
            }
            Err(e) => {
                let wait = backoff.fail();
                warn!(secret = %secret, error = %e, retry_in = %crate::domain::human(wait), "cannot read the heartbeat key: peer failover waits for it (this NAT keeps forwarding its own AZ)");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The current key of `secret` and the one it replaced, if any; an error
/// says what is wrong without showing a key.
async fn read_keys(ctx: &Ctx, secret: &str) -> Result<Keys, String> {
    let current = ctx
        .cloud
        .secret(secret, "AWSCURRENT")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such secret, or it has no current value")?;
    let current = Key::new(&current).map_err(|e| format!("its current value {e}"))?;
    let previous = match ctx.cloud.secret(secret, "AWSPREVIOUS").await {
        Ok(v) => v.and_then(|v| Key::new(&v).ok()),
        // The previous key only widens what is accepted: do without it.
        Err(_) => None,
    };
    Ok(Keys { current, previous })
}
