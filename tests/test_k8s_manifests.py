"""The Jobs ZenML's Kubernetes orchestrator would submit for the training pipeline, checked offline.

`cxr k8s-manifests` compiles the training pipeline of configs/paper.yaml with
infra/zenml_kubernetes.yaml and builds each Job with ZenML's own manifest
builders; the files are validated against the Kubernetes API schemas of 1.29 to
1.33 (kubernetes-validate --strict) and held to the pod policies. A broken
manifest must fail the same checks, so they can fail.
"""

import copy
from pathlib import Path

import pytest
import yaml

from components.kube_checks import (
    GPU_RESOURCE,
    KUBERNETES_VERSIONS,
    load_documents,
    pod_spec,
    policy_violations,
    validate_documents,
)
from cxr.cli import main
from cxr.k8s_manifests import ORCHESTRATOR_FILE, STEP_NAME_LABEL, is_train_job
from tests.conftest import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "configs" / "paper.yaml"
OVERLAY = PROJECT_ROOT / "infra" / "zenml_kubernetes.yaml"
TRAIN_STEPS = {"train_InceptionV3", "train_MobileNet", "train_Xception"}  # configs/paper.yaml's backbones
# Maps whose keys are names chosen by users (labels, resources, data), not API fields.
FREE_FORM_KEYS = {"labels", "annotations", "nodeSelector", "matchLabels", "requests", "limits", "data"}


