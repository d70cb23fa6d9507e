//! Faults the lab can inject: a killed daemon, a vanished instance, a
//! scale-in, a spot notice, a partition, an AZ outage, Standby, a
//! misbehaving instance metadata service (the AWS API's faults are
//! [`Lab::api`]'s).

use super::*;

impl Lab {
    /// AZ `i`'s kernel stops forwarding: a table named `table`, not the
    /// daemon's, drops every forwarded packet (what a foreign ruleset, or
    /// the FIS experiment's SSM document, does).
    pub fn stop_forwarding(&self, i: usize, table: &str) -> Result<()> {
        let rules = format!(
            "add table inet {table}; add chain inet {table} drop_all {{ type filter hook forward priority -10; policy drop; }}"
        );
        self.nat_exec(i, "nft", &[&rules]).map(drop)
    }

    /// Undo [`Lab::stop_forwarding`] of `table`.
    pub fn resume_forwarding(&self, i: usize, table: &str) -> Result<()> {
        self.nat_exec(i, "nft", &[&format!("delete table inet {table}")])
            .map(drop)
    }

    /// `kill -9` AZ `i`'s daemon (the lab's systemd restarts it).
    pub fn kill_daemon(&self, i: usize) -> Result<()> {
        let mut nats = self.shared.nats();
        let n = nats[i]
            .as_mut()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        n.kill();
        n.died_at = Some(Instant::now());
        self.shared.event(format!("az{i}: daemon killed"));
        Ok(())
    }

    /// SIGTERM AZ `i`'s daemon and wait for its exit status.
    pub fn terminate_daemon(&self, i: usize) -> Result<std::process::ExitStatus> {
        let mut child = {
            let mut nats = self.shared.nats();
            let n = nats[i]
                .as_mut()
                .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
            // Like systemd, restart only once the stopping process exited.
            n.died_at = None;
            n.daemon
                .take()
                .ok_or_else(|| anyhow!("daemon not running"))?
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                if let Some(n) = self.shared.nats()[i].as_mut() {
                    n.died_at = Some(Instant::now());
                }
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("daemon did not exit within 10s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The instance vanishes: namespace and daemon gone, moto instance
    /// terminated (moto's group launches a replacement).
    pub async fn terminate_instance(&self, i: usize) -> Result<String> {
        terminate_nat(&self.shared, i, "terminated").await
    }

    /// Set an instance metadata value of AZ `i`'s NAT.
    pub fn set_metadata(&self, i: usize, path: &str, value: &str) -> Result<()> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        n.imds.set(path, value);
        Ok(())
    }

    /// Auto Scaling scales AZ `i`'s NAT in: its target lifecycle state
    /// becomes `Terminated`; the termination hook holds the instance until
    /// the daemon says its hand-off is done (moto cannot record
    /// `CompleteLifecycleAction`, so the lab reads the daemon's log), at most
    /// `hook_timeout`; then the instance goes and is replaced.
    pub fn scale_in(&self, i: usize, hook_timeout: Duration) -> Result<()> {
        self.set_metadata(i, "autoscaling/target-lifecycle-state", "Terminated")?;
        self.shared
            .event(format!("az{i}: lifecycle state Terminated"));
        self.terminate_after_handoff(i, hook_timeout)
    }

    /// A spot interruption notice for AZ `i`'s NAT; the instance goes when
    /// the daemon's hand-off is done (the lab's shortened notice), at most
    /// after `notice` (two minutes on AWS).
    pub fn spot_interruption(&self, i: usize, notice: Duration) -> Result<()> {
        self.set_metadata(
            i,
            "spot/instance-action",
            "{\"action\": \"terminate\", \"time\": \"2026-01-01T00:00:00Z\"}",
        )?;
        self.shared
            .event(format!("az{i}: spot interruption notice"));
        self.terminate_after_handoff(i, notice)
    }

    /// AZ `i`'s NAT's daemon log and instance id.
    pub(super) fn log_and_id(&self, i: usize) -> Result<(PathBuf, String)> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        Ok((n.log_path.clone(), n.instance.id.clone()))
    }

    pub(super) fn terminate_after_handoff(&self, i: usize, limit: Duration) -> Result<()> {
        let (log, id) = self.log_and_id(i)?;
        let shared = self.shared.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(async move {
                handoff_done(&log, limit).await;
                let still = shared.nats()[i]
                    .as_ref()
                    .is_some_and(|n| n.instance.id == id);
                if still {
                    let _ = terminate_nat(&shared, i, "terminated after hand-off").await;
                }
            }));
        Ok(())
    }

