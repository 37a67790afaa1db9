from typing import Annotated, Any

import keras
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from zenml import step
from zenml.logger import get_logger

from components.metrics import classification_metrics, confusion_matrix_figure, flat_metrics
from components.registry import split_fingerprint
from components.training import predict_probabilities, split_arrays
from steps.names import EVALUATION, EXPERIMENT_TRACKER
from steps.train import NESTED_RUN

logger = get_logger(__name__)


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN)
def evaluate_model(
    model: keras.Model, split_manifest: pd.DataFrame, backbone: dict[str, Any], class_names: list[str]
) -> Annotated[dict, EVALUATION]:
    """Metrics on the validation split (used to pick a backbone) and the test split (reported)."""
    evaluation: dict[str, Any] = {
        "backbone": backbone,
        "test_fingerprint": split_fingerprint(split_manifest.loc[split_manifest["split"] == "test", "sha256"]),
    }
    for split in ("val", "test"):
        images, y_true = split_arrays(split_manifest, split, class_names, backbone["image_size"])
        metrics = classification_metrics(y_true, predict_probabilities(model, images, len(class_names)), class_names)
        evaluation[split] = metrics
        mlflow.log_metrics(flat_metrics(metrics, prefix=f"{split}_"))
    figure = confusion_matrix_figure(evaluation["test"]["confusion_matrix"], class_names, f"{backbone['name']} (test)")
    mlflow.log_figure(figure, "confusion_matrix_test.png")
    plt.close(figure)
    mlflow.log_dict(evaluation, "evaluation.json")
    logger.info("%s test: %s", backbone["name"], {k: round(v, 4) for k, v in flat_metrics(evaluation["test"]).items()})
    return evaluation
