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
///
/// An entry the kernel made for a packet from the far end to `to` (a
/// reply that reached this NAT's address before the copy: this NAT just
/// took the Elastic IP it goes to) holds the copy's reply side; it serves
/// nothing (nothing here translates toward a private host without a
/// connection from it) and is deleted so the copy can be written.
pub async fn insert(conn: &Conn, to: Mapping) -> Result<bool, KernelError> {
    let args = insert_args(conn, to);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match super::run("conntrack", &args, None).await {
        Ok(_) => return Ok(true),
        Err(e) if !exists(&e) => return Err(e),
        Err(_) => {}
    }
    let (far, far_port, port) = (
        conn.dst.to_string(),
        conn.dport.to_string(),
        to.port.to_string(),
    );
    let addr = to.addr.to_string();
    let stray = [
        "-D",
        "-p",
        conn.proto.name(),
        "-s",
        &far,
        "--sport",
        &far_port,
        "-d",
        &addr,
        "--dport",
        &port,
    ];
    // Nothing deleted: the entry there is the connection's own.
    if super::run("conntrack", &stray, None).await.is_err() {
        return Ok(false);
    }
    match super::run("conntrack", &args, None).await {
        Ok(_) => Ok(true),
        Err(e) if exists(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `conntrack`'s arguments that write `conn` translated to `to`.
fn insert_args(conn: &Conn, to: Mapping) -> Vec<String> {
    let mut args: Vec<String> = [
        "-I",
        "-p",
        conn.proto.name(),
        "-s",
        &conn.src.to_string(),
        "-d",
        &conn.dst.to_string(),
        "--sport",
        &conn.sport.to_string(),
        "--dport",
        &conn.dport.to_string(),
    ]
    .map(str::to_owned)
    .into();
    let more: &[&str] = match conn.proto {
        Proto::Tcp => &["--state", "ESTABLISHED", "-t", INSERTED_TIMEOUT],
        Proto::Udp => &["-t", INSERTED_UDP_TIMEOUT],
    };
    args.extend(more.iter().map(|a| (*a).to_owned()));
    args.extend(["-u".into(), "ASSURED,SEEN_REPLY".into()]);
    args.extend(["-n".into(), format!("{}:{}", to.addr, to.port)]);
    args
}

/// The kernel refused an entry because it has one for that connection.
fn exists(e: &KernelError) -> bool {
    matches!(e, KernelError::Command { stderr, .. } if stderr.contains("exists"))
}

/// Write each of `entries`: all of them through one `conntrack -R` (a
/// line each: 10,000 took 0.06 s on the lab's machine, against 6 s one
/// process each, 16 at a time), and should that fail (it stops at its
/// first error, such as an entry the kernel has already), each again with
/// [`insert`], [`INSERT_PARALLEL`] at a time, an existing one counting as
/// written before. How many were written, and the first error.
pub async fn insert_all(entries: &[(Conn, Mapping)]) -> (usize, Option<KernelError>) {
    if entries.is_empty() {
        return (0, None);
    }
    let lines: String = (entries.iter())
        .map(|(c, m)| insert_args(c, *m).join(" ") + "\n")
        .collect();
    if super::run("conntrack", &["-R", "-"], Some(&lines))
        .await
        .is_ok()
    {
        return (entries.len(), None);
    }
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
