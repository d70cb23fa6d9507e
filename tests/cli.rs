//! What an operator sees from the `hanat` binary: exit codes and messages
//! for good and bad input. No root, no network beyond loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::{Command, Output};

fn hanat(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hanat"));
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run hanat")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config_file(text: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("hanat.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_string_lossy().into_owned();
    (dir, p)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "hanat-cli-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn version_and_help() {
    let o = hanat(&["--version"], &[]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("hanat {}", env!("CARGO_PKG_VERSION"))
    );
    let o = hanat(&["--help"], &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("usage: hanat"));
}

#[test]
fn bad_usage_exits_64() {
    for args in [&[][..], &["frobnicate"][..], &["run", "--config"][..]] {
        let o = hanat(args, &[]);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("hanat: "), "{}", stderr(&o));
    }
}

#[test]
fn config_errors_exit_78_and_name_file_and_key() {
    let (_d, path) = config_file("[heartbeat]\ninterval = \"soon\"\n");
    let o = hanat(&["run", "--config", &path], &[]);
    assert_eq!(o.status.code(), Some(78));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "hanat: {path}: heartbeat.interval: `soon` is not a duration"
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let o = hanat(
        &["check-config", "--config", "/nonexistent/hanat.toml"],
        &[],
    );
    assert_eq!(o.status.code(), Some(78));
    assert!(
        stderr(&o).contains("/nonexistent/hanat.toml: cannot read config file"),
        "{}",
        stderr(&o)
    );

    let (_d, path) = config_file("[heartbeat]\ntargets = [\"tcp://203.0.113.10:80\"]\n");
    let o = hanat(&["check-config", "--config", &path], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{path}: ok")
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_d, path) = config_file("[aws]\nimds_timeout = \"1s\"\n[log]\nformat = \"json\"\n");
    let o = hanat(
        &["run", "--config", &path],
        &[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &format!("http://127.0.0.1:{port}"),
        )],
    );
    assert_eq!(o.status.code(), Some(69));
    let err = stderr(&o);
    let logs: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!logs.is_empty(), "{err}");
    assert!(
        logs.iter().any(|l| l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("instance metadata not ready"))),
        "{err}"
    );
    assert!(logs.iter().any(|l| l["level"] == "ERROR"), "{err}");
}

#[test]
fn unreachable_imds_exits_69_after_its_budget() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_d, path) = config_file("[aws]\nimds_timeout = \"2s\"\n");
    let start = std::time::Instant::now();
    let o = hanat(
        &["run", "--config", &path],
        &[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &format!("http://127.0.0.1:{port}"),
        )],
    );
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("instance metadata not available after"),
        "{}",
        stderr(&o)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn shipped_and_documented_configs_are_accepted() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hanat.toml");
    let o = hanat(&["check-config", "--config", shipped], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The configuration reference's block, with every key at its default.
    let readme = include_str!("../docs/configuration.md");
    let start = readme
        .find("```toml\n")
        .expect("the reference has a toml block")
        + 8;
    let block = &readme[start..];
    let block = &block[..block.find("```").unwrap()];
    assert!(block.contains("[peers.fallback_nat_gateway_id]"), "{block}");
    let (_dir, path) = config_file(block);
    let o = hanat(&["check-config", "--config", &path], &[]);
    assert!(
        o.status.success(),
        "docs/configuration.md's config: {}",
        stderr(&o)
    );
    // The commented example in it is valid too.
    let example = block.replace("# \"eu-west-1a\" = ", "\"eu-west-1a\" = ");
    let (_dir2, path) = config_file(&example);
    let o = hanat(&["check-config", "--config", &path], &[]);
    assert!(
        o.status.success(),
        "docs/configuration.md's example: {}",
        stderr(&o)
    );
}

#[test]
fn status_without_a_daemon_says_so_at_once() {
    // Nothing listens on loopback port 1: refused at once.
    let (_dir, path) = config_file("[metrics]\nlisten = \"0.0.0.0:1\"\n");
    let started = std::time::Instant::now();
    let o = hanat(&["status", "--config", &path], &[]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no hanat daemon answers at http://127.0.0.1:1/status")
            && err.contains("systemctl status hanat"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Endpoints off: nothing to ask, and the config says why.
    let (_dir, path) = config_file("[metrics]\nlisten = \"\"\n");
    let o = hanat(&["status", "--config", &path], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("metrics.listen"), "{}", stderr(&o));
    // A bad address names the key.
    let (_dir, path) = config_file("[metrics]\nlisten = \"everywhere\"\n");
    let o = hanat(&["check-config", "--config", &path], &[]);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        stderr(&o).contains("metrics.listen") && stderr(&o).contains("not an address"),
        "{}",
        stderr(&o)
    );
    let o = hanat(&["plan", "--json"], &[]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
}

/// A metadata server that answers every request `403 Forbidden`, as an
/// instance with its metadata service disabled does.
fn forbidding_metadata() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 20\r\nconnection: close\r\n\r\nIMDS is disabled\r\n\r\n",
            );
        }
    });
    port
}

#[test]
fn plan_off_an_instance_says_why_within_seconds() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_d, path) = config_file("");
    // Accepts and never answers: a reply dropped after one hop.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (port, cause) in [
        (forbidding_metadata(), "403: IMDS is disabled"),
        (closed, "connection refused"),
        (silent_port, "HttpPutResponseHopLimit to 2"),
    ] {
        let start = std::time::Instant::now();
        let o = hanat(
            &["plan", "--config", &path],
            &[(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                &format!("http://127.0.0.1:{port}"),
            )],
        );
        let took = start.elapsed();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(69), "{err}");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}: {err}");
        assert!(err.contains(cause), "{err}");
        assert!(
            err.contains("run this on the NAT instance") || err.contains("not an EC2 instance"),
            "{err}"
        );
        // Said once, not retried for minutes.
        assert!(!err.contains("retry_in"), "{err}");
    }
    drop(silent);
}
