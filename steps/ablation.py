from typing import Annotated

import mlflow
from zenml import step
from zenml.logger import get_logger
from zenml.types import CSVString, MarkdownString

from components.ablation import ablation_table, to_csv
from steps.names import ABLATION_CSV, ABLATION_SUMMARY, ABLATION_TABLE, EXPERIMENT_TRACKER

logger = get_logger(__name__)

# Artifact names of the ablation (kept here, next to their only producer).


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def ablation_report(
    evaluations: list[dict], variants: list[str], backbone: str, task: str, split: str = "test"
) -> tuple[
    Annotated[MarkdownString, ABLATION_TABLE],
    Annotated[CSVString, ABLATION_CSV],
    Annotated[dict, ABLATION_SUMMARY],
]:
    """The paper's Table 4 for one backbone: F1 per variant and its difference from the full model."""
    metrics = {key: evaluation[split] for key, evaluation in zip(variants, evaluations, strict=True)}
    frame, table = ablation_table(metrics)
    n_images = metrics[variants[0]].get("n_images")
    markdown = f"### Ablation: {backbone}, {task} ({split} split, {n_images} images)\n\n{table}"
    csv = to_csv(frame)
    mlflow.log_text(markdown, "ablation/ablation.md")
    mlflow.log_text(csv, "ablation/ablation.csv")
    mlflow.log_metrics({f"{split}_f1_macro_{key}": values["f1_macro"] for key, values in metrics.items()})
    mlflow.set_tags({"ablation_backbone": backbone, "task": task})
    logger.info("Ablation (%s, %s):\n%s", backbone, task, table)
    summary = {
        "backbone": backbone,
        "task": task,
        "split": split,
        "n_images": n_images,
        "rows": frame.reset_index().to_dict(orient="records"),
        "mlflow_run_id": mlflow.active_run().info.run_id if mlflow.active_run() else None,
    }
    return MarkdownString(markdown), CSVString(csv), summary
