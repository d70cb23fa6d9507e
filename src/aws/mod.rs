//! The AWS control plane: instance metadata, EC2, Auto Scaling and
//! Secrets Manager (the heartbeat key).
//!
//! Each submodule wraps one service and speaks only in [`crate::domain`]
//! types. API calls go through the AWS SDK for Rust in its standard retry
//! mode: exponential backoff with jitter, throttling and 5xx retried; the
//! number of attempts and the per-call deadline (all attempts included)
//! come from `[aws]`. The SDK's adaptive mode (a client-side rate limiter
//! once throttled) was measured in the lab's `api-throttle` scenario and
//! rejected: it held this daemon's calls back for seconds after the
//! account's buckets had refilled, and a terminated NAT's AZ stayed dark
//! for 42 s instead of 12 s. The daemon's own backoffs keep it from
//! storming (see `decide::backoff`).
//! `AWS_ENDPOINT_URL` redirects every client (the lab points it at moto).

pub mod autoscaling;
pub mod cloud;
pub mod cloudwatch;
pub mod ec2;
#[cfg(test)]
pub mod fake;
pub mod imds;
pub mod meter;
pub mod secrets;

use std::fmt;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::config;

/// A failed AWS API call, after the SDK's own retries.
#[derive(Debug, thiserror::Error)]
pub struct AwsError {
    /// The API operation, e.g. `ReplaceRoute`.
    pub operation: &'static str,
    /// What it acted on, e.g. `rtb-0abc`.
    pub resource: String,
    /// The AWS error code, e.g. `RequestLimitExceeded`, when AWS sent one.
    pub code: Option<String>,
    /// The SDK's description with all causes.
    pub detail: String,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.operation, self.resource)?;
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl AwsError {
    pub(crate) fn from_sdk<E>(operation: &'static str, resource: impl Into<String>, err: E) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let detail = match err.message() {
            Some(m) => m.to_owned(),
            None => DisplayErrorContext(&err).to_string(),
        };
        AwsError {
            operation,
            resource: resource.into(),
            code: err.code().map(str::to_owned),
            detail,
        }
    }
}

/// Shared SDK configuration for `region`, with our retry and timeout policy.
pub async fn sdk_config(region: &str, aws: &config::Aws) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .retry_config(RetryConfig::standard().with_max_attempts(aws.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(aws.call_timeout)
                .build(),
        )
        .load()
        .await
}
