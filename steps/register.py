"""Registration: the backbone with the best validation metric, logged as an MLflow pyfunc and registered."""

import os
import tempfile
from typing import Annotated

import keras
import mlflow
from zenml import step
from zenml.logger import get_logger

from components.config import RegistryConfig
from components.labels import Task
from components.metrics import Evaluation, best_candidate, flat_metrics
from components.registry import Registration, register_version
from components.serving import build_contract, log_pyfunc_model
from steps.names import EXPERIMENT_TRACKER, REGISTRATION

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def register_best_model(
    models: list[keras.Model], evaluations: list[Evaluation], task: Task, registry: RegistryConfig, run_name: str
) -> Annotated[Registration, REGISTRATION]:
    """Log the best backbone (on validation) as an MLflow pyfunc model and register a new version."""
    metric = registry.primary_metric
    best = best_candidate(evaluations, metric)
    evaluation = evaluations[best]
    backbone = evaluation.backbone
    contract = build_contract(
        task,
        backbone.name,
        backbone.image_size,
        weights=backbone.weights,
        run_name=run_name,
        test_metrics=flat_metrics(evaluation.test),
    )
    mlflow.log_metrics(flat_metrics(evaluation.test, prefix="test_"))
    mlflow.log_metrics(flat_metrics(evaluation.val, prefix="val_"))
    mlflow.set_tags({"best_backbone": backbone.name, "task": task})
    with tempfile.TemporaryDirectory() as folder:
        keras_path = os.path.join(folder, "model.keras")
        models[best].save(keras_path)
        model_info = log_pyfunc_model(keras_path, contract)
    test_value = evaluation.test.scalar(metric)
    version = register_version(
        model_info.model_uri, registry.model_name, metric, test_value, evaluation.test_fingerprint
    )
    logger.info(
        "Registered %s version %s (%s, test %s=%.4f)",
        registry.model_name,
        version.version,
        backbone.name,
        metric,
        test_value,
    )
    return Registration(
        model_name=registry.model_name,
        version=str(version.version),
        model_uri=model_info.model_uri,
        backbone=backbone.name,
        test_metrics=evaluation.test,
        val_metrics=evaluation.val,
        test_fingerprint=evaluation.test_fingerprint,
        mlflow_run_id=mlflow.active_run().info.run_id,
        candidates={e.backbone.name: e.val.scalar(metric) for e in evaluations},
    )
