//! The heartbeat's probe namespace: a tiny "private host" of the daemon's
//! own, so probes take the same path as a VPC host's packets — in through an
//! interface, through the kernel's forwarding decision, the nftables forward
//! chain and masquerade, and out of the primary interface.
//!
//! ```text
//!   probe netns NAME            NAT instance (daemon's netns)
//!   eth0 .2/30  ── veth ──  hanat-probe .1/30 ── forward+NAT ── primary iface
//! ```
//!
//! The namespace is named: `ip netns add` bind-mounts it onto
//! `/run/netns/NAME`, which keeps it alive between probe rounds and lets
//! `ip -n NAME` and the prober's `setns` find it. That bind mount lives in
//! the *mount namespace of the daemon that made it*. Under the shipped
//! systemd unit (`ProtectSystem=`, `PrivateTmp=`…) every daemon has a
//! private mount namespace, so when it dies the mount — and with it the
//! probe namespace and its veth — dies too, and what is left on the shared
//! `/run` is a plain empty file: a **stale handle**. `ip` then fails with
//! "Invalid argument" on every use. So a handle counts only when it really
//! is a namespace ([`handle`] asks the file system: `nsfs` or not); a stale
//! one is removed and the namespace made anew.
//!
//! Why named handles and not a namespace held by the daemon's own fd: the
//! `ip` commands, the prober and an operator's `ip netns exec` all address
//! the namespace by name, and a daemon outside a sandbox (or a restarted one
//! whose predecessor ran in the host's mount namespace) still adopts it with
//! its veth and addresses without a single lost probe. Under the unit the
//! namespace is rebuilt at each start instead, which takes milliseconds.
//!
//! [`ensure`] converges from whatever a predecessor left: a live namespace
//! and veth are adopted, a stale handle is replaced, a veth whose other end
//! is not in our namespace is replaced, and it is a no-op when all is in
//! place. What it does is decided by the pure [`steps`].

use std::path::{Path, PathBuf};

use super::{KernelError, link, run};
use crate::domain::Ipv4Cidr;

/// Host-side veth name (fits the 15-character limit).
pub const HOST_IFACE: &str = "hanat-probe";
/// Interface name inside the probe namespace.
pub const NS_IFACE: &str = "eth0";

/// Where `ip netns` keeps the namespace handle.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Addresses on the probe link: (host side, namespace side).
pub fn addresses(cidr: &Ipv4Cidr) -> (String, String) {
    (
        format!("{}/{}", cidr.nth(1), cidr.prefix),
        format!("{}/{}", cidr.nth(2), cidr.prefix),
    )
}

/// What is at a namespace's handle path, as seen from this process's mount
/// namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    /// A mounted namespace (`nsfs`).
    Live,
    /// Nothing.
    Missing,
    /// Something that is not a namespace: typically the empty file a daemon
    /// in a private mount namespace left behind when it died.
    Stale,
}

/// Look at the handle of namespace `name`.
pub fn handle(name: &str) -> Result<Handle, KernelError> {
    handle_at(netns_path(name))
}

fn handle_at(path: PathBuf) -> Result<Handle, KernelError> {
    match nix::sys::statfs::statfs(&path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => Ok(Handle::Live),
        Ok(_) => Ok(Handle::Stale),
        Err(nix::errno::Errno::ENOENT) => Ok(Handle::Missing),
        Err(e) => Err(KernelError::Handle {
            path,
            source: e.into(),
        }),
    }
}

/// What the kernel holds of the probe namespace and its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub handle: Handle,
    /// [`HOST_IFACE`] exists in the daemon's namespace.
    pub host_iface: bool,
    /// [`NS_IFACE`] exists in the probe namespace (only known when live).
    pub ns_iface: bool,
}

/// One change [`ensure`] makes before it sets addresses and routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Remove the stale handle file so `ip netns add` can make a new one.
    RemoveStaleHandle,
    AddNamespace,
    /// The host end's peer is not in our namespace (it died with an old
    /// one, or never was): delete it so the pair can be made again.
    DeleteHostIface,
    /// A same-named interface without our host end: clear the name.
    DeleteNsIface,
    AddVeth,
}

/// The changes that turn `found` into a live namespace with our veth.
pub fn steps(found: Found) -> Vec<Step> {
    let mut v = Vec::new();
    match found.handle {
        Handle::Live => {}
        Handle::Missing => v.push(Step::AddNamespace),
        Handle::Stale => v.extend([Step::RemoveStaleHandle, Step::AddNamespace]),
    }
    // A namespace made now is empty, whatever was read before.
    let ns_iface = found.handle == Handle::Live && found.ns_iface;
    match (found.host_iface, ns_iface) {
        (true, true) => {}
        (true, false) => v.extend([Step::DeleteHostIface, Step::AddVeth]),
        (false, true) => v.extend([Step::DeleteNsIface, Step::AddVeth]),
        (false, false) => v.push(Step::AddVeth),
    }
    v
}

