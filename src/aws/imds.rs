//! Instance identity from the instance metadata service (IMDSv2).
//!
//! Uses aws-config's IMDS client, which fetches and refreshes the session
//! token (PUT), retries 5xx and connection errors itself, and honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (tests and the lab point it at their
//! own IMDSv2 server). On top of that, [`identity_with_retry`] keeps trying
//! with capped exponential backoff for a whole boot window, because IMDS can
//! be slow to answer on a fresh instance. Odd answers become errors, never
//! panics.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::imds::client::error::ImdsError;

use crate::domain::{EniId, Identity, InstanceId, Ipv4Cidr, SubnetId, VpcId};

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// IMDS did not answer or refused.
    #[error("instance metadata {path}")]
    Fetch {
        path: String,
        #[source]
        source: Box<ImdsError>,
    },
    /// IMDS answered something we cannot use.
    #[error("instance metadata {path}: unexpected value `{value}`: {problem}")]
    Malformed {
        path: String,
        value: String,
        problem: &'static str,
    },
    /// [`identity_with_retry`] ran out of time; carries the last error.
    #[error("instance metadata not available after {}: {last}", crate::domain::human(*waited))]
    GaveUp {
        waited: Duration,
        last: Box<IdentityError>,
    },
}

impl IdentityError {
    /// A 404 means the instance really lacks this data (wrong instance type
    /// or not on EC2); retrying will not help.
    fn is_permanent(&self) -> bool {
        match self {
            IdentityError::Fetch { source, .. } => {
                matches!(&**source, ImdsError::ErrorResponse(r) if r.response().status().as_u16() == 404)
            }
            IdentityError::Malformed { .. } => true,
            _ => false,
        }
    }
}

/// Why a command a person typed found no instance metadata, and what to
/// do: each variant's message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum OffInstance {
    /// The token `PUT` answered 403.
    #[error(
        "instance metadata at {endpoint} refused a session token (403: IMDS is disabled, or this is not an EC2 instance); run this on the NAT instance, whose launch template enables metadata (HttpEndpoint: enabled)"
    )]
    Forbidden { endpoint: String },
    /// Nothing listens at the metadata address.
    #[error(
        "nothing answers at {endpoint} (connection refused): this is not an EC2 instance; run this on the NAT instance"
    )]
    Refused { endpoint: String },
    /// No answer in time.
    #[error(
        "no answer from instance metadata at {endpoint} within {}: this is not an EC2 instance, or a container on one whose metadata replies are dropped after one hop (set the instance's HttpPutResponseHopLimit to 2)",
        crate::domain::human(*within)
    )]
    NoAnswer { endpoint: String, within: Duration },
    /// Metadata answered, but not with what hanat needs.
    #[error(transparent)]
    Other(IdentityError),
}

/// Where the metadata service is asked (`AWS_EC2_METADATA_SERVICE_ENDPOINT`
/// or the standard address).
fn endpoint() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|_| "http://169.254.169.254".into())
}

/// What an error from the metadata client means for a person waiting.
fn off_instance(e: IdentityError, within: Duration) -> OffInstance {
    use std::error::Error;
    let endpoint = endpoint();
    let mut refused = false;
    let mut text = String::new();
    let mut cause: Option<&(dyn Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        text.push_str(&c.to_string().to_ascii_lowercase());
        text.push(' ');
        refused |= c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        cause = c.source();
    }
    if text.contains("forbidden") {
        OffInstance::Forbidden { endpoint }
    } else if refused || text.contains("connection refused") {
        OffInstance::Refused { endpoint }
    } else if text.contains("timeout") || text.contains("timed out") || text.contains("dispatch") {
        OffInstance::NoAnswer { endpoint, within }
    } else {
        OffInstance::Other(e)
    }
}

/// The identity for a command a person typed: one attempt, an answer
/// within `within`, and off an instance an error that says why at once
/// (the daemon's start-up waits instead: [`identity_with_retry`]).
pub async fn identity_now(within: Duration) -> Result<Identity, OffInstance> {
    let imds = Imds {
        client: aws_config::imds::Client::builder()
            .max_attempts(1)
            .connect_timeout(within.min(Duration::from_secs(1)))
            .read_timeout(within)
            .build(),
    };
    match tokio::time::timeout(within, imds.identity()).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => Err(off_instance(e, within)),
        Err(_) => Err(OffInstance::NoAnswer {
            endpoint: endpoint(),
            within,
        }),
    }
}

/// An IMDSv2 client.
#[derive(Clone)]
pub struct Imds {
    client: aws_config::imds::Client,
}

impl Imds {
    /// A client for the endpoint in `AWS_EC2_METADATA_SERVICE_ENDPOINT`, or
    /// the standard 169.254.169.254.
    pub fn from_env() -> Self {
        Self {
            client: aws_config::imds::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .read_timeout(Duration::from_secs(2))
                .build(),
        }
    }

