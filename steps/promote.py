"""Promotion on evidence: the champion re-evaluated on this run's data, the gate, the card, the aliases."""

from pathlib import Path
from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from components.evaluation import predict_with_version
from components.evaluation_card import ComparisonRow, EvaluationCard, build_card, make_examples, write_card
from components.registry import (
    TAG_CARD,
    TAG_CARD_FILE,
    Promotion,
    Registration,
    model_description,
    promote_with_gate,
    version_description,
)
from steps.model_control_plane import mirror_alias
from steps.names import EVALUATION_CARD, EVALUATION_CARD_HTML, EXPERIMENT_TRACKER, PROMOTION

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def promote_model(
    registration: Registration, class_names: list[str], run_name: str, reports_dir: str
) -> tuple[
    Annotated[Promotion, PROMOTION],
    Annotated[EvaluationCard, EVALUATION_CARD],
    Annotated[HTMLString, EVALUATION_CARD_HTML],
]:
    """Compare the new version with the re-evaluated champion through the gate; write and attach the card."""
    client, name, version = MlflowClient(), registration.model_name, registration.version
    evidence = registration.evidence

    def champion_predictions(champion, like):
        logger.info(
            "Re-evaluating champion %s v%s on this run's test split and external sources", name, champion.version
        )
        return predict_with_version(f"models:/{name}/{champion.version}", like)

    promotion = promote_with_gate(client, name, version, evidence, champion_predictions)
    predictions = {p.split: p for p in evidence.predictions}
    card = build_card(
        model_name=name,
        model_version=version,
        backbone=registration.backbone,
        task=registration.task,
        dataset_version=registration.dataset_version,
        test_fingerprint=registration.test_fingerprint,
        decision=evidence.decision,
        run_name=run_name,
        assessments=list(promotion.assessments.values()),
        examples=make_examples(predictions["test"], evidence.decision, evidence.evaluation.card_examples),
        gate=[ComparisonRow(criterion=c.name, passed=c.passed, detail=c.detail) for c in promotion.criteria],
        decision_summary=f"{promotion.alias}: {promotion.reason}",
        left_out=[image for overlap in promotion.overlaps for image in overlap.excluded],
        left_out_note=(
            f"Left out of the comparison with champion v{promotion.champion_version} only: it trained or was "
            "selected on these images (or their patients, or near-copies). This version's own figures use every image."
        ),
    )
    html_path, json_path = write_card(card, predictions, Path(reports_dir) / "evaluation" / f"{name}-v{version}")
    mlflow.log_artifact(str(html_path), "evaluation")
    mlflow.log_artifact(str(json_path), "evaluation")
    card_uri = f"runs:/{registration.mlflow_run_id}/evaluation/{html_path.name}"
    client.set_model_version_tag(name, version, TAG_CARD, card_uri)
    client.set_model_version_tag(name, version, TAG_CARD_FILE, str(html_path))
    client.update_model_version(
        name,
        version,
        description=version_description(promotion, registration.backbone, registration.dataset_version, card_uri),
    )
    client.update_registered_model(
        name, description=model_description(registration.task, class_names, evidence.registry)
    )
    log_metadata(
        metadata={"path": str(html_path), "json": str(json_path), "mlflow": card_uri},
        artifact_name=EVALUATION_CARD_HTML,
        infer_artifact=True,
    )
    stage = mirror_alias(name, version, promotion.alias, description=promotion.reason)
    mlflow.set_tags({"registered_version": version, "alias": promotion.alias, "zenml_stage": stage})
    logger.info("%s version %s -> %s: %s", name, version, promotion.alias, promotion.reason)
    return promotion, card, HTMLString(html_path.read_text(encoding="utf-8"))
