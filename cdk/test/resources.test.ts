/**
 * What HanatNat creates with its defaults, per AZ and shared, for 1, 2
 * and 3 AZs: existing-vpc.yaml's resources with its tags and settings.
 */
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import { only, synth, ZONES } from './helpers';

const LETTERS = ['a', 'b', 'c'];

describe.each([1, 2, 3])('with %i AZ(s)', (azs) => {
  const { template, nat, vpc } = synth({}, azs);

  test('per AZ: an Elastic IP and the spare, a group, three alarms', () => {
    template.resourceCountIs('AWS::EC2::EIP', azs * 2);
    template.resourceCountIs('AWS::AutoScaling::AutoScalingGroup', azs);
    template.resourceCountIs('AWS::CloudWatch::Alarm', azs * 3);
  });

  test('shared: one launch template, role, profile, security group, secret, status check; no endpoints', () => {
    for (const type of [
      'AWS::EC2::LaunchTemplate', 'AWS::IAM::Role', 'AWS::IAM::InstanceProfile', 'AWS::EC2::SecurityGroup',
      'AWS::SecretsManager::Secret', 'AWS::EC2::ApplicationStatusCheck',
    ]) {
      template.resourceCountIs(type, 1);
    }
    template.resourceCountIs('AWS::EC2::VPCEndpoint', 0);
    // No Lambda-backed custom resource, nothing to upload.
    template.resourceCountIs('AWS::Lambda::Function', 0);
  });

  test('each group runs one NAT in its own public subnet, named <name>-nat-<letter>', () => {
    expect(nat.azs.map((az) => az.groupName)).toEqual(LETTERS.slice(0, azs).map((l) => `hanat-nat-${l}`));
    nat.azs.forEach((az, i) => {
      expect(az.subnet).toBe(vpc.publicSubnets[i]);
      expect(az.availabilityZone).toBe(ZONES[i]);
      template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
        AutoScalingGroupName: `hanat-nat-${LETTERS[i]}`,
        MinSize: '1',
        MaxSize: '2',
        DesiredCapacity: '1',
        VPCZoneIdentifier: [{ Ref: stackRef(vpc.publicSubnets[i].node.defaultChild) }],
        TerminationPolicies: ['OldestInstance'],
        InstanceMaintenancePolicy: { MinHealthyPercentage: 100, MaxHealthyPercentage: 200 },
        HealthCheckType: 'EC2',
        HealthCheckGracePeriod: 60,
        LaunchTemplate: {
          LaunchTemplateId: { Ref: only(template, 'AWS::EC2::LaunchTemplate')[0] },
          Version: { 'Fn::GetAtt': [only(template, 'AWS::EC2::LaunchTemplate')[0], 'LatestVersionNumber'] },
        },
        LifecycleHookSpecificationList: [{
          LifecycleHookName: 'hanat-handoff',
          LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING',
          HeartbeatTimeout: 300,
          DefaultResult: 'CONTINUE',
        }],
      });
      const group = template.toJSON().Resources[stackRef(az.group)];
      expect(group.Properties.Tags).toHaveLength(2);
      expect(group.Properties.Tags).toEqual(expect.arrayContaining([
        { Key: 'Name', Value: `hanat-nat-${LETTERS[i]}`, PropagateAtLaunch: true },
        { Key: 'hanat:stack', Value: { Ref: 'AWS::StackName' }, PropagateAtLaunch: true },
      ]));
    });
  });

  test('groups update one after the other, one NAT at a time', () => {
    const ids = Object.keys(template.findResources('AWS::AutoScaling::AutoScalingGroup'));
    const byName = (n: string) => ids.find((id) => template.toJSON().Resources[id].Properties.AutoScalingGroupName === n)!;
    LETTERS.slice(0, azs).forEach((l, i) => {
      const group = template.toJSON().Resources[byName(`hanat-nat-${l}`)];
      expect(group.UpdatePolicy).toEqual({
        AutoScalingRollingUpdate: { MinInstancesInService: 1, MaxBatchSize: 1, PauseTime: 'PT3M' },
      });
      expect(group.DependsOn).toEqual(i === 0 ? undefined : [byName(`hanat-nat-${LETTERS[i - 1]}`)]);
    });
  });

  test("each AZ's Elastic IPs are tagged with the pool and the AZ's group; the spare says so", () => {
    for (const l of LETTERS.slice(0, azs)) {
      const tagged = Object.values(template.findResources('AWS::EC2::EIP', {
        Properties: { Tags: Match.arrayWith([{ Key: 'hanat:group', Value: `hanat-nat-${l}` }]) },
      })) as any[];
      expect(tagged).toHaveLength(2);
      for (const eip of tagged) {
        expect(eip.Properties.Domain).toBe('vpc');
        expect(eip.Properties.Tags).toContainEqual({ Key: 'hanat:pool', Value: 'hanat' });
      }
      expect(tagged.filter((e) => e.Properties.Tags.some((t: any) => t.Key === 'hanat:spare' && t.Value === 'true')))
        .toHaveLength(1);
    }
  });

  test("each AZ's alarms watch its group and its AZ", () => {
    nat.azs.forEach((az, i) => {
      const group = { Name: 'AutoScalingGroupName', Value: { Ref: stackRef(az.group) } };
      const zone = { Name: 'AvailabilityZone', Value: ZONES[i] };
      const name = `hanat-nat-${LETTERS[i]}`;
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        AlarmName: `${name}-no-forwarding-nat`, Namespace: 'hanat', MetricName: 'ForwardingNat',
        Dimensions: [{ Name: 'VpcId', Value: { Ref: stackRef(vpc.node.defaultChild) } }, zone],
        Statistic: 'Maximum', Period: 60, EvaluationPeriods: 3, Threshold: 1,
        ComparisonOperator: 'LessThanThreshold', TreatMissingData: 'breaching',
        AlarmActions: Match.absent(), OKActions: Match.absent(),
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        AlarmName: `${name}-port-allocation`, MetricName: 'ErrorPortAllocation', Dimensions: [group, zone],
        Statistic: 'Sum', EvaluationPeriods: 1, Threshold: 0, ComparisonOperator: 'GreaterThanThreshold',
        TreatMissingData: 'notBreaching',
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        AlarmName: `${name}-conntrack-full`, MetricName: 'ConntrackFillPercent', Dimensions: [group, zone],
        Statistic: 'Maximum', Threshold: 90, ComparisonOperator: 'GreaterThanOrEqualToThreshold',
        TreatMissingData: 'notBreaching',
      });
    });
  });

  test('the properties list what the template outputs', () => {
    expect(nat.natGroupNames).toHaveLength(azs);
    expect(nat.elasticIps).toHaveLength(azs);
    expect(nat.elasticIpAllocations).toHaveLength(azs);
    expect(nat.allElasticIps).toHaveLength(azs * 2);
  });
});

