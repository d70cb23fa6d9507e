//! The shipped systemd unit's sandbox, reproduced for the lab's daemons.
//!
//! On an instance, systemd starts hanat from `systemd/hanat.service`: in a
//! private mount namespace (mounts slave to the host's, so nothing the
//! daemon mounts is seen outside it), with the file system read-only but for
//! `ReadWritePaths`, a private `/tmp`, no `/home` or `/root`, a minimal
//! `/dev`, only the unit's capabilities and no new privileges. A daemon that
//! works when started from a root shell can still fail there (issue 10: the
//! probe namespace's handle outlived the daemon's mount namespace), so the
//! lab starts every daemon the way the unit does.
//!
//! [`Sandbox::from_unit`] reads the unit itself, compiled in: a directive
//! the lab does not know makes the lab refuse to start, so the unit cannot
//! gain a restriction the tests never ran under. Directives the lab knows
//! but cannot reproduce (seccomp filters, `ProtectProc`, …) are listed in
//! [`Sandbox::not_reproduced`] and in README.
//!
//! The sandbox is built by a shell script run through `unshare --mount
//! --propagation slave` inside the NAT's network namespace; it ends by
//! `exec`ing the daemon, so the lab's child *is* the daemon (same pid, for
//! `kill -9` and SIGTERM) and its mount namespace dies with it, as a
//! service's does.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

/// The unit the lab reproduces.
pub const UNIT: &str = include_str!("../../../systemd/hanat.service");
/// Paths in the unit that stand for the lab's binary and each NAT's config.
pub const UNIT_BINARY: &str = "/usr/bin/hanat";
pub const UNIT_CONFIG: &str = "/etc/hanat/hanat.toml";

/// Service-manager directives the lab plays itself or that need no
/// sandboxing: restarts (`restart_delay`), readiness (tested through
/// `$NOTIFY_SOCKET`), limits the lab does not enforce.
const PLAYED: [&str; 6] = [
    "Type",
    "NotifyAccess",
    "Restart",
    "RestartSec",
    "TimeoutStartSec",
    "TimeoutStopSec",
];

/// Directives the lab knows and does not reproduce (README lists them).
const NOT_REPRODUCED: [&str; 16] = [
    "WatchdogSec",
    "DevicePolicy",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictAddressFamilies",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "KeyringMode",
];

/// How the unit runs the daemon, as far as the lab reproduces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// `CapabilityBoundingSet`, in setpriv's spelling (`net_admin`).
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    /// `ProtectSystem=strict`: everything read-only but the API file systems.
    pub read_only_root: bool,
    pub read_write_paths: Vec<String>,
    pub private_tmp: bool,
    pub protect_home: bool,
    pub private_devices: bool,
    pub protect_control_groups: bool,
    pub umask: Option<String>,
    /// `ExecStartPre=+…`: run by the lab as root, outside the sandbox.
    pub pre_outside: Vec<Vec<String>>,
    /// `ExecStartPre=…`: run inside the sandbox before the daemon.
    pub pre: Vec<Vec<String>>,
    pub exec_start: Vec<String>,
    /// Directives present in the unit that the lab does not reproduce.
    pub not_reproduced: Vec<String>,
    /// `LimitNOFILE=` (soft, hard); without it, systemd's own default
    /// (v240+): soft 1,024, hard 524,288.
    pub open_files: (u64, u64),
}

/// systemd's open-file limits for a service whose unit sets none.
pub const SYSTEMD_OPEN_FILES: (u64, u64) = (1024, 524_288);

/// `LimitNOFILE=` as systemd reads it: `N` or `SOFT:HARD`.
fn open_files(value: &str) -> Result<(u64, u64)> {
    let n = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("LimitNOFILE={value}: the lab reproduces numbers only"))
    };
    match value.split_once(':') {
        Some((soft, hard)) => Ok((n(soft)?, n(hard)?)),
        None => n(value).map(|v| (v, v)),
    }
}

