"""The Kubeflow pipeline (KFP IR YAML) of the training pipeline, compiled without a cluster.

The pipeline is compiled by ZenML's compiler against an in-memory stack (Kubeflow
orchestrator, container registry, MLflow experiment tracker, a local artifact
store that only satisfies the compiler), with the same merged ZenML config `cxr
train --zenml-config` uses (cxr/k8s_manifests.py does the same for Kubernetes).
Two IRs come from that snapshot:

- `zenml_orchestrator_ir`: what ZenML 0.98's own `KubeflowOrchestrator.submit_pipeline`
  compiles (one container component per step, `.after()` wiring, environment,
  `_configure_container_resources`, `kfp.compiler.Compiler().compile`), with only
  the upload replaced by recording the file. It is not usable for this pipeline
  as it stands: it passes `ResourceSettings.get_memory()`, a float, to kfp's
  `set_memory_limit`, which raises TypeError for any step with `memory`; and it
  requests a GPU only under a node selector `accelerator` that its settings
  cannot carry (`KubeflowOrchestratorSettings` rebuilds `pod_settings` from
  top-level `node_selectors`, which the compiler drops as unknown), so no task
  ever gets a GPU. tests/test_kfp_ir.py pins both.
- `training_pipeline_ir`: kfp's compiler over the same DAG, built the way ZenML
  builds it (ZenML's container component per step, its step entrypoint command
  and arguments, the same environment), with resources set right: CPU and memory
  requests and limits from each step's ResourceSettings, `nvidia.com/gpu` for
  `gpu_count`, and, through kfp-kubernetes, the step's pod settings (node
  selectors, tolerations, memory-backed emptyDir volumes such as /dev/shm, env)
  from `orchestrator.kubeflow` or else `orchestrator.kubernetes` in the merged
  ZenML config (infra/zenml_kubernetes.yaml serves both orchestrators).

What submission would add is a placeholder here: the snapshot id (the server
assigns it), the image name (ZenML builds and pushes it) and the ZenML server's
URL (ZenML's base environment is `ZENML_STORE_URL` plus credentials).

kfp 2.16 pins `protobuf<7`: the lock holds protobuf 6.33.6 (TensorFlow 2.21, MLflow 3.17 and
ZenML 0.98 accept it), so `kfp` and `kfp-kubernetes` are installed with everything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from components.config import ConfigError, RunConfig, load_run_config
from components.errors import CxrError
from cxr.zenml_keys import add_zenml_config_option

DEFAULT_IMAGE = "cxr-pipelines:latest"  # infra/Dockerfile; ZenML names the image it builds itself
DEFAULT_ZENML_URL = "http://zenml-server.cxr.svc.cluster.local:8080"
DEFAULT_MLFLOW_URI = "http://mlflow.cxr.svc.cluster.local:5000"
DEFAULT_REGISTRY = "registry.example.com/cxr"
PIPELINE_NAME = "training_pipeline"
GPU_RESOURCE = "nvidia.com/gpu"  # KFP's accelerator type is the container resource name on Kubernetes


def _uuid(*parts: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, "cxr-kfp-ir:" + "/".join(parts))


def _recording_orchestrator_class() -> type:
    """KubeflowOrchestrator whose upload only records the compiled IR file."""
    from zenml.integrations.kubeflow.orchestrators.kubeflow_orchestrator import KubeflowOrchestrator

    class RecordingKubeflowOrchestrator(KubeflowOrchestrator):
        """ZenML's Kubeflow orchestrator up to the KFP upload, which it replaces by recording the file."""

        compiled: list[str] = []
        workdir: str = ""

        @property
        def pipeline_directory(self) -> str:
            return str(Path(self.workdir) / "kubeflow-pipelines")

        def _upload_and_run_pipeline(self, snapshot: Any, pipeline_file_path: str, run_name: str) -> None:
            self.compiled.append(pipeline_file_path)
            return None

    return RecordingKubeflowOrchestrator


def kubeflow_stack(mlflow_uri: str, registry: str, workdir: Path) -> Any:
    """An in-memory ZenML stack with a Kubeflow orchestrator; nothing is registered or contacted."""
    from zenml.container_registries.base_container_registry import BaseContainerRegistry, BaseContainerRegistryConfig
    from zenml.enums import StackComponentType
    from zenml.integrations.kubeflow.flavors import KubeflowOrchestratorConfig

    from cxr.k8s_manifests import component_fields, in_memory_stack

    common = component_fields()
    orchestrator = _recording_orchestrator_class()(
        name="cxr_kubeflow",
        id=_uuid("orchestrator"),
        config=KubeflowOrchestratorConfig(kubeflow_hostname="https://kubeflow.example.com/pipeline"),
        flavor="kubeflow",
        type=StackComponentType.ORCHESTRATOR,
        **common,
    )
    orchestrator.workdir = str(workdir)
    orchestrator.compiled = []
    registry_component = BaseContainerRegistry(
        name="cxr_registry",
        id=_uuid("container_registry"),
        config=BaseContainerRegistryConfig(uri=registry),
        flavor="default",
        type=StackComponentType.CONTAINER_REGISTRY,
        **common,
    )
    return in_memory_stack(
        "cxr_kubeflow", orchestrator, mlflow_uri, workdir, _uuid, container_registry=registry_component
    )


