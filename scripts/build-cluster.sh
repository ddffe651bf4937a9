#!/usr/bin/env bash
# Build the test cluster's binaries from Go modules into build/cluster/bin:
# kube (kube-apiserver, kube-controller-manager, kube-scheduler and kubectl in
# one multi-call binary, tests/cluster/kube/main.go), etcd, helm, kwok and the
# Kueue manager (tests/cluster/kueue.py runs it for tests/e2e_cluster/test_kueue.py).
#
# Each program gets its own Go module under build/cluster/src/<name> so their
# dependency graphs (etcd's grpc, helm's client-go) never fight. A binary is
# skipped when a stamp says it was built for the pinned version. Nothing is
# downloaded except through the Go module proxy.
#
# Usage: scripts/build-cluster.sh [kube|etcd|helm|kwok|kueue ...]   (default: all but kwok)
set -euo pipefail

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KUBETUNE_CLUSTER_CACHE:-$ROOT/build/cluster}
BIN=$CACHE/bin
SRC=$CACHE/src
mkdir -p "$BIN" "$SRC"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
command -v go >/dev/null || { echo "build-cluster: go is not on PATH (Go 1.26 is needed)" >&2; exit 1; }

say() { printf '[build-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { printf '[build-cluster] FAILED: %s\n' "$*" >&2; exit 1; }

# up_to_date NAME VERSION: true when NAME was built for VERSION and its binary exists.
up_to_date() {
  [[ -x $BIN/$1 && -f $BIN/.$1.version && $(cat "$BIN/.$1.version") == "$2" ]]
}

# new_module NAME: an empty module folder for NAME; prints its path.
new_module() {
  local dir=$SRC/$1
  rm -rf "$dir" && mkdir -p "$dir"
  printf 'module kubetune.local/cluster/%s\n\ngo 1.26.0\n' "$1" >"$dir/go.mod"
  echo "$dir"
}

# go_build DIR OUTPUT PACKAGE LDFLAGS...: a static, stripped build with time and
# memory reported, so the closing note's numbers come from this script.
go_build() {
  local dir=$1 out=$2 pkg=$3; shift 3
  local ldflags="-s -w $*"
  (cd "$dir" && /usr/bin/time -f "  build: %e s wall, %M KiB peak" \
    go build -trimpath -ldflags "$ldflags" -o "$out" "$pkg") \
    || fail "go build of $pkg (see the compiler output above)"
}

# fetch DIR MODULE@VERSION: add a requirement, naming the module when the proxy lacks it.
fetch() {
  (cd "$1" && go get "$2" >/dev/null 2>"$1/get.log") || {
    tail -5 "$1/get.log" >&2
    fail "the Go module proxy did not serve $2"
  }
}

build_kube() {
  up_to_date kube "$KUBERNETES_VERSION" && { say "kube $KUBERNETES_VERSION: already built"; return; }
  say "kube $KUBERNETES_VERSION: resolving modules"
  local dir; dir=$(new_module kube)
  cp "$ROOT/tests/cluster/kube/main.go" "$dir/"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and points them at
  # ./staging with replace lines Go ignores in a dependency: pin each to the
  # matching v0.<minor>.<patch>, reading the list from the module's own go.mod.
  local gomod staging=${KUBERNETES_VERSION/#v1./v0.}
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || fail "the Go module proxy did not serve k8s.io/kubernetes@$KUBERNETES_VERSION"
  local replaces
  replaces=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u)
  [[ -n $replaces ]] || fail "no k8s.io staging modules found in $gomod"
  {
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo "replace ("
    for m in $replaces; do echo "	$m => $m $staging"; done
    echo ")"
  } >>"$dir/go.mod"
  say "kube: $(wc -w <<<"$replaces") staging modules pinned to $staging; downloading"
  (cd "$dir" && go mod tidy >"$dir/tidy.log" 2>&1) || { tail -20 "$dir/tidy.log" >&2; fail "go mod tidy for kube"; }
  say "kube: compiling and linking (the long step: ~10-20 min on 2 cores with empty caches)"
  local v="k8s.io/component-base/version" c="k8s.io/client-go/pkg/version"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local flags=""
  for p in $v $c; do
    flags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  go_build "$dir" "$BIN/kube" . "$flags"
  for prog in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    ln -sf kube "$BIN/$prog"
  done
  echo "$KUBERNETES_VERSION" >"$BIN/.kube.version"
  say "kube: done ($(du -h "$BIN/kube" | cut -f1))"
}

# build_main NAME VERSION MODULE PACKAGE [LDFLAGS] [optional]: the main package PACKAGE of MODULE@VERSION
# as build/cluster/bin/NAME, from a module of its own. "optional": a module the proxy lacks is skipped.
build_main() {
  local name=$1 version=$2 module=$3 package=$4 ldflags=${5:-} optional=${6:-}
  up_to_date "$name" "$version" && { say "$name $version: already built"; return; }
  say "$name $version: downloading"
  local dir; dir=$(new_module "$name")
  if [[ $optional == optional ]] && ! (cd "$dir" && go get "$module@$version" >/dev/null 2>&1); then
    say "$name: SKIPPED, the Go module proxy does not serve $module@$version"
    return
  fi
  fetch "$dir" "$module@$version"
  # A blank import makes `go mod tidy` keep what the main package needs.
  printf 'package main\n\nimport _ "%s"\n' "$package" >"$dir/tools.go"
  (cd "$dir" && go mod tidy >"$dir/tidy.log" 2>&1) || { tail -20 "$dir/tidy.log" >&2; fail "go mod tidy for $name"; }
  rm "$dir/tools.go"
  say "$name: compiling"
  go_build "$dir" "$BIN/$name" "$package" "$ldflags"
  echo "$version" >"$BIN/.$name.version"
  say "$name: done"
}

# The etcd main package is the server module's root (server/main.go).
build_etcd() {
  build_main etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
}

build_helm() {
  build_main helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
}

# Only the operator scale benchmark could use kwok: skipped, with a line, if the proxy lacks it.
build_kwok() {
  build_main kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "" optional
}

# The Kueue manager (cmd/kueue). Its go.mod has no replace lines, so it builds as a module of its own
# at the k8s.io versions it requires (older than the control plane's; the API is compatible). Its CRDs
# and webhook configurations, from the same module version, go to build/cluster/kueue/<version> for
# tests/cluster/kueue.py.
build_kueue() {
  build_main kueue "$KUEUE_VERSION" sigs.k8s.io/kueue sigs.k8s.io/kueue/cmd/kueue \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.GitCommit=$KUEUE_VERSION"
  local dest=$CACHE/kueue/$KUEUE_VERSION
  [[ -f $dest/crd/kustomization.yaml && -f $dest/webhook/manifests.yaml ]] && return
  local module
  module=$(cd "$SRC" && go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [[ -d $module/config/components/crd ]] || fail "no config/components/crd in sigs.k8s.io/kueue@$KUEUE_VERSION"
  rm -rf "$dest" && mkdir -p "$dest/webhook"
  cp -r "$module/config/components/crd" "$dest/crd"
  cp "$module/config/components/webhook/manifests.yaml" "$dest/webhook/"
  chmod -R u+w "$dest"  # the module cache is read-only; a later rebuild must be able to replace the copy
  say "kueue: manifests in $dest"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(etcd helm kube kueue)
for t in "${targets[@]}"; do
  case $t in
    kube|etcd|helm|kwok|kueue) "build_$t" ;;
    *) fail "unknown target $t (kube, etcd, helm, kwok, kueue)" ;;
  esac
done
say "binaries in $BIN"
