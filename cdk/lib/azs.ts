/**
 * One AZ's NAT: the subnets it may run in, its Elastic IP pool and its
 * Auto Scaling group of one. existing-vpc.yaml's ElasticIp<X>…,
 * ElasticIp<X>Spare and NatGroup<X>, for X = A, B, C.
 */
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Token } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { HanatNatProps, Settings } from './props';

/** The most AZs the template (and so this construct) serves. */
export const MAX_AZS = 3;

/** The NATs' subnets: one per AZ, 1 to MAX_AZS of them. */
export function natSubnets(props: HanatNatProps): ec2.ISubnet[] {
  const prop = props.vpcSubnets === undefined ? 'vpc' : 'vpcSubnets';
  const none = `HanatNat: ${prop}: no public subnets; the NATs need one per AZ, with a route to an internet gateway`;
  if (props.vpcSubnets === undefined && props.vpc.publicSubnets.length === 0) throw new Error(none);
  let subnets: ec2.ISubnet[];
  try {
    subnets = props.vpc.selectSubnets(props.vpcSubnets ?? { subnetType: ec2.SubnetType.PUBLIC, onePerAz: true }).subnets;
  } catch (e) {
    throw new Error(`HanatNat: ${prop}: ${(e as Error).message}`);
  }
  if (subnets.length === 0) throw new Error(none);
  const azs = subnets.map((s) => s.availabilityZone);
  const known = azs.filter((az) => !Token.isUnresolved(az));
  if (new Set(known).size !== known.length) {
    throw new Error(`HanatNat: vpcSubnets: two subnets in one AZ (${azs.join(', ')}); select one per AZ (onePerAz: true)`);
  }
  if (subnets.length > MAX_AZS) {
    throw new Error(`HanatNat: ${prop}: ${subnets.length} AZs (${azs.join(', ')}); hanat serves at most ${MAX_AZS}: `
      + 'choose them with vpcSubnets, e.g. { subnetType: PUBLIC, availabilityZones: [...] }');
  }
  return subnets;
}

/**
 * The AZ's pool, tagged for the daemon: `addressesPerNat` addresses, then
 * the spare. The first is the one the AZ's NAT uses while alone.
 */
export function elasticIps(scope: Construct, settings: Settings, groupName: string, upper: string): ec2.CfnEIP[] {
  const tags = [
    { key: 'hanat:pool', value: settings.name },
    { key: 'hanat:group', value: groupName },
  ];
  const eips: ec2.CfnEIP[] = [];
  for (let k = 1; k <= settings.addressesPerNat; k++) {
    const id = k === 1 ? `ElasticIp${upper}` : `ElasticIp${upper}${k}`;
    eips.push(new ec2.CfnEIP(scope, id, { domain: 'vpc', tags }));
  }
  if (settings.spareAddress) {
    eips.push(new ec2.CfnEIP(scope, `ElasticIp${upper}Spare`, {
      domain: 'vpc',
      tags: [...tags, { key: 'hanat:spare', value: 'true' }],
    }));
  }
  return eips;
}

/** The AZ's Auto Scaling group of one NAT, with room for a second while one replaces the other. */
export function natGroup(
  scope: Construct,
  id: string,
  groupName: string,
  subnet: ec2.ISubnet,
  launchTemplate: ec2.CfnLaunchTemplate,
  stackTag: string,
): autoscaling.CfnAutoScalingGroup {
  const group = new autoscaling.CfnAutoScalingGroup(scope, id, {
    autoScalingGroupName: groupName,
    minSize: '1',
    // MaxSize 2: room for a second NAT while one replaces the other (launched
    // first: InstanceMaintenancePolicy, UpdatePolicy); hanat gives the AZ to
    // the newer one (docs/design.md, "Two NATs in one AZ").
    maxSize: '2',
    terminationPolicies: ['OldestInstance'],
    instanceMaintenancePolicy: { minHealthyPercentage: 100, maxHealthyPercentage: 200 },
    desiredCapacity: '1',
    vpcZoneIdentifier: [subnet.subnetId],
    launchTemplate: {
      launchTemplateId: launchTemplate.ref,
      version: launchTemplate.attrLatestVersionNumber,
    },
    // EC2, not ELB: the daemon reports its forwarding health itself.
    healthCheckType: 'EC2',
    healthCheckGracePeriod: 60,
    lifecycleHookSpecificationList: [{
      lifecycleHookName: 'hanat-handoff',
      lifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING',
      heartbeatTimeout: 300,
      defaultResult: 'CONTINUE',
    }],
    // Peers are the groups with the same hanat:stack (peers.group_tag).
    tags: [
      { key: 'Name', value: groupName, propagateAtLaunch: true },
      { key: 'hanat:stack', value: stackTag, propagateAtLaunch: true },
    ],
  });
  group.cfnOptions.updatePolicy = {
    autoScalingRollingUpdate: { minInstancesInService: 1, maxBatchSize: 1, pauseTime: 'PT3M' },
  };
  return group;
}
