#!/usr/bin/env bash
# Provision a hanat NAT instance image (Amazon Linux 2023, dnf). Runs as root,
# under Packer or by hand on a fresh instance:
#
#   HANAT_BINARY=/path/to/hanat  HANAT_FILES=/path/with/unit-config-and-docs  ./provision.sh
#   HANAT_SRC=/tmp/hanat-src.tar.gz  HANAT_FILES=...                      ./provision.sh
#
# With HANAT_BINARY the prebuilt binary is installed; otherwise the source
# tarball is built here and the build tools are removed again afterwards.
# HANAT_FILES holds hanat.service, hanat.toml, README.md, the two LICENSE
# files and (optionally) docs/: the repository's, as Packer uploads them.
set -euo pipefail

binary=${HANAT_BINARY:-}
src=${HANAT_SRC:-/tmp/hanat-src.tar.gz}
files=${HANAT_FILES:-/tmp}

log() { printf 'provision: %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
    log "must run as root"
    exit 1
fi
for f in hanat.service hanat.toml README.md LICENSE-MIT LICENSE-APACHE; do
    if [[ ! -f "$files/$f" ]]; then
        log "missing $files/$f (set HANAT_FILES)"
        exit 1
    fi
done

log "installing runtime packages"
dnf install -y -q nftables conntrack-tools iproute util-linux-core

if [[ -n "$binary" ]]; then
    log "installing prebuilt $binary"
    install -m 0755 "$binary" /usr/bin/hanat
elif [[ -f "$src" ]]; then
    log "building hanat from $src"
    build_tools=(cargo rust gcc)
    dnf install -y -q "${build_tools[@]}"
    build=$(mktemp -d)
    tar -xzf "$src" -C "$build"
    (cd "$build" && CARGO_HOME="$build/.cargo" cargo build --release --locked --bin hanat)
    install -m 0755 "$build/target/release/hanat" /usr/bin/hanat
    rm -rf "$build"
    log "removing build tools"
    dnf remove -y -q "${build_tools[@]}"
    dnf autoremove -y -q
else
    log "neither HANAT_BINARY nor a source tarball at $src"
    exit 1
fi
/usr/bin/hanat --version

log "installing unit, config and kernel defaults"
install -D -m 0644 "$files/hanat.service" /etc/systemd/system/hanat.service
install -D -m 0644 "$files/hanat.toml" /etc/hanat/hanat.toml
/usr/bin/hanat check-config --config /etc/hanat/hanat.toml

# The unit's Documentation= names the README; the docs it links to beside it.
log "installing the documentation"
doc=/usr/share/doc/hanat
install -D -m 0644 -t "$doc" "$files/README.md" "$files/LICENSE-MIT" "$files/LICENSE-APACHE"
if [[ -d "$files/docs" ]]; then
    install -D -m 0644 -t "$doc/docs" "$files"/docs/*.md
fi

# The daemon converges these itself; setting them at boot means forwarding
# works from the first packet, before the daemon has started.
cat > /etc/sysctl.d/90-hanat.conf <<'SYSCTL'
net.ipv4.ip_forward = 1
net.ipv4.conf.all.send_redirects = 0
net.ipv4.conf.default.send_redirects = 0
net.ipv4.conf.all.rp_filter = 2
net.netfilter.nf_conntrack_tcp_timeout_established = 7440
SYSCTL
# The unit may not load modules itself (ProtectKernelModules): load at boot.
# vxlan carries the flow hand-off tunnel between NATs (peers.flow_handoff).
cat > /etc/modules-load.d/hanat.conf <<'MODULES'
nf_tables
nf_conntrack
nf_nat
nft_masq
vxlan
MODULES

systemctl daemon-reload
systemctl enable hanat.service
dnf clean all
log "done"
