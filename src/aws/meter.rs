//! Every AWS call the daemon makes, timed: an interceptor on the SDK
//! clients (so every call of every service is counted the same way, retries
//! included in its time) feeding one Prometheus histogram,
//! `hanat_aws_call_seconds{service, operation, outcome}`.
//!
//! `outcome` is what the last attempt's HTTP status says: `ok` (2xx),
//! `client_error` (4xx: a refused call, Auto Scaling's throttling),
//! `server_error` (5xx: EC2's throttling `RequestLimitExceeded` is a 503),
//! or `no_response` (a timeout, a connection that failed).

use std::sync::Arc;
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A client of SDK crate `$sdk` (`aws_sdk_ec2`, …) on `$config`, every
/// call timed by `$meter`: how each of the daemon's clients is made.
macro_rules! metered_client {
    ($sdk:ident, $config:expr, $meter:expr) => {
        $sdk::Client::from_conf(
            $sdk::config::Builder::from($config)
                .interceptor($meter.clone())
                .build(),
        )
    };
}
pub(crate) use metered_client;

type Labels = Vec<(&'static str, String)>;
type Calls = Family<Labels, Histogram, fn() -> Histogram>;

/// The timed calls; clones share them.
#[derive(Debug, Clone)]
pub struct ApiMeter {
    calls: Arc<Calls>,
}

impl Default for ApiMeter {
    fn default() -> Self {
        ApiMeter {
            calls: Arc::new(Family::new_with_constructor(call_histogram)),
        }
    }
}

/// 5 ms to about 20 s, doubling.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl ApiMeter {
    /// The histogram, to register with the daemon's metrics.
    pub fn calls(&self) -> Calls {
        (*self.calls).clone()
    }

    fn record(&self, service: &str, operation: &str, outcome: &str, seconds: f64) {
        let labels = vec![
            ("service", service.to_owned()),
            ("operation", operation.to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        self.calls.get_or_create(&labels).observe(seconds);
    }
}

#[derive(Debug, Clone)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

impl Intercept for ApiMeter {
    fn name(&self) -> &'static str {
        "hanat::ApiMeter"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(started) = cfg.load::<Started>() else {
            return Ok(());
        };
        let seconds = started.0.elapsed().as_secs_f64();
        let (service, operation) = cfg
            .load::<Metadata>()
            .map(|m| (m.service().to_owned(), m.name().to_owned()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        let outcome = match context.response().map(|r| r.status().as_u16()) {
            Some(200..=299) => "ok",
            Some(400..=499) => "client_error",
            Some(500..=599) => "server_error",
            _ => "no_response",
        };
        self.record(&service, &operation, outcome, seconds);
        Ok(())
    }
}
