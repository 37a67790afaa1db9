"""Offline checks of Kubernetes manifests: the API schemas and this project's pod policies.

No API server runs where these checks run. Schema validation uses
`kubernetes-validate`, which bundles the OpenAPI-derived JSON schemas of each
Kubernetes release; `strict` rejects fields the API does not know (a misspelt
`nodeSelecter` passes a plain YAML load and would be dropped, or refused, by
the server). The policies are what the pipelines' pods must satisfy on a
shared GPU cluster, checked on the same documents.

Schema-check files: `python -m components.kube_checks FILE...` (every version above).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

# The Kubernetes minor versions the manifests are validated for (oldest still
# commonly run by managed clusters to the newest this project targets).
KUBERNETES_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")
GPU_RESOURCE = "nvidia.com/gpu"
SHM_PATH = "/dev/shm"

Document = dict[str, Any]


def load_documents(paths: Iterable[str | Path]) -> list[tuple[str, Document]]:
    """Every YAML document in `paths`, each with the file it came from.

    Args:
        paths: YAML files, each with one or more documents (`---`-separated).

    Returns:
        (file name, document) pairs, empty documents skipped.

    Raises:
        ValueError: a file is not YAML or a document is not a mapping (named).
    """
    loaded = []
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(Path(path).read_text()))
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not YAML: {error}") from error
        for index, document in enumerate(documents):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise ValueError(f"{path}: document {index} is a {type(document).__name__}, not a mapping")
            loaded.append((str(path), document))
    return loaded


def describe(document: Document) -> str:
    """`Kind/name` of a manifest, for messages."""
    return f"{document.get('kind', '?')}/{(document.get('metadata') or {}).get('name', '?')}"


def schema_errors(document: Document, version: str, strict: bool = True) -> list[str]:
    """Why the API of Kubernetes `version` would reject `document` (empty when it would not).

    Args:
        document: one manifest as the API expects it (camelCase keys, `apiVersion`, `kind`).
        version: a Kubernetes minor version, e.g. "1.29".
        strict: also reject properties the schema does not define.

    Returns:
        One message per problem: the version, the object and the field path.

    Raises:
        ImportError: kubernetes-validate is not installed.
    """
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    try:
        kubernetes_validate.validate(document, f"{version}.0", strict)
    except ValidationError as error:
        path = ".".join(str(part) for part in error.path) or "(top level)"
        return [f"Kubernetes {version}: {describe(document)}: {path}: {error.message}"]
    except SchemaNotFoundError as error:
        return [f"Kubernetes {version}: {describe(document)}: no schema: {error}"]
    return []


def validate_documents(
    documents: Iterable[Document], versions: Sequence[str] = KUBERNETES_VERSIONS, strict: bool = True
) -> list[str]:
    """Schema errors of every document for every version (empty: all valid).

    Args:
        documents: manifests as the API expects them.
        versions: Kubernetes minor versions, e.g. ("1.29", "1.33").
        strict: reject unknown properties.

    Returns:
        Messages naming the version, object and field of each problem.
    """
    documents = list(documents)
    return [
        message
        for version in versions
        for document in documents
        for message in schema_errors(document, version, strict)
    ] + [message for document in documents for message in quantity_errors(document)]


# A Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity; the API's OpenAPI schema types
# it as int-or-string, so kubernetes-validate cannot catch "32 GB"): the pattern of its parser.
_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")


def quantity_errors(document: Document) -> list[str]:
    """Resource requests and limits of a manifest's containers that are not Kubernetes quantities.

    Args:
        document: one manifest (any kind with a pod spec).

    Returns:
        One message per bad value, naming the object, container and resource (empty when none).
    """
    spec = pod_spec(document)
    if spec is None:
        return []
    problems = []
    for container in containers(spec):
        for section in ("requests", "limits"):
            for resource, value in ((container.get("resources") or {}).get(section) or {}).items():
                if not _QUANTITY.match(str(value)):
                    problems.append(
                        f"{describe(document)}: container {container.get('name')}: {section}.{resource} {value!r} "
                        "is not a Kubernetes quantity (e.g. 32Gi, 500m, 2)"
                    )
    return problems


def pod_spec(document: Document) -> Document | None:
    """The pod spec inside a Pod, a workload (Job, Deployment, ...) or a CronJob; None for other kinds."""
    kind = document.get("kind")
    spec = document.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    return (template or {}).get("spec") if template is not None else None


def containers(spec: Document) -> Iterator[Document]:
    """The containers and init containers of a pod spec."""
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def _requests_gpu(spec: Document) -> bool:
    return any(
        GPU_RESOURCE in ((container.get("resources") or {}).get(part) or {})
        for container in containers(spec)
        for part in ("limits", "requests")
    )


def _has_gpu_toleration(spec: Document) -> bool:
    return any(toleration.get("key") == GPU_RESOURCE for toleration in spec.get("tolerations") or [])


def policy_violations(documents: Iterable[Document], is_gpu_workload: Callable[[Document], bool]) -> list[str]:
    """This project's pod policies, one message per violation (empty: all hold).

    - every container requests CPU and memory (the scheduler packs nodes by requests);
    - no container is privileged;
    - a GPU workload (`is_gpu_workload`) has a `nvidia.com/gpu` limit, a GPU toleration, a node
      selector, and `/dev/shm` mounted from a memory-backed emptyDir (the container default
      of 64 MiB starves tf.data's workers);
    - any other workload has none of the GPU limit, GPU toleration or node selector (CPU steps
      must not hold GPU nodes).

    Args:
        documents: manifests; kinds without a pod spec are skipped.
        is_gpu_workload: tells the documents that must run on a GPU node.

    Returns:
        Messages naming the object and the policy.
    """
    violations = []
    for document in documents:
        spec = pod_spec(document)
        if spec is None:
            continue
        name = describe(document)
        for container in containers(spec):
            requests = (container.get("resources") or {}).get("requests") or {}
            for resource in ("cpu", "memory"):
                if resource not in requests:
                    violations.append(f"{name}: container {container.get('name')} requests no {resource}")
            if (container.get("securityContext") or {}).get("privileged"):
                violations.append(f"{name}: container {container.get('name')} is privileged")
        gpu = is_gpu_workload(document)
        checks = {
            f"a {GPU_RESOURCE} limit": any(
                GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}) for c in containers(spec)
            ),
            "a GPU toleration": _has_gpu_toleration(spec),
            "a node selector": bool(spec.get("nodeSelector")),
        }
        for what, present in checks.items():
            if gpu and not present:
                violations.append(f"{name}: a GPU workload without {what}")
            if not gpu and present:
                violations.append(f"{name}: a CPU workload with {what}")
        if gpu and not _requests_gpu(spec):
            violations.append(f"{name}: a GPU workload that requests no GPU")
        if gpu and not _shm_is_memory_backed(spec):
            violations.append(f"{name}: {SHM_PATH} is not a memory-backed emptyDir in every container")
    return violations


def _shm_is_memory_backed(spec: Document) -> bool:
    memory_volumes = {
        volume["name"]
        for volume in spec.get("volumes") or []
        if (volume.get("emptyDir") or {}).get("medium") == "Memory"
    }
    return all(
        any(
            mount.get("mountPath") == SHM_PATH and mount.get("name") in memory_volumes
            for mount in container.get("volumeMounts") or []
        )
        for container in spec.get("containers") or []
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m components.kube_checks FILE...`: validate for every version; exit 1 on any error."""
    parser = argparse.ArgumentParser(prog="python -m components.kube_checks", description=main.__doc__)
    parser.add_argument("files", nargs="+", help="YAML manifests (multi-document files allowed)")
    parser.add_argument("--versions", default=",".join(KUBERNETES_VERSIONS), help="comma-separated minor versions")
    parser.add_argument("--no-strict", action="store_true", help="allow properties the schema does not define")
    args = parser.parse_args(argv)
    try:
        documents = [document for _, document in load_documents(args.files)]
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    versions = [version.strip() for version in args.versions.split(",") if version.strip()]
    errors = validate_documents(documents, versions, strict=not args.no_strict)
    for message in errors:
        print(message, file=sys.stderr)
    print(f"{len(documents)} manifests, Kubernetes {', '.join(versions)}: {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
