//! Two NATs in one AZ, as Auto Scaling makes them: a launch-before-
//! terminate instance refresh (the templates' instance maintenance
//! policy), a Standby without decrement (the group launches a replacement),
//! a group that briefly runs two. The newcomer is materialised beside the
//! AZ's current NAT ([`Shared::extra`]); when the older one is terminated
//! through its group, the newcomer becomes the AZ's NAT.

use super::*;

impl Lab {
    /// Auto Scaling launches a second instance in AZ `i`'s group (desired
    /// capacity 2, as a refresh that launches first does); the lab
    /// materialises it after the boot delay and starts its daemon. Returns
    /// its instance id.
    pub async fn launch_second(&self, i: usize) -> Result<String> {
        self.cloud.set_desired(&self.azs[i].group, 2).await?;
        self.shared
            .event(format!("az{i}: group desired capacity 2"));
        self.materialise_newcomer(i).await
    }

    /// Auto Scaling puts AZ `i`'s NAT into Standby without decrement and
    /// launches a replacement, which the lab materialises. Returns the
    /// replacement's instance id.
    pub async fn standby_replaced(&self, i: usize) -> Result<String> {
        self.standby(i).await?;
        self.materialise_newcomer(i).await
    }

    /// The instances of AZ `i` the lab has materialised.
    fn materialised(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = self.shared.nats()[i]
            .iter()
            .map(|n| n.instance.id.clone())
            .collect();
        v.extend(
            self.shared
                .extra()
                .iter()
                .filter(|(az, _)| *az == i)
                .map(|(_, n)| n.instance.id.clone()),
        );
        v
    }

    /// Wait for AZ `i`'s group to have an in-service instance the lab has
    /// not materialised, then materialise it after the boot delay.
    async fn materialise_newcomer(&self, i: usize) -> Result<String> {
        let group = &self.azs[i].group;
        let start = Instant::now();
        let id = loop {
            let known = self.materialised(i);
            let listed = self.cloud.in_service(group).await?;
            if let Some(id) = listed.into_iter().find(|x| !known.contains(x)) {
                break id;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("group {group} launched no second instance within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        tokio::time::sleep(self.opts.boot_delay).await;
        let instance = self.cloud.instance(&id).await?;
        let mut nat = launch_nat(&self.shared, i, instance).await?;
        nat.bin = self.opts.upgrade_to.clone();
        nat.start(&self.shared.launch)?;
        self.shared
            .event(format!("az{i}: {id} booted beside the AZ's NAT"));
        self.shared.extra().push((i, nat));
        Ok(id)
    }

    /// The interface of AZ `i`'s NAT launched beside its current one.
    pub fn newcomer_eni(&self, i: usize) -> Option<String> {
        self.shared
            .extra()
            .iter()
            .find(|(az, _)| *az == i)
            .map(|(_, n)| n.instance.eni.clone())
    }

    /// Auto Scaling terminates AZ `i`'s older NAT through its group (the
    /// templates' `OldestInstance` policy; desired capacity back to 1):
    /// its lifecycle state becomes `Terminated`, the termination hook holds
    /// it until its daemon says the hand-off is done (at most
    /// `hook_timeout`), then it goes and the NAT beside it becomes the AZ's.
    pub fn retire_older(&self, i: usize, hook_timeout: Duration) -> Result<()> {
        self.set_metadata(i, "autoscaling/target-lifecycle-state", "Terminated")?;
        self.shared
            .event(format!("az{i}: older NAT's lifecycle state Terminated"));
        let (log, id) = self.log_and_id(i)?;
        let shared = self.shared.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(async move {
                super::faults::handoff_done(&log, hook_timeout).await;
                // The newer NAT becomes the AZ's as the older one goes.
                let newcomer = {
                    let mut extra = shared.extra();
                    let k = extra.iter().position(|(az, _)| *az == i);
                    k.map(|k| extra.remove(k).1)
                };
                let to = newcomer.as_ref().map(|n| n.instance.id.clone());
                let old = std::mem::replace(&mut shared.nats()[i], newcomer);
                drop(old);
                let terminated = shared.cloud.terminate_in_group(&id).await;
                shared.event(format!(
                    "az{i}: {id} terminated through its group ({}); {} is the AZ's NAT",
                    match terminated {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => format!("{e:#}"),
                    },
                    to.unwrap_or_else(|| "nobody".into())
                ));
            }));
        Ok(())
    }
}
