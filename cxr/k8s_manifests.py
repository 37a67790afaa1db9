"""The Kubernetes Jobs ZenML's Kubernetes orchestrator would submit for the training pipeline, without a cluster.

The pipeline is compiled by ZenML's own compiler against an in-memory stack
(Kubernetes orchestrator, MLflow experiment tracker, a local artifact store that
only satisfies the compiler), with the same merged ZenML config `cxr train
--zenml-config` uses. Each Job is then built the way ZenML 0.98 builds it:

- the orchestrator Job by `KubernetesOrchestrator._prepare_job_manifest` (what
  `submit_pipeline` calls), with ZenML's orchestrator entrypoint command;
- each step's Job as `kubernetes_orchestrator_entrypoint.start_step_job` does
  inside the orchestrator pod: `apply_default_resource_requests`,
  `build_pod_manifest` with the step's pod settings, `build_job_manifest`.

What submission would add is a placeholder here: the snapshot and run ids (the
server assigns them), the image name (ZenML builds and pushes it), and the
ZenML server's URL and token (the token comes from a Secret ZenML creates when
`pass_zenml_token_as_secret` is on; its name is ZenML's). Job names use a fixed
suffix instead of ZenML's random one, so the output is reproducible.

Objects are serialised as the API expects them (camelCase) by
`kubernetes.client.ApiClient().sanitize_for_serialization`, with the
`apiVersion`, `kind` and `namespace` that the client's create call supplies.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError, RunConfig, load_run_config, merged_yaml_file
from cxr.zenml_keys import add_zenml_config_option
from steps.names import EXPERIMENT_TRACKER, train_step_id

PIPELINE_NAME = "training_pipeline"
DEFAULT_IMAGE = "cxr-pipelines:latest"  # infra/Dockerfile; ZenML names the image it builds itself
DEFAULT_NAMESPACE = "cxr"
# The in-cluster services of infra/k8s (overlays/team).
DEFAULT_ZENML_URL = "http://zenml-server.cxr.svc.cluster.local:8080"
DEFAULT_MLFLOW_URI = "http://mlflow.cxr.svc.cluster.local:5000"
ORCHESTRATOR_FILE = "orchestrator-job.yaml"
# The label ZenML puts on every step Job and pod (kube_utils.sanitize_label_value of the step name).
STEP_NAME_LABEL = "step_name"


# ZenML 0.98's pod failure policy of a step Job when the settings give none (inline in the orchestrator
# pod's start_step_job; the orchestrator Job's is _orchestrator_pod_failure_policy). Its pod condition
# has no `status`, which the API schema requires: infra/zenml_kubernetes.yaml sets an explicit
# `pod_failure_policy`, which ZenML then uses for the orchestrator Job and the step Jobs.
ZENML_STEP_POD_FAILURE_POLICY = {
    "rules": [
        {"action": "Count", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [0]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}


def _orchestrator_pod_failure_policy() -> dict[str, Any]:
    """ZenML 0.98's default for the orchestrator Job (inline in KubernetesOrchestrator._submit_orchestrator_job)."""
    from zenml.constants import DYNAMIC_PIPELINE_RUN_FAILED_EXIT_CODE

    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": "main",
                    "operator": "In",
                    "values": [DYNAMIC_PIPELINE_RUN_FAILED_EXIT_CODE],
                },
            },
            {"action": "Count", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [0]}},
        ]
    }


def _uuid(*parts: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, "cxr-k8s-manifests:" + "/".join(parts))


def kubernetes_stack(namespace: str, mlflow_uri: str, workdir: Path) -> Any:
    """An in-memory ZenML stack with a Kubernetes orchestrator; nothing is registered or contacted."""
    from zenml.enums import StackComponentType
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorConfig
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator

    orchestrator = KubernetesOrchestrator(
        name="cxr_k8s",
        id=_uuid("orchestrator"),
        config=KubernetesOrchestratorConfig(kubernetes_context="cxr", kubernetes_namespace=namespace),
        flavor="kubernetes",
        type=StackComponentType.ORCHESTRATOR,
        **component_fields(),
    )
    return in_memory_stack("cxr_k8s", orchestrator, mlflow_uri, workdir, _uuid)