    /// Cut the heartbeats between NATs (UDP on the peer port) in the VPC
    /// router, or restore them.
    pub fn partition(&self, on: bool) -> Result<()> {
        if on {
            self.rtr.exec(
                "nft",
                &["add table ip labpart; add chain ip labpart c { type filter hook forward priority -50; policy accept; }; add rule ip labpart c udp dport 7470 drop"],
            )?;
            self.shared.event("NATs partitioned".into());
        } else {
            self.rtr.exec("nft", &["delete table ip labpart"])?;
            self.shared.event("partition healed".into());
        }
        Ok(())
    }

    /// AZ `i`'s NAT freezes (`on`) as a hung kernel would, while EC2 still
    /// says it runs: every packet on its interface is dropped (a netdev
    /// table of the lab's, in the instance) and its daemon stops
    /// (`SIGSTOP`); or thaws (`SIGCONT`, the table removed).
    pub fn freeze(&self, i: usize, on: bool) -> Result<()> {
        let pid = {
            let mut nats = self.shared.nats();
            let n = nats[i]
                .as_mut()
                .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
            let child = n
                .daemon
                .as_ref()
                .ok_or_else(|| anyhow!("AZ {i}'s daemon is not running"))?;
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?)
        };
        let signal = match on {
            true => nix::sys::signal::Signal::SIGSTOP,
            false => nix::sys::signal::Signal::SIGCONT,
        };
        if on {
            self.nat_exec(
                i,
                "nft",
                &["add table netdev labfreeze; \
                   add chain netdev labfreeze rx { type filter hook ingress device eth0 priority -500; policy drop; }; \
                   add chain netdev labfreeze tx { type filter hook egress device eth0 priority -500; policy drop; }"],
            )?;
            nix::sys::signal::kill(pid, signal)?;
            self.shared
                .event(format!("az{i}: frozen (interface dead, daemon stopped)"));
        } else {
            nix::sys::signal::kill(pid, signal)?;
            self.nat_exec(i, "nft", &["delete table netdev labfreeze"])?;
            self.shared.event(format!("az{i}: thawed"));
        }
        Ok(())
    }

    /// Cut AZ `i` (its subnets, 10.0.2i.0/23) off from the rest of the VPC
    /// in the VPC router (`on`), or restore it. The AZs still reach the
    /// AWS API and the internet, and the status check (from the AZ's own
    /// subnet) still reaches its NAT.
    pub fn isolate_az(&self, i: usize, on: bool) -> Result<()> {
        if on {
            let az = format!("10.0.{}.0/23", 2 * i);
            self.rtr.exec(
                "nft",
                &[&format!(
                    "add table ip labiso; add chain ip labiso c {{ type filter hook forward priority -50; policy accept; }}; \
                     add rule ip labiso c ip saddr {az} ip daddr {VPC_CIDR} ip daddr != {az} drop; \
                     add rule ip labiso c ip daddr {az} ip saddr {VPC_CIDR} ip saddr != {az} drop"
                )],
            )?;
            self.shared
                .event(format!("az{i}: isolated from the other AZs"));
        } else {
            self.rtr.exec("nft", &["delete table ip labiso"])?;
            self.shared.event(format!("az{i}: isolation healed"));
        }
        Ok(())
    }

    /// Take AZ `i` down: its NAT vanishes and no replacement can launch there
    /// for `hold`.
    pub async fn az_outage(&self, i: usize, hold: Duration) -> Result<()> {
        *self
            .shared
            .az_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(i)
            .or_insert_with(Instant::now) = Instant::now() + hold;
        terminate_nat(&self.shared, i, "lost with its AZ")
            .await
            .map(drop)
    }

    /// Auto Scaling puts AZ `i`'s NAT into Standby (the operator's pause).
    pub async fn standby(&self, i: usize) -> Result<()> {
        let id = self
            .nat(i)
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?
            .instance
            .id;
        self.cloud.enter_standby(&self.azs[i].group, &id).await?;
        self.set_metadata(i, "autoscaling/target-lifecycle-state", "Standby")?;
        self.shared.event(format!("az{i}: {id} entered Standby"));
        Ok(())
    }

    /// AZ `i`'s instance metadata misbehaves for `for_`.
    pub fn imds_fault(&self, i: usize, fault: ImdsFault, for_: Duration) -> Result<()> {
        let nats = self.shared.nats();
        let n = nats[i]
            .as_ref()
            .ok_or_else(|| anyhow!("AZ {i} has no NAT"))?;
        n.imds.set_fault(fault, for_);
        self.shared
            .event(format!("az{i}: instance metadata {fault:?} for {for_:?}"));
        Ok(())
    }
}

/// Wait until the daemon logging to `log` says its hand-off is done (what
/// the lifecycle hook waits for: moto cannot record
/// `CompleteLifecycleAction`), at most `limit`.
pub(super) async fn handoff_done(log: &Path, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("hand-off done")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
