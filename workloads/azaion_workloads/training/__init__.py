"""The training workload: what a TrainingRun's Job runs (``azaion-train``).

Steps, each skipped when its recorded result is still valid:
dataset -> training -> export (and its parity gate) -> encrypt -> publish -> promote.

Environment (validated at start; problems exit 78 with one message):
``AZAION_ROOT_DIR`` ``AZAION_DATA_DIR`` ``AZAION_DATA_SEED_DIR``
``AZAION_DATA_DELETED_DIR`` ``AZAION_RESOURCE_NAME`` (required)
``AZAION_RESOURCE_NAMESPACE`` (``local``) ``TRAINING_MODEL`` ``TRAINING_EPOCHS``
``TRAINING_BATCH_SIZE`` ``TRAINING_IMGSZ`` ``TRAINING_SAVE_PERIOD``
``TRAINING_WORKERS`` ``TRAINING_PATIENCE`` ``TRAINING_OPTIMIZER``
``TRAINING_DEVICE`` ``TRAINING_EXTRA_ARGS`` (JSON, keys from
:data:`config.ALLOWED_EXTRA_ARGS`) ``DATASET_SPLIT`` ``DATASET_SEED``
``DATASET_CLASSES_FILE`` ``EXPORT_ONNX`` ``EXPORT_ONNX_IMGSZ``
``EXPORT_ONNX_BATCH`` ``EXPORT_ONNX_OPSET`` ``EXPORT_ONNX_DYNAMIC``
``EXPORT_ONNX_HALF`` ``EXPORT_ONNX_NMS`` ``EXPORT_ONNX_PARITY``
``EXPORT_ONNX_PARITY_TOLERANCE`` ``EXPORT_ONNX_PARITY_MAX_IMAGES`` ``EXPORT_TENSORRT``
``ENCRYPTION_KEY_FILE`` ``ENCRYPTION_KEY_ID`` ``S3_ENDPOINT`` ``S3_BUCKET``
``S3_PREFIX`` ``S3_REGION`` ``AWS_ACCESS_KEY_ID`` ``AWS_SECRET_ACCESS_KEY``
``PUBLISH_PROMOTE`` ``AZAION_API_URL`` ``AZAION_API_EMAIL``
``AZAION_API_PASSWORD`` ``AZAION_API_FOLDER`` ``AZAION_HEARTBEAT_FILE``
``AZAION_IMAGE`` (recorded in the published manifest).

One run's directory, ``models/<namespace>/<name>/`` under the data root:
ultralytics' output (``weights/{last,best}.pt``, ``results.csv``,
``args.yaml``), ``checkpoints/epoch-NNNN.pt`` (verified copies, newest three),
``artifacts/`` (``azaion.onnx``, ``azaion.onnx.enc``), ``parity/`` (the
parity gate's validation images and the validator's output), the step records
``training.json``, ``export.json``, ``encrypt.json``, ``publish.json``, and
``status.json`` when running outside a cluster.

Exit codes: 0 done; 78 permanent (configuration, data); 75 stopped at a safe
point after SIGTERM; anything else is retryable.
"""