@pytest.fixture(scope="module")
def manifests(session_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("k8s-manifests")
    argv = ["--workdir", str(session_paths.workdir), "k8s-manifests", "--config", str(CONFIG)]
    assert main([*argv, "--zenml-config", str(OVERLAY), "--out", str(out)]) == 0  # validated and policies hold
    return {path.name: document for path, document in ((p, yaml.safe_load(p.read_text())) for p in out.glob("*.yaml"))}


def _step_jobs(manifests):
    return {
        doc["metadata"]["labels"][STEP_NAME_LABEL]: doc for name, doc in manifests.items() if name != ORCHESTRATOR_FILE
    }


def _container(document):
    (container,) = pod_spec(document)["containers"]
    return container


def test_one_job_for_the_orchestrator_and_one_per_step(manifests):
    steps = _step_jobs(manifests)
    assert ORCHESTRATOR_FILE in manifests
    assert set(steps) >= TRAIN_STEPS
    assert {"ingest_data", "expand_training_data", "register_best_model", "promote_model"} <= set(steps)
    assert {doc["kind"] for doc in manifests.values()} == {"Job"}


def test_commands_are_zenmls_entrypoints(manifests):
    orchestrator = _container(manifests[ORCHESTRATOR_FILE])
    assert (
        orchestrator["command"][-1] == "zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator_entrypoint"
    )
    train = _container(_step_jobs(manifests)["train_Xception"])
    assert train["args"][train["args"].index("--step_name") + 1] == "train_Xception"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_job_is_valid_for_the_kubernetes_api(manifests, version):
    assert validate_documents(manifests.values(), [version], strict=True) == []


def _keys(value, parent=None):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            if key not in FREE_FORM_KEYS:
                yield from _keys(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item, parent)


def test_serialised_as_the_api_expects_camel_case(manifests):
    snake = {key for document in manifests.values() for key in _keys(document) if "_" in key}
    assert snake == set()
    assert "restartPolicy" in pod_spec(manifests[ORCHESTRATOR_FILE])


def test_gpu_limit_toleration_and_node_selector_on_train_steps_only(manifests):
    for step, document in _step_jobs(manifests).items():
        spec = pod_spec(document)
        limits = _container(document)["resources"].get("limits", {})
        if step in TRAIN_STEPS:
            assert limits[GPU_RESOURCE] == "1", step
            assert spec["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}], step
            assert spec["nodeSelector"], step
        else:
            assert GPU_RESOURCE not in limits, step
            assert "tolerations" not in spec, step
            assert "nodeSelector" not in spec, step
    assert "nodeSelector" not in pod_spec(manifests[ORCHESTRATOR_FILE])


def test_dev_shm_is_memory_backed_on_train_steps(manifests):
    for step in TRAIN_STEPS:
        document = _step_jobs(manifests)[step]
        mounts = {m["mountPath"]: m["name"] for m in _container(document)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(document)["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", step


def test_every_container_requests_cpu_and_memory_and_none_is_privileged(manifests):
    for name, document in manifests.items():
        container = _container(document)
        assert set(container["resources"]["requests"]) >= {"cpu", "memory"}, name
        assert container["securityContext"]["privileged"] is False, name
    assert policy_violations(manifests.values(), is_train_job) == []


def test_pod_requests_repeat_the_zenml_resource_settings(manifests):
    """ZenML's Kubernetes orchestrator ignores ResourceSettings: the overlay's pod requests must say the same."""
    zenml_config = yaml.safe_load((PROJECT_ROOT / "zenml_config.yaml").read_text())
    overlay = yaml.safe_load(OVERLAY.read_text())
    wanted = {
        "train_Xception": zenml_config["train_steps"]["settings"]["resources"],
        "expand_training_data": zenml_config["steps"]["expand_training_data"]["settings"]["resources"],
        "ingest_data": overlay["settings"]["resources"],
    }
    for step, resources in wanted.items():
        requests = _container(_step_jobs(manifests)[step])["resources"]["requests"]
        assert requests["cpu"] == str(resources["cpu_count"]), step
        assert requests["memory"] == resources["memory"].removesuffix("B"), step  # ZenML's "32GB" is Kubernetes' 32G


def test_a_misspelt_field_fails_validation_for_every_version(manifests):
    broken = copy.deepcopy(_step_jobs(manifests)["train_Xception"])
    spec = pod_spec(broken)
    spec["nodeSelecter"] = spec.pop("nodeSelector")
    errors = validate_documents([broken], KUBERNETES_VERSIONS, strict=True)
    assert len(errors) == len(KUBERNETES_VERSIONS)
    assert "nodeSelecter" in errors[0]


def test_zenmls_default_step_pod_failure_policy_fails_validation(manifests):
    """Why infra/zenml_kubernetes.yaml states `pod_failure_policy`: ZenML's default omits a required field."""
    from cxr.k8s_manifests import ZENML_STEP_POD_FAILURE_POLICY

    job = copy.deepcopy(_step_jobs(manifests)["ingest_data"])
    job["spec"]["podFailurePolicy"] = ZENML_STEP_POD_FAILURE_POLICY
    errors = validate_documents([job], ["1.29"], strict=True)
    assert len(errors) == 1
    assert "'status' is a required property" in errors[0]


def test_policy_violations_are_reported(manifests):
    steps = _step_jobs(manifests)
    train, ingest = copy.deepcopy(steps["train_Xception"]), copy.deepcopy(steps["ingest_data"])
    del pod_spec(train)["tolerations"]
    _container(train)["volumeMounts"] = [m for m in _container(train)["volumeMounts"] if m["name"] != "dshm"]
    _container(ingest)["resources"]["limits"][GPU_RESOURCE] = "1"
    del _container(ingest)["resources"]["requests"]["cpu"]
    _container(ingest)["securityContext"]["privileged"] = True
    violations = policy_violations([train, ingest], is_train_job)
    assert any("without a GPU toleration" in v for v in violations)
    assert any("/dev/shm" in v for v in violations)
    assert any(f"CPU workload with a {GPU_RESOURCE} limit" in v for v in violations)
    assert any("requests no cpu" in v for v in violations)
    assert any("is privileged" in v for v in violations)
    assert len(violations) == 5


def test_written_files_load_back(manifests, tmp_path):
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all(list(manifests.values())))
    assert len(load_documents([path])) == len(manifests)


def test_a_missing_config_is_a_clear_error(session_paths, tmp_path, capsys):
    argv = ["--workdir", str(session_paths.workdir), "k8s-manifests", "--config", str(tmp_path / "nope.yaml")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_a_resource_that_is_no_kubernetes_quantity_fails(manifests):
    """The schema types quantities as int-or-string, so "32 GB" passes kubernetes-validate: checked on its own."""
    broken = copy.deepcopy(_step_jobs(manifests)["train_Xception"])
    next(iter(pod_spec(broken)["containers"]))["resources"]["requests"]["memory"] = "32 GB"
    errors = validate_documents([broken], KUBERNETES_VERSIONS, strict=True)
    assert len(errors) == 1
    assert "requests.memory '32 GB' is not a Kubernetes quantity" in errors[0]


def _k8s_manifests_with(overlay: dict, session_paths, tmp_path, capsys) -> tuple[int, str, Path]:
    """`cxr k8s-manifests` of configs/paper.yaml with `overlay` as its --zenml-config: (exit code, stderr, overlay)."""
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    argv = [
        "--workdir",
        str(session_paths.workdir),
        "k8s-manifests",
        "--config",
        str(PROJECT_ROOT / "configs/paper.yaml"),
    ]
    code = main([*argv, "--zenml-config", str(path), "--out", str(tmp_path / "out")])
    return code, capsys.readouterr().err, path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("no service account", "sets no service_account_name"),
        ("gpu as a number", "must be strings"),
    ],
)
def test_an_overlay_zenml_refuses_is_one_error_line(session_paths, tmp_path, capsys, change, expected):
    overlay = yaml.safe_load((PROJECT_ROOT / "infra" / "zenml_kubernetes.yaml").read_text())
    kubernetes = overlay["settings"]["orchestrator.kubernetes"]
    if change == "gpu as a number":
        overlay["train_steps"]["settings"]["orchestrator.kubernetes"]["pod_settings"]["resources"]["limits"][
            GPU_RESOURCE
        ] = 1
    else:
        kubernetes.pop("service_account_name")
    code, err, _ = _k8s_manifests_with(overlay, session_paths, tmp_path, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert expected in err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("node_selector", "pod_settings.node_selector: unknown key (did you mean 'node_selectors'?)"),
        ("train_step", "train_step: unknown key (did you mean 'train_steps'?)"),
        ("step id", "steps.train_mobilenet: no such step in this pipeline (did you mean 'train_MobileNet'?)"),
    ],
)
def test_a_misspelt_overlay_key_is_refused_by_name(session_paths, tmp_path, capsys, change, expected):
    """ZenML ignores keys it does not know: the overlay would run the train steps without their GPU node."""
    overlay = yaml.safe_load((PROJECT_ROOT / "infra" / "zenml_kubernetes.yaml").read_text())
    if change == "train_step":
        overlay["train_step"] = overlay.pop("train_steps")
    elif change == "step id":  # one step's settings under a misspelt id: ZenML would ignore them
        overlay["steps"]["train_mobilenet"] = overlay.pop("train_steps")
    else:
        pod = overlay["train_steps"]["settings"]["orchestrator.kubernetes"]["pod_settings"]
        pod["node_selector"] = pod.pop("node_selectors")
    code, err, path = _k8s_manifests_with(overlay, session_paths, tmp_path, capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert expected in err
    assert str(path) in err


def test_unknown_keys_names_each_with_its_path_and_leaves_free_form_values_alone():
    from components.config import ANY_KEY, unknown_keys

    tree = {"settings": {"resources": {"cpu_count": None}}, "steps": {ANY_KEY: {"parameters": None}}}
    data = {
        "settings": {"resources": {"cpu_cuont": 2}},
        "steps": {"any_step": {"parameters": {"whatever": 1}, "paramters": {}}},
        "stpes": {},
    }
    assert unknown_keys(data, tree) == [
        "settings.resources.cpu_cuont: unknown key (did you mean 'cpu_count'?)",
        "steps.any_step.paramters: unknown key (did you mean 'parameters'?)",
        "stpes: unknown key (did you mean 'steps'?)",
    ]
    assert unknown_keys({"settings": {"resources": {"cpu_count": 2}}}, tree) == []


def test_step_ids_of_other_pipelines_are_not_misspellings():
    from components.config import misspelt_step_ids

    steps = ["ingest_data", "train_MobileNet", "expand_training_data"]
    assert misspelt_step_ids(["expand_training_data", "evaluate_registered_model"], steps) == []
    assert misspelt_step_ids(["ingest_dat", "TRAIN_MOBILENET"], steps) == [
        "steps.ingest_dat: no such step in this pipeline (did you mean 'ingest_data'?)",
        "steps.TRAIN_MOBILENET: no such step in this pipeline (did you mean 'train_MobileNet'?)",
    ]
