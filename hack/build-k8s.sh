#!/usr/bin/env bash
# Build the control-plane test binaries (kube-apiserver, kube-controller-manager, kubectl) from the
# k8s.io/kubernetes Go module through the module proxy, once per machine.
#
# The published go.mod of k8s.io/kubernetes requires its staging modules at v0.0.0, which the
# proxy does not serve, so we write a tiny module that requires kubernetes at a pinned version
# and replaces every staging module (read from that version's own replace block) with v0.Y.Z.
# Binaries land in $K8S_CACHE/<version>/ (outside the clone), so fresh clones reuse them.
# The version is stamped in with -ldflags -X, as Kubernetes' own build does: unstamped binaries
# report v0.0.0-master, which kubectl refuses to parse ("kubectl version" fails).
# A .recipe file records how the binaries were built; a different recipe rebuilds them
# (go's build cache makes that a link step, not a recompile).
set -euo pipefail

version="${K8S_VERSION:-v1.34.4}"
cache="${K8S_CACHE:-$HOME/.cache/agent-sandbox/k8s}"
out="$cache/$version"
binaries=(kube-apiserver kube-controller-manager kubectl)
recipe="2 ${binaries[*]} version-stamped"

missing=0
for b in "${binaries[@]}"; do [ -x "$out/$b" ] || missing=1; done
[ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ] || missing=1
if [ "$missing" = 0 ]; then
  echo "k8s $version binaries cached in $out"
  exit 0
fi

GO_MIN=1.24  # k8s.io/kubernetes v1.34's go.mod
# shellcheck source=hack/go-env.sh
source "$(dirname "$0")/go-env.sh"
require_go

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

minor="${version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

mkdir -p "$out"
rm -f "$out/.recipe"
for b in "${binaries[@]}"; do
  echo "building $b"
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out/$b.tmp" \
    "k8s.io/kubernetes/cmd/$b"
  mv "$out/$b.tmp" "$out/$b"
done
echo "$recipe" > "$out/.recipe"
echo "built into $out"
