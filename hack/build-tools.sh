#!/usr/bin/env bash
# Builds the control-plane tools from Go modules once, into a cache outside the
# work tree keyed by version; a warm call only checks that the binaries exist.
#
#   hack/build-tools.sh            build whatever is missing, print the bin dir
#   hack/build-tools.sh node       also the real node's kubelet, kube-proxy, pause and crictl
#   hack/build-tools.sh kueue      Kueue's controller and CRDs (the Kueue tests), print their dir
#   AZAION_TOOLS_DIR=/path ...     choose the cache (default ~/.cache/azaion/tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

tools_dir="${AZAION_TOOLS_DIR:-$HOME/.cache/azaion/tools}"
log_dir="$tools_dir/logs"
mkdir -p "$log_dir"

if ! command -v go >/dev/null 2>&1; then
  for candidate in /usr/local/go/bin /usr/lib/go/bin; do
    [ -x "$candidate/go" ] && PATH="$candidate:$PATH"
  done
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain (go 1.24 or newer) is needed to build the local control plane;" >&2
  echo "       install it, or run the tests against an existing cluster (see README.md)." >&2
  exit 2
fi

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--trimpath -modcacherw}" GOTOOLCHAIN=local
# The builds' Go caches are their own and go once the binaries are in place:
# the binaries are the cache, and Go's would grow by gigabytes per tool version.
export GOCACHE="$tools_dir/.go/build" GOMODCACHE="$tools_dir/.go/mod"
built_any=0
drop_go_caches() {
  local rc=$?
  if [ "$rc" = 0 ] && [ "$built_any" = 1 ]; then rm -rf "$tools_dir/.go"; fi
  return "$rc"
}
trap drop_go_caches EXIT

# build NAME VERSION DEST_DIR COMMAND...: runs COMMAND (which must leave the binaries
# in DEST_DIR) unless DEST_DIR/.complete exists; on failure, names the log file.
build() {
  local name="$1" version="$2" dest="$3"
  shift 3
  [ -f "$dest/.complete" ] && return 0
  local log="$log_dir/$name-$version.log"
  echo "building $name $version (log: $log)" >&2
  local start=$SECONDS
  mkdir -p "$dest"
  if ! "$@" >"$log" 2>&1; then
    echo "error: building $name $version failed; see the build log: $log" >&2
    tail -n 20 "$log" >&2
    exit 3
  fi
  touch "$dest/.complete"
  built_any=1
  echo "built $name $version in $((SECONDS - start))s" >&2
}

k8s_build() { # DEST PACKAGE...
  local dest="$1" minor
  shift
  minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean"
  cd "$here/gobuild/kubernetes"
  go build -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$dest/" "$@"
}

pause_build() {
  cd "$here/gobuild/pause"
  go build -ldflags "-s -w" -o "$1/pause" .
}

etcd_build() {
  cd "$here/gobuild/etcd"
  go build -ldflags "-s -w" -o "$1/etcd" .
}

kueue_build() { # DEST
  go_install "$1" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  mkdir -p "$1/crds"
  cp "$(go env GOMODCACHE)/sigs.k8s.io/kueue@$KUEUE_VERSION/config/components/crd/bases/"*.yaml "$1/crds/"
  chmod u+w "$1/crds/"*.yaml
}

go_install() { # DEST PACKAGE@VERSION
  GOBIN="$1" go install -ldflags "-s -w" "$2"
}

k8s_dir="$tools_dir/kubernetes-$KUBERNETES_VERSION"
etcd_dir="$tools_dir/etcd-$ETCD_VERSION"
kwok_dir="$tools_dir/kwok-$KWOK_VERSION"
helm_dir="$tools_dir/helm-$HELM_VERSION"
# The real node's binaries live apart from the plane's, so adding them keeps the
# plane's cache entry; the pause program is keyed by a hash of its source.
node_dir="$tools_dir/kubelet-$KUBERNETES_VERSION"
pause_version="$(cat "$here/gobuild/pause/go.mod" "$here/gobuild/pause/main.go" | sha256sum | cut -c1-12)"
pause_dir="$tools_dir/pause-$pause_version"
crictl_dir="$tools_dir/crictl-$CRI_TOOLS_VERSION"

want="${1:-all}"
case "$want" in
  all|cluster|node)
    build etcd "$ETCD_VERSION" "$etcd_dir" etcd_build "$etcd_dir"
    build kwok "$KWOK_VERSION" "$kwok_dir" go_install "$kwok_dir" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    build helm "$HELM_VERSION" "$helm_dir" go_install "$helm_dir" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    build kubernetes "$KUBERNETES_VERSION" "$k8s_dir" k8s_build "$k8s_dir" \
      ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl
    if [ "$want" = node ]; then
      build kubelet "$KUBERNETES_VERSION" "$node_dir" k8s_build "$node_dir" ./cmd/kubelet ./cmd/kube-proxy
      build pause "$pause_version" "$pause_dir" pause_build "$pause_dir"
      build crictl "$CRI_TOOLS_VERSION" "$crictl_dir" go_install "$crictl_dir" \
        "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
    fi
    ;;
  kueue)
    # Kueue's controller and its CRDs (copied from the module source the build downloads).
    dir="$tools_dir/kueue-$KUEUE_VERSION"
    build kueue "$KUEUE_VERSION" "$dir" kueue_build "$dir"
    echo "$dir"
    exit 0
    ;;
  actionlint)
    dir="$tools_dir/actionlint-$ACTIONLINT_VERSION"
    build actionlint "$ACTIONLINT_VERSION" "$dir" go_install "$dir" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
    echo "$dir"
    exit 0
    ;;
  *) echo "usage: $0 [all|node|kueue|actionlint]" >&2; exit 2 ;;
esac

# One directory of links, so callers put a single entry on PATH.
bin_dir="$tools_dir/bin-$KUBERNETES_VERSION-$ETCD_VERSION-$KWOK_VERSION-$HELM_VERSION"
mkdir -p "$bin_dir"
for f in "$k8s_dir"/kube-apiserver "$k8s_dir"/kube-controller-manager "$k8s_dir"/kube-scheduler \
  "$k8s_dir"/kubectl "$etcd_dir"/etcd "$kwok_dir"/kwok "$helm_dir"/helm; do
  ln -sf "$f" "$bin_dir/"
done
if [ "$want" = node ]; then
  for f in "$node_dir"/kubelet "$node_dir"/kube-proxy "$pause_dir"/pause "$crictl_dir"/crictl; do
    ln -sf "$f" "$bin_dir/"
  done
fi
echo "$bin_dir"
