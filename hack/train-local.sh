#!/usr/bin/env bash
# The main job on a local default: one real training run on this machine's CPU
# (or its GPU), through the same entrypoint the TrainingRun Job runs.
#
#   hack/train-local.sh
#
# Data root: $AZAION_ROOT_DIR (default .state/azaion). When it holds no
# annotations yet, a small synthetic set is drawn into data/ first, so the
# command works on a fresh machine. Output: models/local/<run>/ under the root,
# progress in its status.json. Settings are the workload's env vars
# (TRAINING_EPOCHS, TRAINING_IMGSZ, TRAINING_MODEL, ...; see README.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
hack/setup.sh python

export AZAION_ROOT_DIR="${AZAION_ROOT_DIR:-$repo/.state/azaion}"
export AZAION_RESOURCE_NAME="${AZAION_RESOURCE_NAME:-run-$(date +%Y%m%d-%H%M%S)}"
export AZAION_RESOURCE_NAMESPACE="${AZAION_RESOURCE_NAMESPACE:-local}"
export AZAION_HEARTBEAT_FILE="${AZAION_HEARTBEAT_FILE:-$AZAION_ROOT_DIR/.heartbeat}"
export TRAINING_MODEL="${TRAINING_MODEL:-yolo26n.yaml}"
export TRAINING_EPOCHS="${TRAINING_EPOCHS:-3}"
export TRAINING_IMGSZ="${TRAINING_IMGSZ:-64}"
export TRAINING_BATCH_SIZE="${TRAINING_BATCH_SIZE:-8}"
export TRAINING_WORKERS="${TRAINING_WORKERS:-0}"
export EXPORT_ONNX_IMGSZ="${EXPORT_ONNX_IMGSZ:-$TRAINING_IMGSZ}"
export EXPORT_ONNX_BATCH="${EXPORT_ONNX_BATCH:-1}"

if [ -z "$(ls -A "$AZAION_ROOT_DIR/data/images" 2>/dev/null)" ]; then
  echo "no annotations under $AZAION_ROOT_DIR/data: drawing 40 synthetic ones" >&2
  .venv/bin/python -c "
import sys
from pathlib import Path
from azaion_devtools.synthetic import write_annotations
write_annotations(Path(sys.argv[1]) / 'data', 40, seed=1)
" "$AZAION_ROOT_DIR"
fi

echo "training run $AZAION_RESOURCE_NAMESPACE/$AZAION_RESOURCE_NAME under $AZAION_ROOT_DIR" >&2
exec .venv/bin/azaion-train run
