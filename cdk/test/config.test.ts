/**
 * The user data writes the hanat.toml existing-vpc.yaml's user data writes
 * for the same parameters: both scripts run under bash (with /etc/hanat in a
 * temporary directory) and their files are compared, then checked for the
 * values that matter.
 */
import { CloudWatchMetrics, HanatNatProps } from '../lib';
import { DEFAULT_PROBE_TARGETS } from '../lib/props';
import { fnSub, only, runUserData, synth, templateUserData } from './helpers';

const SECRET = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:hanat-peer-key-AbCdEf';
const CHECK = 'arn:aws:ec2:us-east-1:123456789012:application-status-check/asc-0123456789abcdef0';

/** The config the construct's user data writes, its secret and check resolved as CloudFormation would. */
function constructConfig(props: Partial<HanatNatProps>): string {
  const { template } = synth(props);
  const [, lt] = only(template, 'AWS::EC2::LaunchTemplate');
  const body = lt.Properties.LaunchTemplateData.UserData['Fn::Base64']['Fn::Sub'];
  expect(typeof body).toBe('string');
  const [secretId] = only(template, 'AWS::SecretsManager::Secret');
  const [checkId] = only(template, 'AWS::EC2::ApplicationStatusCheck');
  return runUserData(fnSub(body, { [secretId]: SECRET, [checkId]: CHECK }));
}

/** The config existing-vpc.yaml's user data writes for the same parameters. */
function templateConfig(props: Partial<HanatNatProps>): string {
  const metrics = props.cloudWatchMetrics ?? CloudWatchMetrics.ALL;
  const publish = metrics !== CloudWatchMetrics.OFF;
  return runUserData(fnSub(templateUserData(), {
    Targets: (props.probeTargets ?? DEFAULT_PROBE_TARGETS).join('", "'),
    PeerKeySecret: SECRET,
    NatStatusCheck: CHECK,
    AddressesPerNat: String(props.addressesPerNat ?? 1),
    CloudWatchEnabled: String(publish),
    CloudWatchSet: publish ? metrics : 'all',
    MetricsAllow: (props.metricsAllow ?? []).join(','),
    FallbackNatGateways: Object.entries(props.fallbackNatGateways ?? {}).map(([az, id]) => `${az}=${id}`).join(','),
  }));
}

const CASES: Array<[string, Partial<HanatNatProps>, string[]]> = [
  ['defaults', {}, [
    'targets = ["tcp://1.1.1.1:443", "tcp://8.8.8.8:443", "tcp://9.9.9.9:443"]',
    `key_secret = "${SECRET}"`,
    `status_check = "${CHECK}"`,
    'addresses = 1',
    'enabled = true',
    'metrics = "all"',
  ]],
  ['every option', {
    probeTargets: ['tcp://203.0.113.10:80', 'http://203.0.113.11:8080/health'],
    addressesPerNat: 4,
    cloudWatchMetrics: CloudWatchMetrics.ALARMS,
    metricsAllow: ['10.0.0.0/24', '10.0.1.0/24'],
    fallbackNatGateways: { 'us-east-1a': 'nat-0abc123', 'us-east-1b': 'nat-0def456' },
  }, [
    'targets = ["tcp://203.0.113.10:80", "http://203.0.113.11:8080/health"]',
    'addresses = 4',
    'metrics = "alarms"',
    '[metrics]\nallow = ["10.0.0.0/24", "10.0.1.0/24"]',
    '[peers.fallback_nat_gateway_id]\n"us-east-1a" = "nat-0abc123"\n"us-east-1b" = "nat-0def456"\n',
  ]],
  ['a regional fallback gateway', { fallbackNatGateways: { '*': 'nat-0reg789' } }, [
    '[peers.fallback_nat_gateway_id]\n"*" = "nat-0reg789"\n',
  ]],
  ['CloudWatch off', { cloudWatchMetrics: CloudWatchMetrics.OFF }, ['enabled = false', 'metrics = "all"']],
];

test.each(CASES)('%s: the same hanat.toml as existing-vpc.yaml', (_, props, lines) => {
  const config = constructConfig(props);
  expect(config).toEqual(templateConfig(props));
  for (const line of lines) expect(config).toContain(line);
  expect(config.startsWith('[discovery]\ntag_key = "network"\ntag_value = "private"\n')).toBe(true);
  expect(config).not.toContain('${');
});

test('without options the config has no [metrics] or fallback section', () => {
  const config = constructConfig({});
  expect(config).not.toContain('[metrics]');
  expect(config).not.toContain('fallback');
});

test("the user data names the secret and the status check by Fn::Sub, nothing else", () => {
  const { template } = synth();
  const [, lt] = only(template, 'AWS::EC2::LaunchTemplate');
  const body: string = lt.Properties.LaunchTemplateData.UserData['Fn::Base64']['Fn::Sub'];
  const variables = [...body.matchAll(/\$\{([^}]*)\}/g)].map((m) => m[1]).sort();
  expect(variables).toEqual([only(template, 'AWS::EC2::ApplicationStatusCheck')[0], only(template, 'AWS::SecretsManager::Secret')[0]].sort());
  expect(body.startsWith('#!/bin/bash\n')).toBe(true);
  expect(body).toContain('systemctl enable hanat.service\nsystemctl restart hanat.service\n');
});
