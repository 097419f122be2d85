#!/usr/bin/env bash
# The real-pod end-to-end suite (tests/pods): the three images built from this
# checkout run as pods on a node with a real kubelet, containerd and runc.
#
#   hack/test-pods.sh                      local plane with its real node (Linux, root):
#                                          installs what is missing, builds the images
#   hack/test-pods.sh --kubeconfig K --image-tag T --host-address A
#                                          an existing cluster with the images loaded
#                                          (kind: hack/kind-e2e.sh); needs .venv and rabbitmq-server
#
# It runs in a pytest session of its own: its operator is the chart's, in the
# cluster, and a host-side operator of the main suite would race it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
case " $* " in
  *" --kubeconfig"*) [ -x .venv/bin/pytest ] || { echo "error: no .venv; run hack/setup.sh python" >&2; exit 2; } ;;
  *)
    hack/setup.sh node
    ;;
esac
export AZAION_REAL_PODS=1 AZAION_REAL_NODE=1
exec .venv/bin/pytest tests/pods -v "$@"
