"""The ablation's report step: the paper's Table 4 for one backbone."""

from typing import Annotated

import mlflow
from zenml import step
from zenml.logger import get_logger
from zenml.types import CSVString, MarkdownString

from components.ablation import AblationSummary, ablation_intervals, ablation_table, to_csv
from components.config import EvaluationConfig
from components.evaluation import Evaluation
from components.labels import Task
from components.metrics import SCALAR_METRICS
from steps.names import ABLATION_CSV, ABLATION_SUMMARY, ABLATION_TABLE, EXPERIMENT_TRACKER

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def ablation_report(
    evaluations: list[Evaluation],
    variants: list[str],
    backbone: str,
    task: Task,
    evaluation: EvaluationConfig | None = None,
    seed: int = 0,
) -> tuple[
    Annotated[MarkdownString, ABLATION_TABLE],
    Annotated[CSVString, ABLATION_CSV],
    Annotated[AblationSummary, ABLATION_SUMMARY],
]:
    """The paper's Table 4 on the test split: F1 per variant and its difference from the full model.

    With `evaluation` (the run's EvaluationConfig) each F1 gets its patient-bootstrap CI and each
    difference its paired-bootstrap CI (components.ablation.ablation_intervals, seeded by `seed`);
    without it the table has no CI columns.
    """
    by_variant = dict(zip(variants, evaluations, strict=True))
    tests = {key: result.test for key, result in by_variant.items()}
    intervals = None
    if evaluation is not None:
        intervals = ablation_intervals(
            {key: next(p for p in result.predictions if p.split == "test") for key, result in by_variant.items()},
            {key: result.decision for key, result in by_variant.items()},
            evaluation,
            seed,
        )
    frame, table = ablation_table(
        {key: {m: test.scalar(m) for m in SCALAR_METRICS} for key, test in tests.items()}, intervals
    )
    n_images = tests[variants[0]].n_images
    uncertainty = (
        ""
        if intervals is None
        else f"; {intervals.confidence_level:.0%} CIs from {intervals.n_resamples} patient-bootstrap resamples "
        f"({intervals.n_patients} patients), Δ paired on the same resamples"
    )
    markdown = f"### Ablation: {backbone}, {task} (test split, {n_images} images{uncertainty})\n\n{table}"
    csv = to_csv(frame)
    mlflow.log_text(markdown, "ablation/ablation.md")
    mlflow.log_text(csv, "ablation/ablation.csv")
    mlflow.log_metrics({f"test_f1_macro_{key}": test.f1_macro for key, test in tests.items()})
    mlflow.set_tags({"ablation_backbone": backbone, "task": task})
    logger.info("Ablation (%s, %s):\n%s", backbone, task, table)
    summary = AblationSummary(
        backbone=backbone,
        task=task,
        split="test",
        n_images=n_images,
        rows=frame.reset_index().to_dict(orient="records"),
        mlflow_run_id=mlflow.active_run().info.run_id if mlflow.active_run() else None,
    )
    return MarkdownString(markdown), CSVString(csv), summary
