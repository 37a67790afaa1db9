"""Evaluate steps: one per trained backbone (step id ``evaluate_<Backbone>`` or ``evaluate_<variant>``)."""

from typing import Annotated

import keras
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from zenml import step
from zenml.logger import get_logger

from components.config import BackboneConfig, EvaluationConfig
from components.evaluation import Evaluation, evaluate_classifier
from components.metrics import confusion_matrix_figure, flat_metrics
from steps.names import EVALUATION, EXPERIMENT_TRACKER
from steps.train import NESTED_RUN

logger = get_logger(__name__)


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN)
def evaluate_model(
    model: keras.Model,
    split_manifest: pd.DataFrame,
    backbone: BackboneConfig,
    class_names: list[str],
    evaluation: EvaluationConfig,
) -> Annotated[Evaluation, EVALUATION]:
    """The decision rule chosen on validation; predictions on validation, test and external sources."""
    result = evaluate_classifier(model, split_manifest, backbone, class_names, evaluation)
    for split in ("val", "test"):
        mlflow.log_metrics(flat_metrics(getattr(result, split), prefix=f"{split}_"))
    mlflow.set_tag("decision", result.decision.describe())
    figure = confusion_matrix_figure(result.test.confusion_matrix, class_names, f"{backbone.name} (test)")
    mlflow.log_figure(figure, "confusion_matrix_test.png")
    plt.close(figure)
    logger.info("%s: %s; validation f1_macro %.4f", backbone.name, result.decision.describe(), result.val.f1_macro)
    return result
