"""Artifact names and stack component names, kept in one place.

Every step output is annotated with one of these, so the ZenML dashboard,
`Client().get_artifact_version(NAME)` and the tests all agree.
"""

MANIFEST = "manifest"
VALIDATION_REPORT = "validation_report"
DATA_DOCS_INDEX = "data_docs_index"
SPLIT_MANIFEST = "split_manifest"
TRAIN_IMAGES = "train_images"
TRAIN_LABELS = "train_labels"
TRAIN_SHARDS = "train_shards"
AUGMENTATION_PREVIEW = "augmentation_preview"
MODEL = "model"
TRAINING_SUMMARY = "training_summary"
EVALUATION = "evaluation"
REGISTRATION = "registration"
PROMOTION = "promotion"
DEPLOYMENT = "deployment"
EVALUATION_CARD = "evaluation_card"
EVALUATION_CARD_HTML = "evaluation_card_html"

# Batch inference (steps/batch.py, cxr predict-batch).
BATCH_PREDICTIONS = "batch_predictions"
BATCH_REPORT = "batch_report"
BATCH_SUMMARY = "batch_summary"

# Stack components the steps refer to by name (created by `cxr setup`, see cxr/stack.py).
EXPERIMENT_TRACKER = "cxr_mlflow_tracker"

# Data validation for stewards (steps/validate.py).
SPLIT_VALIDATION_REPORT = "split_validation_report"
STEWARD_SUMMARY = "steward_summary"
STEWARD_REPORT = "steward_report"
EXCLUDED_ROWS = "excluded_rows"

# The ablation (steps/ablation.py).
ABLATION_TABLE = "ablation_table"
ABLATION_CSV = "ablation_csv"
ABLATION_SUMMARY = "ablation_summary"

# Step ids: the ids the pipelines give their step invocations; the runner and
# the tests read outputs by them (run.steps[<id>].outputs[<artifact name>]).
INGEST_STEP = "ingest_data"
VALIDATE_STEP = "validate_data"
SPLIT_STEP = "split_data"
VALIDATE_SPLIT_STEP = "validate_data_split"
STEWARD_STEP = "steward_report"
DATA_GATE_STEP = "data_gate"
REGISTER_STEP = "register_best_model"
PROMOTE_STEP = "promote_model"
DEPLOY_STEP = "deploy_model"
EVALUATE_REGISTERED_STEP = "evaluate_registered_model"  # cxr evaluate (pipelines/evaluation.py)
PREDICT_BATCH_STEP = "predict_batch"  # cxr predict-batch (pipelines/batch_inference.py)
ABLATION_REPORT_STEP = "ablation_report"
AUGMENT_ON_STEP = "augment_on"  # the ablation's two augment steps
AUGMENT_OFF_STEP = "augment_off"


def train_step_id(key: str) -> str:
    """The train step of a backbone (`train_MobileNet`) or an ablation variant (`train_no_transfer`)."""
    return f"train_{key}"


def evaluate_step_id(key: str) -> str:
    """The evaluate step of a backbone or an ablation variant."""
    return f"evaluate_{key}"
