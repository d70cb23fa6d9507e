//! The kernel's connection table through conntrack-tools' `conntrack`:
//! its events and listing (what a NAT copies to its peers), and writing a
//! peer's connection with its translation (what an adopter does before it
//! takes the peer's routes). See [`crate::decide::replicate`].

use std::process::Stdio;

use futures_util::future::join_all;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::KernelError;
use crate::domain::{Conn, Mapping, Proto};

/// Connections written at once by [`insert_all`].
const INSERT_PARALLEL: usize = 16;
/// The event socket's buffer, in bytes (8 MiB: about 40,000 events).
const EVENT_BUFFER: &str = "8388608";
/// A written TCP entry's timeout; the first packet sets the state's own.
const INSERTED_TIMEOUT: &str = "600";
/// A written UDP entry's timeout: the kernel's for a stream (the next
/// packet sets it again).
const INSERTED_UDP_TIMEOUT: &str = "120";

/// The events (new, updated, destroyed entries, every protocol: the
/// caller takes TCP and UDP) as `conntrack -E` prints them, one line each,
/// until the child dies (killed when dropped).
pub fn events() -> Result<(Child, Lines<BufReader<ChildStdout>>), KernelError> {
    // A bigger socket buffer than the default: the kernel drops events a
    // listener cannot take (a burst of closings), and the periodic listing
    // is the only other way to learn of them.
    let args = [
        "-E",
        "-e",
        "NEW,UPDATE,DESTROY",
        "-o",
        "extended",
        "-b",
        EVENT_BUFFER,
    ];
    let mut child = tokio::process::Command::new("conntrack")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| KernelError::Spawn {
            command: format!("conntrack {}", args.join(" ")),
            source,
        })?;
    let Some(out) = child.stdout.take() else {
        return Err(KernelError::Command {
            command: "conntrack -E".into(),
            stderr: "no output pipe".into(),
        });
    };
    Ok((child, BufReader::new(out).lines()))
}

/// The entries now, one line each, as `conntrack -L` prints them.
pub async fn list() -> Result<String, KernelError> {
    super::run("conntrack", &["-L", "-o", "extended"], None).await
}

/// Write `conn` as an established connection whose source is translated
/// to `to` (the NAT attribute, so the kernel translates its packets as the
/// NAT that made it did). `Ok(false)`: an entry for it exists already.
pub async fn insert(conn: &Conn, to: Mapping) -> Result<bool, KernelError> {
    let (src, dst, sport, dport) = (
        conn.src.to_string(),
        conn.dst.to_string(),
        conn.sport.to_string(),
        conn.dport.to_string(),
    );
    let nat = format!("{}:{}", to.addr, to.port);
    let mut args = vec![
        "-I",
        "-p",
        conn.proto.name(),
        "-s",
        &src,
        "-d",
        &dst,
        "--sport",
        &sport,
        "--dport",
        &dport,
    ];
    match conn.proto {
        Proto::Tcp => args.extend(["--state", "ESTABLISHED", "-t", INSERTED_TIMEOUT]),
        Proto::Udp => args.extend(["-t", INSERTED_UDP_TIMEOUT]),
    }
    args.extend(["-u", "ASSURED,SEEN_REPLY", "-n", &nat]);
    match super::run("conntrack", &args, None).await {
        Ok(_) => Ok(true),
        Err(KernelError::Command { stderr, .. }) if stderr.contains("exists") => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`insert`] each of `entries`, [`INSERT_PARALLEL`] at a time: how many
/// were written, and the first error.
pub async fn insert_all(entries: &[(Conn, Mapping)]) -> (usize, Option<KernelError>) {
    let (mut written, mut first) = (0, None);
    for chunk in entries.chunks(INSERT_PARALLEL) {
        for r in join_all(chunk.iter().map(|(c, m)| insert(c, *m))).await {
            match r {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
    }
    (written, first)
}
