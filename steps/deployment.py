"""Deployments with the stack's model deployer: serve before switch, list, undeploy.

Shared by the pipeline's deploy step (steps/deploy.py) and `cxr deploy`,
`cxr deployments`, `cxr undeploy`. Locally the stack's deployer is ZenML's MLflow
model deployer: each deployment is a daemon running MLflow's scoring server for
``models:/<name>/<version>`` (a version number: the deployer's own lookup knows
MLflow stages, not MLflow 3 aliases, so ``@champion`` is resolved first).

Serve before switch (components.deployment): the new version is started in its
own server (its own port) beside the running one, must answer /ping and pass
its canary; only then are the model's other servers deleted. A server that
fails is deleted and the old one keeps serving.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient

from components.config import DeploymentConfig
from components.deployment import (
    CANARY_ARTIFACT,
    Canary,
    Deployment,
    DeploymentError,
    DeploymentOutcome,
    check_canary,
    wait_until_healthy,
)
from components.errors import CxrError
from components.registry import read_run_text
from components.serving import SERVED_VERSION_VARIABLE

# Recorded in the service config's pipeline fields: who made the deployment.
PIPELINE_NAME = "cxr_deployment"
STEP_NAME = "deploy_model"
_LOG_TAIL = 1500  # characters of the server log quoted in an error


class NoModelDeployerError(CxrError):
    """The active ZenML stack has no model deployer."""


def _deployer():
    from zenml.client import Client

    deployer = Client().active_stack.model_deployer
    if deployer is None:
        raise NoModelDeployerError(
            f"the active ZenML stack {Client().active_stack.name!r} has no model deployer: run `cxr setup` for the "
            "local stack, or register one"
        )
    return deployer


def _service_type():
    from zenml.integrations.mlflow.services import MLFlowDeploymentService

    return MLFlowDeploymentService.SERVICE_TYPE


def _daemon_environment() -> None:
    """What the server daemon (launched with this process's environment) needs.

    MLflow's scoring server execs a bare `uvicorn`: this interpreter's bin folder must be on
    PATH. The daemon reads the active stack again (for its MLflow tracker): pin it to this
    process's, whatever another run activates in the shared ZenML repository meanwhile.
    """
    from zenml.client import Client

    os.environ["ZENML_ACTIVE_STACK_ID"] = str(Client().active_stack_model.id)
    folder = str(Path(sys.executable).parent)
    if folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([folder, os.environ.get("PATH", "")])
    # The served model imports `components` from its own code path; the project stays importable too.
    root = str(Path(__file__).resolve().parent.parent)
    if root not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def _log_file(service) -> str | None:
    runtime = getattr(service.status, "runtime_path", None)
    return str(Path(runtime) / "service.log") if runtime else None


def _log_tail(service) -> str:
    """The server log's last error line (a traceback's last line), else its end; and where the log is."""
    path = _log_file(service)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return f"(no log at {path})"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    shown = errors[-1] if errors else " | ".join(lines[-3:]) or "(empty log)"
    return f"{shown[:_LOG_TAIL]} (log: {path})"


def _describe(service) -> Deployment:
    import requests

    health = service.get_healthcheck_url()
    healthy = False
    if service.is_running and health:
        try:
            healthy = requests.get(health, timeout=2).status_code == 200
        except requests.RequestException:
            healthy = False
    runtime = getattr(service.status, "runtime_path", None)
    pid_file = Path(runtime) / "service.pid" if runtime else None
    # Since when it serves: its daemon's pid file is written when it starts.
    created = datetime.fromtimestamp(pid_file.stat().st_mtime, UTC) if pid_file and pid_file.is_file() else None
    return Deployment(
        model_name=service.config.registry_model_name or service.config.model_name,
        version=str(service.config.registry_model_version or ""),
        url=service.get_prediction_url(),
        health_url=health,
        healthy=healthy,
        since=created.isoformat(timespec="seconds") if isinstance(created, datetime) else None,
        service_id=str(service.uuid),
        log_file=_log_file(service),
    )


def model_services(model_name: str | None = None) -> list:
    """The deployer's services (newest first), of one registered model or all."""
    services = _deployer().find_model_server(service_type=_service_type())
    return [s for s in services if model_name is None or s.config.registry_model_name == model_name]


def deployments(model_name: str | None = None) -> list[Deployment]:
    """Every deployment of the stack's deployer (of one model), with a live health check each."""
    return [_describe(service) for service in model_services(model_name)]


def load_canary(client: MlflowClient, model_name: str, version: str) -> Canary:
    """The canary stored with a version at registration.

    Raises:
        DeploymentError: the version has no canary (it was not registered by cxr train).
    """
    text = read_run_text(client, client.get_model_version(model_name, version).run_id, CANARY_ARTIFACT)
    if text is None:
        raise DeploymentError(
            f"{model_name} v{version} has no {CANARY_ARTIFACT} in its run: it was not registered by cxr train, "
            "so it cannot be checked before it serves"
        )
    return Canary.model_validate_json(text)


