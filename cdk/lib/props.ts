/**
 * The construct's props: the parameters of cloudformation/existing-vpc.yaml
 * as typed values with that template's defaults, and `settle`, which checks
 * them against the template's constraints and fills in the defaults.
 *
 * No I/O. An invalid prop throws an Error whose message starts with the
 * prop's name, so that `cdk synth` says which one to fix. A value that is a
 * token (known only at deploy time) is passed through unchecked where
 * CloudFormation can take it, and refused where the construct must decide
 * in TypeScript (how many Elastic IPs to make).
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Token } from 'aws-cdk-lib';

/** Which route tables the NATs' role may change (the template's `RouteScope`). */
export enum RouteScope {
  /** Any route table of the VPC; hanat itself touches only those of the subnets tagged network=private. */
  VPC = 'vpc',
  /** Only the route tables tagged `hanat:stack=<stack name>`: tag every private subnet's route table first. */
  TAGGED = 'tagged',
}

/** What each NAT publishes to CloudWatch (the template's `CloudWatchMetrics`). */
export enum CloudWatchMetrics {
  /** The NAT Gateway's metrics and hanat's own (about 5.5 USD a month per AZ), and the alarms. */
  ALL = 'all',
  /** Only what the alarms watch (about 1.6 USD a month per AZ), and the alarms. */
  ALARMS = 'alarms',
  /** Nothing, and no alarms. */
  OFF = 'off',
}

export interface HanatNatProps {
  /** The VPC the NATs serve; its private subnets carry the tag network=private, each with a route table of its own. */
  readonly vpc: ec2.IVpc;

  /** The hanat AMI built with packer/ (arm64 for Graviton instance types). */
  readonly amiId: string;

  /**
   * The subnets the NATs run in, one per AZ, at most 3: each needs a route to
   * an internet gateway.
   *
   * @default the VPC's public subnets, one per AZ
   */
  readonly vpcSubnets?: ec2.SubnetSelection;

  /**
   * Prefix of resource names (Auto Scaling groups `<name>-nat-a`…, the launch
   * template, alarms) and the value of the Elastic IP pool tag `hanat:pool`.
   * Names are per region: two deployments in one region need two names.
   *
   * @default 'hanat'
   */
  readonly name?: string;

  /**
   * NAT instance type; Graviton (t4g) is cheapest. Must match the AMI's architecture.
   *
   * @default t4g.nano
   */
  readonly instanceType?: ec2.InstanceType;

  /**
   * EC2 key pair for SSH.
   *
   * @default none: SSM Session Manager only
   */
  readonly keyName?: string;

  /**
   * The forwarding probe's targets, `tcp://HOST:PORT` or `http://HOST[:PORT]/PATH`;
   * healthy when any answers (probe.targets; the template's `HeartbeatTargets`).
   *
   * @default ['tcp://1.1.1.1:443', 'tcp://8.8.8.8:443', 'tcp://9.9.9.9:443']
   */
  readonly probeTargets?: string[];

  /**
   * Failed checks of a NAT's /health (one a minute) before EC2 calls it
   * impaired, 1 to 10: Auto Scaling then replaces it and, if it is silent, a
   * peer adopts its AZ.
   *
   * @default 1
   */
  readonly statusCheckFailures?: number;

  /**
   * IPv4 CIDRs that may reach a NAT's port 7472 (/metrics, /health, /status),
   * written to metrics.allow. Keep the NATs' own subnets in it: EC2's
   * application status check asks /health from there.
   *
   * @default [] : the whole VPC
   */
  readonly metricsAllow?: string[];

  /**
   * Managed NAT Gateways to fall back to when no NAT instance is healthy, by
   * AZ name: `{ 'us-east-1a': 'nat-0abc' }` for zonal gateways, or
   * `{ '*': 'nat-0abc' }` for a regional one that stands in for every AZ
   * (peers.fallback_nat_gateway_id).
   *
   * @default none
   */
  readonly fallbackNatGateways?: Record<string, string>;

  /**
   * Interface endpoints (private DNS) in the NATs' subnets for EC2, Auto
   * Scaling, Secrets Manager and CloudWatch, and NATs launched without a
   * public address. About 7.30 USD a month per endpoint per AZ.
   *
   * @default false: each NAT gets a public address on launch, which its Elastic IP replaces
   */
  readonly interfaceEndpoints?: boolean;

  /**
   * Which route tables the NATs' role may change.
   *
   * @default RouteScope.VPC
   */
  readonly routeScope?: RouteScope;

  /**
   * One more Elastic IP in each AZ's pool, for the NAT Auto Scaling launches
   * before it terminates the old one (docs/design.md, "Two NATs in one AZ").
   * Allow-list it too (`allElasticIps`).
   *
   * @default true
   */
  readonly spareAddress?: boolean;

  /**
   * Elastic IPs per NAT, 1 to 8 (snat.addresses): about 64,000 concurrent
   * connections per address to one destination.
   *
   * @default 1
   */
  readonly addressesPerNat?: number;

  /**
   * What each NAT publishes to CloudWatch; with OFF, no alarms either.
   *
   * @default CloudWatchMetrics.ALL
   */
  readonly cloudWatchMetrics?: CloudWatchMetrics;

  /**
   * SNS topic the alarms notify, in ALARM and back to OK.
   *
   * @default none
   */
  readonly alarmTopicArn?: string;
}

