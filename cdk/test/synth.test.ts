/**
 * The example app (bin/synth.ts) synthesizes a template that plain
 * CloudFormation, cfn-lint and moto take: no bootstrap parameter or rule,
 * no CDK metadata, no custom resource or asset, the private subnets tagged
 * for the daemon, and the outputs of cloudformation/vpc.yaml.
 */
import { exampleTemplate } from '../bin/synth';

const BUILT_IN = /^AWS::(EC2|IAM|AutoScaling|SecretsManager|CloudWatch)::/;

test('the default example: plain CloudFormation, nothing the CDK toolkit must provide', () => {
  const t = exampleTemplate();
  expect(Object.keys(t).sort()).toEqual(['Description', 'Outputs', 'Parameters', 'Resources']);
  expect(Object.keys(t.Parameters)).toEqual(['AmiId']);
  expect(t.Parameters.AmiId.Type).toBe('AWS::EC2::Image::Id');
  for (const [id, r] of Object.entries(t.Resources) as Array<[string, any]>) {
    expect([id, r.Type]).toEqual([id, expect.stringMatching(BUILT_IN)]);
    // Only the cfn-lint note on the security group.
    if (r.Metadata !== undefined) expect(Object.keys(r.Metadata)).toEqual(['cfn-lint']);
    expect(r.Condition).toBeUndefined();
  }
  expect(Object.keys(t.Outputs).sort()).toEqual([
    'AllElasticIps', 'ElasticIpAllocations', 'ElasticIps', 'NatGroups', 'NatRoleArn', 'PrivateRouteTables',
    'PrivateSubnets', 'PublicSubnets', 'SecurityGroup', 'VpcId',
  ]);
});

test.each([1, 2, 3])('%i AZ(s): a private subnet tagged network=private and a NAT group per AZ', (azs) => {
  const t = exampleTemplate({ azs });
  const resources = Object.values(t.Resources) as any[];
  const privateSubnets = resources.filter((r) => r.Type === 'AWS::EC2::Subnet'
    && r.Properties.Tags.some((tag: any) => tag.Key === 'network' && tag.Value === 'private'));
  expect(privateSubnets).toHaveLength(azs);
  expect(privateSubnets.map((s) => s.Properties.MapPublicIpOnLaunch)).toEqual(Array(azs).fill(false));
  expect(resources.filter((r) => r.Type === 'AWS::AutoScaling::AutoScalingGroup')).toHaveLength(azs);
  // Each private subnet in a different AZ (Fn::Select i of Fn::GetAZs), each with its own route table.
  const zones = privateSubnets.map((s) => JSON.stringify(s.Properties.AvailabilityZone));
  expect(new Set(zones).size).toBe(azs);
  const associations = resources.filter((r) => r.Type === 'AWS::EC2::SubnetRouteTableAssociation');
  expect(new Set(associations.map((a) => JSON.stringify(a.Properties.RouteTableId))).size).toBe(2 * azs);
});

test('HanatNat props pass through the JSON', () => {
  const t = exampleTemplate({ addressesPerNat: 2, spareAddress: false, instanceType: 't3.nano', name: 'edge' });
  const resources = Object.values(t.Resources) as any[];
  expect(resources.filter((r) => r.Type === 'AWS::EC2::EIP')).toHaveLength(4);
  const lt = resources.find((r) => r.Type === 'AWS::EC2::LaunchTemplate');
  expect(lt.Properties.LaunchTemplateName).toBe('edge-nat');
  expect(lt.Properties.LaunchTemplateData.InstanceType).toBe('t3.nano');
});
