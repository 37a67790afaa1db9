"""Small MLflow helpers used inside steps; outside an active MLflow run they do nothing.

The active run is set by the ZenML MLflow experiment tracker.
"""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow


def mlflow_epoch_logger(prefix: str = ""):
    """Make a Keras callback that logs each epoch's metrics to the active MLflow run as they come.

    Args:
        prefix: prepended to every metric name (Keras' ``loss`` becomes ``<prefix>loss``).

    Returns:
        A ``keras.callbacks.Callback`` logging each epoch's logs at step = 1-based epoch;
        its ``seconds`` attribute is the time spent logging.
    """
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):
        seconds = 0.0  # time spent logging (what the pipeline adds to training; see bench/pipeline_overhead.py)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            started = time.perf_counter()
            if mlflow.active_run() and logs:
                mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in logs.items()}, step=epoch + 1)
            self.seconds += time.perf_counter() - started

    return MlflowEpochLogger()


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    """Log nested parameters to the active MLflow run as dotted keys (MLflow params are flat strings).

    Args:
        params: nested dicts; lists and tuples are logged as JSON, other leaves as ``str``.
        prefix: prepended to every key.

    Keys are cut to 250 characters and values to 6000 (MLflow's limits).
    """
    if not mlflow.active_run():
        return
    flat: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        else:
            flat[f"{prefix}{path}"] = json.dumps(node) if isinstance(node, (list, tuple)) else str(node)

    walk(params, "")
    mlflow.log_params({key[:250]: value[:6000] for key, value in flat.items()})
