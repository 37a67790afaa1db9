"""Serve before switch: the canary a new model server must pass before it takes the traffic.

After TFX's InfraValidator: a candidate model is started in its own server, must
answer its health check, and must reproduce on a few stored test images (the
canary, recorded with the version's evaluation at registration) the
probabilities of that evaluation within a tolerance and a latency budget. Only
then does the deployment switch to it (steps/deployment.py); a failed canary
leaves the old server serving.

The canary's images travel as the bytes of the files (base64), so the check
does not depend on where the training data lives at deployment time; the
expected probabilities are the evaluation's, computed in the training process
by components.evaluation with the same decoding (components.imaging).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
from pydantic import BaseModel

from components.assessment import Predictions
from components.errors import CxrError

__all__ = [
    "CANARY_ARTIFACT",
    "Canary",
    "CanaryResult",
    "Deployment",
    "DeploymentError",
    "DeploymentOutcome",
    "check_canary",
    "make_canary",
    "wait_until_healthy",
]

# Logged in the registering run beside evaluation/evidence.json (components.registry.EVIDENCE_ARTIFACT).
CANARY_ARTIFACT = "evaluation/canary.json"


class DeploymentError(CxrError):
    """A model server did not start, did not answer, or failed its canary; the old deployment keeps serving."""


class Canary(BaseModel):
    """A few test images of a version with the probabilities its evaluation gave them.

    ``images`` are the files' bytes, base64; ``expected`` float (N, C) probabilities in
    ``class_names`` order; ``uris`` where the images came from (for messages).
    """

    class_names: list[str]
    uris: list[str]
    images: list[str]
    expected: list[list[float]]


class CanaryResult(BaseModel):
    """What a server answered to the canary: the largest probability difference and the request's latency."""

    passed: bool
    max_abs_difference: float | None  # None when the server gave no usable answer
    latency_s: float
    detail: str


class Deployment(BaseModel):
    """One running (or stopped) model server of the stack's deployer, as `cxr deployments` lists it."""

    model_name: str
    version: str
    url: str | None  # the /invocations URL
    health_url: str | None
    healthy: bool
    since: str | None  # when the server was created, UTC ISO 8601
    service_id: str
    log_file: str | None


class DeploymentOutcome(BaseModel):
    """What a deploy did: ``action`` deployed, kept (already serving this version) or failed."""

    action: str  # "deployed", "kept", "skipped"
    deployment: Deployment | None
    replaced: list[str] = []  # versions whose servers were deleted after the switch
    canary: CanaryResult | None = None
    message: str


def make_canary(predictions: Predictions, n_images: int) -> Canary:
    """The canary of a version: its first `n_images` test images (in key order) and their probabilities.

    Args:
        predictions: the version's test-split predictions (components.evaluation).
        n_images: how many images (at most the split's size).

    Returns:
        The Canary; images whose file cannot be read now are skipped (the rest stay).
    """
    import base64

    order = sorted(range(len(predictions.keys)), key=lambda row: predictions.keys[row])
    uris, images, expected = [], [], []
    for row in order:
        if len(images) >= n_images:
            break
        try:
            data = Path(predictions.uris[row]).read_bytes()
        except OSError:
            continue
        uris.append(predictions.uris[row])
        images.append(base64.b64encode(data).decode("ascii"))
        expected.append([float(p) for p in predictions.probabilities[row]])
    return Canary(class_names=list(predictions.class_names), uris=uris, images=images, expected=expected)


def _probabilities(answer: object, class_names: Sequence[str], n_rows: int) -> np.ndarray:
    """The prob_<class> columns of an MLflow scoring server answer as float (N, C); ValueError when absent."""
    rows = answer.get("predictions") if isinstance(answer, dict) else answer
    if not isinstance(rows, list) or len(rows) != n_rows:
        raise ValueError(f"expected {n_rows} predictions, got {str(answer)[:200]}")
    try:
        return np.asarray([[float(row[f"prob_{name}"]) for name in class_names] for row in rows])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"answer without the prob_<class> columns ({error}): {str(rows[0])[:200]}") from None


def check_canary(
    invocations_url: str, canary: Canary, tolerance: float, latency_budget_s: float, timeout_s: float = 60.0
) -> CanaryResult:
    """Send the canary to a server's /invocations and compare its probabilities with the evaluation's.

    Args:
        invocations_url: e.g. ``http://127.0.0.1:8001/invocations`` (MLflow's scoring protocol).
        canary: the version's canary.
        tolerance: the largest absolute probability difference allowed (e.g. 1e-5).
        latency_budget_s: the longest the one request may take, in seconds.
        timeout_s: give up on the request after this long.

    Returns:
        The CanaryResult: passed only when the server answered 200 with every probability
        within `tolerance` and within the budget.
    """
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image] for image in canary.images]}})
    start = time.perf_counter()
    try:
        response = requests.post(
            invocations_url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout_s
        )
    except requests.RequestException as error:
        return CanaryResult(
            passed=False,
            max_abs_difference=None,
            latency_s=time.perf_counter() - start,
            detail=f"no answer from {invocations_url}: {error}",
        )
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return CanaryResult(
            passed=False,
            max_abs_difference=None,
            latency_s=latency,
            detail=f"HTTP {response.status_code} from {invocations_url}: {response.text[:300]}",
        )
    try:
        served = _probabilities(response.json(), canary.class_names, len(canary.images))
    except ValueError as error:
        return CanaryResult(passed=False, max_abs_difference=None, latency_s=latency, detail=str(error))
    differences = np.abs(served - np.asarray(canary.expected, dtype=float))
    worst = float(differences.max()) if differences.size else 0.0
    row = int(np.unravel_index(np.argmax(differences), differences.shape)[0]) if differences.size else 0
    problems = []
    if not math.isfinite(worst) or worst > tolerance:
        problems.append(
            f"probabilities differ from the evaluation's by up to {worst:.3g} > {tolerance:g} "
            f"(worst: {canary.uris[row] if canary.uris else 'row 0'})"
        )
    if latency > latency_budget_s:
        problems.append(f"took {latency:.2f} s > the latency budget {latency_budget_s:g} s")
    detail = "; ".join(problems) or (
        f"{len(canary.images)} canary images within {tolerance:g} (max difference {worst:.2g}) in {latency:.2f} s"
    )
    return CanaryResult(passed=not problems, max_abs_difference=worst, latency_s=latency, detail=detail)


def wait_until_healthy(health_url: str, alive, timeout_s: float, log_tail) -> float:
    """Poll a server's health URL until it answers 200.

    Args:
        health_url: e.g. ``http://127.0.0.1:8001/ping``.
        alive: () -> bool, whether the server process still runs (a dead one fails at once).
        timeout_s: the longest to wait, in seconds.
        log_tail: () -> str, the end of the server's log, quoted in the error.

    Returns:
        Seconds until it answered.

    Raises:
        DeploymentError: the process died, or it did not answer within `timeout_s`.
    """
    start = time.monotonic()
    while True:
        try:
            if requests.get(health_url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        waited = time.monotonic() - start
        if not alive():
            raise DeploymentError(f"the model server stopped after {waited:.0f} s without answering: {log_tail()}")
        if waited > timeout_s:
            raise DeploymentError(f"the model server did not answer {health_url} within {timeout_s:g} s: {log_tail()}")
        time.sleep(0.5)
