#!/usr/bin/env bash
# Build etcd (the server binary) from its Go modules through the module proxy, once per machine.
#
# Why not Debian's etcd-server: it is 3.4, which has no watch progress notifications, so
# kube-apiserver 1.34 fails a watch opened without a resourceVersion on an idle resource after
# about 3 s ("504 Too large resource version"); no real cluster does that. Kubernetes v1.34
# itself requires etcd v3.6 client modules.
#
# As in hack/build-k8s.sh: a throw-away module requires go.etcd.io/etcd/server/v3 at a pinned
# version (its own replace directives point at sibling directories of etcd's repository, which
# a dependency's go.mod never applies, so the sibling modules resolve to the same version from
# the proxy) and builds its main package. The binary lands in $ETCD_CACHE/<version>/etcd,
# beside the k8s binaries and outside the clone, so fresh clones reuse it. A .recipe file
# records how it was built; a different recipe rebuilds it.
set -euo pipefail

version="${ETCD_VERSION:-v3.6.16}"
cache="${ETCD_CACHE:-$HOME/.cache/agent-sandbox/etcd}"
out="$cache/$version"
recipe="1 go.etcd.io/etcd/server/v3@$version trimpath version-stamped"

if [ -x "$out/etcd" ] && [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]; then
  echo "etcd $version cached in $out"
  exit 0
fi

# shellcheck source=hack/go-env.sh
source "$(dirname "$0")/go-env.sh"
require_go

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

cat > go.mod <<MOD
module agent-sandbox/etcd-test-binary

go 1.26.0

require go.etcd.io/etcd/server/v3 $version
MOD

cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO

echo "resolving go.etcd.io/etcd/server/v3 $version"
GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod go mod download

# etcd's own build stamps the git commit; the version itself is a constant in api/v3/version.
ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$version"

mkdir -p "$out"
rm -f "$out/.recipe"
echo "building etcd $version"
started=$(date +%s)
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out/etcd.tmp" \
  go.etcd.io/etcd/server/v3
mv "$out/etcd.tmp" "$out/etcd"
"$out/etcd" --version > "$work/version"   # not piped into head: SIGPIPE under pipefail
head -1 "$work/version"
echo "$recipe" > "$out/.recipe"
echo "built into $out in $(( $(date +%s) - started ))s"
