/**
 * The daemon's config (/etc/hanat/hanat.toml) rendered as text, and the user
 * data script that writes it at first boot.
 *
 * Pure: values in, text out. The text is the file existing-vpc.yaml's user
 * data writes for the same parameters, byte for byte (test/config.test.ts
 * runs both scripts and compares), so that a NAT launched by either behaves
 * alike. The template renders `metrics.allow` and the fallback gateways with
 * sed at boot because CloudFormation cannot loop; here TypeScript can, and
 * the script only copies the file.
 */
import { CloudWatchMetrics } from './props';

export interface ConfigValues {
  readonly probeTargets: readonly string[];
  /** The heartbeat key's secret (ARN or name), or a `${LogicalId}` for Fn::Sub. */
  readonly peerKeySecret: string;
  /** The application status check (ARN or asc-…), or a `${LogicalId}` for Fn::Sub. */
  readonly statusCheck: string;
  readonly addressesPerNat: number;
  readonly cloudWatchMetrics: CloudWatchMetrics;
  readonly metricsAllow: readonly string[];
  readonly fallbackNatGateways: ReadonlyArray<readonly [string, string]>;
}

const quoted = (s: string) => `"${s}"`;

/** hanat.toml, ending in a newline. */
export function renderConfig(v: ConfigValues): string {
  const publish = v.cloudWatchMetrics !== CloudWatchMetrics.OFF;
  // `[heartbeat]` is the old name of `[probe]`: the template writes it so
  // that an AMI built before the rename still starts, and so does this.
  let toml = `[discovery]
tag_key = "network"
tag_value = "private"

[heartbeat]
targets = [${v.probeTargets.map(quoted).join(', ')}]

[peers]
key_secret = "${v.peerKeySecret}"
status_check = "${v.statusCheck}"

[snat]
addresses = ${v.addressesPerNat}

[cloudwatch]
enabled = ${publish}
namespace = "hanat"
metrics = "${publish ? v.cloudWatchMetrics : CloudWatchMetrics.ALL}"
`;
  if (v.metricsAllow.length > 0) {
    toml += `\n[metrics]\nallow = [${v.metricsAllow.map(quoted).join(', ')}]\n`;
  }
  if (v.fallbackNatGateways.length > 0) {
    toml += '\n[peers.fallback_nat_gateway_id]\n';
    toml += v.fallbackNatGateways.map(([az, id]) => `${quoted(az)} = ${quoted(id)}\n`).join('');
  }
  return toml;
}

/** The first-boot script: write the config, start the daemon the AMI ships. */
export function renderUserData(toml: string): string {
  // A quoted here-document: the shell expands nothing in the config.
  return `#!/bin/bash
# Written at first boot; the AMI ships the binary and the unit.
set -euo pipefail
install -d -m 0755 /etc/hanat
cat > /etc/hanat/hanat.toml <<'HANAT'
${toml}HANAT
systemctl enable hanat.service
systemctl restart hanat.service
`;
}
