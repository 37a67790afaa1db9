from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from components.splitting import assign_splits, split_counts_table
from steps.names import SPLIT_MANIFEST

logger = get_logger(__name__)


@step
def split_data(manifest: pd.DataFrame, fractions: list[float], seed: int) -> Annotated[pd.DataFrame, SPLIT_MANIFEST]:
    """Used rows only, with a `split` column; patient-grouped and label-stratified."""
    used = manifest[manifest["exclusion_reason"] == ""].reset_index(drop=True)
    split = used.assign(split=assign_splits(used, tuple(fractions), seed))
    table = split_counts_table(split)
    logger.info("Images per label and split:\n%s", table.to_string())
    log_metadata(metadata={"label_x_split": table.to_dict()}, artifact_name=SPLIT_MANIFEST, infer_artifact=True)
    return split
