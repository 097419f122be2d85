#!/usr/bin/env bash
# The whole system on this machine, as containers on a real kubelet (Linux, root, Go):
#
#   hack/up.sh        the local plane with its real node, the three images built
#                     from this checkout, the chart, a RabbitMQ (streams) and an S3
#                     server for the pods, a data volume with synthetic annotations,
#                     an AnnotationConsumer and a small TrainingRun; then follows
#                     `kubectl get tr -w` until the run ends
#   hack/up.sh down   stop all of it (the servers, the release, the plane)
#
# Idempotent: a second `up` reuses what runs and what is built. The namespace
# `azaion` (restricted Pod Security) holds the resources; afterwards:
#   eval "$(hack/cluster.sh env)"; kubectl -n azaion get tr,ac,pods
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

state="$repo/.state/system"
namespace=azaion
release=azaion
tag="${AZAION_IMAGE_TAG:-dev}"
s3_port=26590
stream_port=26552
epmd_port=26569
amqp_port=26572
dist_port=26525

say() { echo "::: $*" >&2; }
die() {
  echo "error: $*" >&2
  exit 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {
  local pidfile="$1" pid
  alive "$pidfile" || {
    rm -f "$pidfile"
    return 0
  }
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

down() {
  say "stopping the servers"
  stop_pid "$state/rabbitmq.pid"
  stop_pid "$state/epmd.pid"
  stop_pid "$state/s3.pid"
  say "stopping the plane and its node"
  hack/cluster.sh down
  rm -rf "$state"
}

preflight() {
  [ "$(uname -s)" = Linux ] || die "the real node needs Linux; elsewhere use kind (hack/kind-e2e.sh) or hack/train-local.sh"
  [ "$(id -u)" = 0 ] || die "the real node needs root (containerd, a network bridge, iptables); or use kind (hack/kind-e2e.sh)"
  command -v go >/dev/null || [ -x /usr/local/go/bin/go ] \
    || die "Go 1.24 or newer is needed to build the Kubernetes binaries (https://go.dev/dl/)"
}

# The server script itself: Debian's /usr/sbin wrapper switches to the rabbitmq
# user, who may not write our state directory.
rabbitmq_server() {
  local candidate
  for candidate in /usr/lib/rabbitmq/bin/rabbitmq-server "$(command -v rabbitmq-server || true)"; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  die "rabbitmq-server is missing (apt-get install rabbitmq-server)"
}

# A RabbitMQ node of our own with the stream plugin, listening where pods reach it.
start_rabbitmq() {
  local host="$1" base="$state/rabbitmq"
  alive "$state/rabbitmq.pid" && return
  mkdir -p "$base"
  cat >"$base/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$amqp_port
stream.listeners.tcp.1 = $host:$stream_port
stream.advertised_host = $host
stream.advertised_port = $stream_port
loopback_users = none
log.console = true
log.console.level = warning
log.file = false
EOF
  echo '[rabbitmq_stream].' >"$base/enabled_plugins"
  : >"$base/rabbitmq-env.conf"
  alive "$state/epmd.pid" || {
    setsid epmd -port "$epmd_port" >"$state/epmd.log" 2>&1 </dev/null &
    echo $! >"$state/epmd.pid"
  }
  setsid env HOME="$base" RABBITMQ_NODENAME="azaion-local@localhost" \
    RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_MNESIA_BASE="$base/mnesia" \
    RABBITMQ_LOG_BASE="$base/log" RABBITMQ_PID_FILE="$base/rabbitmq.pid" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$base/plugins-expand" RABBITMQ_FEATURE_FLAGS_FILE="$base/feature_flags" \
    RABBITMQ_DIST_PORT="$dist_port" ERL_EPMD_PORT="$epmd_port" RABBITMQ_ALLOW_INPUT="" \
    "$(rabbitmq_server)" >"$state/rabbitmq.log" 2>&1 </dev/null &
  echo $! >"$state/rabbitmq.pid"
}

start_s3() {
  local host="$1"
  alive "$state/s3.pid" && return
  setsid .venv/bin/python -m moto.server -H "$host" -p "$s3_port" >"$state/s3.log" 2>&1 </dev/null &
  echo $! >"$state/s3.pid"
}

wait_port() { # HOST PORT WHAT LOG
  for _ in $(seq 1 240); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return
    sleep 0.5
  done
  tail -n 20 "$4" >&2 || true
  die "$3 did not come up on $1:$2 (log: $4)"
}

# The data claim and the seed pod ("seed"), or the consumer and the run ("run"), as a List.
manifests() {
  .venv/bin/python - "$1" "$namespace" "$tag" "$2" "$stream_port" "$s3_port" <<'EOF'
import json, sys
mode, namespace, tag, host, stream_port, s3_port = sys.argv[1:]
placement = {"nodeSelector": {"azaion.local/real-node": "true"},
             "tolerations": [{"key": "azaion.local/real-node", "operator": "Exists", "effect": "NoSchedule"}]}
restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
from azaion_devtools.synthetic import synthetic_script  # the generator is not in the image: its source goes along
seed = synthetic_script("if not any(Path('/azaion/data/images').glob('*')):\n    write_annotations(Path('/azaion/data'), 40, seed=1)")
items = [
    {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "azaion-data"},
     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "seed-annotations"},
     "spec": {**placement, "restartPolicy": "Never",
              "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                  "seccompProfile": {"type": "RuntimeDefault"}},
              "containers": [{"name": "seed", "image": f"azaion.local/training:{tag}", "imagePullPolicy": "Never",
                              "command": ["python", "-c", seed], "securityContext": restricted,
                              "volumeMounts": [{"name": "data", "mountPath": "/azaion"}]}],
              "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "azaion-data"}}]}},
    {"apiVersion": "ai.azaion.com/v1alpha1", "kind": "AnnotationConsumer", "metadata": {"name": "azaion-annotations"},
     "spec": {"rabbitmq": {"host": host, "port": int(stream_port), "stream": "azaion-annotations",
                           "credentialsSecretRef": {"name": "rabbitmq-credentials"}},
              "dataVolume": {"claimName": "azaion-data"}, "resources": placement}},
    {"apiVersion": "ai.azaion.com/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "local-tiny"},
     "spec": {"model": "yolo26n.yaml", "storage": {"claimName": "azaion-data"},
              "training": {"epochs": 3, "imgsz": 64, "batch": 8, "workers": 0},
              "resources": {"gpus": 1, "memory": "3Gi", "shmSize": "256Mi", **placement},
              "export": {"onnx": {"imgsz": 64, "batch": 1}},
              "publish": {"s3": {"endpoint": f"http://{host}:{s3_port}", "bucket": "azaion-models",
                                 "prefix": "models/", "credentialsSecretRef": {"name": "azaion-s3"}},
                          "encryptionKeySecretRef": {"name": "azaion-model-key", "key": "key"}}}},
]
items = items[:2] if mode == "seed" else items[2:]
for item in items:
    item["metadata"]["namespace"] = namespace
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
EOF
}

up() {
  preflight
  local started=$SECONDS host
  say "installing what is missing (virtualenv, Kubernetes binaries, the node's tools)"
  hack/setup.sh node
  say "control plane with a real node"
  hack/cluster.sh up --real-node >/dev/null
  eval "$(hack/cluster.sh env)"
  host="$AZAION_HOST_ADDRESS"
  say "images (azaion.local/*:$tag)"
  AZAION_IMAGE_TAG="$tag" hack/images.sh build
  hack/cluster.sh load-image "azaion.local/operator:$tag" "azaion.local/queue:$tag" "azaion.local/training:$tag"

  say "RabbitMQ (streams) and S3 at $host, where the pods reach them"
  mkdir -p "$state"
  start_rabbitmq "$host"
  start_s3 "$host"
  wait_port "$host" "$stream_port" RabbitMQ "$state/rabbitmq.log"
  wait_port "$host" "$s3_port" "the S3 server" "$state/s3.log"
  .venv/bin/python - "$host" "$stream_port" "$s3_port" <<'EOF'
import asyncio, sys
import boto3
from rstream import Producer

host, stream_port, s3_port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
async def stream() -> None:
    async with Producer(host, port=stream_port, username="guest", password="guest") as producer:
        await producer.create_stream("azaion-annotations", exists_ok=True)
asyncio.run(stream())
s3 = boto3.client("s3", endpoint_url=f"http://{host}:{s3_port}", aws_access_key_id="local",
                  aws_secret_access_key="local", region_name="us-east-1")
if "azaion-models" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket="azaion-models")
EOF

  say "the chart (namespace azaion-system, restricted)"
  local placement=(--set-string 'nodeSelector.azaion\.local/real-node=true'
    --set-json 'tolerations=[{"key":"azaion.local/real-node","operator":"Exists","effect":"NoSchedule"}]')
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: azaion-system
  labels: {pod-security.kubernetes.io/enforce: restricted}
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels: {pod-security.kubernetes.io/enforce: restricted}
EOF
  helm upgrade --install "$release" charts/azaion -n azaion-system \
    --set-string image.repository=azaion.local/operator --set-string "image.tag=$tag" \
    --set-string image.pullPolicy=Never --set-string operator.workloadImagePullPolicy=Never \
    --set-string queueImage.repository=azaion.local/queue --set-string "queueImage.tag=$tag" \
    --set-string trainingImage.repository=azaion.local/training --set-string "trainingImage.tag=$tag" \
    "${placement[@]}" --wait --timeout 5m >/dev/null

  say "namespace $namespace: Secrets, the data volume, synthetic annotations"
  [ -s "$state/model-key" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$state/model-key"
  kubectl -n "$namespace" create secret generic azaion-s3 --dry-run=client -o yaml \
    --from-literal=AWS_ACCESS_KEY_ID=local --from-literal=AWS_SECRET_ACCESS_KEY=local | kubectl apply -f - >/dev/null
  kubectl -n "$namespace" create secret generic azaion-model-key --dry-run=client -o yaml \
    --from-file=key="$state/model-key" | kubectl apply -f - >/dev/null
  kubectl -n "$namespace" create secret generic rabbitmq-credentials --dry-run=client -o yaml \
    --from-literal=username=guest --from-literal=password=guest | kubectl apply -f - >/dev/null
  manifests seed "$host" | kubectl apply -f - >/dev/null
  kubectl -n "$namespace" wait pod/seed-annotations --for=jsonpath='{.status.phase}'=Succeeded --timeout=5m >/dev/null \
    || die "drawing the annotations failed: $(kubectl -n "$namespace" logs seed-annotations 2>&1 | tail -n 20)"
  say "the AnnotationConsumer and a TrainingRun (3 epochs of a tiny model on CPU, published encrypted to S3)"
  manifests run "$host" | kubectl apply -f - >/dev/null
  say "up in $((SECONDS - started))s; following the TrainingRun (Ctrl-C leaves everything running)"
  echo "    eval \"\$(hack/cluster.sh env)\"; kubectl -n $namespace get tr,ac,pods   # hack/up.sh down stops it all" >&2
  kubectl -n "$namespace" get tr -w &
  watcher=$!
  trap 'kill $watcher 2>/dev/null || true' EXIT
  while :; do
    phase="$(kubectl -n "$namespace" get tr local-tiny -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    case "$phase" in Succeeded | Failed) break ;; esac
    sleep 2
  done
  sleep 1
  say "TrainingRun local-tiny: $phase"
  [ "$phase" = Succeeded ]
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: hack/up.sh [up|down]" ;;
esac