def in_memory_stack(
    name: str, orchestrator: Any, mlflow_uri: str, workdir: Path, make_id: Any, **components: Any
) -> Any:
    """A ZenML Stack of `orchestrator`, a placeholder artifact store and the MLflow tracker; nothing registered.

    Shared by the Kubernetes manifests and the Kubeflow IR (cxr/kfp_ir.py). `make_id(part)` gives the
    deterministic UUID of each component; `components` are further ones (e.g. a container registry).
    """
    from zenml.artifact_stores.local_artifact_store import LocalArtifactStore, LocalArtifactStoreConfig
    from zenml.enums import StackComponentType
    from zenml.integrations.mlflow.experiment_trackers import MLFlowExperimentTracker
    from zenml.integrations.mlflow.flavors import MLFlowExperimentTrackerConfig
    from zenml.stack import Stack

    common = component_fields()
    # The compiler only needs an artifact store; on a cluster it is S3 (register_kubernetes_stack.sh).
    artifact_store = LocalArtifactStore(
        name="cxr_placeholder_store",
        id=make_id("artifact_store"),
        config=LocalArtifactStoreConfig(path=str(workdir / "artifacts")),
        flavor="local",
        type=StackComponentType.ARTIFACT_STORE,
        **common,
    )
    tracker = MLFlowExperimentTracker(
        name=EXPERIMENT_TRACKER,
        id=make_id("experiment_tracker"),
        config=MLFlowExperimentTrackerConfig(tracking_uri=mlflow_uri, tracking_token="placeholder"),
        flavor="mlflow",
        type=StackComponentType.EXPERIMENT_TRACKER,
        **common,
    )
    return Stack(
        id=make_id("stack"),
        name=name,
        orchestrator=orchestrator,
        artifact_store=artifact_store,
        experiment_tracker=tracker,
        **components,
    )


def component_fields() -> dict[str, Any]:
    """The fields every in-memory stack component needs besides its own (no user, created now)."""
    now = datetime.now()
    return {"user": None, "created": now, "updated": now}


def compile_training_pipeline(
    config: RunConfig, zenml_config_files: Sequence[str | Path], stack: Any, workdir: Path
) -> Any:
    """The training pipeline's snapshot as ZenML's compiler makes it for `stack` (PipelineSnapshotBase)."""
    from zenml.config.compiler import Compiler
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from cxr.runner import check_step_ids, resolved_config
    from cxr.zenml_keys import zenml_config_keys
    from pipelines.training import training_pipeline

    merged = merged_yaml_file(
        list(zenml_config_files),
        workdir / "zenml_run_config.yaml",
        train_step_ids=[train_step_id(backbone.name) for backbone in config.backbones],
        known_keys=zenml_config_keys(),
    )
    pipeline = training_pipeline.with_options(config_path=str(merged))
    pipeline.prepare(run=resolved_config(config), docs_dir="/tmp/cxr/reports/data_docs", reports_dir="/tmp/cxr/reports")
    check_step_ids(merged, list(pipeline.invocations), list(zenml_config_files)[1:])
    run_configuration = PipelineRunConfiguration(**yaml.safe_load(merged.read_text()))
    return Compiler().compile(pipeline=pipeline, stack=stack, run_configuration=run_configuration)


def _job_name(prefix: str | None, suffix: str, *parts: str) -> str:
    from zenml.integrations.kubernetes import kube_utils

    return kube_utils.sanitize_label("-".join([prefix or "", suffix, *parts]))


def _as_api_object(job: Any, namespace: str) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    document = ApiClient().sanitize_for_serialization(job)
    document["metadata"]["namespace"] = namespace
    return {"apiVersion": "batch/v1", "kind": "Job", **document}


