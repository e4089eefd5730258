#!/usr/bin/env bash
# Installs what this project needs on a fresh Debian 12 machine, as root, idempotently:
# the system tools it drives (iproute2, nftables, etcd, ...), the npm dependencies (npm ci),
# and the compiled JavaScript (npm run build). Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the tools sys/ drives and the tests use.
PACKAGES=(
  iproute2          # ip, tc, bridge
  nftables          # nft
  etcd-server       # etcd (state store; tests start their own)
  etcd-client       # etcdctl (operators; tests)
  openssl           # certificates for the test clusters' etcd (TLS, client certificates)
  iputils-ping      # ping probes
  util-linux        # nsenter, unshare
  procps            # sysctl
  ethtool           # offload settings on veths
  iperf3            # QoS measurements; data-path benchmarks
  sockperf          # TCP round-trip percentiles in the data-path benchmarks
  bird2             # BGP speaker: routed VPCs on L3 fabrics (netd drives it; tests run their own)
  openvswitch-switch  # vlan mode: Open vSwitch (userspace datapath here; tests run one per virtual host)
  tcpdump           # captures on the virtual fabric (802.1Q tags between hosts)
  python3-minimal   # raw frames from a test container (a tenant trying to hop VLANs)
  curl              # a client nobody here wrote, against the HTTP API in tests
  busybox-static    # container root filesystems
  kmod              # modprobe, for kernel features loaded on demand
  containernetworking-plugins  # reference CNI plugins: peers in tests and benchmarks
  gcc               # builds the netd CNI plugin (a small static C program)
  libc6-dev         # its static libc
  podman            # a real CNI client in the integration tests
  iptables          # the reference portmap and firewall plugins, chained after netd in tests
  runc              # podman's runtime here (crun fails on hybrid cgroups)
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # Packages with a service (bird2, openvswitch-switch) must not start it here: netd and the tests run their own, in
  # their namespaces. Where nothing forbids it yet, a policy does for the time of the install.
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$policy_added" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.setup-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

npm run --silent build
