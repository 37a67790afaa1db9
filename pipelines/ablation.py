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
from components.augmentation import resolve_operations
from components.labels import TASK_LABELS
from pipelines.data import data_steps
from steps.ablation import ablation_report
from steps.augment import augment_training_data
from steps.evaluate import evaluate_model
from steps.train import train_backbone

PIPELINE_NAME = "cxr_ablation"


@pipeline(name=PIPELINE_NAME)
def ablation_pipeline(run: dict[str, Any], docs_dir: str, reports_dir: str) -> None:
    class_names = list(TASK_LABELS[run["task"]])
    seed, backbone, augmentation = run["seed"], run["backbones"][0], run["augmentation"]
    plan = ablation_plan(backbone, augmentation)
    split = data_steps(run, docs_dir, reports_dir)
    training_sets = {}
    for augmented, preset, copies in ((True, augmentation["preset"], augmentation["copies_per_image"]),
                                      (False, "none", 0)):
        overrides = augmentation["operations"] if augmented else {}
        images, labels, _ = augment_training_data(
            split, class_names=class_names, image_size=backbone["image_size"],
            operations=resolve_operations(preset, overrides), copies_per_image=copies, seed=seed,
            after="data_gate", id="augment_on" if augmented else "augment_off",
        )
        training_sets[augmented] = (images, labels)
    evaluations = []
    for variant in plan:
        images, labels = training_sets[variant["augmentation"]]
        model, _ = train_backbone(
            images, labels, split, backbone=variant["backbone"], class_names=class_names,
            training=run["training"], seed=seed, id=f"train_{variant['key']}",
        )
        evaluations.append(
            evaluate_model(model, split, backbone=variant["backbone"], class_names=class_names,
                           id=f"evaluate_{variant['key']}")
        )
    ablation_report(evaluations, variants=[variant["key"] for variant in plan], backbone=backbone["name"],
                    task=run["task"])
