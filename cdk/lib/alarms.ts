/**
 * One AZ's three CloudWatch alarms on what its NATs publish (namespace
 * hanat, docs/observability.md): nobody forwards the AZ, source ports ran
 * out, the conntrack table fills. Names, dimensions and thresholds are
 * existing-vpc.yaml's; tests/deploy.rs checks those against what the daemon
 * publishes.
 */
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import { Construct } from 'constructs';

export interface AzAlarmValues {
  /** `<name>-nat-<letter>`: the AZ's group name, the alarms' name prefix. */
  readonly groupName: string;
  /** The group's Ref (its name), so that the alarms depend on it. */
  readonly groupRef: string;
  /** The construct id suffix: A, B or C. */
  readonly letter: string;
  readonly vpcId: string;
  readonly availabilityZone: string;
  readonly alarmTopicArn?: string;
}

export function addAzAlarms(scope: Construct, v: AzAlarmValues): cloudwatch.CfnAlarm[] {
  const actions = v.alarmTopicArn === undefined ? {} : {
    alarmActions: [v.alarmTopicArn],
    okActions: [v.alarmTopicArn],
  };
  const az = { name: 'AvailabilityZone', value: v.availabilityZone };
  const group = { name: 'AutoScalingGroupName', value: v.groupRef };
  return [
    // ForwardingNat is 1 from every NAT that forwards the AZ's private
    // traffic (its own AZ, or one it adopted), 0 from the others: its
    // maximum is below 1, or missing, only when nobody forwards for the AZ.
    new cloudwatch.CfnAlarm(scope, `NoForwardingNatAlarm${v.letter}`, {
      alarmName: `${v.groupName}-no-forwarding-nat`,
      alarmDescription: 'No NAT forwarded the private subnets of this AZ for 3 minutes (neither its own '
        + 'NAT nor a peer that adopted it): their internet traffic is lost. See hanat status '
        + 'on the NATs and docs/failure-behaviour.md.',
      namespace: 'hanat',
      metricName: 'ForwardingNat',
      dimensions: [{ name: 'VpcId', value: v.vpcId }, az],
      statistic: 'Maximum',
      period: 60,
      evaluationPeriods: 3,
      threshold: 1,
      comparisonOperator: 'LessThanThreshold',
      treatMissingData: 'breaching',
      ...actions,
    }),
    new cloudwatch.CfnAlarm(scope, `PortAllocationAlarm${v.letter}`, {
      alarmName: `${v.groupName}-port-allocation`,
      alarmDescription: 'The NAT of this AZ could not find a free source port for new connections '
        + '(ErrorPortAllocation, conntrack insert_failed): too many connections to one '
        + 'destination for one address.',
      namespace: 'hanat',
      metricName: 'ErrorPortAllocation',
      dimensions: [group, az],
      statistic: 'Sum',
      period: 60,
      evaluationPeriods: 1,
      threshold: 0,
      comparisonOperator: 'GreaterThanThreshold',
      treatMissingData: 'notBreaching',
      ...actions,
    }),
    new cloudwatch.CfnAlarm(scope, `ConntrackFullAlarm${v.letter}`, {
      alarmName: `${v.groupName}-conntrack-full`,
      alarmDescription: "The NAT of this AZ's connection tracking table is at least 90% full: when it is "
        + 'full, new connections are dropped. Raise nf_conntrack_max or use a larger instance.',
      namespace: 'hanat',
      metricName: 'ConntrackFillPercent',
      dimensions: [group, az],
      statistic: 'Maximum',
      period: 60,
      evaluationPeriods: 1,
      threshold: 90,
      comparisonOperator: 'GreaterThanOrEqualToThreshold',
      treatMissingData: 'notBreaching',
      ...actions,
    }),
  ];
}
