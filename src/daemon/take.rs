//! Reading an AZ's private routes from EC2 and pointing them at a target:
//! the I/O on both sides of [`crate::plan`], shared by the routes loop (own
//! AZ), adoption and the NAT Gateway fallback (peers loop), the planned-exit
//! hand-off and `hanat plan`.
//!
//! Every mutating call changes one route or one attribute; [`apply_to`]
//! tries every action of a plan and returns the first error, so a failed
//! call never leaves the rest undone and the next pass retries it.

use tracing::{error, info};

use crate::AwsError;
use crate::aws::ec2::Ec2;
use crate::config::Config;
use crate::domain::{Identity, RouteTarget, SubnetId};
use crate::plan::{Action, Observed, Plan};

/// Read what the routes loop needs from EC2.
pub async fn observe(
    ec2: &Ec2,
    identity: &Identity,
    config: &Config,
) -> Result<Observed, AwsError> {
    observe_az(ec2, identity, config, &identity.availability_zone, true).await
}

/// Read the tagged subnets of `az` in our VPC and their route tables, and,
/// if `with_check`, our interface's source/destination check.
pub async fn observe_az(
    ec2: &Ec2,
    identity: &Identity,
    config: &Config,
    az: &str,
    with_check: bool,
) -> Result<Observed, AwsError> {
    let subnets = ec2
        .tagged_subnets(
            &identity.vpc_id,
            az,
            &config.discovery.tag_key,
            &config.discovery.tag_value,
        )
        .await?;
    let tagged_subnets: Vec<SubnetId> = subnets.iter().map(|(s, _)| s.clone()).collect();
    let subnet_cidrs = subnets
        .into_iter()
        .filter_map(|(s, c)| Some((s, c?)))
        .collect();
    let route_tables = ec2
        .route_tables_for(&identity.vpc_id, &tagged_subnets)
        .await?;
    let source_dest_check = match with_check {
        true => Some(ec2.source_dest_check(&identity.eni).await?),
        false => None,
    };
    Ok(Observed {
        tagged_subnets,
        subnet_cidrs,
        route_tables,
        source_dest_check,
    })
}

/// Apply one plan made by [`plan`] or [`crate::plan::plan_with`]: routes
/// point at this NAT.
pub async fn apply(ec2: &Ec2, identity: &Identity, plan: &Plan) -> Result<(), AwsError> {
    apply_to(ec2, &RouteTarget::Eni(identity.eni.clone()), plan).await
}

/// Apply one plan, pointing routes at `to`; every action is tried, the
/// first error is returned.
pub async fn apply_to(ec2: &Ec2, to: &RouteTarget, plan: &Plan) -> Result<(), AwsError> {
    let mut first_err = None;
    for action in &plan.actions {
        let result = match action {
            Action::CreateRoute { route_table } => {
                match ec2.create_default_route(route_table, to).await {
                    // Someone created one since we looked: replace it instead.
                    Err(e) if e.code.as_deref() == Some("RouteAlreadyExists") => {
                        ec2.replace_default_route(route_table, to).await
                    }
                    other => other,
                }
            }
            Action::ReplaceRoute { route_table, .. } => {
                ec2.replace_default_route(route_table, to).await
            }
            Action::DisableSourceDestCheck { eni } => ec2.disable_source_dest_check(eni).await,
        };
        match result {
            Ok(()) => info!(action = %action, to = %to, "applied"),
            Err(e) => {
                error!(action = %action, error = %e, "failed; will retry");
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
