/**
 * The NAT role grants what existing-vpc.yaml's NatRole grants, scoped the
 * same way: the statements' ids, actions and condition keys are read from
 * the template's text and compared; the scoping values are checked here.
 */
import { Match } from 'aws-cdk-lib/assertions';
import { RouteScope } from '../lib';
import { only, synth, templateResource } from './helpers';

/** existing-vpc.yaml's NatRole policy: per Sid, its actions and condition keys. */
function templateStatements(): Map<string, { actions: string[]; conditionKeys: string[] }> {
  const statements = new Map<string, { actions: string[]; conditionKeys: string[] }>();
  let current: { actions: string[]; conditionKeys: string[] } | undefined;
  let inActions = false;
  for (const line of templateResource('NatRole')) {
    const sid = line.match(/^\s*- Sid: (\w+)\s*$/);
    if (sid) {
      current = { actions: [], conditionKeys: [] };
      statements.set(sid[1], current);
      inActions = false;
      continue;
    }
    if (current === undefined) continue;
    const action = line.match(/^\s*Action: ([a-z0-9]+:\w+)\s*$/);
    if (action) current.actions.push(action[1]);
    if (/^\s*Action:\s*$/.test(line)) {
      inActions = true;
      continue;
    }
    const item = line.match(/^\s*- ([a-z0-9]+:\w+)\s*$/);
    if (inActions && item) {
      current.actions.push(item[1]);
      continue;
    }
    inActions = false;
    const key = line.match(/^\s*"([a-z0-9]+:[^"]+)":/);
    if (key) current.conditionKeys.push(key[1]);
  }
  return statements;
}

function roleStatements(template: ReturnType<typeof synth>['template']): any[] {
  const [, role] = only(template, 'AWS::IAM::Role');
  expect(role.Properties.Policies).toHaveLength(1);
  expect(role.Properties.Policies[0].PolicyName).toBe('hanat');
  return role.Properties.Policies[0].PolicyDocument.Statement;
}

const arn = (service: string, resource: string) => ({
  'Fn::Join': ['', [
    'arn:', { Ref: 'AWS::Partition' }, `:${service}:`, { Ref: 'AWS::Region' }, ':', { Ref: 'AWS::AccountId' },
    resource,
  ]],
});
const taggedForStack = { StringEquals: { 'ec2:ResourceTag/hanat:stack': { Ref: 'AWS::StackName' } } };

test("the same statements as the template's: ids, actions, condition keys", () => {
  const wanted = templateStatements();
  expect(wanted.size).toBeGreaterThanOrEqual(10);
  for (const routeScope of [RouteScope.VPC, RouteScope.TAGGED]) {
    const got = roleStatements(synth({ routeScope }).template);
    expect(got.map((s) => s.Sid)).toEqual([...wanted.keys()]);
    for (const statement of got) {
      const want = wanted.get(statement.Sid)!;
      expect(statement.Effect).toBe('Allow');
      expect([statement.Action].flat().sort()).toEqual([...want.actions].sort());
      const keys = Object.values(statement.Condition ?? {}).flatMap((c) => Object.keys(c as object));
      // The template's route statement lists both scopes' keys (an !If).
      keys.forEach((k) => expect(want.conditionKeys).toContain(k));
      expect(keys.length > 0).toBe(want.conditionKeys.length > 0);
    }
  }
});

test('route changes: any route table of this VPC by default', () => {
  const { template, vpc } = synth();
  const vpcRef = { Ref: (vpc.node.defaultChild as any).stack.resolve((vpc.node.defaultChild as any).logicalId) };
  const route = roleStatements(template).find((s) => s.Sid === 'TakeOverPrivateRoutesOfThisVpc');
  expect(route).toEqual({
    Sid: 'TakeOverPrivateRoutesOfThisVpc',
    Effect: 'Allow',
    Action: ['ec2:CreateRoute', 'ec2:ReplaceRoute'],
    Resource: arn('ec2', ':route-table/*'),
    Condition: {
      StringEquals: {
        'ec2:Vpc': {
          'Fn::Join': ['', [
            'arn:', { Ref: 'AWS::Partition' }, ':ec2:', { Ref: 'AWS::Region' }, ':', { Ref: 'AWS::AccountId' },
            ':vpc/', vpcRef,
          ]],
        },
      },
    },
  });
});

test('route changes: only the route tables tagged for the stack with RouteScope.TAGGED', () => {
  const route = roleStatements(synth({ routeScope: RouteScope.TAGGED }).template)
    .find((s) => s.Sid === 'TakeOverPrivateRoutesOfThisVpc');
  expect(route.Resource).toEqual(arn('ec2', ':route-table/*'));
  expect(route.Condition).toEqual(taggedForStack);
});

test("instance-level actions are scoped to the stack's tag, addresses to the pool, groups to the name", () => {
  const { template } = synth({ name: 'edge' });
  const statements = new Map(roleStatements(template).map((s) => [s.Sid, s]));
  const interfaces = arn('ec2', ':network-interface/*');
  for (const sid of ['DisableSourceDestCheckOnOwnInterface', 'ClaimOntoOwnInterface', 'AddSecondaryAddressesToOwnInterface']) {
    expect(statements.get(sid)).toMatchObject({ Resource: interfaces, Condition: taggedForStack });
  }
  expect(statements.get('ClaimThisStacksElasticIps')).toMatchObject({
    Resource: arn('ec2', ':elastic-ip/*'),
    Condition: { StringEquals: { 'ec2:ResourceTag/hanat:pool': 'edge' } },
  });
  expect(statements.get('ReportHealthOfThisStacksGroups')).toMatchObject({
    Resource: arn('autoscaling', ':autoScalingGroup:*:autoScalingGroupName/edge-nat-*'),
    Condition: { StringEquals: { 'autoscaling:ResourceTag/hanat:stack': { Ref: 'AWS::StackName' } } },
  });
  const [secretId] = only(template, 'AWS::SecretsManager::Secret');
  expect(statements.get('ReadTheHeartbeatKey')).toMatchObject({ Resource: { Ref: secretId } });
  expect(statements.get('ReadTheHeartbeatKey').Condition).toBeUndefined();
  const [checkId] = only(template, 'AWS::EC2::ApplicationStatusCheck');
  expect(statements.get('PutThisInstanceUnderTheStatusCheck')).toMatchObject({
    Resource: [{ Ref: checkId }, arn('ec2', ':instance/*')],
    Condition: taggedForStack,
  });
  expect(statements.get('PublishMetricsToOwnNamespace')).toMatchObject({
    Resource: '*',
    Condition: { StringEquals: { 'cloudwatch:namespace': 'hanat' } },
  });
});

test('the role: assumed by EC2, SSM Session Manager, one instance profile', () => {
  const { template } = synth();
  const [roleId] = only(template, 'AWS::IAM::Role');
  template.hasResourceProperties('AWS::IAM::Role', {
    AssumeRolePolicyDocument: {
      Statement: [{ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com' }, Action: 'sts:AssumeRole' }],
    },
    ManagedPolicyArns: [{
      'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':iam::aws:policy/AmazonSSMManagedInstanceCore']],
    }],
    Tags: Match.arrayWith([{ Key: 'Name', Value: 'hanat-nat' }]),
  });
  template.hasResourceProperties('AWS::IAM::InstanceProfile', { Roles: [{ Ref: roleId }] });
});
