"""The training pipeline's last step: deploy a new champion (serve before switch) or keep what serves."""

from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger

from components.config import DeploymentConfig
from components.deployment import DeploymentOutcome
from components.registry import CHAMPION, Promotion
from steps.deployment import deploy_version, deployments, load_canary
from steps.names import DEPLOYMENT, EXPERIMENT_TRACKER

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def deploy_model(promotion: Promotion, deployment: DeploymentConfig) -> Annotated[DeploymentOutcome, DEPLOYMENT]:
    """Deploy the version this run made champion with the stack's model deployer; otherwise keep the deployment.

    Raises:
        components.deployment.DeploymentError: the new server did not start or failed its canary (the
            running deployment keeps serving; the champion alias has already moved: `cxr rollback` or
            `cxr deploy --version N` to reconcile).
    """
    name = promotion.model_name
    if not deployment.enabled:
        outcome = DeploymentOutcome(action="skipped", deployment=None, message="deployment.enabled is false")
    elif promotion.alias == CHAMPION:
        canary = load_canary(MlflowClient(), name, promotion.version)
        outcome = deploy_version(name, promotion.version, deployment, canary)
    else:
        running = [d for d in deployments(name) if d.healthy]
        if running:
            message = (
                f"the champion did not change: v{running[0].version} keeps serving at {running[0].url}"
                f" (v{promotion.version} is {promotion.alias})"
            )
            outcome = DeploymentOutcome(action="kept", deployment=running[0], message=message)
        else:
            outcome = DeploymentOutcome(
                action="skipped",
                deployment=None,
                message=f"the champion did not change and no server of {name} runs (`cxr deploy` starts one)",
            )
    logger.info("Deployment: %s", outcome.message)
    url = outcome.deployment.url if outcome.deployment else None
    mlflow.set_tags({"deployment": outcome.action, "deployment_url": url or ""})
    return outcome
