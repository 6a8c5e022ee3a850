#!/usr/bin/env bash
# Sourced by hack/build-k8s.sh and hack/build-etcd.sh: find a Go toolchain new enough to build
# the control-plane test binaries, or say exactly what the machine needs.
#
# Order: `go` on PATH, then /usr/local/go/bin/go. When that Go is older than GO_MIN but can
# switch toolchains itself (Go >= 1.21), GOTOOLCHAIN=$GO_FALLBACK makes the go command fetch
# that toolchain as a module (golang.org/toolchain) through the Go module proxy, the one
# registry a CI machine reaches. Nothing is downloaded from anywhere else.
# It must not change the user's Go installation or ~/.config/go/env.

GO_MIN="${GO_MIN:-1.26}"              # etcd v3.6.16's go.mod says go 1.26.0; k8s v1.34 says 1.24
GO_FALLBACK="${GO_FALLBACK:-go1.27.3}" # the toolchain this project's machines may fetch

go_version_at_least() {  # go_version_at_least 1.26.8 1.26 -> true
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]
}

require_go() {
  if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "no Go toolchain: the control-plane binaries build from source; install Go >= $GO_MIN" \
      "(on PATH or in /usr/local/go) and run this again" >&2
    return 1
  fi
  local have
  have="$(go env GOVERSION 2>/dev/null)"; have="${have#go}"
  if go_version_at_least "$have" "$GO_MIN"; then
    return 0
  fi
  if ! go_version_at_least "$have" "1.21"; then
    echo "Go $have is too old (need >= $GO_MIN, or >= 1.21 to fetch $GO_FALLBACK itself)" >&2
    return 1
  fi
  echo "Go $have is older than $GO_MIN: using GOTOOLCHAIN=$GO_FALLBACK (through the module proxy)"
  export GOTOOLCHAIN="$GO_FALLBACK"
  go version >/dev/null
}
