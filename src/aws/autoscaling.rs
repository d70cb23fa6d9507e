//! Auto Scaling: report this instance Unhealthy so its group replaces it.
//!
//! `SetInstanceHealth` with `ShouldRespectGracePeriod=false`: a NAT that
//! does not forward must go now, not after the group's grace period. The
//! caller retries on failure (see the daemon's heartbeat). Read calls find
//! this instance's group and the groups of the same deployment (peers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::AwsError;
use super::meter::{ApiMeter, metered_client};
use crate::domain::InstanceId;

#[derive(Clone)]
pub struct AutoScaling {
    client: aws_sdk_autoscaling::Client,
    /// Groups found by [`AutoScaling::group_of`], shared by every clone:
    /// the routes loop, the peers loop and the hand-off ask once between them.
    groups: Arc<Mutex<HashMap<InstanceId, String>>>,
}

impl AutoScaling {
    pub fn new(sdk: &aws_config::SdkConfig, meter: &ApiMeter) -> Self {
        Self {
            client: metered_client!(aws_sdk_autoscaling, sdk, meter),
            groups: Arc::default(),
        }
    }

    pub async fn set_unhealthy(&self, instance: &InstanceId) -> Result<(), AwsError> {
        self.client
            .set_instance_health()
            .instance_id(&instance.0)
            .health_status("Unhealthy")
            .should_respect_grace_period(false)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SetInstanceHealth", &instance.0, e))?;
        Ok(())
    }

    /// The group this instance belongs to, if any. A group once found is
    /// remembered; "none" is not (a new instance may not show yet).
    pub async fn group_of(&self, instance: &InstanceId) -> Result<Option<String>, AwsError> {
        if let Some(g) = self.cached(instance) {
            return Ok(Some(g));
        }
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(&instance.0)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeAutoScalingInstances", &instance.0, e))?;
        let group = out
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.auto_scaling_group_name())
            .map(str::to_owned);
        if let Some(g) = &group {
            self.lock().insert(instance.clone(), g.clone());
        }
        Ok(group)
    }

    fn cached(&self, instance: &InstanceId) -> Option<String> {
        self.lock().get(instance).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, String>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of tag `key` on `group`.
    pub async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeAutoScalingGroups", group, e))?;
        Ok(out
            .auto_scaling_groups()
            .first()
            .into_iter()
            .flat_map(|g| g.tags())
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_owned))
    }

    /// Instances of every group tagged `key=value` that count as peers
    /// (`is_member`: in service or in Standby).
    pub async fn instances_of_groups_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<InstanceId>, AwsError> {
        let resource = format!("tag:{key}={value}");
        let mut pages = self
            .client
            .describe_auto_scaling_groups()
            .filters(
                aws_sdk_autoscaling::types::Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| AwsError::from_sdk("DescribeAutoScalingGroups", &resource, e))?;
            for g in page.auto_scaling_groups() {
                for i in g.instances() {
                    if let (true, Some(id)) = (is_member(i.lifecycle_state()), i.instance_id()) {
                        out.push(InstanceId(id.to_owned()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Let the group go on terminating this instance. moto answers 500;
    /// callers treat failure as non-fatal (the hook times out by itself).
    pub async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance: &InstanceId,
    ) -> Result<(), AwsError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(&instance.0)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CompleteLifecycleAction", &instance.0, e))?;
        Ok(())
    }
}

/// Whether an instance in this lifecycle state is a peer: in service, or
/// in Standby (an operator's pause: Auto Scaling leaves the instance alone,
/// and it keeps serving its AZ; treating it as gone would move routes away
/// from a healthy NAT and straight back). Launching and terminating ones
/// are not: they speak for themselves through heartbeats (`exiting`).
fn is_member(state: Option<&aws_sdk_autoscaling::types::LifecycleState>) -> bool {
    use aws_sdk_autoscaling::types::LifecycleState as S;
    matches!(state, Some(S::InService | S::EnteringStandby | S::Standby))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_autoscaling::types::LifecycleState as S;

    #[test]
    fn standby_instances_stay_peers_and_leaving_ones_do_not() {
        for s in [S::InService, S::EnteringStandby, S::Standby] {
            assert!(is_member(Some(&s)), "{s:?}");
        }
        for s in [S::Pending, S::TerminatingWait, S::Terminating, S::Detaching] {
            assert!(!is_member(Some(&s)), "{s:?}");
        }
        assert!(!is_member(None));
    }
}