def deploy_version(model_name: str, version: str, settings: DeploymentConfig, canary: Canary) -> DeploymentOutcome:
    """Serve `version` of `model_name` beside the running deployment, check it, then switch to it.

    Args:
        model_name: the registered model.
        version: its version number (not an alias).
        settings: start timeout, canary tolerance and latency budget, workers.
        canary: the version's canary (load_canary).

    Returns:
        The outcome: "kept" when a healthy server already serves this version, else "deployed"
        with the versions whose servers were deleted after the switch.

    Raises:
        DeploymentError: the new server did not start or failed its canary; it was deleted and
            the running deployment (if any) still serves. The message gives the reason and the
            server log's end.
    """
    from zenml.integrations.mlflow.services import MLFlowDeploymentConfig

    deployer = _deployer()
    running = model_services(model_name)
    for service in running:
        if str(service.config.registry_model_version) != str(version):
            continue
        serving = _describe(service)  # one health check
        if serving.healthy:
            return DeploymentOutcome(
                action="kept",
                deployment=serving,
                message=f"{model_name} v{version} already serves at {serving.url}: kept",
            )
    for service in [s for s in running if str(s.config.registry_model_version) == str(version)]:
        # Not healthy (checked above): a dead or stuck server of this version holds its name; remove it.
        deployer.delete_model_server(service.uuid, force=True)
        running.remove(service)
    _daemon_environment()
    config = MLFlowDeploymentConfig(
        model_uri=f"models:/{model_name}/{version}",
        model_name=model_name,
        registry_model_name=model_name,
        registry_model_version=str(version),
        workers=settings.workers,
        pipeline_name=PIPELINE_NAME,
        pipeline_step_name=STEP_NAME,
        service_name=f"{model_name}-v{version}",
        timeout=int(settings.start_timeout_s),
    )
    new = _start_service(deployer, config)
    try:

        def alive() -> bool:
            new.update_status()
            return new.is_running or new.status.pid is not None and _pid_alive(new.status.pid)

        wait_until_healthy(new.get_healthcheck_url(), alive, settings.start_timeout_s, lambda: _log_tail(new))
        result = check_canary(new.get_prediction_url(), canary, settings.canary_tolerance, settings.latency_budget_s)
        if not result.passed:
            raise DeploymentError(f"{model_name} v{version} failed its canary: {result.detail}")
    except BaseException:
        deployer.delete_model_server(new.uuid, force=True)
        raise
    replaced = []
    for service in running:
        replaced.append(str(service.config.registry_model_version))
        deployer.delete_model_server(service.uuid, force=True)
    deployment = _describe(new)
    return DeploymentOutcome(
        action="deployed",
        deployment=deployment,
        replaced=replaced,
        canary=result,
        message=(
            f"{model_name} v{version} serves at {deployment.url} (canary: {result.detail})"
            + (f"; replaced v{', v'.join(replaced)}" if replaced else "")
        ),
    )


def _start_service(deployer, config):
    """Register and launch a new server, as the deployer's deploy_model does, without its reuse lookup.

    deploy_model returns an existing server whose config it judges equal, and with the
    MLflow deployer it judged v1's server equal to v2's config; serve before switch needs a
    new server for the new version, always. timeout=0: return once the daemon is launched
    (wait_until_healthy then fails at once if it dies, instead of waiting out the timeout).
    """
    from zenml.client import Client

    client = Client()
    response = client.create_service(config=config, service_type=_service_type(), model_version_id=None)
    # The daemon is forked now and keeps this environment: its answers name their model.
    os.environ[SERVED_VERSION_VARIABLE] = f"{config.registry_model_name}/{config.registry_model_version}"
    try:
        service = deployer.perform_deploy_model(id=response.id, config=config, timeout=0)
    except Exception:
        client.delete_service(response.id)
        raise
    finally:
        os.environ.pop(SERVED_VERSION_VARIABLE, None)
    client.update_service(
        id=service.uuid,
        name=service.config.service_name,
        service_source=service.model_dump().get("type"),
        admin_state=service.admin_state,
        status=service.status.model_dump(),
        endpoint=service.endpoint.model_dump() if service.endpoint else None,
        prediction_url=service.get_prediction_url(),
        health_check_url=service.get_healthcheck_url(),
    )
    return service


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def undeploy(model_name: str | None = None) -> list[Deployment]:
    """Stop and delete the deployments of a model (or all); returns what was removed."""
    deployer = _deployer()
    removed = []
    for service in model_services(model_name):
        removed.append(_describe(service))
        deployer.delete_model_server(service.uuid, force=True)
    return removed
