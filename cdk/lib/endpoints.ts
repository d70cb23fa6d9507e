/**
 * The interface endpoints (private DNS) for the APIs the NATs call, so that
 * a NAT launched without a public address reaches AWS before it holds its
 * Elastic IP: existing-vpc.yaml's InterfaceEndpoints=true.
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Aws } from 'aws-cdk-lib';
import { Construct } from 'constructs';

/** Construct id and service name of each endpoint: every API the daemon calls (docs/deploy.md). */
const SERVICES: ReadonlyArray<readonly [string, string]> = [
  ['Ec2Endpoint', 'ec2'],
  ['AutoScalingEndpoint', 'autoscaling'],
  ['SecretsManagerEndpoint', 'secretsmanager'],
  ['CloudWatchEndpoint', 'monitoring'],
];

/** One security group for all four (HTTPS from the VPC), the endpoints in the NATs' subnets. */
export function interfaceEndpoints(scope: Construct, name: string, vpc: ec2.IVpc, subnets: ec2.ISubnet[]): void {
  const sg = new ec2.CfnSecurityGroup(scope, 'EndpointSecurityGroup', {
    groupDescription: 'hanat interface endpoints - HTTPS from the VPC',
    vpcId: vpc.vpcId,
    securityGroupIngress: [{
      ipProtocol: 'tcp', fromPort: 443, toPort: 443, cidrIp: vpc.vpcCidrBlock,
      description: "the NATs' AWS API calls",
    }],
    tags: [{ key: 'Name', value: `${name}-endpoints` }],
  });
  for (const [id, service] of SERVICES) {
    new ec2.CfnVPCEndpoint(scope, id, {
      vpcEndpointType: 'Interface',
      serviceName: `com.amazonaws.${Aws.REGION}.${service}`,
      vpcId: vpc.vpcId,
      subnetIds: subnets.map((s) => s.subnetId),
      securityGroupIds: [sg.ref],
      privateDnsEnabled: true,
    });
  }
}
