//! hanat-lab: a multi-AZ VPC on one machine, for trying hanat without an
//! AWS account and for proving it in tests.
//!
//! - [`moto`]: the pinned moto server (EC2 and Auto Scaling control plane);
//! - [`cloud`]: creating and reading VPC resources through the AWS SDK;
//! - [`netns`]: namespaces, veths, sockets and processes inside them;
//! - [`imds`]: a per-instance IMDSv2 emulator with tokens enforced;
//! - [`sandbox`]: the shipped systemd unit's sandbox, which every daemon
//!   of the lab runs in;
//! - [`lab`]: the assembled VPC with its router, internet and NATs.

pub mod alarms;
pub mod api;
pub mod chaos;
pub mod cloud;
pub mod connections;
pub mod fis;
pub mod imds;
pub mod lab;
pub mod moto;
pub mod netns;
pub mod plot;
pub mod sandbox;
pub mod soak;

/// Make `cmd`'s child receive SIGKILL when the lab process dies, so a
/// crashed test leaves no daemon behind. The signal fires when the *thread*
/// that spawned the child ends: spawn only from long-lived threads (the
/// runtime's workers or the main thread), never from `spawn_blocking`.
#[allow(unsafe_code)] // the one unsafe block of the workspace, see SAFETY
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

/// Commands the lab needs, with the Debian package that provides each.
const TOOLS: [(&str, &str); 10] = [
    ("curl", "curl"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("sysctl", "procps"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
];

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Make sure the lab's tools are installed: missing ones are installed with
/// apt-get when it exists (the lab runs as root), otherwise the error says
/// which packages to install.
pub fn ensure_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(c, _)| !on_path(c))
        .map(|(_, p)| *p)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        anyhow::bail!("missing tools; install the packages: {}", missing.join(" "));
    }
    eprintln!("hanat-lab: installing {} with apt-get", missing.join(" "));
    let run = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    if !(run(&["update", "-qq"]) && run(&install)) {
        anyhow::bail!("apt-get could not install: {}", missing.join(" "));
    }
    Ok(())
}

/// Whether kernel tests can run: they need root. Prints why they are
/// skipped otherwise.
pub fn can_run_kernel_tests() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("skipped: kernel and lab tests need root (network namespaces, nftables)");
    false
}
