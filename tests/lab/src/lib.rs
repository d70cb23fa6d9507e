//! hanat-lab: a multi-AZ VPC on one machine, for trying hanat without an
//! AWS account and for proving it in tests.
//!
//! - [`moto`]: the pinned moto server (EC2 and Auto Scaling control plane);
//! - [`cloud`]: creating and reading VPC resources through the AWS SDK;
//! - [`netns`]: namespaces, veths, sockets and processes inside them;
//! - [`imds`]: a per-instance IMDSv2 emulator with tokens enforced;
//! - [`lab`]: the assembled VPC with its router, internet and NATs.

pub mod chaos;
pub mod cloud;
pub mod imds;
pub mod lab;
pub mod moto;
pub mod netns;

/// Make `cmd`'s child receive SIGKILL when the lab process dies, so a
/// crashed test leaves no daemon behind. The signal fires when the *thread*
/// that spawned the child ends: spawn only from long-lived threads (the
/// runtime's workers or the main thread), never from `spawn_blocking`.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
