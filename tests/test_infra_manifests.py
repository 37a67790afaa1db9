"""The model server's Kubernetes manifests (infra/k8s/model-server), checked offline.

No API server can run here: these checks read the manifests as Kubernetes would
and hold them to the server they run (`cxr serve`): its command line parses, its
probes are routes it answers, its port is the one the Service targets. Below, every
Kustomize base and overlay of infra/k8s (MLflow, the ZenML server, the model server,
the pipelines' service account) is rendered with `kubectl kustomize` and validated
against the Kubernetes API schemas of 1.29 to 1.33 (kubernetes-validate --strict).
"""

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.kube_checks import KUBERNETES_VERSIONS, policy_violations, validate_documents
from cxr.cli import build_parser

FOLDER = Path(__file__).resolve().parent.parent / "infra" / "k8s" / "model-server"


def _documents() -> dict[str, dict]:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    documents = {}
    for name in kustomization["resources"]:
        document = yaml.safe_load((FOLDER / name).read_text())
        documents[document["kind"]] = document
    return documents


def test_kustomization_lists_every_manifest_in_the_folder():
    listed = set(yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert set(_documents()) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}


def test_the_container_runs_cxr_serve_with_a_command_line_it_accepts():
    (container,) = _documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    argv = [*container["command"][1:], *container["args"]]
    argv = [a.replace("$(MODEL_NAME)", "cxr-classifier") for a in argv]
    args = build_parser().parse_args(argv)
    assert args.handler.__name__ == "cmd_serve"
    assert args.port == container["ports"][0]["containerPort"]
    assert args.host == "0.0.0.0"


def test_probes_are_the_servers_liveness_and_readiness_routes():
    (container,) = _documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert container["startupProbe"]["httpGet"]["path"] == "/ping"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"  # a canned image through the model
    import inspect

    from mlflow.pyfunc import scoring_server

    # /ping comes with MLflow's app (scoring_server.init), /health is the server's own readiness route.
    assert 'app.get("/ping")' in inspect.getsource(scoring_server.init)
    assert '"/health"' in (FOLDER.parents[2] / "components" / "server.py").read_text()


