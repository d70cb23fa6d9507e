/**
 * `HanatNat`: hanat's NAT instances for a VPC of the CDK app, the
 * resources cloudformation/existing-vpc.yaml creates. Per AZ (one per NAT
 * subnet, at most 3): Elastic IPs tagged for the AZ's pool and its spare,
 * an Auto Scaling group of one, three alarms. Shared: the launch template
 * whose user data writes hanat.toml, the NAT role and instance profile, the
 * security group, the heartbeat key's secret, the EC2 application status
 * check, and the interface endpoints when asked for.
 *
 * What the template decides with Conditions on parameters is decided here
 * from the props, so the synthesized template has no Conditions. The tags
 * the daemon reads (`hanat:stack`, `hanat:pool`, `hanat:group`,
 * `hanat:spare`) and the names its role is scoped to are the template's.
 * L1 resources but for the role: the L2s would add what the template does
 * not have (a security group per endpoint, separate lifecycle hooks).
 */
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Annotations, Aws, Stack } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { addAzAlarms } from './alarms';
import { elasticIps, natGroup, natSubnets } from './azs';
import { interfaceEndpoints } from './endpoints';
import { natLaunchTemplate, natRole, natSecurityGroup } from './instances';
import { peerKeySecret, statusCheck } from './peers';
import { CloudWatchMetrics, HanatNatProps, settle } from './props';

/** One AZ's NAT: where it runs and what the construct made for it. */
export interface NatAz {
  readonly availabilityZone: string;
  readonly subnet: ec2.ISubnet;
  /** `<name>-nat-a`, `-b`, `-c`. */
  readonly groupName: string;
  readonly group: autoscaling.CfnAutoScalingGroup;
  /** The AZ's Elastic IPs: `addressesPerNat` of them, then the spare if any. */
  readonly elasticIps: ec2.CfnEIP[];
}

export class HanatNat extends Construct {
  /** The NAT instances' role: the daemon's permissions, and SSM Session Manager. */
  readonly role: iam.IRole;
  /** The NATs' security group: everything from the VPC in, everything out. */
  readonly securityGroup: ec2.ISecurityGroup;
  /** Per AZ, in the order of the subnets. */
  readonly azs: NatAz[];
  /** The Auto Scaling groups' names (the template's output `NatGroups`). */
  readonly natGroupNames: string[];
  /** The first public address of each AZ (output `ElasticIps`). */
  readonly elasticIps: string[];
  /** Every public address, spares included: what to allow-list (output `AllElasticIps`). */
  readonly allElasticIps: string[];
  /** The allocation ids of `elasticIps` (output `ElasticIpAllocations`). */
  readonly elasticIpAllocations: string[];
  /** The secret the NATs sign their heartbeats with (peers.key_secret). */
  readonly peerKeySecretArn: string;
  /** The EC2 application status check on the NATs' /health (peers.status_check). */
  readonly statusCheckArn: string;

  constructor(scope: Construct, id: string, props: HanatNatProps) {
    super(scope, id);
    const settings = settle(props);
    this.onlyOnePerStack();
    const subnets = natSubnets(props);
    if (subnets.length === 1) {
      Annotations.of(this).addWarningV2('hanat:singleAz',
        'one AZ: no peer NAT to fail over to; a replacement takes about a minute '
        + '(fallbackNatGateways can cover it)');
    }
    const { name } = settings;
    const vpc = props.vpc;
    // The tag peers find each other by and the role is scoped to: the stack
    // name as CloudFormation knows it, whatever the CDK app called it.
    const stackTag = Aws.STACK_NAME;

    const securityGroup = natSecurityGroup(this, name, vpc);
    this.securityGroup = ec2.SecurityGroup.fromSecurityGroupId(this, 'SecurityGroupRef', securityGroup.ref, {
      allowAllOutbound: true,
    });
    if (settings.interfaceEndpoints) interfaceEndpoints(this, name, vpc, subnets);
    const secret = peerKeySecret(this, name);
    this.peerKeySecretArn = secret.ref;
    const check = statusCheck(this, name, settings.statusCheckFailures, stackTag);
    this.statusCheckArn = check.ref;
    const { role, profile } = natRole(this, {
      settings, stackTag, vpcId: vpc.vpcId, peerKeySecretArn: secret.ref, statusCheckArn: check.ref,
    });
    this.role = role;
    const launchTemplate = natLaunchTemplate(this, {
      settings, stackTag, securityGroup, profile, peerKeySecret: secret, statusCheck: check,
    });

    const publish = settings.cloudWatchMetrics !== CloudWatchMetrics.OFF;
    let previous: autoscaling.CfnAutoScalingGroup | undefined;
    this.azs = subnets.map((subnet, i) => {
      const letter = 'abc'[i];
      const upper = letter.toUpperCase();
      const groupName = `${name}-nat-${letter}`;
      const eips = elasticIps(this, settings, groupName, upper);
      const group = natGroup(this, `Group${upper}`, groupName, subnet, launchTemplate, stackTag);
      // One AZ after the other, as the template: a rolling update never
      // replaces two AZs' NATs at once.
      if (previous !== undefined) group.addResourceDependency(previous);
      previous = group;
      if (publish) {
        addAzAlarms(this, {
          groupName,
          groupRef: group.ref,
          letter: upper,
          vpcId: vpc.vpcId,
          availabilityZone: subnet.availabilityZone,
          alarmTopicArn: settings.alarmTopicArn,
        });
      }
      return { availabilityZone: subnet.availabilityZone, subnet, groupName, group, elasticIps: eips };
    });

    this.natGroupNames = this.azs.map((az) => az.group.ref);
    this.elasticIps = this.azs.map((az) => az.elasticIps[0].ref);
    this.allElasticIps = this.azs.flatMap((az) => az.elasticIps.map((eip) => eip.ref));
    this.elasticIpAllocations = this.azs.map((az) => az.elasticIps[0].attrAllocationId);
  }

  /**
   * Peers find each other by the `hanat:stack` tag, and the role is scoped
   * to it: two deployments in one stack would take each other for peers.
   */
  private onlyOnePerStack() {
    const stack = Stack.of(this);
    const others = stack.node.findAll()
      .filter((c) => c instanceof HanatNat && c !== this && Stack.of(c) === stack);
    if (others.length > 0) {
      throw new Error(`HanatNat: one per stack (already ${others[0].node.path}): `
        + 'its NATs find their peers by the stack name; put the other in a stack of its own');
    }
  }
}
