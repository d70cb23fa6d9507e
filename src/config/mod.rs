//! The daemon's configuration file (`/etc/hanat/hanat.toml`).
//!
//! Parsed once at start-up into plain values. Unknown keys are errors, and
//! every error names the file, the key and the problem, so an operator can fix
//! a typo without reading source. No I/O beyond reading the one file.
//!
//! One file per group of sections, each section with its own rules
//! (`validate`); the rules across sections are here
//! (`Config::across_sections`). Keys renamed keep their old names as
//! aliases (`docs/configuration.md` lists them).

mod addresses;
mod de;
mod kernel;
mod observe;
mod peers;
mod probe;
mod replication;
mod routes;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::domain::{Conntrack, NatGatewayId, ProbeTarget};
pub use addresses::{Eip, MAX_SNAT_ADDRESSES, Snat};
pub use kernel::{CONNTRACK_ENTRY_BYTES, Kernel, Sizing};
pub use observe::{CloudWatch, Log, LogFormat, MetricSet, Metrics};
pub use peers::{EVERY_AZ, Failover, Peers, status_check_id};
pub use probe::Probe;
pub use replication::Replication;
pub use routes::{Aws, Discovery, Exit, Routes};

/// A configuration problem. The message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key has a bad value, an unknown name, or the file is not TOML.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// Dotted key such as `probe.interval`; `(file)` for syntax errors.
        key: String,
        message: String,
    },
}

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub discovery: Discovery,
    pub routes: Routes,
    /// `[probe]`; `[heartbeat]` is its old name, still read.
    #[serde(alias = "heartbeat")]
    pub probe: Probe,
    pub kernel: Kernel,
    pub peers: Peers,
    pub replication: Replication,
    pub exit: Exit,
    pub eip: Eip,
    pub snat: Snat,
    pub aws: Aws,
    pub log: Log,
    pub metrics: Metrics,
    pub cloudwatch: CloudWatch,
}

