/**
 * For the same settings, HanatNat creates the resources existing-vpc.yaml
 * creates: the same types, as many of each. The template's resources and
 * their Conditions are read from its text, and its Conditions evaluated
 * here; a Condition this file does not know fails the test, so a template
 * that grows one grows this test too.
 */
import { CloudWatchMetrics, HanatNatProps } from '../lib';
import { synth, templateText } from './helpers';

interface Parameters { azs: number; addressesPerNat: number; spareAddress: boolean; interfaceEndpoints: boolean; publish: boolean }

/** existing-vpc.yaml's resources: logical id, type, condition. */
function templateResources(): Array<{ id: string; type: string; condition?: string }> {
  const section = templateText().split(/^Resources:\s*$/m)[1].split(/^Outputs:\s*$/m)[0];
  const resources: Array<{ id: string; type: string; condition?: string }> = [];
  for (const line of section.split('\n')) {
    const id = line.match(/^ {2}([A-Za-z0-9]+):\s*$/);
    if (id) resources.push({ id: id[1], type: '' });
    const type = line.match(/^ {4}Type: (\S+)\s*$/);
    if (type) resources[resources.length - 1].type = type[1];
    const condition = line.match(/^ {4}Condition: (\S+)\s*$/);
    if (condition) resources[resources.length - 1].condition = condition[1];
  }
  return resources;
}

/** The template's Conditions, for the parameters (AvailabilityZones given: alarms wherever published). */
function holds(condition: string, p: Parameters): boolean {
  const three = p.azs === 3;
  const addresses = condition.match(/^Addresses([2-8])(C?)$/);
  if (addresses) return p.addressesPerNat >= Number(addresses[1]) && (addresses[2] === '' || three);
  switch (condition) {
    case 'ThreeAZs': return three;
    case 'Spare': return p.spareAddress;
    case 'SpareC': return p.spareAddress && three;
    case 'Endpoints': return p.interfaceEndpoints;
    case 'Alarmed': return p.publish;
    case 'AlarmedThree': return p.publish && three;
    default: throw new Error(`existing-vpc.yaml has a Condition this test does not know: ${condition}`);
  }
}

function count(types: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const t of types) counts[t] = (counts[t] ?? 0) + 1;
  return counts;
}

const SETTINGS: Parameters[] = [
  { azs: 2, addressesPerNat: 1, spareAddress: true, interfaceEndpoints: false, publish: true },
  { azs: 3, addressesPerNat: 1, spareAddress: true, interfaceEndpoints: false, publish: true },
  { azs: 2, addressesPerNat: 8, spareAddress: false, interfaceEndpoints: true, publish: false },
  { azs: 3, addressesPerNat: 3, spareAddress: true, interfaceEndpoints: true, publish: true },
  { azs: 3, addressesPerNat: 8, spareAddress: false, interfaceEndpoints: false, publish: false },
];

test.each(SETTINGS)('%o: the same resource types and counts as existing-vpc.yaml', (p) => {
  const resources = templateResources();
  expect(resources.length).toBeGreaterThan(40);
  const wanted = count(resources.filter((r) => r.condition === undefined || holds(r.condition, p)).map((r) => r.type));

  const props: Partial<HanatNatProps> = {
    addressesPerNat: p.addressesPerNat,
    spareAddress: p.spareAddress,
    interfaceEndpoints: p.interfaceEndpoints,
    cloudWatchMetrics: p.publish ? CloudWatchMetrics.ALL : CloudWatchMetrics.OFF,
  };
  const all = synth(props, p.azs).template.toJSON().Resources as Record<string, { Type: string }>;
  // The test's own VPC aside.
  const ours = Object.entries(all).filter(([id]) => id.startsWith('Nat')).map(([, r]) => r.Type);
  expect(count(ours)).toEqual(wanted);
});
