"""The split step: patient-grouped, label-stratified train/val/test, external sources held out."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from components.config import SplitConfig
from components.splitting import (
    TRAINING,
    DataPurpose,
    external_counts_table,
    patients_merged,
    split_counts_table,
    split_dataset,
)
from steps.names import SPLIT_MANIFEST

logger = get_logger(__name__)


@step
def split_data(
    manifest: pd.DataFrame,
    split: SplitConfig,
    seed: int,
    near_duplicate_max_distance: int,
    external_sources: list[str] | None = None,
    purpose: DataPurpose = TRAINING,
) -> Annotated[pd.DataFrame, SPLIT_MANIFEST]:
    """Used rows only, with `split` and `split_group` columns (components.splitting.split_dataset).

    Rows of `external_sources` get split "external" (every row with purpose "evaluation"); the
    rest is cut by `split`'s fractions.
    """
    fractions = (split.train, split.val, split.test)
    split_manifest = split_dataset(
        manifest, fractions, seed, near_duplicate_max_distance, external_sources=external_sources or (), purpose=purpose
    )
    table = split_counts_table(split_manifest)
    external = external_counts_table(split_manifest)
    merged = patients_merged(split_manifest)
    logger.info(
        "Images per label and split, purpose %s (%d patient(s) merged with a near-duplicate's group):\n%s",
        purpose,
        merged,
        table.to_string(),
    )
    if not external.empty:
        logger.info("External images per label and source (evaluated only):\n%s", external.to_string())
    log_metadata(
        metadata={
            "purpose": purpose,
            "label_x_split": table.to_dict(),
            "external_label_x_source": external.to_dict(),
            "patients_merged_by_near_duplicates": merged,
        },
        artifact_name=SPLIT_MANIFEST,
        infer_artifact=True,
    )
    return split_manifest