def test_resources_security_and_the_autoscaler():
    documents = _documents()
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    for container in pod["containers"]:
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["securityContext"]["privileged"] is False
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    service_port = documents["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == pod["containers"][0]["ports"][0]["name"]
    target = documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", documents["Deployment"]["metadata"]["name"])
    assert documents["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


# --- Every Kustomize base and overlay under infra/k8s, rendered by `kubectl kustomize` and validated
# against the Kubernetes API schemas (kubernetes-validate --strict), as tests/test_k8s_manifests.py
# does for the pipelines' Jobs.

K8S = FOLDER.parent
BASES = ("model-server", "mlflow", "zenml-server", "pipelines", "retraining")
OVERLAYS = {"overlays/team": "cxr", "overlays/dev": "cxr-dev"}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (for `kubectl kustomize`) is not installed")


def _render(folder) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    return {name: _render(K8S / name) for name in (*BASES, *OVERLAYS)}


def _by_kind(documents, kind, name):
    (document,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def _env(container) -> dict:
    return {variable["name"]: variable for variable in container.get("env", [])}


def test_every_base_is_in_an_overlay():
    for overlay in OVERLAYS:
        resources = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())["resources"]
        assert {f"../../{base}" for base in BASES} <= set(resources), overlay


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_is_valid_for_the_kubernetes_api(rendered, version):
    for name, documents in rendered.items():
        assert validate_documents(documents, [version], strict=True) == [], name


@needs_kubectl
def test_pod_policies_hold_for_the_services(rendered):
    for name, documents in rendered.items():
        assert policy_violations(documents, is_gpu_workload=lambda document: False) == [], name


@needs_kubectl
def test_overlays_put_everything_in_their_namespace_and_the_model_server_finds_mlflow(rendered):
    for overlay, namespace in OVERLAYS.items():
        documents = rendered[overlay]
        assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {namespace}
        mlflow_port = _by_kind(documents, "Service", "mlflow")["spec"]["ports"][0]["port"]
        config = _by_kind(documents, "ConfigMap", "cxr-model-server")["data"]
        assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow.{namespace}.svc.cluster.local:{mlflow_port}"
        (subject,) = _by_kind(documents, "RoleBinding", "cxr-pipelines-edit")["subjects"]
        assert subject["namespace"] == namespace


@needs_kubectl
def test_mlflow_reads_its_database_from_a_secret_and_stores_artifacts_in_s3(rendered):
    for name in ("mlflow", *OVERLAYS):
        documents = rendered[name]
        (container,) = _by_kind(documents, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
        assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in container["args"]
        assert _env(container)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "cxr-mlflow-db"
        destination = _by_kind(documents, "ConfigMap", "mlflow")["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
        assert destination.startswith("s3://"), name
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"


@needs_kubectl
def test_mlflow_server_accepts_the_command_line():
    """The arguments the Deployment passes are options of the installed `mlflow server`."""
    from click.testing import CliRunner
    from mlflow.cli import server

    deployment = _by_kind(_render(K8S / "mlflow"), "Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    help_text = CliRunner().invoke(server, ["--help"]).output
    for argument in container["args"]:
        assert argument.split("=")[0] in help_text, argument


@needs_kubectl
def test_zenml_server_matches_the_client_and_reads_its_store_from_a_secret(rendered):
    import zenml

    (container,) = _by_kind(rendered["zenml-server"], "Deployment", "zenml-server")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"] == f"zenmldocker/zenml-server:{zenml.__version__}"
    assert _env(container)["ZENML_STORE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "cxr-zenml-db"


@needs_kubectl
def test_the_pipelines_service_account_is_the_one_the_zenml_overlay_names(rendered):
    overlay = yaml.safe_load((K8S.parents[1] / "infra" / "zenml_kubernetes.yaml").read_text())
    account = overlay["settings"]["orchestrator.kubernetes"]["service_account_name"]
    assert _by_kind(rendered["pipelines"], "ServiceAccount", account)


@needs_kubectl
def test_a_misspelt_field_fails_validation(rendered):
    deployment = copy.deepcopy(_by_kind(rendered["overlays/team"], "Deployment", "mlflow"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    errors = validate_documents([deployment], KUBERNETES_VERSIONS, strict=True)
    assert len(errors) == len(KUBERNETES_VERSIONS)


@needs_kubectl
def test_the_retraining_cronjob_runs_cxr_train_if_data_changed_and_never_overlaps(rendered):
    """infra/k8s/retraining: the CronJob runs `cxr train --if-data-changed` (a command line cxr accepts)
    on the in-cluster stack, one run at a time, as the pipelines' service account; the files it names
    are in the image; its steps run in its own (pinned) image."""
    dockerfile = (K8S.parent / "Dockerfile").read_text()
    for name in ("retraining", *OVERLAYS):
        documents = rendered[name]
        cronjob = _by_kind(documents, "CronJob", "cxr-retraining")
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        if name != "retraining":  # the base alone has no service account: infra/k8s/pipelines brings it
            assert _by_kind(documents, "ServiceAccount", pod["serviceAccountName"])
        (container,) = pod["containers"]
        settings = _by_kind(documents, "ConfigMap", "cxr-retraining")["data"]
        argv = [*container["command"][1:], *container["args"]]
        argv = [
            a.replace("$(CXR_CONFIG)", settings["CXR_CONFIG"]).replace("$(ZENML_STACK)", settings["ZENML_STACK"])
            for a in argv
        ]
        args = build_parser().parse_args(argv)
        assert args.handler.__name__ == "cmd_train"
        assert args.if_data_changed
        assert args.stack == "cxr_k8s_incluster"
        assert (K8S.parents[1] / args.config).is_file()
        for overlay in args.zenml_config:
            assert f"COPY {overlay} " in dockerfile or f"COPY {Path(overlay).parent}" in dockerfile, overlay
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert args.workdir in mounts  # the file cache and the decisions survive the pod
        assert _env(container)["CXR_STEP_IMAGE"]["value"] == container["image"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_stack_registration_script_passes_shellcheck():
    script = K8S.parent / "register_kubernetes_stack.sh"
    result = subprocess.run(
        ["shellcheck", "--enable=all", "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_the_stack_registration_script_registers_both_kubernetes_stacks_in_a_real_store(tmp_path):
    """The script's zenml commands run against a real (temporary) ZenML store: no cluster is needed to
    register a stack. Both stacks name the components the steps ask for (steps/names.py)."""
    import json
    import os
    import sys

    from steps.names import EXPERIMENT_TRACKER

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZENML_")},
        "ZENML_CONFIG_PATH": str(tmp_path / "zenml"),
        "ZENML_REPOSITORY_PATH": str(tmp_path),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "KUBE_CONTEXT": "team-cluster",
        "S3_PATH": "s3://team-bucket/zenml",
        "MLFLOW_URI": "https://mlflow.example.org",
        "REGISTRY_URI": "ghcr.io/my-org",
    }
    runner = [sys.executable, str(Path(__file__).parent / "run_stack_script.py")]
    script = str(K8S.parent / "register_kubernetes_stack.sh")
    without_credentials = subprocess.run([*runner, script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert without_credentials.returncode == 2
    assert "MLFLOW_TRACKING_USERNAME" in without_credentials.stderr

    env.update(MLFLOW_TRACKING_USERNAME="team", MLFLOW_TRACKING_PASSWORD="s3cret-pw")
    result = subprocess.run([*runner, script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    registered = json.loads(result.stdout.strip().splitlines()[-1])
    assert registered["secrets"] == {"cxr_mlflow": ["tracking_password", "tracking_username"]}
    assert "s3cret-pw" not in json.dumps(registered["stacks"])  # the password is in the secret only
    assert registered["active"] == "cxr_k8s"
    laptop, in_cluster = registered["stacks"]["cxr_k8s"], registered["stacks"]["cxr_k8s_incluster"]
    assert laptop["orchestrator"]["configuration"]["kubernetes_context"] == "team-cluster"
    assert laptop["orchestrator"]["configuration"]["kubernetes_namespace"] == "cxr"
    assert in_cluster["orchestrator"]["configuration"]["incluster"] is True
    for stack in (laptop, in_cluster):
        assert stack["artifact_store"]["configuration"]["path"] == "s3://team-bucket/zenml"
        assert stack["experiment_tracker"]["name"] == EXPERIMENT_TRACKER
        assert stack["experiment_tracker"]["configuration"]["tracking_uri"] == "https://mlflow.example.org"
        assert stack["experiment_tracker"]["configuration"]["tracking_username"] == "{{cxr_mlflow.tracking_username}}"
        assert stack["model_registry"]["flavor"] == "mlflow"
        assert stack["container_registry"]["configuration"]["uri"] == "ghcr.io/my-org"
    cronjob_stack = yaml.safe_load((K8S / "retraining" / "configmap.yaml").read_text())["data"]["ZENML_STACK"]
    assert cronjob_stack == "cxr_k8s_incluster"
