"""The split step: patient-grouped, label-stratified train/val/test (components.splitting)."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from components.config import SplitConfig
from components.splitting import patients_merged, split_counts_table, split_dataset
from steps.names import SPLIT_MANIFEST

logger = get_logger(__name__)


@step
def split_data(
    manifest: pd.DataFrame, split: SplitConfig, seed: int, near_duplicate_max_distance: int
) -> Annotated[pd.DataFrame, SPLIT_MANIFEST]:
    """Used rows only, with `split` and `split_group` columns (components.splitting.split_dataset)."""
    fractions = (split.train, split.val, split.test)
    split_manifest = split_dataset(manifest, fractions, seed, near_duplicate_max_distance)
    table = split_counts_table(split_manifest)
    merged = patients_merged(split_manifest)
    logger.info(
        "Images per label and split (%d patient(s) merged with a near-duplicate's group):\n%s",
        merged,
        table.to_string(),
    )
    log_metadata(
        metadata={"label_x_split": table.to_dict(), "patients_merged_by_near_duplicates": merged},
        artifact_name=SPLIT_MANIFEST,
        infer_artifact=True,
    )
    return split_manifest