def orchestrator_job(stack: Any, snapshot: Any, image: str, environment: dict[str, str], suffix: str) -> dict[str, Any]:
    """The orchestrator Job `KubernetesOrchestrator.submit_pipeline` would create (API dict)."""
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.constants import ORCHESTRATOR_ANNOTATION_KEY
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator_entrypoint_configuration import (
        KubernetesOrchestratorEntrypointConfiguration,
    )
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    orchestrator = stack.orchestrator
    settings = orchestrator.get_settings(snapshot)
    snapshot_id = _uuid("snapshot", suffix)
    labels = {
        "project_id": kube_utils.sanitize_label_value(str(_uuid("project"))),
        "pipeline": kube_utils.sanitize_label_value(PIPELINE_NAME),
    }
    job = orchestrator._prepare_job_manifest(
        name=_job_name(settings.job_name_prefix, suffix, PIPELINE_NAME),
        command=KubernetesOrchestratorEntrypointConfiguration.get_entrypoint_command(),
        args=KubernetesOrchestratorEntrypointConfiguration.get_entrypoint_arguments(snapshot_id=snapshot_id),
        image=image,
        environment=dict(environment),
        labels=labels,
        annotations={ORCHESTRATOR_ANNOTATION_KEY: str(orchestrator.id)},
        settings=settings,
        pod_settings=settings.orchestrator_pod_settings or KubernetesPodSettings(),
        backoff_limit=settings.orchestrator_job_backoff_limit,
        pod_failure_policy=_orchestrator_pod_failure_policy(),
    )
    return _as_api_object(job, orchestrator.config.kubernetes_namespace)


def step_jobs(
    stack: Any, snapshot: Any, image: str, environment: dict[str, str], suffix: str
) -> dict[str, dict[str, Any]]:
    """Each step's Job as the orchestrator pod would create it, by step name (API dicts)."""
    from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.constants import KUBERNETES_SECRET_TOKEN_KEY_NAME, STEP_NAME_ANNOTATION_KEY
    from zenml.integrations.kubernetes.manifest_utils import (
        build_job_manifest,
        build_pod_manifest,
        pod_template_manifest_from_pod,
    )
    from zenml.utils import env_utils

    orchestrator = stack.orchestrator
    snapshot_id = _uuid("snapshot", suffix)
    base_labels = {
        "project_id": kube_utils.sanitize_label_value(str(_uuid("project"))),
        "run_id": kube_utils.sanitize_label_value(str(_uuid("run", suffix))),
        "run_name": kube_utils.sanitize_label_value(f"{PIPELINE_NAME}-{suffix}"),
        "pipeline": kube_utils.sanitize_label_value(PIPELINE_NAME),
    }
    jobs = {}
    for step_name, step in snapshot.step_configurations.items():
        settings = orchestrator.get_settings(step)
        labels = {**base_labels, STEP_NAME_LABEL: kube_utils.sanitize_label_value(step_name)}
        step_env = {**environment, **env_utils.get_runtime_environment(config=step.config, stack=stack)}
        pod_settings = kube_utils.apply_default_resource_requests(memory="400Mi", pod_settings=settings.pod_settings)
        if orchestrator.config.pass_zenml_token_as_secret:
            pod_settings.env.append(
                {
                    "name": "ZENML_STORE_API_TOKEN",
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": orchestrator.get_token_secret_name(snapshot_id),
                            "key": KUBERNETES_SECRET_TOKEN_KEY_NAME,
                        }
                    },
                }
            )
        pod = build_pod_manifest(
            pod_name=None,
            image_name=image,
            command=StepEntrypointConfiguration.get_entrypoint_command(),
            args=StepEntrypointConfiguration.get_entrypoint_arguments(step_name=step_name, snapshot_id=snapshot_id),
            env=step_env,
            privileged=settings.privileged,
            pod_settings=pod_settings,
            service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
            mount_local_stores=orchestrator.config.is_local,
            termination_grace_period_seconds=settings.pod_stop_grace_period,
            labels=labels,
        )
        retries = step.config.retry.max_retries if step.config.retry else 0
        job = build_job_manifest(
            job_name=_job_name(settings.job_name_prefix, suffix, step_name, PIPELINE_NAME),
            pod_template=pod_template_manifest_from_pod(pod),
            backoff_limit=retries + settings.backoff_limit_margin,
            ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
            active_deadline_seconds=settings.active_deadline_seconds,
            pod_failure_policy=settings.pod_failure_policy or copy.deepcopy(ZENML_STEP_POD_FAILURE_POLICY),
            labels=labels,
            annotations={STEP_NAME_ANNOTATION_KEY: step_name},
        )
        jobs[step_name] = _as_api_object(job, orchestrator.config.kubernetes_namespace)
    return jobs


