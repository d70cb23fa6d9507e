#!/usr/bin/env bash
# The kernel's cost of hanat's ruleset against a bare masquerade, in the
# same run (docs/capacity.md, docs/benchmarks.md). Three namespaces:
#
#   client 10.0.1.10 ── nat (ens5 uplink 203.0.113.2) ── server 203.0.113.10
#
# The NAT namespace is loaded in turn with hanat's own tables (the golden
# files tests/golden/{ruleset,metrics}-ens5.nft, what the daemon
# installs) and with one masquerade rule, and the same load is sent through
# each, ROUNDS times alternating:
#   - bulk: one TCP stream (iperf3) for SECONDS: Gbit/s and busy CPU;
#   - new connections: TCP connect + close at RATE a second for SECONDS:
#     the rate reached and busy CPU.
# Busy CPU is the whole machine's (/proc/stat), in cores: client, server
# and the forwarding all run on its cores, and on veth the forwarding runs
# in the sender's softirq (its own column: the kernel's network work, both
# TCP stacks included), so the figures are the path's, compared between
# rulesets in the same run, not a NAT's own CPU on an ENA. The connection
# rate is held below what the Python client reaches (about 1,500/s here),
# so both rulesets carry the same load.
#
# Needs root, nftables, iperf3 and python3. Usage:
#   tests/lab/bench-forwarding.sh [ROUNDS=3] [SECONDS=10] [RATE=1000]
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${1:-3}
seconds=${2:-10}
rate=${3:-1000}
p="bf$$"
in_ns() { local ns=$1; shift; ip netns exec "$p-$ns" "$@"; }
teardown() {
    for ns in client nat server; do
        ip netns pids "$p-$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$p-$ns" 2>/dev/null || true
    done
}
trap teardown EXIT

# A fresh topology for each measurement: nothing (conntrack entries above
# all) carries over from one to the next.
setup() {
    for ns in client nat server; do ip netns add "$p-$ns"; done
    ip link add c0 netns "$p-client" type veth peer name eth0 netns "$p-nat"
    ip link add ens5 netns "$p-nat" type veth peer name s0 netns "$p-server"
    in_ns client ip addr add 10.0.1.10/24 dev c0
    in_ns nat ip addr add 10.0.1.1/24 dev eth0
    in_ns nat ip addr add 203.0.113.2/24 dev ens5
    in_ns server ip addr add 203.0.113.10/24 dev s0
    for ns in client nat server; do in_ns "$ns" ip link set lo up; done
    in_ns client ip link set c0 up
    in_ns nat ip link set eth0 up
    in_ns nat ip link set ens5 up
    in_ns server ip link set s0 up
    in_ns client ip route add default via 10.0.1.1
    in_ns server ip route add 10.0.1.0/24 via 203.0.113.2
    in_ns nat sysctl -qw net.ipv4.ip_forward=1
    # The server: a TCP port that accepts and closes (iperf3 is started
    # for each stream).
    in_ns server python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.10", 8080)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
' >/dev/null 2>&1 &
}

# hanat's own tables, as the daemon installs them on an instance whose
# uplink is ens5 (the VPC 10.0.0.0/16 is a NAT source).
load_hanat() {
    for t in ruleset metrics; do
        in_ns nat nft -f "tests/golden/$t-ens5.nft"
    done
}
load_bare() {
    in_ns nat nft -f - <<'NFT'
table ip bare {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "ens5" masquerade
	}
}
NFT
}

# Busy and softirq jiffies, and all jiffies, of the whole machine.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
cores=$(nproc)

bulk() {
    in_ns server iperf3 -s -D -1 >/dev/null 2>&1 || true
    sleep 0.3
    read -r b0 s0 t0 < <(busy)
    local bps
    bps=$(in_ns client iperf3 -c 203.0.113.10 -t "$seconds" -J | python3 -c '
import json, sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
    read -r b1 s1 t1 < <(busy)
    python3 -c "
b, s, t, bps = $b1 - $b0, $s1 - $s0, $t1 - $t0, $bps
cpu, soft = $cores * b / t, $cores * s / t
print(f'{bps/1e9:.2f} {cpu:.3f} {cpu/(bps/1e9):.3f} {soft/(bps/1e9):.3f}')"
}

connections() {
    read -r b0 s0 t0 < <(busy)
    local made
    made=$(in_ns client python3 -c "
import socket, time
rate, secs = $rate, $seconds
start = time.monotonic(); n = 0; failed = 0
while time.monotonic() - start < secs:
    due = start + n / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect(('203.0.113.10', 8080))
    except OSError:
        failed += 1
    s.close(); n += 1
print(n - failed)")
    read -r b1 s1 t1 < <(busy)
    python3 -c "
b, s, t, made = $b1 - $b0, $s1 - $s0, $t1 - $t0, $made
cpu, soft = $cores * b / t, $cores * s / t
per_s = made / $seconds
print(f'{per_s:.0f} {cpu:.3f} {cpu / per_s * 10000:.3f} {soft / per_s * 10000:.3f}')"
}

echo "rounds $rounds, $seconds s each, connections at $rate/s; $(nproc) cores, $(uname -r)"
printf '%-6s %-6s %8s %7s %13s %13s %7s %7s %15s %15s\n' round rules Gbit/s busy "busy/Gbit/s" "softirq/Gbit" conn/s busy "busy/10k conn" "softirq/10k"
for r in $(seq 1 "$rounds"); do
    for rules in bare hanat; do
        setup
        "load_$rules"
        sleep 0.5
        read -r g c cg sg < <(bulk)
        read -r n cn c10k s10k < <(connections)
        printf '%-6s %-6s %8s %7s %13s %13s %7s %7s %15s %15s\n' "$r" "$rules" "$g" "$c" "$cg" "$sg" "$n" "$cn" "$c10k" "$s10k"
        teardown
    done
done
