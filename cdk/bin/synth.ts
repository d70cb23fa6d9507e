/**
 * Synthesizes an example app to one CloudFormation template (JSON): a VPC
 * with public subnets and private ones tagged network=private, and
 * HanatNat on it. The template has no bootstrap parameter or rule, no CDK
 * metadata, no assets and no custom resources, so it deploys with plain
 * `aws cloudformation deploy` (and into moto), given the parameter AmiId.
 *
 *   npm run synth -- OUT.json ['{"azs": 3, "addressesPerNat": 2, ...}']
 *
 * The optional JSON holds `azs` (1 to 3, default 2), `instanceType` as a
 * string, and any other HanatNat prop that JSON can spell.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as cdk from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Construct } from 'constructs';
import { HanatNat } from '../lib';

/** A region-agnostic stack with `azs` AZs (CDK's own default is 2 without an env). */
class ExampleStack extends cdk.Stack {
  constructor(scope: Construct, id: string, private readonly azs: number, props: cdk.StackProps) {
    super(scope, id, props);
  }

  get availabilityZones(): string[] {
    return Array.from({ length: this.azs }, (_, i) => cdk.Fn.select(i, cdk.Fn.getAzs()));
  }
}

/** The example app's template, for `options` as the command line's JSON spells them. */
export function exampleTemplate(options: Record<string, any> = {}): any {
  const { azs = 2, instanceType, ...props } = options;
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'hanat-cdk-'));
  try {
    const app = new cdk.App({ outdir, analyticsReporting: false });
    const stack = new ExampleStack(app, 'Hanat', azs, {
      synthesizer: new cdk.DefaultStackSynthesizer({ generateBootstrapVersionRule: false }),
      description: 'hanat example (cdk/bin/synth.ts): a VPC and one NAT instance per AZ',
    });
    const vpc = new ec2.Vpc(stack, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr('10.0.0.0/16'),
      maxAzs: azs,
      natGateways: 0,
      // true would add a Lambda-backed custom resource.
      restrictDefaultSecurityGroup: false,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
        // Isolated, not PRIVATE_WITH_EGRESS: that needs a NAT Gateway. hanat
        // adds the default route to their route tables.
        { name: 'private', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
      ],
    });
    // What the daemon looks for (discovery.tag_key, tag_value).
    for (const subnet of vpc.isolatedSubnets) cdk.Tags.of(subnet).add('network', 'private');

    const amiId = new cdk.CfnParameter(stack, 'AmiId', {
      type: 'AWS::EC2::Image::Id',
      description: 'The hanat AMI built with packer/ (arm64 for Graviton instance types).',
    });
    const nat = new HanatNat(stack, 'Nat', {
      ...props,
      vpc,
      amiId: amiId.valueAsString,
      instanceType: instanceType === undefined ? undefined : new ec2.InstanceType(instanceType),
    });

    // The outputs of cloudformation/vpc.yaml and existing-vpc.yaml.
    const list = (values: string[]) => cdk.Fn.join(',', values);
    const outputs: Record<string, string> = {
      VpcId: vpc.vpcId,
      PublicSubnets: list(vpc.publicSubnets.map((s) => s.subnetId)),
      PrivateSubnets: list(vpc.isolatedSubnets.map((s) => s.subnetId)),
      PrivateRouteTables: list(vpc.isolatedSubnets.map((s) => s.routeTable.routeTableId)),
      NatGroups: list(nat.natGroupNames),
      ElasticIps: list(nat.elasticIps),
      AllElasticIps: list(nat.allElasticIps),
      ElasticIpAllocations: list(nat.elasticIpAllocations),
      SecurityGroup: nat.securityGroup.securityGroupId,
      NatRoleArn: nat.role.roleArn,
    };
    for (const [id, value] of Object.entries(outputs)) new cdk.CfnOutput(stack, id, { value });

    return app.synth().getStackByName(stack.stackName).template;
  } finally {
    fs.rmSync(outdir, { recursive: true, force: true });
  }
}

function main(args: string[]): void {
  const [out, options] = args;
  // OUT must end in .json: a stray argument is never taken for a file to overwrite.
  if (out === undefined || !out.endsWith('.json') || args.length > 2) {
    throw new Error('usage: npm run synth -- OUT.json [\'{"azs": 2, ...HanatNat props}\']');
  }
  const template = exampleTemplate(options === undefined ? {} : JSON.parse(options));
  fs.writeFileSync(out, JSON.stringify(template, null, 2) + '\n');
}

if (require.main === module) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    console.error(`synth: ${(e as Error).message}`);
    process.exit(1);
  }
}
