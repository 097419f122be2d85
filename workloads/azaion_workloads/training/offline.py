"""Keep ultralytics (and what it imports) off the network and out of $HOME.

ultralytics reaches out in several places: online checks, pip installs of
missing requirements, a font download (even with ``plots=False``), and
integrations (hub sync, MLflow, Comet, ...). A training pod has no reason to
talk to anything but the API server and the object store, so all of it is
turned off here, before ultralytics is first imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_INTEGRATIONS_OFF = {
    "sync": False,
    "hub": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "neptune": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


def prepare_environment(state_dir: Path | None = None) -> Path:
    """Set the env ultralytics reads at import time; return its config directory.

    Must run before ``import ultralytics``. Writable locations default to a
    directory under the system temp dir (an emptyDir in the pod).
    """
    base = state_dir or Path(tempfile.gettempdir()) / "azaion-training"
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(base / "ultralytics")))
    os.environ.setdefault("MPLCONFIGDIR", str(base / "matplotlib"))
    os.environ.setdefault("XDG_CACHE_HOME", str(base / "cache"))
    os.environ.setdefault("TORCH_HOME", str(base / "torch"))
    # Forced, not defaulted: no deployment should switch these back on.
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["MLFLOW_TRACKING_URI"] = ""  # ultralytics' own MLflow callback; tracking.mlflow is ours
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the MLflow client's usage reports
    os.environ["DO_NOT_TRACK"] = "true"
    os.environ.setdefault("YOLO_VERBOSE", "True")
    for directory in (
        config_dir,
        Path(os.environ["MPLCONFIGDIR"]),
        Path(os.environ["XDG_CACHE_HOME"]),
    ):
        directory.mkdir(parents=True, exist_ok=True)
    _provide_fonts(config_dir / "Ultralytics")
    return config_dir


def _provide_fonts(directory: Path) -> None:
    """Place a TTF where ultralytics' font check looks, so it never downloads one."""
    directory.mkdir(parents=True, exist_ok=True)
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = directory / name
        if not target.exists() and source.exists():
            shutil.copyfile(source, target)


def disable_integrations() -> None:
    """Switch off every ultralytics integration and hub sync (after import)."""
    from ultralytics.utils import SETTINGS

    updates = {key: value for key, value in _INTEGRATIONS_OFF.items() if key in SETTINGS}
    if any(SETTINGS.get(key) != value for key, value in updates.items()):
        SETTINGS.update(updates)
