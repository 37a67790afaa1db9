"""The ablation pipeline (the paper's Table 4): data steps -> augment (on, off) -> train x4 -> evaluate x4 -> table.

One backbone (`run["backbones"][0]`: the runner narrows the config to the
chosen one), four variants on the same split: {augmentation on, off} x
{transfer on, off}. Step ids: `augment_on`, `augment_off`, `train_<variant>`,
`evaluate_<variant>` with variant in full, no_augmentation, no_transfer,
no_both, then `ablation_report`. No registration or promotion.
"""

from typing import Any

from zenml import pipeline

from components.ablation import ablation_plan
from components.labels import TASK_LABELS
from pipelines.data import data_steps
from pipelines.training_sets import train_on, training_set
from steps.ablation import ablation_report
from steps.evaluate import evaluate_model

PIPELINE_NAME = "cxr_ablation"


@pipeline(name=PIPELINE_NAME)
def ablation_pipeline(run: dict[str, Any], docs_dir: str, reports_dir: str) -> None:
    class_names = list(TASK_LABELS[run["task"]])
    seed, backbone, augmentation = run["seed"], run["backbones"][0], run["augmentation"]
    plan = ablation_plan(backbone, augmentation)
    split = data_steps(run, docs_dir, reports_dir)
    training_sets = {
        augmented: training_set(
            split,
            augmentation,
            class_names,
            backbone["image_size"],
            seed,
            augment=augmented,
            step_id="augment_on" if augmented else "augment_off",
        )
        for augmented in (True, False)
    }
    evaluations = []
    for variant in plan:
        model, _ = train_on(
            training_sets[variant["augmentation"]],
            split,
            variant["backbone"],
            class_names,
            run["training"],
            seed,
            step_id=f"train_{variant['key']}",
        )
        evaluations.append(
            evaluate_model(
                model, split, backbone=variant["backbone"], class_names=class_names, id=f"evaluate_{variant['key']}"
            )
        )
    ablation_report(
        evaluations, variants=[variant["key"] for variant in plan], backbone=backbone["name"], task=run["task"]
    )
