"""Registration: the backbone with the best validation metric, logged as an MLflow pyfunc and registered."""

import os
import tempfile
from typing import Annotated

import keras
import mlflow
import pandas as pd
from zenml import step
from zenml.logger import get_logger

from components.batch_inference import DRIFT_ARTIFACT, drift_reference_for_rows
from components.config import EvaluationConfig, RegistryConfig
from components.deployment import CANARY_ARTIFACT, make_canary
from components.evaluation import Evaluation, best_candidate
from components.labels import Task
from components.leakage import split_images
from components.manifest import dataset_version
from components.metrics import flat_metrics
from components.ood import OOD_ARTIFACT, reference_for_rows
from components.registry import EVIDENCE_ARTIFACT, Evidence, Registration, register_version
from components.serving import build_contract, log_pyfunc_model
from steps.names import EXPERIMENT_TRACKER, REGISTRATION

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def register_best_model(
    models: list[keras.Model],
    evaluations: list[Evaluation],
    manifest: pd.DataFrame,
    split_manifest: pd.DataFrame,
    task: Task,
    registry: RegistryConfig,
    evaluation: EvaluationConfig,
    run_name: str,
    seed: int,
    near_duplicate_max_distance: int,
    canary_images: int = 4,
) -> Annotated[Registration, REGISTRATION]:
    """Log the best backbone (on validation) as an MLflow pyfunc model and register a new version with its evidence.

    The evidence (logged to the run as evaluation/evidence.json) holds the test and external
    predictions and every used image by split, so that a later champion comparison or
    `cxr evaluate` can leave out what this version trained on (components.leakage).
    """
    metric = registry.primary_metric
    best = best_candidate(evaluations, metric)
    chosen = evaluations[best]
    backbone = chosen.backbone
    contract = build_contract(
        task,
        backbone.name,
        backbone.image_size,
        weights=backbone.weights,
        run_name=run_name,
        test_metrics=flat_metrics(chosen.test),
    )
    mlflow.log_metrics(flat_metrics(chosen.test, prefix="test_"))
    mlflow.log_metrics(flat_metrics(chosen.val, prefix="val_"))
    mlflow.set_tags({"best_backbone": backbone.name, "task": task, "decision": chosen.decision.describe()})
    evidence = Evidence(
        decision=chosen.decision,
        predictions=chosen.judged(),
        evaluation=evaluation,
        registry=registry,
        seed=seed,
        images=split_images(split_manifest, near_duplicate_max_distance),
    )
    mlflow.log_text(evidence.model_dump_json(), EVIDENCE_ARTIFACT)
    # The images a new model server must answer as the evaluation did before it takes traffic.
    test = next(p for p in chosen.predictions if p.split == "test")
    mlflow.log_text(make_canary(test, canary_images).model_dump_json(), CANARY_ARTIFACT)
    # The out-of-distribution reference (components.ood): the chosen model's training embeddings.
    ood = reference_for_rows(
        models[best],
        split_manifest[split_manifest["split"] == "train"],
        split_manifest[split_manifest["split"] == "val"],
        contract["class_names"],
        backbone.image_size,
        percentile=registry.ood_percentile,
        seed=seed,
    )
    mlflow.log_text(ood.model_dump_json(), OOD_ARTIFACT)
    # The drift reference (components.drift): what cxr predict-batch compares a new drop with.
    val = next(p for p in chosen.predictions if p.split == "val")
    drift = drift_reference_for_rows(
        models[best],
        split_manifest[split_manifest["split"] == "train"],
        split_manifest[split_manifest["split"] == "val"],
        val.probabilities,
        contract["class_names"],
        backbone.image_size,
        ood,
        seed=seed,
    )
    mlflow.log_text(drift.model_dump_json(), DRIFT_ARTIFACT)
    logger.info("OOD reference: threshold %.2f (%s percentile %.1f)", ood.threshold, ood.calibration, ood.percentile)
    with tempfile.TemporaryDirectory() as folder:
        keras_path = os.path.join(folder, "model.keras")
        models[best].save(keras_path)
        model_info = log_pyfunc_model(keras_path, contract, ood_reference=ood)
    version_of_data = dataset_version(manifest)
    test_value = chosen.test.scalar(metric)
    version = register_version(
        model_info.model_uri,
        registry.model_name,
        backbone=backbone.name,
        decision=chosen.decision,
        metric_key=metric,
        metric_value=test_value,
        test_fingerprint=chosen.test_fingerprint,
        dataset_version=version_of_data,
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
        task=task,
        test_metrics=chosen.test,
        val_metrics=chosen.val,
        test_fingerprint=chosen.test_fingerprint,
        dataset_version=version_of_data,
        mlflow_run_id=mlflow.active_run().info.run_id,
        candidates={e.backbone.name: e.val.scalar(metric) for e in evaluations},
        evidence=evidence,
    )
