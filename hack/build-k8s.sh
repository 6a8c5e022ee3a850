#!/usr/bin/env bash
# Build the control-plane test binaries (kube-apiserver, kube-controller-manager, kubectl) from the
# k8s.io/kubernetes Go module through the module proxy, once per machine.
#
# The published go.mod of k8s.io/kubernetes requires its staging modules at v0.0.0, which the
# proxy does not serve, so we write a tiny module that requires kubernetes at a pinned version
# and replaces every staging module (read from that version's own replace block) with v0.Y.Z.
# Binaries land in $K8S_CACHE/<version>/ (outside the clone), so fresh clones reuse them.
set -euo pipefail

version="${K8S_VERSION:-v1.34.4}"
cache="${K8S_CACHE:-$HOME/.cache/agent-sandbox/k8s}"
out="$cache/$version"
binaries=(kube-apiserver kube-controller-manager kubectl)

missing=0
for b in "${binaries[@]}"; do [ -x "$out/$b" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "k8s $version binaries cached in $out"
  exit 0
fi

staging_version="v0.${version#v1.}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

cat > go.mod <<MOD
module agent-sandbox/k8s-test-binaries

go 1.24.0

require k8s.io/kubernetes $version
MOD

upstream_mod="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$version" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
{
  echo "replace ("
  sed -n '/^replace (/,/^)/p' "$upstream_mod" \
    | awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " '"$staging_version"'"}'
  echo ")"
} >> go.mod

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO

echo "resolving k8s.io/kubernetes $version (staging modules at $staging_version)"
GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod go mod download

mkdir -p "$out"
for b in "${binaries[@]}"; do
  echo "building $b"
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out/$b" "k8s.io/kubernetes/cmd/$b"
done
echo "built into $out"