    /// A client for an explicit endpoint such as `http://127.0.0.1:8080`.
    pub fn with_endpoint(endpoint: &str) -> Result<Self, IdentityError> {
        let builder = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .endpoint(endpoint)
            .map_err(|_| IdentityError::Malformed {
                path: "(endpoint)".into(),
                value: endpoint.to_owned(),
                problem: "not a valid IMDS endpoint URL",
            })?;
        Ok(Self {
            client: builder.build(),
        })
    }

    async fn get(&self, path: &str) -> Result<String, IdentityError> {
        let full = format!("/latest/meta-data/{path}");
        self.client
            .get(full.clone())
            .await
            .map(|s| s.as_ref().trim().to_owned())
            .map_err(|source| IdentityError::Fetch {
                path: full,
                source: Box::new(source),
            })
    }

    /// A metadata path that may be absent: `None` on 404.
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, IdentityError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_permanent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Read everything the daemon needs to know about itself, once.
    pub async fn identity(&self) -> Result<Identity, IdentityError> {
        let instance_id = self.get("instance-id").await?;
        let availability_zone = self.get("placement/availability-zone").await?;
        let region = match self.get("placement/region").await {
            Ok(r) => r,
            // Older metadata versions lack placement/region: derive it from
            // the AZ (us-east-1a → us-east-1).
            Err(e) if e.is_permanent() => availability_zone
                .trim_end_matches(|c: char| c.is_ascii_lowercase())
                .to_owned(),
            Err(e) => return Err(e),
        };
        let mac = self.get("mac").await?.to_ascii_lowercase();
        let iface = format!("network/interfaces/macs/{mac}");
        let eni = self.get(&format!("{iface}/interface-id")).await?;
        let vpc_id = self.get(&format!("{iface}/vpc-id")).await?;
        let subnet_id = self.get(&format!("{iface}/subnet-id")).await?;
        let cidrs_path = format!("{iface}/vpc-ipv4-cidr-blocks");
        let cidrs = self.get(&cidrs_path).await?;
        let local_ipv4 = self.get("local-ipv4").await?;

        let malformed = |path: &str, value: &str, problem| IdentityError::Malformed {
            path: format!("/latest/meta-data/{path}"),
            value: value.to_owned(),
            problem,
        };
        check_prefix(&instance_id, "i-").map_err(|p| malformed("instance-id", &instance_id, p))?;
        check_prefix(&eni, "eni-").map_err(|p| malformed(&iface, &eni, p))?;
        check_prefix(&vpc_id, "vpc-").map_err(|p| malformed(&iface, &vpc_id, p))?;
        check_prefix(&subnet_id, "subnet-").map_err(|p| malformed(&iface, &subnet_id, p))?;
        if availability_zone.is_empty() || region.is_empty() {
            return Err(malformed(
                "placement/availability-zone",
                &availability_zone,
                "empty",
            ));
        }
        let vpc_cidrs = cidrs
            .split_whitespace()
            .map(|c| c.parse::<Ipv4Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| malformed(&cidrs_path, &cidrs, "not a list of IPv4 networks"))?;
        if vpc_cidrs.is_empty() {
            return Err(malformed(&cidrs_path, &cidrs, "no VPC CIDR block"));
        }
        let private_ip: Ipv4Addr = local_ipv4
            .parse()
            .map_err(|_| malformed("local-ipv4", &local_ipv4, "not an IPv4 address"))?;
        Ok(Identity {
            instance_id: InstanceId(instance_id),
            region,
            availability_zone,
            mac,
            eni: EniId(eni),
            vpc_id: VpcId(vpc_id),
            vpc_cidrs,
            subnet_id: SubnetId(subnet_id),
            private_ip,
        })
    }
}

fn check_prefix(value: &str, prefix: &str) -> Result<(), &'static str> {
    if value.len() > prefix.len()
        && value.starts_with(prefix)
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err("not an AWS resource id")
    }
}

/// Backoff between identity attempts: 0.5 s doubling to a 10 s cap.
const IDENTITY_BACKOFF_START: Duration = Duration::from_millis(500);
const IDENTITY_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// [`Imds::identity`], retried with backoff for at most `budget`. Permanent
/// problems (404, malformed values) fail at once.
pub async fn identity_with_retry(imds: &Imds, budget: Duration) -> Result<Identity, IdentityError> {
    let start = tokio::time::Instant::now();
    let mut delay = IDENTITY_BACKOFF_START;
    loop {
        match imds.identity().await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                let waited = start.elapsed();
                if waited + delay > budget {
                    return Err(IdentityError::GaveUp {
                        waited,
                        last: Box::new(e),
                    });
                }
                // Said once: at boot, metadata may simply not be up yet.
                if delay == IDENTITY_BACKOFF_START {
                    tracing::warn!(
                        error = %crate::report(&e),
                        waiting_up_to = %crate::domain::human(budget),
                        "instance metadata not ready; at boot it may not be up yet, so start-up waits for it (aws.imds_timeout)"
                    );
                } else {
                    tracing::debug!(error = %crate::report(&e), retry_in = %crate::domain::human(delay), "instance metadata still not ready");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(IDENTITY_BACKOFF_CAP);
            }
        }
    }
}
