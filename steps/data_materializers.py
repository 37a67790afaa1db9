"""The manifest materializer: Parquet, with the dataset version as the artifact's content hash.

Kept apart from steps/materializers.py so that data-only pipelines do not import TensorFlow.
"""

import pandas as pd
from zenml.integrations.pandas.materializers.pandas_materializer import PandasMaterializer

from components.manifest import dataset_version


class ManifestMaterializer(PandasMaterializer):
    """Parquet like ZenML's pandas materializer, plus the dataset version as content hash.

    With a content hash, a cache policy that ignores artifact ids
    (`include_artifact_ids: false`) keys downstream steps on the data itself:
    the same files give a cache hit, one changed file on disk a miss.
    """

    def compute_content_hash(self, data: pd.DataFrame) -> str:
        return dataset_version(data)