impl Config {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid("(file)", located(text, &e)))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(file)".to_owned() } else { key };
            invalid(&key, located(text, e.inner()))
        })?;
        config.validate().map_err(|(key, msg)| invalid(key, msg))?;
        Ok(config)
    }

    /// Every section's own rules, then the rules across sections.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.discovery.validate()?;
        self.routes.validate()?;
        self.probe.validate()?;
        self.kernel.validate()?;
        self.peers.validate()?;
        self.replication.validate()?;
        self.cloudwatch.validate()?;
        self.snat.validate()?;
        self.aws.validate()?;
        self.across_sections()
    }

    fn across_sections(&self) -> Result<(), (&'static str, String)> {
        if self.aws.refresh_interval < self.routes.reconcile_interval {
            return Err((
                "aws.refresh_interval",
                "must be at least routes.reconcile_interval".into(),
            ));
        }
        if self.peers.status_check.is_some() && self.metrics.listen.is_none() {
            return Err((
                "peers.status_check",
                "needs the health endpoint it probes: set metrics.listen".into(),
            ));
        }
        let p = self.peers.port;
        if self.replication.enabled && [p, p.wrapping_add(1)].contains(&self.replication.port) {
            return Err((
                "replication.port",
                format!(
                    "must differ from peers.port ({p}) and the flow hand-off tunnel's port ({})",
                    p.wrapping_add(1)
                ),
            ));
        }
        if self.snat.addresses > 1 && !self.eip.claim {
            return Err((
                "snat.addresses",
                "above 1 needs eip.claim = true (each address needs an Elastic IP of its own)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The error's message, prefixed with its line number when it has a span.
fn located(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{msg} (line {line})")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/hanat/hanat.toml")).map_err(|e| e.to_string())
    }

    /// The AMI's config file (systemd/hanat.toml) and the reference's block
    /// (docs/configuration.md) both say they show the defaults: they must
    /// parse to exactly what an empty file gives, or a changed default
    /// leaves the AMI running the old one.
    #[test]
    fn the_shipped_and_documented_configs_are_the_defaults() {
        let shipped = include_str!("../../systemd/hanat.toml");
        assert_eq!(
            parse(shipped).unwrap(),
            Config::default(),
            "systemd/hanat.toml"
        );
        let reference = include_str!("../../docs/configuration.md");
        let block = reference
            .split_once("```toml\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(block, _)| block)
            .unwrap_or_default();
        assert_eq!(
            parse(block).unwrap(),
            Config::default(),
            "docs/configuration.md"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.discovery.tag_key, "network");
        assert_eq!(c.routes.reconcile_interval, Duration::from_secs(30));
        assert_eq!(c.probe.fall, 2);
        assert_eq!(c.probe.targets.len(), 3);
    }

    #[test]
    fn contract_example_parses() {
        let c = parse(
            r#"
[discovery]
tag_key = "network"
tag_value = "private"
[routes]
reconcile_interval = "30s"
[heartbeat]
targets = ["tcp://203.0.113.10:80", "http://203.0.113.11:8080/health"]
interval = "1s"
timeout = "500ms"
fall = 3
rise = 2
"#,
        )
        .unwrap();
        assert_eq!(
            c.probe.targets,
            vec![
                ProbeTarget::Tcp {
                    host: "203.0.113.10".into(),
                    port: 80
                },
                ProbeTarget::Http {
                    url: "http://203.0.113.11:8080/health".into()
                }
            ]
        );
        assert_eq!(c.probe.timeout, Duration::from_millis(500));
    }

    #[test]
    fn failback_forms() {
        let c = parse("[peers]\nfailback = \"drain:90s\"\nfailover = \"none\"").unwrap();
        assert_eq!(c.peers.failback, Duration::from_secs(90));
        assert_eq!(c.peers.failover, Failover::None);
        assert_eq!(
            parse("[peers]\nfailback = \"immediate\"")
                .unwrap()
                .peers
                .failback,
            Duration::ZERO
        );
    }

    #[test]
    fn conntrack_sizes_follow_memory_unless_given() {
        const MIB: u64 = 1 << 20;
        let k = Kernel::default();
        let max = |mem: u64| k.conntrack(mem).max;
        // A t4g.nano shows about 434 MiB of its 512.
        assert_eq!(max(434 * MIB), Some(262_144));
        assert_eq!(max(950 * MIB), Some(524_288));
        assert_eq!(max(64 * MIB), Some(65_536), "at least");
        assert_eq!(max(1 << 40), Some(4_194_304), "at most");
        let auto = k.conntrack(434 * MIB);
        assert_eq!(auto.buckets, auto.max);
        assert_eq!(
            (
                auto.tcp_established,
                auto.tcp_time_wait,
                auto.udp,
                auto.udp_stream
            ),
            (7440, 120, 30, 120)
        );
        let c = parse(
            "[kernel]\nconntrack_max = 1000000\nconntrack_buckets = 0\nudp_timeout = \"1m\"\nudp_timeout_stream = \"5m50s\"",
        )
        .unwrap();
        let given = c.kernel.conntrack(434 * MIB);
        assert_eq!((given.max, given.buckets), (Some(1_000_000), None));
        assert_eq!((given.udp, given.udp_stream), (60, 350));
        let left = parse("[kernel]\nconntrack_max = 0").unwrap();
        assert_eq!(left.kernel.conntrack(434 * MIB).max, None);
        assert_eq!(
            left.kernel.conntrack(434 * MIB).buckets,
            None,
            "auto follows max"
        );
        for (text, key, says) in [
            (
                "conntrack_max = \"lots\"",
                "kernel.conntrack_max",
                "use \"auto\", a number",
            ),
            ("conntrack_max = -1", "kernel.conntrack_max", "negative"),
            (
                "conntrack_buckets = 1.5",
                "kernel.conntrack_buckets",
                "a number",
            ),
            (
                "udp_timeout = \"500ms\"",
                "kernel.udp_timeout",
                "whole seconds",
            ),
            (
                "tcp_timeout_time_wait = \"1.5s\"",
                "kernel.tcp_timeout_time_wait",
                "whole seconds",
            ),
            (
                "udp_timeout = \"3m\"",
                "kernel.udp_timeout_stream",
                "at least kernel.udp_timeout",
            ),
        ] {
            let err = parse(&format!("[kernel]\n{text}")).unwrap_err();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn snat_defaults_to_one_address_and_the_full_port_range() {
        let c = parse("").unwrap();
        assert_eq!((c.snat.addresses, c.snat.ports), (1, (1024, 65535)));
        let four = parse("[snat]\naddresses = 4\nports = \"32768-60999\"").unwrap();
        assert_eq!((four.snat.addresses, four.snat.ports), (4, (32768, 60999)));
        let one = parse("[snat]\nports = \"4000\"").unwrap();
        assert_eq!(one.snat.ports, (4000, 4000));
    }

    #[test]
    fn cloudwatch_is_off_by_default_and_each_key_is_checked() {
        let c = parse("").unwrap();
        assert!(!c.cloudwatch.enabled);
        assert_eq!(c.cloudwatch.namespace, "hanat");
        assert_eq!(c.cloudwatch.interval, Duration::from_secs(60));
        assert_eq!(c.cloudwatch.metrics, MetricSet::All);
        let on = parse(
            "[cloudwatch]\nenabled = true\nnamespace = \"acme/nat\"\ninterval = \"5s\"\nmetrics = \"alarms\"",
        )
        .unwrap();
        assert!(on.cloudwatch.enabled);
        assert_eq!(on.cloudwatch.metrics, MetricSet::Alarms);
        for (text, key, says) in [
            (
                "namespace = \"AWS/NATGateway\"",
                "cloudwatch.namespace",
                "not starting with AWS/",
            ),
            (
                "namespace = \"\"",
                "cloudwatch.namespace",
                "1-255 characters",
            ),
            (
                "namespace = \"nat!\"",
                "cloudwatch.namespace",
                "letters, digits",
            ),
            (
                "interval = \"500ms\"",
                "cloudwatch.interval",
                "from 1s to 1h",
            ),
            ("interval = \"2h\"", "cloudwatch.interval", "from 1s to 1h"),
            (
                "metrics = \"some\"",
                "cloudwatch.metrics",
                "unknown variant",
            ),
            ("enable = true", "cloudwatch", "unknown field"),
        ] {
            let err = parse(&format!("[cloudwatch]\n{text}")).unwrap_err();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn flow_handoff_and_its_tunnel_port() {
        let c = parse("").unwrap();
        assert_eq!(c.peers.flow_handoff, Duration::from_secs(300));
        assert_eq!(c.peers.tunnel_port(), 7471);
        let off = parse("[peers]\nflow_handoff = \"0s\"").unwrap();
        assert!(off.peers.flow_handoff.is_zero());
        let err = parse("[peers]\nflow_handoff = \"soon\"").unwrap_err();
        assert!(
            err.contains("peers.flow_handoff") && err.contains("not a duration"),
            "{err}"
        );
        let err = parse("[peers]\nport = 65535").unwrap_err();
        assert!(
            err.contains("peers.port") && err.contains("flow hand-off tunnel"),
            "{err}"
        );
    }

    #[test]
    fn replication_is_on_by_default_and_its_port_is_its_own() {
        let c = parse("").unwrap();
        assert!(c.replication.enabled);
        assert_eq!(c.replication.port, 7473);
        for (text, key, says) in [
            (
                "[replication]\nport = 7471",
                "replication.port",
                "flow hand-off tunnel",
            ),
            (
                "[peers]\nport = 7000\n[replication]\nport = 7000",
                "replication.port",
                "peers.port (7000)",
            ),
            (
                "[replication]\nresync = \"100ms\"",
                "replication.resync",
                "at least 1s",
            ),
            (
                "[replication]\nmax_per_peer = 0",
                "replication.max_per_peer",
                "at least 1",
            ),
            (
                "[replication]\nmin_age = \"soon\"",
                "replication.min_age",
                "not a duration",
            ),
            (
                "[replication]\nenable = false",
                "replication",
                "unknown field",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
        let off = parse("[replication]\nenabled = false\nport = 7471").unwrap();
        assert!(!off.replication.enabled, "an unused port is not checked");
    }

    #[test]
    fn heartbeat_key_settings() {
        let c = parse("").unwrap();
        assert_eq!(c.peers.key_secret, None);
        assert!(!c.peers.accept_unauthenticated);
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hanat-peer-key-AbCdEf";
        let c = parse(&format!(
            "[peers]\nkey_secret = \"{arn}\"\naccept_unauthenticated = true"
        ))
        .unwrap();
        assert_eq!(c.peers.key_secret.as_deref(), Some(arn));
        assert!(c.peers.accept_unauthenticated);
        assert_eq!(
            parse("[peers]\nkey_secret = \" \"")
                .unwrap()
                .peers
                .key_secret,
            None
        );
        let err = parse("[peers]\nkey_secret = \"my secret\"").unwrap_err();
        assert!(
            err.contains("peers.key_secret") && err.contains("ARN or name"),
            "{err}"
        );
        let err = parse("[peers]\nstatus_check = \"health\"").unwrap_err();
        assert!(
            err.contains("peers.status_check") && err.contains("asc-"),
            "{err}"
        );
        let arn = "arn:aws:ec2:eu-west-1:123456789012:application-status-check/asc-0a1b2c";
        let c = parse(&format!("[peers]\nstatus_check = \"{arn}\"")).unwrap();
        assert_eq!(
            status_check_id(c.peers.status_check.as_deref().unwrap()),
            Some("asc-0a1b2c")
        );
        let err = parse("[peers]\nstatus_check = \"asc-1\"\n[metrics]\nlisten = \"\"").unwrap_err();
        assert!(
            err.contains("peers.status_check") && err.contains("metrics.listen"),
            "{err}"
        );
        let err = parse("[peers]\naccept_unauthenticated = \"yes\"").unwrap_err();
        assert!(err.contains("peers.accept_unauthenticated"), "{err}");
    }

    #[test]
    fn fallback_nat_gateways_by_az() {
        let c = parse(
            "[peers.fallback_nat_gateway_id]\n\"eu-west-1a\" = \"nat-0abc\"\n\"eu-west-1b\" = \"nat-0def\"",
        )
        .unwrap();
        let ids: Vec<(&str, &str)> = c
            .peers
            .fallback_nat_gateway_id
            .iter()
            .map(|(az, id)| (az.as_str(), id.0.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("eu-west-1a", "nat-0abc"), ("eu-west-1b", "nat-0def")]
        );
        assert!(Config::default().peers.fallback_nat_gateway_id.is_empty());
        let p = &c.peers;
        assert_eq!(p.fallback_for("eu-west-1b").unwrap().0, "nat-0def");
        assert_eq!(p.fallback_for("eu-west-1c"), None);
    }

    #[test]
    fn a_regional_fallback_nat_gateway_stands_in_for_every_az_not_named() {
        let c = parse(
            "[peers.fallback_nat_gateway_id]\n\"*\" = \"nat-0regional\"\n\"eu-west-1a\" = \"nat-0abc\"",
        )
        .unwrap();
        let p = &c.peers;
        assert_eq!(p.fallback_for("eu-west-1a").unwrap().0, "nat-0abc");
        for az in ["eu-west-1b", "eu-west-1c"] {
            assert_eq!(p.fallback_for(az).unwrap().0, "nat-0regional", "{az}");
        }
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "[peers.fallback_nat_gateway_id]\n\"eu-west-1a\" = \"igw-0abc\"",
                "hanat.toml: peers.fallback_nat_gateway_id.eu-west-1a: `igw-0abc` is not a NAT Gateway id",
            ),
            (
                "[probe]\nintervall = \"1s\"",
                "hanat.toml: probe.intervall: unknown field `intervall`, expected one of",
            ),
            (
                "[heartbeat]\ninterval = \"1 parsec\"",
                "hanat.toml: heartbeat.interval: `1 parsec` is not a duration",
            ),
            ("[heartbeat]\nfall = 0", "probe.fall: must be at least 1"),
            ("[probe]\nfall = -1", "probe.fall: invalid value"),
            (
                "[probe]\ntargets = []",
                "probe.targets: at least one target is required",
            ),
            (
                "[probe]\ntargets = [\"udp://1.2.3.4:53\"]",
                "probe.targets[0]: `udp://1.2.3.4:53`: unsupported target",
            ),
            (
                "[probe]\ntargets = [\"tcp://1.2.3.4\"]",
                "probe.targets[0]: `tcp://1.2.3.4`: a tcp target needs a port",
            ),
            (
                "[probe]\ntimeout = \"1s\"",
                "probe.timeout: must be more than 0 and at most 3 × probe.interval (750ms)",
            ),
            (
                "[probe]\nprobe_cidr = \"198.19.0.0\"",
                "probe.probe_cidr: `198.19.0.0` is not an IPv4 network",
            ),
            (
                "[probe]\nprobe_namespace = \"a/b\"",
                "probe.probe_namespace: `a/b` must be",
            ),
            (
                "[routes]\nreconcile_interval = \"10ms\"",
                "routes.reconcile_interval: must be at least 1s",
            ),
            (
                "[route]\nreconcile_interval = \"10s\"",
                "hanat.toml: route: unknown field `route`, expected one of `discovery`, `routes`",
            ),
            (
                "[log]\nformat = \"xml\"",
                "log.format: unknown variant `xml`",
            ),
            ("[heartbeat\n", "(file): "),
            (
                "[snat]\naddresses = 9",
                "snat.addresses: must be from 1 to 8",
            ),
            (
                "[snat]\naddresses = 0",
                "snat.addresses: must be from 1 to 8",
            ),
            (
                "[snat]\nports = \"2000-1024\"",
                "snat.ports: `2000-1024` is not a port range",
            ),
            (
                "[snat]\nports = \"0-100\"",
                "snat.ports: `0-100` is not a port range",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert!(
                got.contains(want),
                "for {text:?}\n got: {got}\nwant: {want}"
            );
            assert!(got.starts_with("/etc/hanat/hanat.toml: "), "{got}");
        }
    }

    #[test]
    fn renamed_keys_are_still_read_under_their_old_names() {
        let old = parse("[heartbeat]\nfall = 5\n[peers]\ndead_after = \"3s\"").unwrap();
        let new = parse("[probe]\nfall = 5\n[peers]\nsuspect_after = \"3s\"").unwrap();
        assert_eq!(old, new);
        assert_eq!(new.probe.fall, 5);
        assert_eq!(new.peers.suspect_after, Duration::from_secs(3));
    }

    #[test]
    fn syntax_error_reports_line() {
        let got = parse("[heartbeat]\nfall = 3\nrise = = 2\n").unwrap_err();
        assert!(got.contains("line 3"), "{got}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Config::load(Path::new("/nonexistent/hanat.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/hanat.toml: cannot read config file")
        );
    }

    #[test]
    fn target_display_round_trips() {
        for t in [
            "tcp://203.0.113.10:80",
            "tcp://[2001:db8::1]:443",
            "http://example.com/x",
        ] {
            let p: ProbeTarget = t.parse().unwrap();
            assert_eq!(p.to_string(), t);
        }
    }
}
