#!/usr/bin/env bash
# The real-pod end-to-end suite on kind, for a machine with Docker and kind
# (CI's e2e-kind job runs exactly this): build the three images, create a kind
# cluster, load the images, give its node a fake nvidia.com/gpu, a RuntimeClass
# "nvidia" (handler runc) and the label the tests place their pods by, then run
# tests/pods against it. The tests install the chart themselves (restricted
# namespaces, helm test, upgrade and rollback) and start S3 and RabbitMQ on
# this machine at the kind network's gateway, where the pods reach it.
#
#   hack/kind-e2e.sh                     everything; deletes the cluster at the end
#   AZAION_KIND_KEEP=1 hack/kind-e2e.sh  keep the cluster (reused by the next run)
#
# Settings: AZAION_KIND_CLUSTER (azaion-e2e), AZAION_E2E_TAG (e2e-<commit>).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

cluster="${AZAION_KIND_CLUSTER:-azaion-e2e}"
tag="${AZAION_E2E_TAG:-e2e-$(git rev-parse --short HEAD 2>/dev/null || echo local)}"
registry=azaion.local

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (see README: Deploying with Helm)" >&2; exit 2; }
done

step() { echo "::: $* ($(date +%T))"; }

cleanup() {
  if [ "${AZAION_KIND_KEEP:-0}" != 1 ]; then
    step "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "building images ($tag)"
for image in operator queue training; do
  docker build -q -f "Dockerfile.$image" -t "$registry/$image:$tag" .
done
# The same consumer image with another revision label: another digest, for the upgrade test.
docker build -q -f Dockerfile.queue --build-arg REVISION=rebuilt -t "$registry/queue:$tag-rebuilt" .

step "kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
fi
kubeconfig="$(mktemp)"
kind get kubeconfig --name "$cluster" >"$kubeconfig"
export KUBECONFIG="$kubeconfig"
for ref in "$registry/operator:$tag" "$registry/queue:$tag" "$registry/training:$tag" "$registry/queue:$tag-rebuilt"; do
  kind load docker-image --name "$cluster" "$ref"
done

step "a fake GPU on the node, RuntimeClass nvidia (handler runc), the real-node label"
node="$cluster-control-plane"
kubectl patch node "$node" --subresource=status --type=json \
  -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]'
kubectl label node "$node" nvidia.com/gpu.present=true azaion.local/real-node=true --overwrite
kubectl apply -f - <<'YAML'
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: nvidia
handler: runc
YAML
for _ in $(seq 30); do
  [ "$(kubectl get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" = 1 ] && break
  sleep 1
done

# The kind network's IPv4 gateway is this machine as the node's pods see it.
gateway="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -v : | head -n1)"
[ -n "$gateway" ] || { echo "error: no IPv4 gateway on the kind network" >&2; exit 1; }

step "tests/pods against kind (host address $gateway)"
hack/test-pods.sh --kubeconfig "$KUBECONFIG" --image-tag "$tag" --host-address "$gateway"
step "done"
