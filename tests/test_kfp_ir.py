"""The Kubeflow pipeline (KFP IR) of the training pipeline, compiled offline (cxr/kfp_ir.py).

kfp 2.16 pins protobuf<7: the lock holds protobuf 6.33.6 (which TensorFlow, MLflow and ZenML
accept), so kfp is installed with everything else and these tests run in the suite.
"""

import pytest
import yaml

from components.config import load_run_config
from cxr.kfp_ir import DEFAULT_IMAGE, DEFAULT_ZENML_URL, GPU_RESOURCE, main, zenml_orchestrator_ir
from tests.conftest import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "configs" / "paper.yaml"
OVERLAY = PROJECT_ROOT / "infra" / "zenml_kubernetes.yaml"
TRAIN_STEPS = {"train_InceptionV3", "train_MobileNet", "train_Xception"}  # configs/paper.yaml's backbones
OTHER_STEPS = {"ingest_data", "split_data", "expand_training_data", "register_best_model", "promote_model"}
GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}  # infra/zenml_kubernetes.yaml


@pytest.fixture(scope="module")
def documents(session_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp-ir") / "training_pipeline.yaml"
    argv = ["--workdir", str(session_paths.workdir), "--config", str(CONFIG), "--zenml-config", str(OVERLAY)]
    assert main([*argv, "--out", str(out)]) == 0
    return list(yaml.safe_load_all(out.read_text()))


@pytest.fixture(scope="module")
def ir(documents):
    return documents[0]


@pytest.fixture(scope="module")
def platform(documents):
    """kfp-kubernetes' settings by executor label."""
    return documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(ir):
    """Task spec by ZenML step name (the task's display name)."""
    return {task["taskInfo"]["name"]: task for task in ir["root"]["dag"]["tasks"].values()}


def _executor(ir, task):
    return ir["components"][task["componentRef"]["name"]]["executorLabel"]


def _container(ir, task):
    return ir["deploymentSpec"]["executors"][_executor(ir, task)]["container"]


def _upstream(ir, task):
    names = {key: value["taskInfo"]["name"] for key, value in ir["root"]["dag"]["tasks"].items()}
    return {names[key] for key in task.get("dependentTasks", [])}


def _env(container):
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_one_task_per_step(ir):
    tasks = _tasks(ir)
    assert len(tasks) == len(ir["root"]["dag"]["tasks"])  # display names (step names) are unique
    assert set(tasks) >= TRAIN_STEPS
    assert set(tasks) >= OTHER_STEPS


def test_every_task_runs_zenmls_step_entrypoint_for_its_step(ir):
    for name, task in _tasks(ir).items():
        container = _container(ir, task)
        assert container["command"] == ["python", "-m", "zenml.entrypoints.entrypoint"], name
        args = container["args"]
        assert args[args.index("--step_name") + 1] == name


def test_tasks_follow_the_pipeline_dag(ir):
    tasks = _tasks(ir)
    assert _upstream(ir, tasks["ingest_data"]) == set()
    assert _upstream(ir, tasks["split_data"]) == {"ingest_data"}
    for name in TRAIN_STEPS:
        assert "expand_training_data" in _upstream(ir, tasks[name]), name
    assert _upstream(ir, tasks["register_best_model"]) >= TRAIN_STEPS
    assert _upstream(ir, tasks["promote_model"]) == {"register_best_model"}


def test_gpu_on_train_tasks_only(ir):
    for name, task in _tasks(ir).items():
        accelerator = _container(ir, task)["resources"].get("accelerator")
        if name in TRAIN_STEPS:
            assert accelerator["resourceType"] == GPU_RESOURCE, name
            assert accelerator["resourceCount"] == "1", name
        else:
            assert accelerator is None, name


def test_gpu_node_selector_and_toleration_on_train_tasks_only(ir, platform):
    for name, task in _tasks(ir).items():
        settings = platform.get(_executor(ir, task), {})
        selector = settings.get("nodeSelector", {}).get("labels", {})
        tolerations = settings.get("tolerations", [])
        if name in TRAIN_STEPS:
            assert selector == GPU_NODE_SELECTOR, name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations, name
        else:
            assert selector == {}, name
            assert tolerations == [], name


def test_dev_shm_is_memory_backed_on_train_tasks(ir, platform):
    for name in TRAIN_STEPS:
        mounts = {mount["mountPath"]: mount for mount in platform[_executor(ir, _tasks(ir)[name])]["emptyDirMounts"]}
        assert mounts["/dev/shm"]["medium"] == "Memory", name


def test_every_task_requests_cpu_and_memory(ir):
    for name, task in _tasks(ir).items():
        resources = _container(ir, task)["resources"]
        assert "resourceCpuRequest" in resources, name
        assert "resourceMemoryRequest" in resources, name


def test_resources_repeat_the_zenml_resource_settings(ir):
    tasks = _tasks(ir)
    train = _container(ir, tasks["train_Xception"])["resources"]
    expand = _container(ir, tasks["expand_training_data"])["resources"]
    ingest = _container(ir, tasks["ingest_data"])["resources"]
    assert train["resourceCpuRequest"] == "8"
    assert train["resourceMemoryLimit"] == "32G"
    assert expand["resourceCpuRequest"] == "16"
    assert expand["resourceMemoryLimit"] == "16G"
    assert ingest["resourceCpuRequest"] == "2"
    assert ingest["resourceMemoryLimit"] == "8G"


def test_every_task_has_the_image_and_environment(ir):
    for name, task in _tasks(ir).items():
        container = _container(ir, task)
        env = _env(container)
        assert container["image"] == DEFAULT_IMAGE, name
        assert env["ZENML_STORE_URL"] == DEFAULT_ZENML_URL, name
        assert "KFP_RUN_ID" in env, name


def test_pod_env_of_the_overlay_reaches_its_steps(ir):
    tasks = _tasks(ir)
    assert _env(_container(ir, tasks["train_MobileNet"]))["CXR_SHARD_CACHE"] == "/shard-cache"
    assert _env(_container(ir, tasks["expand_training_data"]))["TMPDIR"] == "/scratch"


def test_caching_is_off_for_every_task(ir):
    for name, task in _tasks(ir).items():
        assert task["cachingOptions"].get("enableCache", False) is False, name


# ZenML 0.98's own Kubeflow orchestrator: why cxr.kfp_ir compiles the DAG itself. When one of
# these fails, ZenML has fixed it: compile through `zenml_orchestrator_ir` instead.


def test_zenmls_kubeflow_orchestrator_fails_on_step_memory(session_paths, tmp_path):
    """It passes ResourceSettings.get_memory(), a float, to kfp's set_memory_limit."""
    config = load_run_config(CONFIG)
    with pytest.raises(TypeError, match="expected string"):
        zenml_orchestrator_ir(config, [PROJECT_ROOT / "zenml_config.yaml", OVERLAY], tmp_path)


def test_zenmls_kubeflow_settings_drop_pod_node_selectors():
    """Its GPU request needs the node selector `accelerator`, which its settings discard."""
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings

    settings = KubeflowOrchestratorSettings(pod_settings={"node_selectors": {"accelerator": "nvidia-tesla-t4"}})
    assert settings.pod_settings.node_selectors == {}


def test_zenmls_kubeflow_orchestrator_builds_the_same_dag_without_gpus(ir, session_paths, tmp_path):
    """With memory unset (its bug above), ZenML compiles the same tasks and edges, and no GPU."""
    no_memory = tmp_path / "no_memory.yaml"
    no_memory.write_text(
        yaml.safe_dump(
            {
                "settings": {"resources": {"memory": None}},
                "train_steps": {"settings": {"resources": {"memory": None}}},
                "steps": {"expand_training_data": {"settings": {"resources": {"memory": None}}}},
            }
        )
    )
    config = load_run_config(CONFIG)
    zenml_ir = zenml_orchestrator_ir(config, [PROJECT_ROOT / "zenml_config.yaml", OVERLAY, no_memory], tmp_path)[0]
    ours = {name: (_upstream(ir, task), _container(ir, task)["args"]) for name, task in _tasks(ir).items()}
    theirs = {
        name: (_upstream(zenml_ir, task), _container(zenml_ir, task)["args"]) for name, task in _tasks(zenml_ir).items()
    }
    assert theirs == ours
    for name, task in _tasks(zenml_ir).items():
        assert "accelerator" not in _container(zenml_ir, task).get("resources", {}), name


def test_a_missing_config_is_a_clear_error(session_paths, tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    argv = ["--workdir", str(session_paths.workdir), "--config", str(missing), "--out", str(tmp_path / "ir.yaml")]
    assert main(argv) == 1
    assert str(missing) in capsys.readouterr().err


def test_memory_units_become_kubernetes_quantities():
    from cxr.kfp_ir import kubernetes_quantity

    assert kubernetes_quantity("32GB") == "32G"
    assert kubernetes_quantity("512MiB") == "512Mi"