class _SubmittedSnapshot:
    """The compiled snapshot with what the server and the image build would add: an id and a build."""

    def __init__(self, snapshot: Any, snapshot_id: uuid.UUID, image: str) -> None:
        self._snapshot = snapshot
        self.id = snapshot_id
        self.build = SimpleNamespace(get_image=lambda component_key, step=None: image)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snapshot, name)


def _prepare(
    config: RunConfig,
    zenml_config_files: Sequence[str | Path],
    workdir: Path,
    image: str,
    zenml_url: str,
    mlflow_uri: str,
) -> tuple[Any, Any, _SubmittedSnapshot, dict[str, dict[str, str]], dict[str, Any]]:
    """The stack, the compiled snapshot (and as submitted), each step's environment, the merged ZenML config."""
    from zenml.utils import env_utils

    from cxr.k8s_manifests import compile_training_pipeline

    workdir.mkdir(parents=True, exist_ok=True)
    stack = kubeflow_stack(mlflow_uri, DEFAULT_REGISTRY, workdir)
    snapshot = compile_training_pipeline(config, zenml_config_files, stack, workdir)
    merged = yaml.safe_load((workdir / "zenml_run_config.yaml").read_text()) or {}
    base_environment = {"ZENML_STORE_URL": zenml_url}
    step_environments = {
        name: {**base_environment, **env_utils.get_runtime_environment(config=step.config, stack=stack)}
        for name, step in snapshot.step_configurations.items()
    }
    submitted = _SubmittedSnapshot(snapshot, _uuid("snapshot", config.model_dump_json()), image)
    return stack, snapshot, submitted, step_environments, merged


def zenml_orchestrator_ir(
    config: RunConfig,
    zenml_config_files: Sequence[str | Path],
    workdir: Path,
    image: str = DEFAULT_IMAGE,
    zenml_url: str = DEFAULT_ZENML_URL,
    mlflow_uri: str = DEFAULT_MLFLOW_URI,
) -> list[dict[str, Any]]:
    """The YAML documents ZenML 0.98's `KubeflowOrchestrator.submit_pipeline` compiles (upload left out)."""
    stack, _, submitted, step_environments, _ = _prepare(
        config, zenml_config_files, workdir, image, zenml_url, mlflow_uri
    )
    orchestrator = stack.orchestrator
    orchestrator.submit_pipeline(
        snapshot=submitted,
        stack=stack,
        base_environment={"ZENML_STORE_URL": zenml_url},
        step_environments=step_environments,
    )
    (path,) = orchestrator.compiled
    return list(yaml.safe_load_all(Path(path).read_text()))


# ResourceSettings' byte units (ZenML's ByteUnit) as Kubernetes quantity suffixes.
_QUANTITY_SUFFIXES = {"KiB": "Ki", "MiB": "Mi", "GiB": "Gi", "TiB": "Ti", "PiB": "Pi"} | {
    unit: unit[0] for unit in ("KB", "MB", "GB", "TB", "PB")
}


