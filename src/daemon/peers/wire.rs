//! The heartbeat wire: this NAT's verdict sent to every peer, and the
//! peers' heard, on `peers.port`. Both tasks await nothing but the socket,
//! so a slow AWS API never silences a healthy NAT.

use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::warn;

use crate::daemon::ctx::Ctx;
use crate::daemon::log::LogThrottle;
use crate::decide::auth::{Rejected, Stamp};
use crate::decide::backoff::PEER_RECEIVE_RETRY;
use crate::decide::peers::{Arrival, Message};

/// Milliseconds since the Unix epoch, the clock heartbeats (and connection
/// copies) are stamped with.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Send this NAT's verdict to every peer that may still be there, every
/// `peers.interval` and at once when it changes, until aborted. Awaits
/// nothing but the socket.
pub(super) async fn beacon(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut status = ctx.status.subscribe();
    let (interval, port) = (ctx.config.peers.interval, ctx.config.peers.port);
    let epoch = unix_ms();
    let mut seq = 0;
    loop {
        seq += 1;
        let msg = Message {
            instance: ctx.me.instance_id.clone(),
            az: ctx.me.availability_zone.clone(),
            status: *status.borrow_and_update(),
            seq,
        };
        let stamp = Stamp {
            epoch,
            seq,
            sent_ms: unix_ms(),
        };
        let msg = ctx.heartbeats.seal(&msg, stamp);
        let targets = ctx.peers().heartbeat_targets();
        for ip in targets {
            let _ = socket.send_to(msg.as_bytes(), (ip, port)).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = status.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }
}

/// Receive heartbeats until aborted. A heartbeat counts when [`auth`]
/// accepts it (signed with a key of ours, fresh, newer than the last one
/// from the same peer) and it comes from the address of the peer it names.
pub(super) async fn receive(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = [0u8; 512];
    let mut throttle = LogThrottle::default();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(PEER_RECEIVE_RETRY).await;
            continue;
        };
        let std::net::IpAddr::V4(from) = from.ip() else {
            continue;
        };
        let opened = ctx
            .heartbeats
            .open(&buf[..n], unix_ms(), &ctx.me.instance_id);
        let msg = match opened {
            Ok(o) => o.msg,
            Err(Rejected::Malformed) => continue,
            Err(why) => {
                ctx.metrics.heartbeat_rejected(why.label());
                if let Some(n) = throttle.check(why.label(), why.label(), Instant::now()) {
                    warn!(suppressed = n, from = %from, reason = %why, "ignored a heartbeat");
                }
                continue;
            }
        };
        if msg.instance == ctx.me.instance_id {
            continue;
        }
        let (what, changed, silence) = {
            let mut s = ctx.peers();
            let silence = s.view().silence(&msg.instance, ctx.now());
            let (what, changed) = s.hear(&msg, from, ctx.now());
            if what == Arrival::Unknown {
                ctx.heartbeats.want_list();
            }
            (what, changed, silence.filter(|_| what == Arrival::Record))
        };
        if let Some(gap) = silence.filter(|g| *g >= ctx.config.peers.suspect_after) {
            warn!(peer = %msg.instance, silent_ms = gap.as_millis() as u64, status = %msg.status, "heard a peer again after a silence longer than peers.suspect_after");
        }
        if what == Arrival::WrongSender {
            let key = format!("{} from {from}", msg.instance);
            if let Some(n) = throttle.check("sender", &key, Instant::now()) {
                warn!(suppressed = n, peer = %msg.instance, from = %from, "ignored a heartbeat naming a peer but not sent from its address");
            }
        }
        if changed {
            ctx.wake.notify_one();
        }
    }
}
