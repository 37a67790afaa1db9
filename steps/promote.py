"""Promotion: the new version becomes `champion` only if it beats the current one, else `challenger`."""

from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger

from components.config import RegistryConfig
from components.registry import Promotion, Registration, promote_version
from steps.names import EXPERIMENT_TRACKER, PROMOTION

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def promote_model(registration: Registration, registry: RegistryConfig) -> Annotated[Promotion, PROMOTION]:
    """Give the new version `champion` if it beats the current champion, else `challenger`."""
    promotion = promote_version(
        MlflowClient(),
        registration.model_name,
        registration.version,
        metric_key=registry.primary_metric,
        min_improvement=registry.min_improvement,
    )
    mlflow.set_tags({"registered_version": promotion.version, "alias": promotion.alias})
    logger.info("%s version %s -> %s: %s", promotion.model_name, promotion.version, promotion.alias, promotion.reason)
    return promotion