/** The props checked, with every default filled in. */
export interface Settings {
  readonly name: string;
  readonly amiId: string;
  readonly instanceType: string;
  readonly keyName?: string;
  readonly probeTargets: readonly string[];
  readonly statusCheckFailures: number;
  readonly metricsAllow: readonly string[];
  readonly fallbackNatGateways: ReadonlyArray<readonly [string, string]>;
  readonly interfaceEndpoints: boolean;
  readonly routeScope: RouteScope;
  readonly spareAddress: boolean;
  readonly addressesPerNat: number;
  readonly cloudWatchMetrics: CloudWatchMetrics;
  readonly alarmTopicArn?: string;
}

export const DEFAULT_PROBE_TARGETS = ['tcp://1.1.1.1:443', 'tcp://8.8.8.8:443', 'tcp://9.9.9.9:443'];

// The template's AllowedPattern of each parameter, anchored.
const NAME = /^[a-zA-Z][a-zA-Z0-9-]{0,30}$/;
const CIDR = /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/;
const AZ = /^([a-z0-9-]+|\*)$/;
const NAT_GATEWAY = /^nat-[0-9a-z]+$/;
const TOPIC = /^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]+$/;
const AMI = /^ami-[0-9a-f]+$/;
// The daemon checks a target's form itself (probe.targets); these are only
// the characters that would break the TOML string the user data writes.
const TARGET = /^(tcp|http):\/\/[^\s"\\,$']+$/;

function fail(prop: string, problem: string): never {
  throw new Error(`HanatNat: ${prop}: ${problem}`);
}

function integer(prop: string, value: number | undefined, dflt: number, min: number, max: number): number {
  if (value === undefined) return dflt;
  if (Token.isUnresolved(value)) fail(prop, 'must be known at synth time, not a token');
  if (!Number.isInteger(value) || value < min || value > max) {
    fail(prop, `must be an integer from ${min} to ${max} (got ${value})`);
  }
  return value;
}

function matching(prop: string, value: string, pattern: RegExp, what: string): string {
  if (!Token.isUnresolved(value) && !pattern.test(value)) fail(prop, `must be ${what} (got '${value}')`);
  return value;
}

/**
 * For what the user data writes: the config is a Fn::Sub body, which a
 * token cannot be spliced into (CDK would make it an Fn::Join).
 */
function literal(prop: string, value: string, pattern: RegExp, what: string): string {
  if (Token.isUnresolved(value)) fail(prop, 'must be known at synth time, not a token');
  return matching(prop, value, pattern, what);
}

function oneOf<T extends string>(prop: string, value: T | undefined, dflt: T, all: Record<string, T>): T {
  if (value === undefined) return dflt;
  if (!Object.values(all).includes(value)) {
    fail(prop, `must be one of ${Object.values(all).join(', ')} (got '${value}')`);
  }
  return value;
}

/** Check the props against existing-vpc.yaml's constraints; fill in its defaults. */
export function settle(props: HanatNatProps): Settings {
  const name = matching('name', props.name ?? 'hanat', NAME,
    'a letter then up to 30 letters, digits or hyphens');
  if (props.amiId === undefined || props.amiId === '') fail('amiId', 'is required');
  const amiId = matching('amiId', props.amiId, AMI, 'an AMI id like ami-0123456789abcdef0');

  const probeTargets = props.probeTargets ?? DEFAULT_PROBE_TARGETS;
  if (probeTargets.length === 0) fail('probeTargets', 'needs at least one target');
  probeTargets.forEach((t) => literal('probeTargets', t, TARGET, 'tcp://HOST:PORT or http://HOST[:PORT]/PATH'));

  const metricsAllow = props.metricsAllow ?? [];
  metricsAllow.forEach((c) => literal('metricsAllow', c, CIDR, 'IPv4 CIDRs like 10.0.0.0/16'));

  const fallbackNatGateways = Object.entries(props.fallbackNatGateways ?? {});
  for (const [az, id] of fallbackNatGateways) {
    literal('fallbackNatGateways', az, AZ, 'keyed by AZ names like us-east-1a, or * for a regional gateway');
    literal('fallbackNatGateways', id, NAT_GATEWAY, 'NAT Gateway ids like nat-0123456789abcdef0');
  }

  // An empty string means none, as the template's empty default does.
  const keyName = props.keyName || undefined;
  const alarmTopicArn = props.alarmTopicArn || undefined;
  if (alarmTopicArn !== undefined) matching('alarmTopicArn', alarmTopicArn, TOPIC, 'an SNS topic ARN');

  return {
    name,
    amiId,
    instanceType: (props.instanceType ?? new ec2.InstanceType('t4g.nano')).toString(),
    keyName,
    probeTargets,
    statusCheckFailures: integer('statusCheckFailures', props.statusCheckFailures, 1, 1, 10),
    metricsAllow,
    fallbackNatGateways,
    interfaceEndpoints: props.interfaceEndpoints ?? false,
    routeScope: oneOf('routeScope', props.routeScope, RouteScope.VPC, RouteScope),
    spareAddress: props.spareAddress ?? true,
    addressesPerNat: integer('addressesPerNat', props.addressesPerNat, 1, 1, 8),
    cloudWatchMetrics: oneOf('cloudWatchMetrics', props.cloudWatchMetrics, CloudWatchMetrics.ALL, CloudWatchMetrics),
    alarmTopicArn,
  };
}
