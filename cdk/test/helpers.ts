/**
 * What the tests share: a stack with a VPC of 1 to 4 AZs and HanatNat on
 * it, and readers of cloudformation/existing-vpc.yaml (the template the
 * construct must match), by text: the tests take no YAML parser for it.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App, Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Template } from 'aws-cdk-lib/assertions';
import { HanatNat, HanatNatProps } from '../lib';

export const AMI = 'ami-0123456789abcdef0';
export const ZONES = ['us-east-1a', 'us-east-1b', 'us-east-1c', 'us-east-1d'];

export function vpcStack(azs = 2, subnetConfiguration?: ec2.SubnetConfiguration[]): { stack: Stack; vpc: ec2.Vpc } {
  const app = new App();
  // No env: ARNs use the pseudo parameters, as the template's do.
  const stack = new Stack(app, 'Test');
  const vpc = new ec2.Vpc(stack, 'Vpc', {
    ipAddresses: ec2.IpAddresses.cidr('10.0.0.0/16'),
    availabilityZones: ZONES.slice(0, azs),
    natGateways: 0,
    restrictDefaultSecurityGroup: false,
    subnetConfiguration: subnetConfiguration ?? [
      { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
      { name: 'private', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
    ],
  });
  return { stack, vpc };
}

/** HanatNat with `props` on a fresh VPC of `azs` AZs, synthesized. */
export function synth(props: Partial<HanatNatProps> = {}, azs = 2): { template: Template; nat: HanatNat; vpc: ec2.Vpc; stack: Stack } {
  const { stack, vpc } = vpcStack(azs);
  const nat = new HanatNat(stack, 'Nat', { vpc, amiId: AMI, ...props });
  return { template: Template.fromStack(stack), nat, vpc, stack };
}

/** The one resource of `type`: its logical id and its definition. */
export function only(template: Template, type: string): [string, any] {
  const found = Object.entries(template.findResources(type));
  if (found.length !== 1) throw new Error(`${found.length} resources of type ${type}, not 1`);
  return found[0];
}

export const TEMPLATE_PATH = path.join(__dirname, '..', '..', 'cloudformation', 'existing-vpc.yaml');
export const templateText = () => fs.readFileSync(TEMPLATE_PATH, 'utf8');

/** The lines of one resource of existing-vpc.yaml, from its name to the next resource's. */
export function templateResource(logicalId: string): string[] {
  const lines = templateText().split('\n');
  const start = lines.indexOf(`  ${logicalId}:`);
  if (start < 0) throw new Error(`existing-vpc.yaml has no resource ${logicalId}`);
  const end = lines.findIndex((l, i) => i > start && /^ {2}[A-Za-z0-9]+:\s*$/.test(l));
  return lines.slice(start, end < 0 ? undefined : end);
}

/** existing-vpc.yaml's user data: the body of the launch template's `Fn::Base64: !Sub` block. */
export function templateUserData(): string {
  const lines = templateResource('NatLaunchTemplate');
  const start = lines.findIndex((l) => /^\s*- \|\s*$/.test(l)) + 1;
  const end = lines.findIndex((l) => /^\s*- Targets:/.test(l));
  if (start <= 0 || end < start) throw new Error("existing-vpc.yaml's user data is no longer where this test looks");
  const indent = lines[start].length - lines[start].trimStart().length;
  // A `|` block scalar: indentation removed, trailing newlines clipped to one.
  const body = lines.slice(start, end).map((l) => l.slice(indent)).join('\n');
  return body.replace(/\n*$/, '\n');
}

/** What Fn::Sub does to `body` with `vars`; a variable not in `vars` is an error. */
export function fnSub(body: string, vars: Record<string, string>): string {
  return body.replace(/\$\{([^}]*)\}/g, (_, name: string) => {
    if (name.startsWith('!')) return '${' + name.slice(1) + '}';
    if (!(name in vars)) throw new Error(`Fn::Sub variable \${${name}} has no value in this test`);
    return vars[name];
  });
}

/**
 * Run a user data script as a NAT would at first boot, with /etc/hanat
 * moved to a temporary directory and systemctl a no-op: the config it wrote.
 */
export function runUserData(script: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hanat-userdata-'));
  try {
    const local = script.split('/etc/hanat').join(path.join(dir, 'etc')).split('systemctl ').join('true ');
    const run = spawnSync('bash', ['-c', local], { encoding: 'utf8' });
    if (run.status !== 0) throw new Error(`user data failed (${run.status}): ${run.stderr}`);
    return fs.readFileSync(path.join(dir, 'etc', 'hanat.toml'), 'utf8');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
