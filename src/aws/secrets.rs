//! Secrets Manager: the heartbeat key (`peers.key_secret`).
//!
//! Two versions are read, by staging label: `AWSCURRENT` signs, and
//! `AWSPREVIOUS` (the value `AWSCURRENT` replaced, present after a
//! rotation) is still accepted. The values never leave this process: not
//! in logs, not in errors.

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;

use super::AwsError;
use super::meter::{ApiMeter, metered_client};

#[derive(Clone)]
pub struct Secrets {
    client: aws_sdk_secretsmanager::Client,
}

impl Secrets {
    pub fn new(sdk: &aws_config::SdkConfig, meter: &ApiMeter) -> Self {
        Self {
            client: metered_client!(aws_sdk_secretsmanager, sdk, meter),
        }
    }

    /// The text of `secret`'s version labelled `stage`; `None` when the
    /// secret has no such version (or does not exist).
    pub async fn value(&self, secret: &str, stage: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(secret)
            .version_stage(stage)
            .send()
            .await;
        match out {
            Ok(v) => Ok(v.secret_string().map(str::to_owned)),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(AwsError::from_sdk(
                "GetSecretValue",
                format!("{secret} ({stage})"),
                e,
            )),
        }
    }
}
