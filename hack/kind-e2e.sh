#!/usr/bin/env bash
# The end-to-end flow on kind, for a machine with Docker (CI's e2e-kind job
# runs exactly this): build the operator and consumer images, create a kind
# cluster, give its node a fake nvidia.com/gpu and a RuntimeClass "nvidia"
# (handler runc), helm install the chart, helm test, run the e2e tests against
# the in-cluster operator, then helm upgrade and helm rollback.
#
#   hack/kind-e2e.sh                     everything; deletes the cluster at the end
#   AZAION_KIND_KEEP=1 hack/kind-e2e.sh  keep the cluster (reused by the next run)
#
# Settings: AZAION_KIND_CLUSTER (azaion-e2e), AZAION_E2E_TAG (e2e-<commit>),
# AZAION_E2E_TRAINING=1 also builds and loads the (large) training image,
# AZAION_E2E_PYTEST (.venv/bin/pytest).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

cluster="${AZAION_KIND_CLUSTER:-azaion-e2e}"
tag="${AZAION_E2E_TAG:-e2e-$(git rev-parse --short HEAD 2>/dev/null || echo local)}"
pytest="${AZAION_E2E_PYTEST:-.venv/bin/pytest}"
release=azaion
namespace=azaion-system
registry=azaion.local

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (see README: Deploying with Helm)" >&2; exit 2; }
done
[ -x "$pytest" ] || { echo "error: $pytest not found; run hack/setup.sh python first" >&2; exit 2; }

step() { echo "::: $*"; }

cleanup() {
  if [ "${AZAION_KIND_KEEP:-0}" != 1 ]; then
    step "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "building images ($tag)"
images=(operator queue)
[ "${AZAION_E2E_TRAINING:-0}" = 1 ] && images+=(training)
for image in "${images[@]}"; do
  docker build -q -f "Dockerfile.$image" -t "$registry/$image:$tag" \
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
done

step "kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
fi
kubeconfig="$(mktemp)"
kind get kubeconfig --name "$cluster" > "$kubeconfig"
export KUBECONFIG="$kubeconfig"
for image in "${images[@]}"; do
  kind load docker-image --name "$cluster" "$registry/$image:$tag"
done

step "a fake GPU on the node, and RuntimeClass nvidia (handler runc)"
node="$cluster-control-plane"
kubectl patch node "$node" --subresource=status --type=json \
  -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]'
kubectl label node "$node" nvidia.com/gpu.present=true --overwrite
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

values=(
  --set "image.repository=$registry/operator" --set "image.tag=$tag" --set image.pullPolicy=Never
  --set "queueImage.repository=$registry/queue" --set "queueImage.tag=$tag"
  --set "trainingImage.repository=$registry/training" --set "trainingImage.tag=$tag"
  --set operator.workloadImagePullPolicy=Never
  --set operator.reconcileIntervalSeconds=1
)

step "helm install"
helm upgrade --install "$release" charts/azaion -n "$namespace" --create-namespace \
  "${values[@]}" --atomic --wait --timeout 5m
kubectl wait --for=condition=Established --timeout=60s \
  crd/trainingruns.ai.azaion.com crd/annotationconsumers.ai.azaion.com

step "helm test"
helm test "$release" -n "$namespace" --logs --timeout 3m

step "e2e tests against the in-cluster operator"
"$pytest" tests/e2e -m e2e --kubeconfig "$KUBECONFIG" --external-operator -v

step "helm upgrade (a changed value) and helm rollback"
helm upgrade "$release" charts/azaion -n "$namespace" "${values[@]}" \
  --set operator.reconcileIntervalSeconds=2 --atomic --wait --timeout 5m
helm rollback "$release" 1 -n "$namespace" --wait --timeout 5m
kubectl -n "$namespace" rollout status "deployment/$release" --timeout=3m
helm test "$release" -n "$namespace" --logs --timeout 3m
helm history "$release" -n "$namespace"
step "done"
