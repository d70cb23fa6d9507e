/**
 * What every NAT instance launches with: the security group, the role and
 * its instance profile, and the launch template whose user data writes
 * hanat.toml. existing-vpc.yaml's NatSecurityGroup, NatRole,
 * NatInstanceProfile and NatLaunchTemplate.
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Fn, Stack, Tags, Validations } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { renderConfig, renderUserData } from './config';
import { natStatements } from './policy';
import { Settings } from './props';

/** Everything from the VPC in (the NAT forwards it), everything out. */
export function natSecurityGroup(scope: Construct, name: string, vpc: ec2.IVpc): ec2.CfnSecurityGroup {
  const sg = new ec2.CfnSecurityGroup(scope, 'SecurityGroup', {
    groupDescription: 'hanat NAT instances - accept traffic from the VPC only',
    vpcId: vpc.vpcId,
    // FromPort/ToPort are meaningless with protocol -1, but moto (the CI
    // emulator) fails without them; cfn-lint and CDK's own check are told.
    securityGroupIngress: [{
      ipProtocol: '-1', fromPort: -1, toPort: -1, cidrIp: vpc.vpcCidrBlock,
      description: 'everything from inside the VPC (the NAT forwards it)',
    }],
    securityGroupEgress: [{
      ipProtocol: '-1', fromPort: -1, toPort: -1, cidrIp: '0.0.0.0/0',
      description: 'NATed traffic and AWS APIs',
    }],
    tags: [{ key: 'Name', value: `${name}-nat` }],
  });
  sg.cfnOptions.metadata = { 'cfn-lint': { config: { ignore_checks: ['W3687'] } } };
  Validations.of(sg).acknowledge({
    id: 'CloudFormation-Validate::W3687',
    reason: 'FromPort/ToPort with protocol -1: moto fails without them',
  });
  return sg;
}

export interface RoleValues {
  readonly settings: Settings;
  readonly stackTag: string;
  readonly vpcId: string;
  readonly peerKeySecretArn: string;
  readonly statusCheckArn: string;
}

/** The NAT role (the daemon's calls, and SSM Session Manager) and its instance profile. */
export function natRole(scope: Construct, v: RoleValues): { role: iam.Role; profile: iam.CfnInstanceProfile } {
  const role = new iam.Role(scope, 'Role', {
    assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
    managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
    inlinePolicies: {
      hanat: new iam.PolicyDocument({
        statements: natStatements(Stack.of(scope), {
          name: v.settings.name,
          stackTag: v.stackTag,
          routeScope: v.settings.routeScope,
          vpcId: v.vpcId,
          peerKeySecretArn: v.peerKeySecretArn,
          statusCheckArn: v.statusCheckArn,
        }),
      }),
    },
  });
  Tags.of(role).add('Name', `${v.settings.name}-nat`);
  const profile = new iam.CfnInstanceProfile(scope, 'InstanceProfile', { roles: [role.roleName] });
  return { role, profile };
}

export interface LaunchValues {
  readonly settings: Settings;
  readonly stackTag: string;
  readonly securityGroup: ec2.CfnSecurityGroup;
  readonly profile: iam.CfnInstanceProfile;
  /** Named in the config by `${LogicalId}`, which Fn::Sub resolves to their Refs. */
  readonly peerKeySecret: { readonly logicalId: string };
  readonly statusCheck: { readonly logicalId: string };
}

export function natLaunchTemplate(scope: Construct, v: LaunchValues): ec2.CfnLaunchTemplate {
  const { settings } = v;
  const toml = renderConfig({
    probeTargets: settings.probeTargets,
    peerKeySecret: `\${${v.peerKeySecret.logicalId}}`,
    statusCheck: `\${${v.statusCheck.logicalId}}`,
    addressesPerNat: settings.addressesPerNat,
    cloudWatchMetrics: settings.cloudWatchMetrics,
    metricsAllow: settings.metricsAllow,
    fallbackNatGateways: settings.fallbackNatGateways,
  });
  const stackTags = [{ key: 'hanat:stack', value: v.stackTag }];
  return new ec2.CfnLaunchTemplate(scope, 'LaunchTemplate', {
    launchTemplateName: `${settings.name}-nat`,
    launchTemplateData: {
      imageId: settings.amiId,
      instanceType: settings.instanceType,
      keyName: settings.keyName,
      iamInstanceProfile: { arn: v.profile.attrArn },
      // A public address on launch, whatever the subnet maps: a NAT reaches
      // the AWS API (to claim its Elastic IP, which then replaces it)
      // through the internet gateway. With interface endpoints it reaches
      // the API through them instead, and needs none.
      networkInterfaces: [{
        deviceIndex: 0,
        associatePublicIpAddress: !settings.interfaceEndpoints,
        groups: [v.securityGroup.ref],
      }],
      metadataOptions: {
        httpEndpoint: 'enabled',
        httpTokens: 'required',
        httpPutResponseHopLimit: 1,
        instanceMetadataTags: 'disabled',
      },
      // The role's instance-level statements are scoped to this tag.
      tagSpecifications: [
        { resourceType: 'instance', tags: stackTags },
        { resourceType: 'network-interface', tags: stackTags },
      ],
      userData: Fn.base64(Fn.sub(renderUserData(toml))),
    },
  });
}
