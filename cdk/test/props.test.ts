/**
 * Props override the template's defaults, and a prop outside the template's
 * constraints fails synthesis with an Error naming it.
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { CfnParameter, Stack, Token } from 'aws-cdk-lib';
import { CloudWatchMetrics, HanatNat, HanatNatProps, RouteScope } from '../lib';
import { AMI, only, synth, vpcStack } from './helpers';

describe('overrides', () => {
  test('instance type, key pair, status check failures', () => {
    const { template } = synth({
      instanceType: ec2.InstanceType.of(ec2.InstanceClass.T3, ec2.InstanceSize.MICRO),
      keyName: 'ops',
      statusCheckFailures: 3,
    });
    template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
      LaunchTemplateData: { InstanceType: 't3.micro', KeyName: 'ops' },
    });
    template.hasResourceProperties('AWS::EC2::ApplicationStatusCheck', { FailureThreshold: 3 });
  });

  test('name: groups, launch template, pool tag, alarms', () => {
    const { template } = synth({ name: 'edge' });
    template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', { AutoScalingGroupName: 'edge-nat-b' });
    template.hasResourceProperties('AWS::EC2::LaunchTemplate', { LaunchTemplateName: 'edge-nat' });
    template.hasResourceProperties('AWS::EC2::EIP', {
      Tags: Match.arrayWith([{ Key: 'hanat:group', Value: 'edge-nat-a' }, { Key: 'hanat:pool', Value: 'edge' }]),
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmName: 'edge-nat-a-conntrack-full' });
  });

  test('addressesPerNat: that many Elastic IPs per AZ, then the spare', () => {
    const { template, nat } = synth({ addressesPerNat: 4 }, 3);
    template.resourceCountIs('AWS::EC2::EIP', 3 * 5);
    expect(nat.azs.map((az) => az.elasticIps.length)).toEqual([5, 5, 5]);
    expect(nat.allElasticIps).toHaveLength(15);
    expect(nat.elasticIps).toHaveLength(3);
    const spares = template.findResources('AWS::EC2::EIP', {
      Properties: { Tags: Match.arrayWith([{ Key: 'hanat:spare', Value: 'true' }]) },
    });
    expect(Object.keys(spares)).toHaveLength(3);
  });

  test('spareAddress false: no spare', () => {
    const { template, nat } = synth({ spareAddress: false, addressesPerNat: 2 });
    template.resourceCountIs('AWS::EC2::EIP', 4);
    expect(JSON.stringify(template.toJSON())).not.toContain('hanat:spare');
    expect(nat.allElasticIps).toHaveLength(4);
  });

  test('interfaceEndpoints: four endpoints in the NAT subnets, their security group, no public address', () => {
    const { template, vpc } = synth({ interfaceEndpoints: true }, 3);
    template.resourceCountIs('AWS::EC2::VPCEndpoint', 4);
    template.resourceCountIs('AWS::EC2::SecurityGroup', 2);
    const endpointSg = Object.keys(template.findResources('AWS::EC2::SecurityGroup', {
      Properties: { GroupDescription: 'hanat interface endpoints - HTTPS from the VPC' },
    }));
    expect(endpointSg).toHaveLength(1);
    template.hasResourceProperties('AWS::EC2::SecurityGroup', {
      GroupDescription: 'hanat interface endpoints - HTTPS from the VPC',
      SecurityGroupIngress: [Match.objectLike({ IpProtocol: 'tcp', FromPort: 443, ToPort: 443 })],
    });
    const subnets = vpc.publicSubnets.map((s) => ({ Ref: Stack.of(s).resolve((s.node.defaultChild as any).logicalId) }));
    for (const service of ['ec2', 'autoscaling', 'secretsmanager', 'monitoring']) {
      template.hasResourceProperties('AWS::EC2::VPCEndpoint', {
        VpcEndpointType: 'Interface',
        ServiceName: { 'Fn::Join': ['', ['com.amazonaws.', { Ref: 'AWS::Region' }, `.${service}`]] },
        SubnetIds: subnets,
        SecurityGroupIds: [{ Ref: endpointSg[0] }],
        PrivateDnsEnabled: true,
      });
    }
    template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
      LaunchTemplateData: { NetworkInterfaces: [Match.objectLike({ AssociatePublicIpAddress: false })] },
    });
  });

  test('cloudWatchMetrics OFF: no alarms', () => {
    synth({ cloudWatchMetrics: CloudWatchMetrics.OFF }).template.resourceCountIs('AWS::CloudWatch::Alarm', 0);
    synth({ cloudWatchMetrics: CloudWatchMetrics.ALARMS }).template.resourceCountIs('AWS::CloudWatch::Alarm', 6);
  });

  test('alarmTopicArn: every alarm notifies it, in ALARM and back to OK', () => {
    const topic = 'arn:aws:sns:us-east-1:123456789012:nat-alarms';
    const alarms = Object.values(synth({ alarmTopicArn: topic }).template.findResources('AWS::CloudWatch::Alarm'));
    expect(alarms).toHaveLength(6);
    for (const alarm of alarms as any[]) {
      expect(alarm.Properties.AlarmActions).toEqual([topic]);
      expect(alarm.Properties.OKActions).toEqual([topic]);
    }
  });

  test('vpcSubnets chooses the AZs', () => {
    const { nat } = synth({ vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC, availabilityZones: ['us-east-1b', 'us-east-1c'] } }, 4);
    expect(nat.azs.map((az) => az.availabilityZone)).toEqual(['us-east-1b', 'us-east-1c']);
    expect(nat.azs.map((az) => az.groupName)).toEqual(['hanat-nat-a', 'hanat-nat-b']);
  });

  test('a token AMI id (a parameter) is passed through', () => {
    const { stack, vpc } = vpcStack();
    const ami = new CfnParameter(stack, 'AmiParam', { type: 'AWS::EC2::Image::Id' });
    new HanatNat(stack, 'Nat', { vpc, amiId: ami.valueAsString });
    const template = Template.fromStack(stack);
    template.hasResourceProperties('AWS::EC2::LaunchTemplate', { LaunchTemplateData: { ImageId: { Ref: 'AmiParam' } } });
  });
});

describe('bad props throw an Error naming the prop', () => {
  const BAD: Array<[Partial<HanatNatProps>, RegExp]> = [
    [{ addressesPerNat: 0 }, /^HanatNat: addressesPerNat: must be an integer from 1 to 8 \(got 0\)$/],
    [{ addressesPerNat: 9 }, /^HanatNat: addressesPerNat: must be an integer from 1 to 8 \(got 9\)$/],
    [{ addressesPerNat: 1.5 }, /^HanatNat: addressesPerNat: /],
    [{ addressesPerNat: Token.asNumber({ Ref: 'N' }) }, /^HanatNat: addressesPerNat: must be known at synth time/],
    [{ statusCheckFailures: 0 }, /^HanatNat: statusCheckFailures: must be an integer from 1 to 10/],
    [{ statusCheckFailures: 11 }, /^HanatNat: statusCheckFailures: /],
    [{ name: '9nat' }, /^HanatNat: name: /],
    [{ name: 'a'.repeat(32) }, /^HanatNat: name: /],
    [{ amiId: 'ubuntu' }, /^HanatNat: amiId: /],
    [{ amiId: '' }, /^HanatNat: amiId: is required/],
    [{ probeTargets: [] }, /^HanatNat: probeTargets: needs at least one/],
    [{ probeTargets: ['tcp://1.1.1.1:443"'] }, /^HanatNat: probeTargets: /],
    [{ probeTargets: ['udp://1.1.1.1:53'] }, /^HanatNat: probeTargets: /],
    [{ metricsAllow: ['10.0.0.0'] }, /^HanatNat: metricsAllow: /],
    [{ metricsAllow: [Token.asString({ Ref: 'Cidr' })] }, /^HanatNat: metricsAllow: must be known at synth time/],
    [{ fallbackNatGateways: { 'us-east-1a': 'igw-0abc' } }, /^HanatNat: fallbackNatGateways: /],
    [{ fallbackNatGateways: { 'US East': 'nat-0abc' } }, /^HanatNat: fallbackNatGateways: /],
    [{ alarmTopicArn: 'nat-alarms' }, /^HanatNat: alarmTopicArn: /],
    [{ routeScope: 'all' as RouteScope }, /^HanatNat: routeScope: must be one of vpc, tagged/],
    [{ cloudWatchMetrics: 'some' as CloudWatchMetrics }, /^HanatNat: cloudWatchMetrics: /],
  ];

  test.each(BAD)('%o', (props, message) => {
    expect(() => synth(props)).toThrow(message);
  });

  test('a VPC with no public subnets', () => {
    const { stack, vpc } = vpcStack(2, [{ name: 'private', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 }]);
    expect(() => new HanatNat(stack, 'Nat', { vpc, amiId: AMI })).toThrow(/^HanatNat: vpc: no public subnets; the NATs need one per AZ/);
  });

  test('vpcSubnets that select nothing', () => {
    const { stack, vpc } = vpcStack(2);
    expect(() => new HanatNat(stack, 'Nat', {
      vpc, amiId: AMI, vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC, availabilityZones: ['eu-west-1a'] },
    })).toThrow(/^HanatNat: vpcSubnets: no public subnets/);
  });

  test('more than 3 AZs', () => {
    expect(() => synth({}, 4)).toThrow(/^HanatNat: vpc: 4 AZs .*at most 3.*vpcSubnets/);
  });

  test('two in one stack', () => {
    const { stack, vpc } = vpcStack(2);
    new HanatNat(stack, 'Nat', { vpc, amiId: AMI });
    expect(() => new HanatNat(stack, 'Other', { vpc, amiId: AMI, name: 'other' })).toThrow(/^HanatNat: one per stack \(already Test\/Nat\)/);
  });
});

test('an imported VPC works as well as one of the app', () => {
  const { stack } = vpcStack();
  const vpc = ec2.Vpc.fromVpcAttributes(stack, 'Imported', {
    vpcId: 'vpc-0123456789abcdef0',
    vpcCidrBlock: '10.20.0.0/16',
    availabilityZones: ['eu-west-1a', 'eu-west-1b'],
    publicSubnetIds: ['subnet-0aaa', 'subnet-0bbb'],
  });
  new HanatNat(stack, 'Nat', { vpc, amiId: AMI });
  const template = Template.fromStack(stack);
  template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', { VPCZoneIdentifier: ['subnet-0bbb'] });
  template.hasResourceProperties('AWS::EC2::SecurityGroup', {
    VpcId: 'vpc-0123456789abcdef0',
    SecurityGroupIngress: [Match.objectLike({ CidrIp: '10.20.0.0/16' })],
  });
  template.hasResourceProperties('AWS::CloudWatch::Alarm', {
    Dimensions: [{ Name: 'VpcId', Value: 'vpc-0123456789abcdef0' }, { Name: 'AvailabilityZone', Value: 'eu-west-1b' }],
  });
  expect(only(template, 'AWS::EC2::LaunchTemplate')).toBeDefined();
});
