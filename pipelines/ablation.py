"""The ablation pipeline (the paper's Table 4): data steps -> augment (on, off) -> train x4 -> evaluate x4 -> table.

One backbone (`run.backbones[0]`: the runner narrows the config to the
chosen one), four variants on the same split: {augmentation on, off} x
{transfer on, off}. Step ids: `augment_on`, `augment_off`, `train_<variant>`,
`evaluate_<variant>` with variant in full, no_augmentation, no_transfer,
no_both, then `ablation_report`. No registration or promotion.
"""

from zenml import pipeline

from components.ablation import ablation_plan
from components.config import RunConfig
from pipelines.data import data_steps
from pipelines.training_sets import train_on, training_set
from steps.ablation import ablation_report
from steps.evaluate import evaluate_model
from steps.names import AUGMENT_OFF_STEP, AUGMENT_ON_STEP, evaluate_step_id, train_step_id

PIPELINE_NAME = "cxr_ablation"


@pipeline(name=PIPELINE_NAME)
def ablation_pipeline(run: RunConfig, docs_dir: str, reports_dir: str) -> None:
    class_names = list(run.class_names)
    backbone, augmentation = run.backbones[0], run.augmentation
    split = data_steps(run, docs_dir, reports_dir)
    size = backbone.image_size
    training_sets = {
        True: training_set(split, augmentation, class_names, size, run.seed, step_id=AUGMENT_ON_STEP),
        False: training_set(split, augmentation.disabled(), class_names, size, run.seed, step_id=AUGMENT_OFF_STEP),
    }
    plan = ablation_plan(backbone, augmentation)
    evaluations = []
    for variant in plan:
        model, _ = train_on(
            training_sets[variant.augmentation],
            split,
            variant.backbone,
            class_names,
            run.training,
            run.seed,
            step_id=train_step_id(variant.key),
        )
        evaluations.append(
            evaluate_model(
                model,
                split,
                backbone=variant.backbone,
                class_names=class_names,
                evaluation=run.evaluation,
                id=evaluate_step_id(variant.key),
            )
        )
    ablation_report(
        evaluations,
        variants=[variant.key for variant in plan],
        backbone=backbone.name,
        task=run.task,
        evaluation=run.evaluation,
        seed=run.seed,
    )
