//! hanat: a supervisor that makes an autoscaled NAT instance as dependable as
//! a managed NAT gateway.
//!
//! Layout (dependencies point down the list; none points back):
//! - `bin/hanat.rs`: the thin `main`;
//! - [`daemon`]: the loops (routes, heartbeat, peers, planned exits) that
//!   observe, decide and act;
//! - [`decide`]: the pure decisions (routes, peers, heartbeat, flow
//!   hand-off, backoff schedules);
//! - [`aws`]: IMDSv2, EC2 and Auto Scaling adapters; [`kernel`]: sysctls,
//!   nftables, interfaces, the probe namespace and probes, the hand-off
//!   tunnel; [`notify`]: systemd readiness and watchdog;
//! - [`config`] and [`domain`]: the config file and the types all speak.

#![forbid(unsafe_code)]

pub mod aws;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod domain;
pub mod kernel;
pub mod notify;
pub mod status;
pub mod sysexits;

/// An error with its causes, `outer: inner: innermost`, skipping causes
/// whose text the outer message already contains.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
