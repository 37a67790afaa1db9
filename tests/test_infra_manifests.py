"""The model server's Kubernetes manifests (infra/k8s/model-server), checked offline.

No API server can run here: these checks read the manifests as Kubernetes would
and hold them to the server they run (`cxr serve`): its command line parses, its
probes are routes it answers, its port is the one the Service targets. Schema
validation against the Kubernetes API (kubernetes-validate) belongs to the
scheduling and Kubernetes issue, with the rest of infra/.
"""

from pathlib import Path

import yaml

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
