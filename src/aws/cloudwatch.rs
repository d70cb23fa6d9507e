//! CloudWatch: the daemon's figures, one `PutMetricData` call per
//! `cloudwatch.interval` (see [`crate::daemon::publish`]).

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_smithy_types::DateTime;

use super::AwsError;
use super::meter::{ApiMeter, metered_client};
use crate::domain::{Datum, Unit};

#[derive(Clone)]
pub struct CloudWatch {
    client: aws_sdk_cloudwatch::Client,
}

impl CloudWatch {
    pub fn new(sdk: &aws_config::SdkConfig, meter: &ApiMeter) -> Self {
        Self {
            client: metered_client!(aws_sdk_cloudwatch, sdk, meter),
        }
    }

    /// Put `data` into `namespace`, all stamped now (one call: at most 1,000
    /// figures, far more than a NAT has).
    pub async fn put(&self, namespace: &str, data: &[Datum]) -> Result<(), AwsError> {
        let now = DateTime::from(std::time::SystemTime::now());
        let data: Vec<MetricDatum> = data
            .iter()
            .map(|d| {
                MetricDatum::builder()
                    .metric_name(d.name)
                    .set_dimensions(Some(
                        d.dimensions
                            .iter()
                            .map(|(k, v)| Dimension::builder().name(*k).value(v).build())
                            .collect(),
                    ))
                    .value(d.value)
                    .unit(match d.unit {
                        Unit::Count => StandardUnit::Count,
                        Unit::Bytes => StandardUnit::Bytes,
                        Unit::Percent => StandardUnit::Percent,
                    })
                    .timestamp(now)
                    .build()
            })
            .collect();
        self.client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(data))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("PutMetricData", namespace, e))?;
        Ok(())
    }
}
