"""Typed contracts from run config to artifact.

- ZenML 0.98 takes a pydantic model as a step parameter, records it in the
  run's configuration, and stores a pydantic return value with its
  PydanticMaterializer (checked on the local orchestrator, one step).
- No step or pipeline signature in steps/ or pipelines/ is a bare dict.
- The ZenML run config's `train_steps` settings reach every train step.
"""

import ast
import re
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from pydantic import BaseModel
from zenml import pipeline, step

from components.config import TRAIN_STEPS_KEY, TrainingConfig, merged_yaml_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class EchoResult(BaseModel):
    epochs: int
    training: TrainingConfig


@step(enable_cache=False)
def echo_training(training: TrainingConfig) -> Annotated[EchoResult, "echo"]:
    assert isinstance(training, TrainingConfig)  # validated back into the model, not a dict
    return EchoResult(epochs=training.epochs, training=training)


@pipeline(enable_cache=False)
def echo_pipeline(training: TrainingConfig) -> None:
    echo_training(training=training)


def test_zenml_round_trips_a_pydantic_step_parameter_and_output(local_stack):
    from zenml.client import Client

    training = TrainingConfig(epochs=3, lr_schedule="cosine", fine_tune_layers=2)
    run = Client().get_pipeline_run(echo_pipeline(training=training).id)
    recorded = run.steps["echo_training"].config.parameters["training"]
    assert recorded == training.model_dump(mode="json")
    assert run.config.parameters["training"]["lr_schedule"] == "cosine"
    artifact = run.steps["echo_training"].outputs["echo"][0]
    assert artifact.materializer.attribute == "PydanticMaterializer"
    loaded = artifact.load()
    assert isinstance(loaded, EchoResult)
    assert loaded.training == training


def _bare_dict_annotations(path: Path) -> list[str]:
    """'file:line name' for each function parameter or return annotated dict / dict[...] / Dict."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        annotated = [(argument.arg, argument.annotation) for argument in arguments]
        annotated.append((f"{node.name} -> return", node.returns))
        for name, annotation in annotated:
            # A whole word: BATCH_PREDICTIONS is no dict.
            if annotation is not None and re.search(r"\bdict\b", ast.unparse(annotation), re.IGNORECASE):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {name}: {ast.unparse(annotation)}")
    return found


# ZenML's own interface: BaseMaterializer.extract_metadata returns Dict[str, MetadataType].
ZENML_REQUIRES_DICT = ("extract_metadata -> return",)


@pytest.mark.parametrize("package", ["steps", "pipelines"])
def test_no_dict_in_step_and_pipeline_signatures(package):
    hits = [hit for path in sorted((PROJECT_ROOT / package).glob("*.py")) for hit in _bare_dict_annotations(path)]
    offenders = [hit for hit in hits if not any(f" {allowed}:" in hit for allowed in ZENML_REQUIRES_DICT)]
    assert offenders == []


def test_train_steps_settings_reach_every_train_step(tmp_path):
    train_steps = ["train_MobileNet", "train_no_both"]
    merged_file = merged_yaml_file(
        [PROJECT_ROOT / "zenml_config.yaml", PROJECT_ROOT / "infra" / "zenml_kubernetes.yaml"],
        tmp_path / "merged.yaml",
        train_step_ids=train_steps,
    )
    merged = yaml.safe_load(merged_file.read_text())
    assert TRAIN_STEPS_KEY not in merged  # ZenML rejects keys it does not know
    for step_id in train_steps:
        settings = merged["steps"][step_id]["settings"]
        assert settings["resources"]["gpu_count"] == 1  # from zenml_config.yaml
        pod = settings["orchestrator.kubernetes"]["pod_settings"]  # from the Kubernetes overlay
        assert pod["resources"]["limits"]["nvidia.com/gpu"] == "1"  # ZenML takes quantities as strings
    assert "gpu_count" not in merged["steps"]["expand_training_data"]["settings"]["resources"]
    assert "train_Xception" not in merged["steps"]  # only the steps this pipeline has


def test_a_step_id_set_in_a_file_overrides_train_steps(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"steps": {"train_MobileNet": {"settings": {"resources": {"cpu_count": 2}}}}}))
    merged_file = merged_yaml_file(
        [PROJECT_ROOT / "zenml_config.yaml", overlay], tmp_path / "merged.yaml", train_step_ids=["train_MobileNet"]
    )
    resources = yaml.safe_load(merged_file.read_text())["steps"]["train_MobileNet"]["settings"]["resources"]
    assert resources["cpu_count"] == 2
    assert resources["gpu_count"] == 1
