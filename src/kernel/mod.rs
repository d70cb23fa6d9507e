//! The Linux data plane: sysctls, the nftables NAT table, interface lookup,
//! the probe namespace and the probes sent from it, and the flow
//! hand-off tunnel.
//!
//! Every operation here converges: it is safe to repeat on every tick and
//! leaves the kernel in the same state whether it ran once or many times.
//! Nothing is ever torn down on exit, so a daemon restart never interrupts
//! forwarding.
//!
//! What a restarted daemon finds depends on where the state lives. The
//! sysctls, the nftables tables, the hand-off tunnel's device, rules, routes
//! and neighbour entries live in the network namespace the daemon shares
//! with the host, so they outlive it whatever mount namespace it ran in, and
//! the next daemon reads them back. The one exception is the probe
//! namespace's *handle*, a bind mount in the daemon's own mount namespace:
//! under systemd's sandbox it dies with the daemon and leaves a stale file
//! ([`probe_ns`] replaces it). Commands (`nft`, `ip`) are run without a shell; their
//! stderr becomes the error message, and one that hangs is killed after
//! [`COMMAND_TIMEOUT`].

pub mod conntrack;
pub mod counters;
pub mod link;
pub mod nft;
pub mod probe;
pub mod probe_ns;
pub mod sysctl;
pub mod tunnel;

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// "(is it installed?)" where that is the likely cause.
fn installed_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (is it installed?)",
        _ => "",
    }
}

/// A kernel configuration step failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A command could not be started: not installed, or this process out
    /// of descriptors, memory or processes.
    #[error("cannot run `{command}`: {source}{}", installed_hint(source))]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {}s; killed", after.as_secs())]
    Timeout {
        command: String,
        after: std::time::Duration,
    },
    /// A sysctl could not be written.
    #[error("sysctl {key}: cannot set to {value}: {source}")]
    Sysctl {
        key: String,
        value: String,
        source: std::io::Error,
    },
    /// A namespace handle could not be read or removed.
    #[error("namespace handle {}: {source}", path.display())]
    Handle {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The interface to NAT out of could not be found.
    #[error("network interface: {0}")]
    Interface(String),
}

/// The flow hand-off tunnel's device (see [`tunnel`]); the NAT table's
/// forward chain names it too.
pub const TUNNEL_DEVICE: &str = "hanat0";

/// Refuse an interface name that would break out of a quoted nftables string.
pub(crate) fn check_iface(iface: &str) -> Result<(), KernelError> {
    if iface.is_empty()
        || iface
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_whitespace())
    {
        return Err(KernelError::Interface(format!(
            "`{iface}` cannot be used in an nftables rule"
        )));
    }
    Ok(())
}

/// Apply an nftables ruleset (ours replace their own table) in one `nft -f`
/// transaction.
/// `sources` as the elements of an nftables set: `10.0.0.0/16, …`.
pub(crate) fn cidr_list(sources: &[crate::domain::Ipv4Cidr]) -> String {
    sources
        .iter()
        .map(|c| format!("{}/{}", c.network(), c.prefix))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the nftables table `ip <name>` exists.
pub async fn table_exists(name: &str) -> Result<bool, KernelError> {
    match run("nft", &["list", "table", "ip", name], None).await {
        Ok(_) => Ok(true),
        Err(KernelError::Command { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn apply_ruleset(ruleset: &str) -> Result<(), KernelError> {
    run("nft", &["-f", "-"], Some(ruleset)).await.map(drop)
}

/// No `nft` or `ip` command takes longer than this: one that does (a
/// kernel or another agent holding the netlink lock) is killed and its step
/// retried by the loop that ran it, instead of wedging that loop.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Run `program args…`, feeding `stdin` if given; stdout on success. Killed
/// after [`COMMAND_TIMEOUT`].
pub(crate) async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, KernelError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    match tokio::time::timeout(COMMAND_TIMEOUT, run_untimed(program, args, stdin, &command)).await {
        Ok(result) => result,
        Err(_) => Err(KernelError::Timeout {
            command,
            after: COMMAND_TIMEOUT,
        }),
    }
}

async fn run_untimed(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    command: &str,
) -> Result<String, KernelError> {
    let command = command.to_owned();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| KernelError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the command's own error below.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| KernelError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let stderr = if stderr.is_empty() {
            format!("exit status {}", out.status)
        } else {
            stderr
        };
        Err(KernelError::Command { command, stderr })
    }
}

/// Run `program args…` and read its JSON output (`ip -j`, `nft -j`).
pub(crate) async fn run_json<T: serde::de::DeserializeOwned>(
    program: &str,
    args: &[&str],
) -> Result<T, KernelError> {
    let out = run(program, args, None).await?;
    parse_json(program, args, &out)
}

/// Read the JSON that `program args…` printed.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    program: &str,
    args: &[&str],
    out: &str,
) -> Result<T, KernelError> {
    serde_json::from_str(out).map_err(|e| KernelError::Command {
        command: std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" "),
        stderr: format!("unreadable JSON: {e}"),
    })
}

/// Compare `got` with the golden file `tests/golden/<name>`; with
/// `HANAT_BLESS=1`, rewrite the file instead (after a deliberate change).
#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test helper: fails loudly by design
pub(crate) fn assert_golden(name: &str, got: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("HANAT_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        got, golden,
        "rendered text differs from {path} (HANAT_BLESS=1 to update)"
    );
}
