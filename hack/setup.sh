#!/usr/bin/env bash
# Installs what the tests need, idempotently: system packages (when root and
# missing), the Python virtualenv with every extra, and the Go-built tools.
# Safe to run again: each step is skipped when already done.
#   hack/setup.sh          everything the main test suite needs
#   hack/setup.sh python   only the virtualenv (what a local training run needs)
#   hack/setup.sh node     also what the real node and the images need (hack/test-pods.sh,
#                          hack/up.sh): Docker Engine, containerd, runc, CNI plugins,
#                          debootstrap, iptables, and the kubelet, kube-proxy, pause, crictl
set -euo pipefail
only="${1:-all}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

missing=()
[ "$only" = python ] || {
command -v openssl >/dev/null || missing+=(openssl)
command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v shellcheck >/dev/null || missing+=(shellcheck)
}
if [ "$only" = node ]; then
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v iptables >/dev/null || missing+=(iptables)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi

python="${PYTHON:-python3}"
# The virtualenv is the lock (requirements/dev.txt: every package at an exact
# version, hashes checked), so the tests run what the images install.
stamp=".venv/.installed-$(cat pyproject.toml requirements/dev.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q --require-hashes --no-deps -r requirements/dev.txt
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  .venv/bin/pip check
  rm -f .venv/.installed-*
  touch "$stamp"
fi

case "$only" in
  python) ;;
  node) hack/build-tools.sh node >/dev/null ;;
  *) hack/build-tools.sh >/dev/null ;;
esac
