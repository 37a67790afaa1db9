"""The ingest step: every configured source into one manifest (components.manifest)."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from components.config import DataConfig
from components.labels import Task
from components.manifest import build_manifest, dataset_version, exclusion_summary, included
from components.privacy import with_privacy
from components.splitting import TRAINING, DataPurpose, limit_images, require_labelled_sources
from steps.data_materializers import ManifestMaterializer
from steps.names import MANIFEST

logger = get_logger(__name__)


# Never cached: files on disk may have changed since the last run. Its output
# carries the dataset version as content hash, so downstream steps can be.
@step(enable_cache=False, output_materializers={MANIFEST: ManifestMaterializer})
def ingest_data(
    data: DataConfig,
    task: Task,
    seed: int,
    held_out_sources: list[str] | None = None,
    purpose: DataPurpose = TRAINING,
) -> Annotated[pd.DataFrame, MANIFEST]:
    """Build the manifest (one row per image, excluded rows kept with a reason), capped at `data.max_images`
    (each of `held_out_sources`, the external ones, capped on its own: components.splitting.limit_images).

    Raises:
        UnlabelledSourceError: a held-out source has no labelled, usable image (evaluation needs labels).
    """
    # Patient ids pseudonymised here when the config says so: nothing downstream sees the originals.
    manifest = with_privacy(build_manifest(data.sources, task, workers=data.workers, progress=True), data)
    require_labelled_sources(manifest, held_out_sources or (), purpose)
    manifest = limit_images(manifest, data.max_images, seed, held_out_sources=held_out_sources or ())
    used = included(manifest)
    exclusions = exclusion_summary(manifest)
    version = dataset_version(manifest)
    logger.info(
        "Manifest %s: %d images, %d used, per label %s",
        version,
        len(manifest),
        len(used),
        used["label"].value_counts().to_dict(),
    )
    for reason, count in exclusions.items():
        logger.info("Excluded %d image(s): %s", count, reason)
    log_metadata(
        metadata={
            "dataset_version": version,
            "images": len(manifest),
            "used": len(used),
            "exclusions": exclusions,
            "per_label": {k: int(v) for k, v in used["label"].value_counts().items()},
            "per_source": {k: int(v) for k, v in used["source"].value_counts().items()},
        },
        artifact_name=MANIFEST,
        infer_artifact=True,
    )
    return manifest
