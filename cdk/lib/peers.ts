/**
 * What the NATs need to trust each other's word: the heartbeat key's
 * secret, and the EC2 application status check that witnesses from outside
 * whether a silent NAT is alive. existing-vpc.yaml's PeerKeySecret and
 * NatStatusCheck.
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

/**
 * The key NAT instances sign their heartbeats with: random, never in a tag
 * or anything a Describe call shows, readable only by the NAT role. Rotate
 * with `aws secretsmanager put-secret-value` (docs/configuration.md).
 */
export function peerKeySecret(scope: Construct, name: string): secretsmanager.CfnSecret {
  return new secretsmanager.CfnSecret(scope, 'PeerKeySecret', {
    description: `hanat ${name}: the key NAT instances sign their heartbeats with`,
    generateSecretString: { passwordLength: 64, excludePunctuation: true },
    tags: [{ key: 'Name', value: `${name}-peer-key` }],
  });
}

/**
 * The outside witness (docs/failure-behaviour.md): EC2 checks every NAT's
 * /health from its own subnet (the NAT associates itself at start). Auto
 * Scaling replaces a NAT whose application status is impaired; peers take
 * a silent NAT that EC2 calls impaired as dead. 60 s is the only interval
 * AWS accepts.
 */
export function statusCheck(
  scope: Construct, name: string, failures: number, stackTag: string,
): ec2.CfnApplicationStatusCheck {
  return new ec2.CfnApplicationStatusCheck(scope, 'StatusCheck', {
    protocol: 'http',
    port: 7472,
    path: '/health',
    interval: 60,
    timeout: 3,
    failureThreshold: failures,
    successThreshold: 2,
    statusCodeMatcher: '200',
    initializationGracePeriodSeconds: 120,
    aggregation: 'included',
    tags: [
      { key: 'Name', value: `${name}-nat-health` },
      { key: 'hanat:stack', value: stackTag },
    ],
  });
}
