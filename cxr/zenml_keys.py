"""The keys ZenML reads in a run-config file, as a KeyTree for components.config.unknown_keys.

ZenML 0.98's configuration models ignore (or allow) keys they do not know, so a misspelt key in a
`--zenml-config` overlay (`node_selector` for `node_selectors`, `train_step` for `train_steps`) is
dropped in silence: a train step then runs without its GPU node selector. Every file merged by
cxr (components.config.merged_yaml_file) is checked against this tree first.

The tree comes from ZenML's own models (their pydantic fields), for the settings this project
uses: resources, docker, the Kubernetes and Kubeflow orchestrators (with their pod settings) and
the MLflow experiment tracker. Other settings keys are refused with the list of known ones: add
them here when a stack needs them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from components.config import ANY_KEY, TRAIN_STEPS_KEY


def _fields(model: Any) -> dict[str, None]:
    return dict.fromkeys(model.model_fields)


@cache
def zenml_config_keys() -> dict[str, Any]:
    """The KeyTree of a ZenML run-config file as cxr reads it (with its `train_steps` extension).

    Returns:
        {key: subtree or None}: top-level PipelineRunConfiguration fields, `settings` by settings key,
        `steps.<any id>` and `train_steps` as StepConfigurationUpdate fields with their `settings`.
    """
    from zenml.config import DockerSettings, ResourceSettings
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.config.step_configurations import StepConfigurationUpdate
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

    pod = _fields(KubernetesPodSettings)
    settings = {
        "resources": _fields(ResourceSettings),
        "docker": _fields(DockerSettings),
        "orchestrator.kubernetes": {
            **_fields(KubernetesOrchestratorSettings),
            "pod_settings": pod,
            "orchestrator_pod_settings": pod,
        },
        "orchestrator.kubeflow": {**_fields(KubeflowOrchestratorSettings), "pod_settings": pod},
        "experiment_tracker.mlflow": _fields(MLFlowExperimentTrackerSettings),
    }
    step = {**_fields(StepConfigurationUpdate), "settings": settings}
    return {**_fields(PipelineRunConfiguration), "settings": settings, "steps": {ANY_KEY: step}, TRAIN_STEPS_KEY: step}


def add_zenml_config_option(parser: Any) -> None:
    """The repeatable ``--zenml-config`` option of every command that merges ZenML run-config files.

    Args:
        parser: an argparse (sub)parser; the option lands in ``args.zenml_config`` (a list, [] by default).
    """
    parser.add_argument(
        "--zenml-config",
        action="append",
        default=[],
        metavar="YAML",
        help="ZenML run-config overlay merged over zenml_config.yaml (e.g. infra/zenml_kubernetes.yaml); repeatable",
    )
