//! Who the peers are: the deployment (our group's `peers.group_tag`
//! value) and the instances of every group that shares it.

use crate::aws::AwsError;
use crate::daemon::ctx::Ctx;
use crate::decide::backoff::DEPLOYMENT_LOOKUP;
use crate::decide::peers::Peer;
use crate::domain::InstanceId;
use tracing::warn;

/// The value of our group's deployment tag; `None` (with a warning) turns
/// peer failover off. Lookup errors are retried on [`DEPLOYMENT_LOOKUP`].
pub(super) async fn deployment(ctx: &Ctx) -> Option<String> {
    let mut backoff = DEPLOYMENT_LOOKUP.backoff();
    let tag = &ctx.config.peers.group_tag;
    loop {
        let found = async {
            let Some(group) = ctx.group().await? else {
                let why = format!("{} is not in an Auto Scaling group", ctx.me.instance_id);
                return Ok::<_, AwsError>(Err(why));
            };
            Ok(match ctx.cloud.group_tag(&group, tag).await? {
                Some(v) => Ok(v),
                None => Err(format!("group {group} has no tag {tag}")),
            })
        }
        .await;
        match found {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(why)) => {
                warn!("{why}; peer failover is off");
                return None;
            }
            Err(e) => {
                let wait = backoff.fail();
                warn!(error = %e, retry_in = %crate::domain::human(wait), "cannot find this instance's group; will retry");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What [`peer_list`] reads.
pub(super) type Listing = (Vec<Peer>, Vec<InstanceId>, Option<i64>);

/// The live peers, instances of ours that are no longer alive, and when
/// this NAT was launched (asked in the same call, for
/// [`crate::decide::holder`]).
pub(super) async fn peer_list(ctx: &Ctx, deployment: &str) -> Result<Listing, AwsError> {
    let mut ids: Vec<InstanceId> = ctx
        .cloud
        .instances_of_groups_tagged(&ctx.config.peers.group_tag, deployment)
        .await?
        .into_iter()
        .filter(|i| *i != ctx.me.instance_id)
        .collect();
    ids.push(ctx.me.instance_id.clone());
    let infos = ctx.cloud.instances(&ids).await?;
    let mut peers = Vec::new();
    let mut departed = Vec::new();
    let mut launched = None;
    for i in infos {
        if i.id == ctx.me.instance_id {
            launched = i.launched;
            continue;
        }
        match (i.alive, i.eni, i.ip) {
            (true, Some(eni), Some(ip)) => peers.push(Peer {
                instance: i.id,
                az: i.az,
                eni,
                ip,
                launched: i.launched,
            }),
            _ => departed.push(i.id),
        }
    }
    peers.sort_by(|a, b| a.az.cmp(&b.az).then(a.instance.cmp(&b.instance)));
    Ok((peers, departed, launched))
}