/// Read what the kernel holds of namespace `name` and its link.
pub async fn find(name: &str) -> Result<Found, KernelError> {
    let handle = handle(name)?;
    let ns_iface = match handle {
        Handle::Live => link::exists_in(Some(name), NS_IFACE).await?,
        Handle::Missing | Handle::Stale => false,
    };
    Ok(Found {
        handle,
        host_iface: link::exists_in(None, HOST_IFACE).await?,
        ns_iface,
    })
}

/// Make the probe namespace, its veth and routes exist and be up. Returns
/// whether the namespace or its veth had to be made (again).
pub async fn ensure(name: &str, cidr: &Ipv4Cidr) -> Result<bool, KernelError> {
    let steps = steps(find(name).await?);
    let rebuilt = !steps.is_empty();
    for step in steps {
        tracing::debug!(namespace = name, ?step, "probe namespace");
        match step {
            Step::RemoveStaleHandle => {
                let path = netns_path(name);
                tracing::info!(
                    path = %path.display(),
                    "probe namespace handle is not a live namespace (left by a daemon in another mount namespace); making a new one"
                );
                std::fs::remove_file(&path)
                    .map_err(|source| KernelError::Handle { path, source })?;
            }
            Step::AddNamespace => run("ip", &["netns", "add", name], None).await.map(drop)?,
            Step::DeleteHostIface => {
                // Its peer may be in a namespace the kernel is still tearing
                // down, which deletes it too: gone either way is fine.
                if let Err(e) = run("ip", &["link", "del", HOST_IFACE], None).await
                    && link::exists_in(None, HOST_IFACE).await?
                {
                    return Err(e);
                }
            }
            Step::DeleteNsIface => {
                run("ip", &["-n", name, "link", "del", NS_IFACE], None).await?;
            }
            Step::AddVeth => {
                run(
                    "ip",
                    &[
                        "link", "add", HOST_IFACE, "type", "veth", "peer", "name", NS_IFACE,
                        "netns", name,
                    ],
                    None,
                )
                .await?;
            }
        }
    }
    let (host_addr, ns_addr) = addresses(cidr);
    let gateway = cidr.nth(1).to_string();
    run(
        "ip",
        &["addr", "replace", &host_addr, "dev", HOST_IFACE],
        None,
    )
    .await?;
    run("ip", &["link", "set", HOST_IFACE, "up"], None).await?;
    run(
        "ip",
        &["-n", name, "addr", "replace", &ns_addr, "dev", NS_IFACE],
        None,
    )
    .await?;
    run("ip", &["-n", name, "link", "set", "lo", "up"], None).await?;
    run("ip", &["-n", name, "link", "set", NS_IFACE, "up"], None).await?;
    run(
        "ip",
        &["-n", name, "route", "replace", "default", "via", &gateway],
        None,
    )
    .await?;
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    use super::Handle::{Live, Missing, Stale};
    use super::Step::*;
    use super::*;

    fn found(handle: Handle, host_iface: bool, ns_iface: bool) -> Found {
        Found {
            handle,
            host_iface,
            ns_iface,
        }
    }

    #[test]
    fn steps_from_every_leftover() {
        let table = [
            // Everything in place (a predecessor in our mount namespace): adopt.
            (found(Live, true, true), vec![]),
            // First start.
            (found(Missing, false, false), vec![AddNamespace, AddVeth]),
            // A sandboxed predecessor died: its namespace and veth are gone,
            // the handle file is left.
            (
                found(Stale, false, false),
                vec![RemoveStaleHandle, AddNamespace, AddVeth],
            ),
            // …and the kernel has not finished deleting its host end yet.
            (
                found(Stale, true, false),
                vec![RemoveStaleHandle, AddNamespace, DeleteHostIface, AddVeth],
            ),
            // Someone deleted the namespace but the host end lingers.
            (
                found(Missing, true, false),
                vec![AddNamespace, DeleteHostIface, AddVeth],
            ),
            // A live namespace whose inner end is gone or not ours.
            (found(Live, true, false), vec![DeleteHostIface, AddVeth]),
            (found(Live, false, true), vec![DeleteNsIface, AddVeth]),
            (found(Live, false, false), vec![AddVeth]),
            // What was read inside a namespace that is about to be replaced
            // does not count.
            (
                found(Stale, false, true),
                vec![RemoveStaleHandle, AddNamespace, AddVeth],
            ),
        ];
        for (f, want) in table {
            assert_eq!(steps(f), want, "{f:?}");
        }
    }

    #[test]
    fn a_plain_file_is_a_stale_handle_and_nothing_is_missing() {
        // Not under /run/netns: the same check on paths we may create.
        let dir = std::env::temp_dir().join(format!("hanat-handle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ns");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(handle_at(file).unwrap(), Stale);
        assert_eq!(handle_at(dir.join("absent")).unwrap(), Missing);
        // A namespace file of our own process is a live one.
        assert_eq!(handle_at("/proc/self/ns/net".into()).unwrap(), Live);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(handle("hanat-test-does-not-exist").unwrap(), Missing);
    }
}
