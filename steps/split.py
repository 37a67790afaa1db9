from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from components.duplicates import near_duplicate_pairs
from components.manifest import included
from components.splitting import assign_splits, split_counts_table, split_groups
from steps.names import SPLIT_MANIFEST

logger = get_logger(__name__)


@step
def split_data(
    manifest: pd.DataFrame, fractions: list[float], seed: int, near_duplicate_max_distance: int
) -> Annotated[pd.DataFrame, SPLIT_MANIFEST]:
    """Used rows only, with `split` and `split_group` columns.

    Patient-grouped and label-stratified; patients sharing a near-duplicate
    image are kept in one split (components.splitting.split_groups).
    """
    used = included(manifest)
    pairs = near_duplicate_pairs(used["phash"].tolist(), near_duplicate_max_distance)
    groups = split_groups(used, [(first, second) for first, second, _ in pairs])
    split = used.assign(split=assign_splits(used, tuple(fractions), seed, groups=groups), split_group=groups)
    table = split_counts_table(split)
    merged = int(used["patient_id"].nunique() - groups.nunique())
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
    return split
