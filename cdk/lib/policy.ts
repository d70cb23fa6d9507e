/**
 * The NAT role's permissions: exactly the calls the daemon makes
 * (docs/deploy.md, "IAM permissions"), each scoped as existing-vpc.yaml
 * scopes it. Statement ids are the template's, so that a policy reads the
 * same whichever way it was deployed.
 *
 * Pure: builds statements, creates nothing. Describe calls cannot be scoped
 * by IAM; everything that changes something is scoped to this deployment's
 * tags (`hanat:stack`, `hanat:pool`), names or VPC.
 */
import * as iam from 'aws-cdk-lib/aws-iam';
import { ArnFormat, Stack } from 'aws-cdk-lib';
import { RouteScope } from './props';

export interface PolicyValues {
  /** The `name` prop: the Elastic IP pool tag and the groups' name prefix. */
  readonly name: string;
  /** What the stack's instances, interfaces and groups are tagged `hanat:stack` with. */
  readonly stackTag: string;
  readonly routeScope: RouteScope;
  readonly vpcId: string;
  readonly peerKeySecretArn: string;
  readonly statusCheckArn: string;
}

export function natStatements(stack: Stack, v: PolicyValues): iam.PolicyStatement[] {
  const ec2Arn = (resource: string, resourceName: string) =>
    stack.formatArn({ service: 'ec2', resource, resourceName });
  const taggedForStack = { StringEquals: { 'ec2:ResourceTag/hanat:stack': v.stackTag } };
  const interfaces = ec2Arn('network-interface', '*');

  return [
    new iam.PolicyStatement({
      sid: 'Discover',
      actions: [
        'ec2:DescribeSubnets',
        'ec2:DescribeRouteTables',
        'ec2:DescribeNetworkInterfaces',
        'ec2:DescribeInstances',
        'ec2:DescribeInstanceStatus',
        'ec2:DescribeAddresses',
        'ec2:DescribeNatGateways',
        'autoscaling:DescribeAutoScalingInstances',
        'autoscaling:DescribeAutoScalingGroups',
      ],
      resources: ['*'],
    }),
    new iam.PolicyStatement({
      sid: 'TakeOverPrivateRoutesOfThisVpc',
      actions: ['ec2:CreateRoute', 'ec2:ReplaceRoute'],
      resources: [ec2Arn('route-table', '*')],
      // Every route table of the VPC, or only those the user tagged for this
      // stack, which a compromised NAT then cannot exceed (docs/security.md).
      conditions: v.routeScope === RouteScope.TAGGED
        ? taggedForStack
        : { StringEquals: { 'ec2:Vpc': ec2Arn('vpc', v.vpcId) } },
    }),
    new iam.PolicyStatement({
      sid: 'DisableSourceDestCheckOnOwnInterface',
      actions: ['ec2:ModifyNetworkInterfaceAttribute'],
      resources: [interfaces],
      conditions: taggedForStack,
    }),
    new iam.PolicyStatement({
      sid: 'ClaimThisStacksElasticIps',
      actions: ['ec2:AssociateAddress'],
      resources: [ec2Arn('elastic-ip', '*')],
      conditions: { StringEquals: { 'ec2:ResourceTag/hanat:pool': v.name } },
    }),
    new iam.PolicyStatement({
      sid: 'ClaimOntoOwnInterface',
      actions: ['ec2:AssociateAddress'],
      resources: [interfaces],
      conditions: taggedForStack,
    }),
    new iam.PolicyStatement({
      sid: 'AddSecondaryAddressesToOwnInterface',
      actions: ['ec2:AssignPrivateIpAddresses'],
      resources: [interfaces],
      conditions: taggedForStack,
    }),
    new iam.PolicyStatement({
      sid: 'ReportHealthOfThisStacksGroups',
      actions: ['autoscaling:SetInstanceHealth', 'autoscaling:CompleteLifecycleAction'],
      resources: [stack.formatArn({
        service: 'autoscaling',
        resource: 'autoScalingGroup',
        resourceName: `*:autoScalingGroupName/${v.name}-nat-*`,
        arnFormat: ArnFormat.COLON_RESOURCE_NAME,
      })],
      conditions: { StringEquals: { 'autoscaling:ResourceTag/hanat:stack': v.stackTag } },
    }),
    new iam.PolicyStatement({
      sid: 'ReadTheHeartbeatKey',
      actions: ['secretsmanager:GetSecretValue'],
      resources: [v.peerKeySecretArn],
    }),
    new iam.PolicyStatement({
      sid: 'PublishMetricsToOwnNamespace',
      actions: ['cloudwatch:PutMetricData'],
      resources: ['*'],
      conditions: { StringEquals: { 'cloudwatch:namespace': 'hanat' } },
    }),
    new iam.PolicyStatement({
      sid: 'PutThisInstanceUnderTheStatusCheck',
      actions: ['ec2:AssociateApplicationStatusCheck'],
      resources: [v.statusCheckArn, ec2Arn('instance', '*')],
      conditions: taggedForStack,
    }),
  ];
}
