/**
 * hanat-cdk: hanat's NAT instances for a VPC of an AWS CDK app, as
 * cloudformation/existing-vpc.yaml deploys them.
 */
export { HanatNat } from './hanat-nat';
export type { NatAz } from './hanat-nat';
export { MAX_AZS } from './azs';
export { RouteScope, CloudWatchMetrics, DEFAULT_PROBE_TARGETS } from './props';
export type { HanatNatProps } from './props';
export { renderConfig, renderUserData } from './config';
export type { ConfigValues } from './config';
