//! Auto Scaling: report this instance Unhealthy so its group replaces it.
//!
//! One call, `SetInstanceHealth`, with `ShouldRespectGracePeriod=false`: a
//! NAT that does not forward must go now, not after the group's grace
//! period. The caller retries on failure (see the daemon's heartbeat).

use super::AwsError;
use crate::domain::InstanceId;

#[derive(Clone)]
pub struct AutoScaling {
    client: aws_sdk_autoscaling::Client,
}

impl AutoScaling {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_autoscaling::Client::new(sdk),
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
}
