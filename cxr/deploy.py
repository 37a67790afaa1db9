"""`cxr deploy`, `cxr deployments`, `cxr undeploy`: the stack's model deployer by hand.

The same serve-before-switch as the training pipeline's deploy step
(steps/deployment.py): the version is started beside the running server, must
answer /ping and pass its canary, and only then replaces it.
"""

from __future__ import annotations

from mlflow import MlflowClient

from components.deployment import Deployment
from components.registry import CHAMPION, RegisteredModelNotFoundError, current_champion, version_by_alias


def resolve_version(client: MlflowClient, model_name: str, version: str | None, alias: str | None) -> str:
    """A version number from --version or --alias (default: the champion).

    Raises:
        RegisteredModelNotFoundError: no such model, alias or version.
    """
    if version is not None:
        try:
            return str(client.get_model_version(model_name, version).version)
        except Exception:  # MlflowException: RESOURCE_DOES_NOT_EXIST and friends
            raise RegisteredModelNotFoundError(f"registered model {model_name!r} has no version {version}") from None
    return str(version_by_alias(client, model_name, alias or CHAMPION).version)


def deploy(model_name: str, version: str | None, alias: str | None, settings) -> str:
    """Deploy a version (serve before switch); returns what happened, one line."""
    from steps.deployment import deploy_version, load_canary

    client = MlflowClient()
    number = resolve_version(client, model_name, version, alias)
    outcome = deploy_version(model_name, number, settings, load_canary(client, model_name, number))
    champion = current_champion(client, model_name)
    if champion is not None and str(champion.version) != number:
        return f"{outcome.message}. Note: the champion is v{champion.version}; v{number} now serves instead of it"
    return outcome.message


def format_deployments(found: list[Deployment]) -> str:
    """One line per deployment: model, version, health, URL, since when, log file."""
    if not found:
        return "no deployments (cxr deploy starts one; cxr train deploys a new champion)"
    return "\n".join(
        f"{d.model_name} v{d.version}  {'healthy' if d.healthy else 'NOT HEALTHY'}  {d.url}  since {d.since}  "
        f"log {d.log_file}"
        for d in found
    )
