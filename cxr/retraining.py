"""`cxr train --if-data-changed`: train only when the data differs from the champion's (components.retraining).

Every `cxr train` lists its sources before the pipeline runs (nothing read) and
logs that listing to the registered version's MLflow run
(components.retraining.LISTING_ARTIFACT), so that a later
``--if-data-changed`` run can tell "nothing changed" from the listing alone.
With ``--if-data-changed`` the decision comes first: printed as one line,
appended to ``<workdir>/reports/retraining_decisions.jsonl``, and set as
``retraining.*`` tags on the MLflow run when the run trains.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ValidationError

from components.config import RunConfig
from components.errors import CxrError
from components.registry import TAG_DATASET_VERSION, Registration, current_champion, read_run_text
from components.retraining import (
    LISTING_ARTIFACT,
    Champion,
    DataListing,
    FileInfoCache,
    RetrainingDecision,
    append_decision,
    current_dataset_version,
    data_listing,
    decide,
    relisted,
)
from cxr.runner import ensure_synthetic_dataset, resolved_config
from cxr.stack import LocalPaths

logger = logging.getLogger(__name__)

# The work folder's cache of what reading each file gave (components.retraining.FileInfoCache).
CACHE_FILE = Path("retraining") / "file_info.json"


class DataCheck(BaseModel):
    """What `cxr train` knows about its data before the pipeline runs."""

    listing: DataListing | None  # None: the sources could not be listed (the pipeline will say why)
    decision: RetrainingDecision | None  # None: trained unconditionally (no --if-data-changed)
    # Taken before the run: ZenML's MLflow tracker blanks MLFLOW_TRACKING_URI after its steps.
    tracking_uri: str

    @property
    def train(self) -> bool:
        """Whether the pipeline runs."""
        return self.decision is None or self.decision.train


def champion_of(client, model_name: str) -> Champion | None:
    """The champion of `model_name` with its dataset version tag and recorded listing; None without one."""
    version = current_champion(client, model_name)
    if version is None:
        return None
    text = read_run_text(client, version.run_id, LISTING_ARTIFACT)
    try:
        listing = DataListing.model_validate_json(text) if text else None
    except ValidationError:
        logger.warning("the listing logged with %s version %s is unreadable: ignored", model_name, version.version)
        listing = None
    return Champion(
        model_name=model_name,
        version=str(version.version),
        dataset_version=(version.tags or {}).get(TAG_DATASET_VERSION) or None,
        listing=listing,
    )


def version_trained_on(client, model_name: str, dataset_version: str) -> str | None:
    """The newest registered version of `model_name` whose dataset version tag is `dataset_version`, or None."""
    found = client.search_model_versions(f"name = '{model_name}' and tags.{TAG_DATASET_VERSION} = '{dataset_version}'")
    numbers = [int(version.version) for version in found]
    return str(max(numbers)) if numbers else None


def check_data(config: RunConfig, paths: LocalPaths, if_data_changed: bool) -> DataCheck:
    """List the sources and, with `if_data_changed`, decide whether to train (recorded in the reports folder).

    Args:
        config: the validated run config.
        paths: the work folder (MLflow already pointed at it, cxr.stack.configure_environment).
        if_data_changed: decide; otherwise only take the listing (errors left to the pipeline).

    Returns:
        The DataCheck.

    Raises:
        StorageError, SourceError, FileNotFoundError: (with `if_data_changed`) a source cannot be listed or read.
    """
    import mlflow
    from mlflow import MlflowClient

    tracking_uri = mlflow.get_tracking_uri()
    config = resolved_config(config)
    ensure_synthetic_dataset(config)  # the embedded data set exists before it is listed
    if not if_data_changed:
        try:
            return DataCheck(listing=data_listing(config), decision=None, tracking_uri=tracking_uri)
        except (CxrError, OSError) as error:
            logger.warning("sources not listed (%s): this run records no listing", error)
            return DataCheck(listing=None, decision=None, tracking_uri=tracking_uri)
    listing = data_listing(config)
    client = MlflowClient(tracking_uri)
    model_name = config.registry.model_name
    cache = FileInfoCache(paths.workdir / CACHE_FILE)
    decision = decide(
        config.name,
        model_name,
        listing,
        champion_of(client, model_name),
        lambda: current_dataset_version(config, listing, cache),
        lambda version: version_trained_on(client, model_name, version),
    )
    append_decision(decision, paths.reports)
    return DataCheck(listing=listing, decision=decision, tracking_uri=tracking_uri)


def learn_from_run(cache: FileInfoCache, before: DataListing, run_name: str) -> None:
    """Fill `cache` from the manifest the run `run_name` ingested (FileInfoCache.learn_from_manifest).

    The sources are listed again to leave out files that changed while the run read them. A run
    without a readable manifest, or sources that can no longer be listed, leave the cache as it is.
    """
    from zenml.client import Client

    from steps.names import INGEST_STEP, MANIFEST

    try:
        manifest = Client().get_pipeline_run(run_name).steps[INGEST_STEP].outputs[MANIFEST][0].load()
        after = relisted(before)
    except (KeyError, CxrError, OSError) as error:
        logger.warning("the file cache did not learn from run %s: %s", run_name, error)
        return
    stored = cache.learn_from_manifest(manifest, before, after)
    logger.info("file cache: %d files learnt from run %s", stored, run_name)


def record_training(check: DataCheck, registration: Registration, paths: LocalPaths, run_name: str) -> None:
    """After a training run: its listing and decision on the registered version's MLflow run.

    The listing goes to LISTING_ARTIFACT, the decision (if any) to ``retraining.*`` tags, and the
    work folder's cache learns the listing's dataset version and what the run's ingest read
    (learn_from_run), so the next ``--if-data-changed`` reads only new or changed files. A failure
    is logged, not raised: the run itself has completed.

    Args:
        check: what check_data gave before the run.
        registration: the run's registration (its MLflow run and dataset version).
        paths: the work folder.
        run_name: the ZenML pipeline run (its ingest step's manifest).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(check.tracking_uri)
    run_id = registration.mlflow_run_id
    try:
        if check.listing is not None:
            client.log_text(run_id, check.listing.model_dump_json(), LISTING_ARTIFACT)
            cache = FileInfoCache(paths.workdir / CACHE_FILE)
            cache.remember_version(check.listing.fingerprint, registration.dataset_version)
            learn_from_run(cache, check.listing, run_name)
            cache.save()
        if check.decision is not None:
            for key, value in check.decision.mlflow_tags().items():
                client.set_tag(run_id, key, value)
    except (MlflowException, OSError) as error:
        logger.warning("the data listing of MLflow run %s was not recorded: %s", run_id, error)