test('one AZ is allowed, with a warning that no peer can take over', () => {
  const { stack } = synth({}, 1);
  Annotations.fromStack(stack).hasWarning('/Test/Nat', Match.stringLikeRegexp('no peer NAT to fail over to'));
  const { stack: two } = synth({}, 2);
  Annotations.fromStack(two).hasNoWarning('/Test/Nat', Match.stringLikeRegexp('no peer NAT'));
});

test('the launch template: the AMI, IMDSv2 with hop limit 1, a public address, the stack tag on instances and interfaces', () => {
  const { template } = synth();
  const [sgId] = only(template, 'AWS::EC2::SecurityGroup');
  const [profileId] = only(template, 'AWS::IAM::InstanceProfile');
  template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
    LaunchTemplateName: 'hanat-nat',
    LaunchTemplateData: {
      ImageId: 'ami-0123456789abcdef0',
      InstanceType: 't4g.nano',
      KeyName: Match.absent(),
      IamInstanceProfile: { Arn: { 'Fn::GetAtt': [profileId, 'Arn'] } },
      NetworkInterfaces: [{ DeviceIndex: 0, AssociatePublicIpAddress: true, Groups: [{ Ref: sgId }] }],
      MetadataOptions: {
        HttpEndpoint: 'enabled', HttpTokens: 'required', HttpPutResponseHopLimit: 1, InstanceMetadataTags: 'disabled',
      },
      TagSpecifications: [
        { ResourceType: 'instance', Tags: [{ Key: 'hanat:stack', Value: { Ref: 'AWS::StackName' } }] },
        { ResourceType: 'network-interface', Tags: [{ Key: 'hanat:stack', Value: { Ref: 'AWS::StackName' } }] },
      ],
    },
  });
});

test('the security group admits the VPC only, and lets everything out', () => {
  const { template, vpc } = synth();
  const cidr = { 'Fn::GetAtt': [stackRef(vpc.node.defaultChild), 'CidrBlock'] };
  template.hasResourceProperties('AWS::EC2::SecurityGroup', {
    VpcId: { Ref: stackRef(vpc.node.defaultChild) },
    SecurityGroupIngress: [{ IpProtocol: '-1', FromPort: -1, ToPort: -1, CidrIp: cidr, Description: Match.anyValue() }],
    SecurityGroupEgress: [{ IpProtocol: '-1', FromPort: -1, ToPort: -1, CidrIp: '0.0.0.0/0', Description: Match.anyValue() }],
    Tags: [{ Key: 'Name', Value: 'hanat-nat' }],
  });
});

test('the heartbeat key: 64 letters and digits; the status check: /health on 7472 each minute', () => {
  const { template } = synth();
  template.hasResourceProperties('AWS::SecretsManager::Secret', {
    GenerateSecretString: { PasswordLength: 64, ExcludePunctuation: true },
    Tags: [{ Key: 'Name', Value: 'hanat-peer-key' }],
  });
  template.hasResourceProperties('AWS::EC2::ApplicationStatusCheck', {
    Protocol: 'http', Port: 7472, Path: '/health', Interval: 60, Timeout: 3, FailureThreshold: 1,
    SuccessThreshold: 2, StatusCodeMatcher: '200', InitializationGracePeriodSeconds: 120, Aggregation: 'included',
    Tags: Match.arrayWith([{ Key: 'hanat:stack', Value: { Ref: 'AWS::StackName' } }]),
  });
});

/** The logical id a construct's CFN resource has in its stack. */
function stackRef(resource: any): string {
  return resource.stack.resolve(resource.logicalId);
}