fn yes(key: &str, value: &str) -> Result<bool> {
    match value {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => bail!("{key}={value}: not a boolean"),
    }
}

/// A command line of the unit, checked to need no shell quoting.
fn words(key: &str, value: &str) -> Result<Vec<String>> {
    let ok = |w: &str| {
        w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=".contains(c))
    };
    let v: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    match v.iter().find(|w| !ok(w)) {
        Some(w) => bail!("{key}: the lab cannot run `{w}` (only plain words)"),
        None if v.is_empty() => bail!("{key}: empty command"),
        None => Ok(v),
    }
}

impl Sandbox {
    /// The sandbox of the shipped unit.
    pub fn shipped() -> Result<Sandbox> {
        Sandbox::from_unit(UNIT).map_err(|e| anyhow::anyhow!("systemd/hanat.service: {e:#}"))
    }

    /// Read a unit's `[Service]` section.
    pub fn from_unit(text: &str) -> Result<Sandbox> {
        let mut s = Sandbox {
            capabilities: Vec::new(),
            no_new_privileges: false,
            read_only_root: false,
            read_write_paths: Vec::new(),
            private_tmp: false,
            protect_home: false,
            private_devices: false,
            protect_control_groups: false,
            umask: None,
            pre_outside: Vec::new(),
            pre: Vec::new(),
            exec_start: Vec::new(),
            not_reproduced: Vec::new(),
            open_files: SYSTEMD_OPEN_FILES,
        };
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
                continue;
            }
            if section != "Service" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("[Service] line without `=`: {line}");
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "CapabilityBoundingSet" => {
                    s.capabilities = value
                        .split_whitespace()
                        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
                        .collect();
                }
                "AmbientCapabilities" if value.is_empty() => {}
                "NoNewPrivileges" => s.no_new_privileges = yes(key, value)?,
                "ProtectSystem" => {
                    s.read_only_root = match value {
                        "strict" => true,
                        "no" | "false" => false,
                        _ => bail!("ProtectSystem={value}: the lab reproduces only `strict`"),
                    }
                }
                "ReadWritePaths" => s.read_write_paths.extend(words(key, value)?),
                "PrivateTmp" => s.private_tmp = yes(key, value)?,
                "ProtectHome" => s.protect_home = yes(key, value)?,
                "PrivateDevices" => s.private_devices = yes(key, value)?,
                "ProtectControlGroups" => s.protect_control_groups = yes(key, value)?,
                "UMask" => s.umask = Some(words(key, value)?.concat()),
                // `invisible` hides other users' processes; the daemon runs
                // as root and reads only its own /proc/self and /proc/sys.
                "ProtectProc" | "ProcSubset" => s.not_reproduced.push(format!("{key}={value}")),
                "ExecStartPre" => match value.strip_prefix('+') {
                    Some(cmd) => s.pre_outside.push(words(key, cmd)?),
                    None => s.pre.push(words(key, value)?),
                },
                "ExecStart" => s.exec_start = words(key, value)?,
                "LimitNOFILE" => s.open_files = open_files(value)?,
                k if PLAYED.contains(&k) => {}
                k if NOT_REPRODUCED.contains(&k) => {
                    s.not_reproduced.push(format!("{key}={value}"));
                }
                _ => bail!(
                    "{key}={value}: the lab does not know this directive; teach \
                     tests/lab/src/sandbox.rs to reproduce it (or to list it as not reproduced)"
                ),
            }
        }
        if s.exec_start.is_empty() {
            bail!("no ExecStart");
        }
        Ok(s)
    }

    /// The script that builds the sandbox inside a fresh mount namespace
    /// and `exec`s the daemon. Its arguments: `$1` the daemon binary, `$2`
    /// an existing file outside `/root` and `/home` where the binary is
    /// bind-mounted (as `/usr/bin/hanat` would be installed), `$3` the
    /// config file.
    pub fn script(&self) -> String {
        let mut s = String::from("set -e\n");
        let mut writable: Vec<String> = vec!["/proc".into(), "/sys".into(), "/dev".into()];
        // The binary first, while /root is still visible.
        s.push_str("mount --bind \"$1\" \"$2\"\n");
        for p in &self.read_write_paths {
            // A mount of its own, so it stays writable below.
            s.push_str(&format!("mount --bind {p} {p}\n"));
            writable.push(p.clone());
        }
        if self.private_tmp {
            for p in ["/tmp", "/var/tmp"] {
                s.push_str(&format!(
                    "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {p}\n"
                ));
                writable.push(p.into());
            }
        }
        if self.private_devices {
            // Only the pseudo devices, as systemd's PrivateDevices gives; the
            // new /dev is assembled in the private /tmp and moved into place.
            s.push_str(
                "mkdir /tmp/.dev\nmount -t tmpfs -o mode=755,nosuid,noexec tmpfs /tmp/.dev\n\
                 for d in null zero full random urandom tty; do\n  \
                 touch /tmp/.dev/$d\n  mount --bind /dev/$d /tmp/.dev/$d\ndone\n\
                 mkdir /tmp/.dev/shm /tmp/.dev/pts\nmount --move /tmp/.dev /dev\n\
                 rmdir /tmp/.dev 2>/dev/null || true\n",
            );
        }
        if self.read_only_root {
            let keep: Vec<String> = writable
                .iter()
                .flat_map(|p| [p.clone(), format!("{p}/*")])
                .collect();
            s.push_str(&format!(
                "for m in $(cut -d' ' -f5 /proc/self/mountinfo); do\n  \
                 case \"$m\" in {}) continue ;; esac\n  \
                 mount -o remount,bind,ro \"$m\"\ndone\n",
                keep.join("|")
            ));
        }
        if self.protect_control_groups {
            s.push_str(
                "for m in $(cut -d' ' -f5 /proc/self/mountinfo); do\n  \
                 case \"$m\" in /sys/fs/cgroup|/sys/fs/cgroup/*) \
                 mount -o remount,bind,ro \"$m\" ;; esac\ndone\n",
            );
        }
        if self.protect_home {
            s.push_str(
                "for d in /home /root /run/user; do\n  \
                 if [ -d \"$d\" ]; then mount -t tmpfs -o ro,mode=000 tmpfs \"$d\"; fi\ndone\n",
            );
        }
        // As systemd does once the namespace is set up: mounts are shared
        // within it again (what is disconnected from the host stays so).
        s.push_str("mount --make-rshared /\n");
        if let Some(mask) = &self.umask {
            s.push_str(&format!("umask {mask}\n"));
        }
        // The unit's limits, lowered to the lab's own hard limit where that
        // is lower (raising it takes a capability the lab may not have).
        let (soft, hard) = self.open_files;
        s.push_str(&format!(
            "h={hard}; s={soft}; c=$(ulimit -H -n)\n\
             if [ \"$c\" != unlimited ] && [ \"$c\" -lt \"$h\" ]; then h=$c; fi\n\
             if [ \"$s\" -gt \"$h\" ]; then s=$h; fi\n\
             ulimit -H -n $h\nulimit -S -n $s\n"
        ));
        let setpriv = {
            let mut v = format!(
                "setpriv --bounding-set=-all{}",
                self.capabilities
                    .iter()
                    .map(|c| format!(",+{c}"))
                    .collect::<String>()
            );
            if self.no_new_privileges {
                v.push_str(" --no-new-privs");
            }
            v.push_str(" --");
            v
        };
        let render = |cmd: &[String]| {
            cmd.iter()
                .map(|w| match w.as_str() {
                    UNIT_BINARY => "\"$2\"".to_owned(),
                    UNIT_CONFIG => "\"$3\"".to_owned(),
                    w => w.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        for cmd in &self.pre {
            s.push_str(&format!("{setpriv} {}\n", render(cmd)));
        }
        s.push_str(&format!("exec {setpriv} {}\n", render(&self.exec_start)));
        s
    }

    /// The `ExecStartPre=+` commands, with the unit's paths as the lab's.
    pub fn run_pre_outside(&self) -> Result<()> {
        for cmd in &self.pre_outside {
            let Some((program, args)) = cmd.split_first() else {
                continue;
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::netns::sh(program, &args)?;
        }
        Ok(())
    }

    /// A command that runs the daemon in network namespace `netns` the way
    /// the unit does. `bin` is the daemon binary, `installed` an existing
    /// empty file outside `/root` and `/home` to bind it onto, `config` the
    /// NAT's config file. The child gets SIGKILL if the lab process dies.
    pub fn command(&self, netns: &Path, bin: &Path, installed: &Path, config: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns.display()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
            ])
            .arg(self.script())
            .arg("hanat-sandbox")
            .args([bin, installed, config]);
        crate::die_with_parent(&mut c);
        c
    }

    /// The same sandbox with another capability bounding set (setpriv's
    /// spelling, comma-separated), to prove what the unit's set is for.
    pub fn with_capabilities(&self, caps: &str) -> Sandbox {
        Sandbox {
            capabilities: caps.split(',').map(str::to_owned).collect(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit_is_understood() {
        let s = Sandbox::shipped().unwrap();
        assert_eq!(s.capabilities, ["net_admin", "sys_admin"]);
        assert!(s.no_new_privileges && s.read_only_root && s.private_tmp);
        assert!(s.protect_home && s.private_devices && s.protect_control_groups);
        assert_eq!(s.read_write_paths, ["/run/netns"]);
        assert_eq!(s.pre_outside, [["/usr/bin/mkdir", "-p", "/run/netns"]]);
        assert_eq!(s.exec_start[0], UNIT_BINARY);
        assert_eq!(s.open_files, (65_536, 65_536));
        let script = s.script();
        assert!(script.contains("h=65536; s=65536;"), "{script}");
        assert!(
            script.contains("mount --bind /run/netns /run/netns"),
            "{script}"
        );
        assert!(
            script.ends_with(
                "exec setpriv --bounding-set=-all,+net_admin,+sys_admin --no-new-privs -- \
                 \"$2\" run --config \"$3\"\n"
            ),
            "{script}"
        );
        assert!(
            script.contains("--no-new-privs -- \"$2\" check-config --config \"$3\"\n"),
            "{script}"
        );
    }

    #[test]
    fn a_unit_without_limits_gets_systemds() {
        let s = Sandbox::from_unit("[Service]\nExecStart=/usr/bin/hanat run\n").unwrap();
        assert_eq!(s.open_files, (1024, 524_288));
        let s = Sandbox::from_unit("[Service]\nExecStart=/bin/x\nLimitNOFILE=512:4096\n").unwrap();
        assert_eq!(s.open_files, (512, 4096));
        assert!(Sandbox::from_unit("[Service]\nExecStart=/bin/x\nLimitNOFILE=infinity\n").is_err());
    }

    #[test]
    fn an_unknown_directive_stops_the_lab() {
        let unit = "[Service]\nExecStart=/usr/bin/hanat run\nPrivateNetwork=yes\n";
        let e = Sandbox::from_unit(unit).unwrap_err().to_string();
        assert!(
            e.contains("PrivateNetwork=yes: the lab does not know"),
            "{e}"
        );
        let e = Sandbox::from_unit("[Service]\nExecStart=/usr/bin/hanat $(x)\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot run `$(x)`"), "{e}");
        let e = Sandbox::from_unit("[Service]\nProtectSystem=full\nExecStart=/bin/x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only `strict`"), "{e}");
    }
}
