"""Evaluate steps: one per trained backbone (step id ``evaluate_<Backbone>`` or ``evaluate_<variant>``)."""

from typing import Annotated

import keras
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from zenml import step
from zenml.logger import get_logger

from components.config import BackboneConfig
from components.evaluation import evaluate_classifier
from components.metrics import Evaluation, confusion_matrix_figure, flat_metrics
from steps.names import EVALUATION, EXPERIMENT_TRACKER
from steps.train import NESTED_RUN

logger = get_logger(__name__)


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN)
def evaluate_model(
    model: keras.Model, split_manifest: pd.DataFrame, backbone: BackboneConfig, class_names: list[str]
) -> Annotated[Evaluation, EVALUATION]:
    """Metrics on the validation split (used to pick a backbone) and the test split (reported)."""
    evaluation = evaluate_classifier(model, split_manifest, backbone, class_names)
    for split in ("val", "test"):
        mlflow.log_metrics(flat_metrics(getattr(evaluation, split), prefix=f"{split}_"))
    figure = confusion_matrix_figure(evaluation.test.confusion_matrix, class_names, f"{backbone.name} (test)")
    mlflow.log_figure(figure, "confusion_matrix_test.png")
    plt.close(figure)
    mlflow.log_dict(evaluation.model_dump(mode="json"), "evaluation.json")
    logger.info("%s test: %s", backbone.name, {k: round(v, 4) for k, v in flat_metrics(evaluation.test).items()})
    return evaluation
