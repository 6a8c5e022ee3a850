#!/usr/bin/env bash
# Install the system packages the tests and the local backend need, if they are missing:
# gVisor's runsc (data plane, local backend), openssl (control-plane tier) and prlimit.
# Idempotent. etcd is not among them: Debian's is 3.4, too old to behave like a cluster's;
# hack/build-etcd.sh builds v3.6 instead.
set -euo pipefail

need=()
command -v runsc >/dev/null 2>&1 || need+=(runsc)
command -v openssl >/dev/null 2>&1 || need+=(openssl)      # test certificates for kube-apiserver
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)   # runtime limits under gVisor

[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing ${need[*]}: run as root or: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing ${need[*]} with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
