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
