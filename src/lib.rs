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

pub use aws::AwsError;

/// Exit codes, one per failure class (from sysexits.h).
pub mod exit {
    /// Bad command line.
    pub const USAGE: u8 = 64;
    /// A required service (instance metadata, AWS) is unavailable.
    pub const UNAVAILABLE: u8 = 69;
    /// Internal error.
    pub const SOFTWARE: u8 = 70;
    /// The kernel could not be configured (nft or ip missing, no permission).
    pub const OSERR: u8 = 71;
    /// The daemon could not send its probes for `heartbeat.unable_restart`
    /// (out of descriptors or memory): a restart is the remedy.
    pub const TEMPFAIL: u8 = 75;
    /// Bad configuration file.
    pub const CONFIG: u8 = 78;
}

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