def training_pipeline_manifests(
    config: RunConfig,
    zenml_config_files: Sequence[str | Path],
    workdir: Path,
    image: str = DEFAULT_IMAGE,
    namespace: str = DEFAULT_NAMESPACE,
    zenml_url: str = DEFAULT_ZENML_URL,
    mlflow_uri: str = DEFAULT_MLFLOW_URI,
) -> dict[str, dict[str, Any]]:
    """The orchestrator Job and every step's Job for `config`, by file name (`<step>-job.yaml`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = kubernetes_stack(namespace, mlflow_uri, workdir)
    snapshot = compile_training_pipeline(config, zenml_config_files, stack, workdir)
    suffix = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]
    environment = {"ZENML_STORE_URL": zenml_url}
    manifests = {ORCHESTRATOR_FILE: orchestrator_job(stack, snapshot, image, environment, suffix)}
    for step_name, job in step_jobs(stack, snapshot, image, environment, suffix).items():
        manifests[f"{step_name}-job.yaml"] = job
    return manifests


def write_manifests(manifests: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Write each manifest as YAML under `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in manifests.items():
        path = out / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        written.append(path)
    return written


def is_train_job(document: dict[str, Any]) -> bool:
    """A step Job of a train step (ZenML's `step_name` label is `train_<Backbone>`)."""
    labels = (document.get("metadata") or {}).get("labels") or {}
    return labels.get(STEP_NAME_LABEL, "").startswith(train_step_id(""))


def add_parser(commands: Any) -> None:
    """`cxr k8s-manifests`: the subcommand on `cxr`'s subparsers."""
    sub = commands.add_parser(
        "k8s-manifests",
        help="write (and validate) the Jobs ZenML's Kubernetes orchestrator would submit for the training pipeline",
    )
    sub.add_argument("--config", required=True, help="run config YAML (see configs/)")
    add_zenml_config_option(sub)
    sub.add_argument("--out", required=True, help="folder for the YAML files (one Job each)")
    sub.add_argument("--image", default=DEFAULT_IMAGE, help=f"image of every pod (default {DEFAULT_IMAGE})")
    sub.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=f"namespace (default {DEFAULT_NAMESPACE})")
    sub.add_argument(
        "--no-validate", action="store_true", help="skip kubernetes-validate --strict (1.29-1.33) and the pod policies"
    )
    sub.set_defaults(handler=cmd_k8s_manifests)


def _overlay_problem(error: Exception, overlays: Sequence[str]) -> str:
    """One line for what ZenML refused while building the manifests from `overlays`; re-raises anything else."""
    name = type(error).__name__
    named = ", ".join(str(o) for o in overlays) or "zenml_config.yaml"
    if name == "SettingsResolvingError":
        detail = str(error).splitlines()[0][:300]
        return (
            f"ZenML cannot read the Kubernetes settings of {named}: {detail} (quantities such as "
            '"nvidia.com/gpu" must be strings, e.g. "1"; keys as in infra/zenml_kubernetes.yaml)'
        )
    if name == "ConfigException":
        return (
            f"{named} sets no service_account_name for the Kubernetes orchestrator (or a key of it is misspelt, e.g. "
            "orchestrator.kubernetes): ZenML would then create one through a cluster's API, which this offline "
            "check cannot reach"
        )
    raise error


def cmd_k8s_manifests(args: Any) -> int:
    """Write the manifests; validate them for every Kubernetes version and check the pod policies."""
    from components.kube_checks import KUBERNETES_VERSIONS, policy_violations, validate_documents
    from cxr.stack import configure_environment

    project_root = Path(__file__).resolve().parent.parent
    config = load_run_config(args.config)
    paths = configure_environment(args.workdir)
    try:
        manifests = training_pipeline_manifests(
            config,
            [project_root / "zenml_config.yaml", *args.zenml_config],
            paths.workdir / "k8s-manifests",
            image=args.image,
            namespace=args.namespace,
        )
    except Exception as error:  # ZenML's settings errors and a kubeconfig lookup are the overlay's faults here
        raise ConfigError(_overlay_problem(error, args.zenml_config)) from None
    written = write_manifests(manifests, Path(args.out))
    print(f"{len(written)} Jobs written to {args.out} (the orchestrator Job and one per step)")
    if args.no_validate:
        return 0
    problems = validate_documents(manifests.values()) + policy_violations(manifests.values(), is_train_job)
    for problem in problems:
        print(problem)
    print(
        f"kubernetes-validate --strict, Kubernetes {', '.join(KUBERNETES_VERSIONS)}, and pod policies: "
        f"{len(problems)} problems"
    )
    return 1 if problems else 0