def kubernetes_quantity(memory: str) -> str:
    """A ResourceSettings memory string ("32GB", "512MiB") as a Kubernetes quantity ("32G", "512Mi")."""
    for unit, suffix in sorted(_QUANTITY_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if memory.endswith(unit):
            return memory[: -len(unit)] + suffix
    raise ConfigError(f"ResourceSettings memory {memory!r}: expected a number with one of {sorted(_QUANTITY_SUFFIXES)}")


def _step_pod_settings(merged: dict[str, Any], step_name: str) -> Any:
    """The step's pod settings in the merged ZenML config (Kubeflow's, else Kubernetes'), step over pipeline."""
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    from components.config import deep_merge

    step_settings = ((merged.get("steps") or {}).get(step_name) or {}).get("settings") or {}
    pipeline_settings = merged.get("settings") or {}
    for key in ("orchestrator.kubeflow", "orchestrator.kubernetes"):
        pipeline_pod = (pipeline_settings.get(key) or {}).get("pod_settings") or {}
        step_pod = (step_settings.get(key) or {}).get("pod_settings") or {}
        if pipeline_pod or step_pod:
            return KubernetesPodSettings(**deep_merge(pipeline_pod, step_pod))
    return KubernetesPodSettings()


def _apply_resources(task: Any, resources: Any, pod_settings: Any) -> None:
    """CPU, memory and GPU from ResourceSettings; node selectors, tolerations, emptyDirs and env from pod settings."""
    from kfp import kubernetes

    if resources.cpu_count:
        cpu = f"{resources.cpu_count:g}"
        task.set_cpu_request(cpu).set_cpu_limit(cpu)
    if resources.memory:
        quantity = kubernetes_quantity(resources.memory)
        task.set_memory_request(quantity).set_memory_limit(quantity)
    if resources.gpu_count:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(resources.gpu_count)
    for key, value in pod_settings.node_selectors.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in pod_settings.tolerations:
        item = toleration if isinstance(toleration, dict) else toleration.to_dict()
        kubernetes.add_toleration(
            task,
            key=item.get("key"),
            operator=item.get("operator"),
            value=item.get("value"),
            effect=item.get("effect"),
            toleration_seconds=item.get("tolerationSeconds", item.get("toleration_seconds")),
        )
    volumes = {volume["name"]: volume for volume in (_as_dict(v) for v in pod_settings.volumes)}
    for mount in (_as_dict(m) for m in pod_settings.volume_mounts):
        volume = volumes[mount["name"]]
        empty_dir = volume.get("emptyDir", volume.get("empty_dir"))
        if empty_dir is None:
            raise ConfigError(f"pod settings volume {mount['name']!r}: only emptyDir volumes are carried to Kubeflow")
        kubernetes.empty_dir_mount(
            task,
            volume_name=mount["name"],
            mount_path=mount.get("mountPath", mount.get("mount_path")),
            medium=empty_dir.get("medium"),
            size_limit=empty_dir.get("sizeLimit", empty_dir.get("size_limit")),
        )
    for variable in (_as_dict(e) for e in pod_settings.env):
        task.set_env_variable(name=variable["name"], value=variable["value"])


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(item)


def training_pipeline_ir(
    config: RunConfig,
    zenml_config_files: Sequence[str | Path],
    workdir: Path,
    image: str = DEFAULT_IMAGE,
    zenml_url: str = DEFAULT_ZENML_URL,
    mlflow_uri: str = DEFAULT_MLFLOW_URI,
) -> list[dict[str, Any]]:
    """kfp's compiler over the DAG ZenML compiles for `config`: [pipeline spec, Kubernetes platform spec]."""
    from kfp import compiler, dsl
    from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration
    from zenml.integrations.kubeflow.orchestrators.kubeflow_orchestrator import ENV_KFP_RUN_ID

    stack, snapshot, submitted, step_environments, merged = _prepare(
        config, zenml_config_files, workdir, image, zenml_url, mlflow_uri
    )
    orchestrator = stack.orchestrator
    steps = snapshot.step_configurations
    components = {
        name: orchestrator._create_dynamic_component(
            image,
            StepEntrypointConfiguration.get_entrypoint_command(),
            StepEntrypointConfiguration.get_entrypoint_arguments(step_name=name, snapshot_id=submitted.id),
            name,
        )
        for name in steps
    }

    @dsl.pipeline(name=PIPELINE_NAME.replace("_", "-"), display_name=PIPELINE_NAME)
    def kubeflow_pipeline():  # no annotation: kfp reads it, and `from __future__ import annotations` makes it a string
        tasks: dict[str, Any] = {}
        for name, step in steps.items():  # ZenML orders the steps so that upstream steps come first
            task = components[name]().set_display_name(name).set_caching_options(enable_caching=False)
            task.set_env_variable(name=ENV_KFP_RUN_ID, value=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            for key, value in step_environments[name].items():
                task.set_env_variable(name=key, value=value)
            _apply_resources(task, step.config.resource_settings, _step_pod_settings(merged, name))
            tasks[name] = task.after(*(tasks[upstream] for upstream in step.spec.upstream_steps))

    path = workdir / "training_pipeline.kfp.yaml"
    compiler.Compiler().compile(pipeline_func=kubeflow_pipeline, package_path=str(path))
    return list(yaml.safe_load_all(path.read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cxr.kfp_ir --config FILE [--zenml-config FILE]... --out FILE`: write the KFP IR YAML."""
    from cxr.stack import configure_environment

    project_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(prog="python -m cxr.kfp_ir", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    add_zenml_config_option(parser)
    parser.add_argument("--out", required=True, help="the KFP IR YAML file to write")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"image of every task (default {DEFAULT_IMAGE})")
    parser.add_argument(
        "--workdir",
        default=os.environ.get("CXR_WORKDIR", str(project_root / ".cxr")),
        help="local state folder (default as for `cxr`: .cxr in the project)",
    )
    args = parser.parse_args(argv)
    try:
        import kfp  # noqa: F401
    except ImportError:
        print("kfp is not installed: run make install (it is in the lock)", file=sys.stderr)
        return 2
    try:
        config = load_run_config(args.config)
        paths = configure_environment(args.workdir)
        ir = training_pipeline_ir(
            config, [project_root / "zenml_config.yaml", *args.zenml_config], paths.workdir / "kfp-ir", image=args.image
        )
    except CxrError as error:  # the run config, a ZenML overlay or the work folder: its message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump_all(ir, sort_keys=False))
    print(f"KFP IR with {len(ir[0]['root']['dag']['tasks'])} tasks (one per step) written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
