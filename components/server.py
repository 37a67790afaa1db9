"""The HTTP server of `cxr serve`: MLflow's scoring app, with limits, the model's version and readiness.

``build_app`` starts from MLflow's own FastAPI app
(``mlflow.pyfunc.scoring_server.init``), so ``/invocations`` keeps MLflow's
protocol (JSON ``dataframe_split``, ``dataframe_records``, ``instances`` or
``inputs``; CSV; Parquet), and changes what a user or an SRE ran into:

* ``/ping``: MLflow's liveness answer (the process is up, the model loaded).
* ``/health``: readiness: one canned image (components.serving.example_input)
  goes through the model; 200 with the label and the seconds it took, 503
  with the reason when it fails or runs past the request timeout.
* ``/version``: JSON with the served registered model's name, version and URI
  and MLflow's version (MLflow answers its own version only).
* ``/invocations``: a request without a Content-Type gets 415 (MLflow: 500);
  a body above ``max_body_bytes`` gets 413 before it is read (from its
  Content-Length, or as soon as a chunked body passes the limit); rows, image
  sizes and pixels are bounded by the model (components.serving.InputLimits,
  400 naming the rows). A 200 answer carries ``"model": {"name", "version"}``
  beside MLflow's ``"predictions"``.
* Every response carries the header ``X-Model-Version: <name>/<version>``.
* Request timeout (``request_timeout_s``, replacing MLflow's middleware): a
  request still running then gets 504 DEADLINE_EXCEEDED at once; its work,
  in a worker thread, stops at its next image decode or batch of 32 images
  and its result is discarded.

``serve`` runs the app with uvicorn in this process (``workers: 1``), or in
uvicorn worker processes (``workers: N``, each loading the model), on a
socket bound before the model loads (``bind_socket``: a taken port is one
error, at once). SIGTERM and SIGINT stop it cleanly, exit status 0: no new
connections, requests in flight finish (at most the request timeout),
workers stop, the port is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from components.config import ServingConfig
from components.errors import CxrError
from components.serving import InputLimits, example_input, prob_column, request_deadline

MODEL_VERSION_HEADER = "X-Model-Version"
# The settings of a worker process (workers > 1): JSON of ServerSettings.
SETTINGS_ENV = "CXR_SERVER_SETTINGS"
# MLflow's routes that this app answers itself.
_REPLACED_ROUTES = frozenset({"/invocations", "/health", "/version"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ServerError(CxrError, OSError):
    """The server cannot start (its port is taken, its address cannot be bound)."""


class ServedModel(BaseModel):
    """The registered version being served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: the version itself, whatever its aliases do later."""
        return f"models:/{self.name}/{self.version}"

    @property
    def label(self) -> str:
        """``<name>/<version>``: the value of the X-Model-Version header."""
        return f"{self.name}/{self.version}"


class ServerSettings(BaseModel):
    """Everything a server process needs: the version, the run config's ``serving`` section, the input limits."""

    model_config = ConfigDict(extra="forbid")

    model: ServedModel
    serving: ServingConfig = ServingConfig()
    limits: InputLimits = InputLimits()


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (not yet listen on) host:port, so that a taken port is found before the model loads.

    Connections are refused until the server starts listening on it.

    Args:
        host: the address to bind (``127.0.0.1``, ``0.0.0.0``, ``::``).
        port: the TCP port.

    Returns:
        The bound socket, inheritable (uvicorn's worker processes share it).

    Raises:
        ServerError: the port is taken or the address cannot be bound; the message says which.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a port left in TIME_WAIT by a server that just stopped can be bound again;
    # one that a running server listens on cannot.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ServerError(
                f"port {port} on {host} is already in use (another server?); stop it or choose another with --port"
            ) from None
        raise ServerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def _json_error(status: int, error_code: str, message: str, headers: dict[str, str] | None = None):
    """An error in MLflow's format: {"error_code": ..., "message": ...}."""
    body = json.dumps({"error_code": error_code, "message": message})
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def _error_message(message: str) -> str:
    """The model's own message, without the input MLflow puts before it ("Failed to predict data '<frame>'...")."""
    marker = "\nError: "
    return (
        message.split(marker, 1)[1] if message.startswith("Failed to predict data") and marker in message else message
    )


def _with_model(response: str, model: ServedModel) -> str:
    """MLflow's JSON answer {"predictions": ...} with "model": {"name", "version"} added."""
    if not (response.startswith("{") and response.endswith("}")):
        return response
    return f'{response[:-1]}, "model": {json.dumps({"name": model.name, "version": model.version})}}}'


class _Guard:
    """ASGI middleware: the model version on every response; request bodies above the limit get 413."""

    def __init__(self, app, max_body_bytes: int, model_label: str):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.header = (MODEL_VERSION_HEADER.lower().encode(), model_label.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send_with_version)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send_with_version, f"{int(declared):,} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send_with_version, f"more than {self.max_body_bytes:,} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_version)

    async def _too_large(self, send, size: str) -> None:
        body = json.dumps(
            {
                "error_code": "REQUEST_LIMIT_EXCEEDED",
                "message": f"request body of {size} is above the limit of {self.max_body_bytes:,} bytes "
                "(serving.max_body_bytes): send fewer or smaller images per request",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _drop_mlflow_timeout(app) -> None:
    """Remove MLflow's timeout middleware (it answers 504 and lets the work run on); /invocations has its own."""
    app.user_middleware[:] = [
        middleware
        for middleware in app.user_middleware
        if getattr(middleware.kwargs.get("dispatch"), "__name__", "") != "timeout_middleware"
    ]


def build_app(model, settings: ServerSettings):
    """The FastAPI app that serves a loaded pyfunc model (see the module docstring for its routes).

    Args:
        model: an ``mlflow.pyfunc.PyFuncModel`` (components.serving.ChestXrayClassifier inside: its
            input limits are set from ``settings.limits``).
        settings: the served version, the ``serving`` section and the input limits.

    Returns:
        The app (an ASGI application), not yet running.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server
    from mlflow.version import VERSION

    served = settings.model
    timeout = settings.serving.request_timeout_s
    classifier = model.unwrap_python_model()
    if hasattr(classifier, "limits"):
        classifier.limits = settings.limits
    class_names = list(getattr(classifier, "class_names", []))
    input_schema = model.metadata.get_input_schema()
    canned = example_input(max(settings.limits.min_width, settings.limits.min_height))

    app = scoring_server.init(model)
    _drop_mlflow_timeout(app)
    app.router.routes[:] = [route for route in app.router.routes if getattr(route, "path", "") not in _REPLACED_ROUTES]

    @app.post("/invocations")
    async def invocations(request: Request):
        content_type = request.headers.get("content-type")
        if not content_type:
            return _json_error(
                415,
                "BAD_REQUEST",
                "no Content-Type header: send application/json (dataframe_split, dataframe_records, instances "
                "or inputs), text/csv or application/vnd.apache.parquet",
            )
        data = await request.body()
        try:
            # The task wait_for creates, and asyncio.to_thread after it, carry the deadline into the thread.
            with request_deadline(timeout):
                result = await asyncio.wait_for(
                    asyncio.to_thread(scoring_server.invocations, data, content_type, model, input_schema), timeout
                )
        except TimeoutError:
            return _json_error(
                504,
                "DEADLINE_EXCEEDED",
                f"the request ran past serving.request_timeout_s = {timeout:g} s; its work stops at the next image "
                "or batch and is discarded: send fewer or smaller images per request",
            )
        except MlflowException as error:
            return _json_error(error.get_http_status_code(), error.error_code, _error_message(error.message))
        if result.status != 200 and result.mimetype == "text/plain":  # MLflow's 415s: in its JSON error format
            return _json_error(result.status, "BAD_REQUEST", result.response)
        content = result.response
        if result.status == 200 and result.mimetype == "application/json":
            content = _with_model(content, served)
        return Response(content=content, status_code=result.status, media_type=result.mimetype)

    @app.get("/version")
    async def version():
        return {
            "model_name": served.name,
            "model_version": served.version,
            "model_uri": served.uri,
            "alias": served.alias,
            "mlflow_version": VERSION,
        }

    @app.get("/health")
    async def health():
        start = time.perf_counter()
        try:
            with request_deadline(timeout):
                frame = await asyncio.wait_for(asyncio.to_thread(model.predict, canned), timeout)
            problem = _readiness_problem(frame, class_names)
        except TimeoutError:
            problem = f"the canned image took longer than serving.request_timeout_s = {timeout:g} s"
        except Exception as error:  # a readiness check reports any failure as not ready
            problem = f"the canned image failed: {type(error).__name__}: {error}"
        seconds = round(time.perf_counter() - start, 4)
        if problem is not None:
            return _json_error(503, "TEMPORARILY_UNAVAILABLE", f"not ready: {problem}")
        return {"status": "ready", "model": served.label, "label": str(frame["label"].iloc[0]), "seconds": seconds}

    app.add_middleware(_Guard, max_body_bytes=settings.serving.max_body_bytes, model_label=served.label)
    return app


def _readiness_problem(frame: Any, class_names: list[str]) -> str | None:
    """What is wrong with the canned image's answer (one row, finite probabilities summing to 1), or None."""
    columns = [prob_column(name) for name in class_names]
    if len(frame) != 1 or not columns or any(column not in frame for column in columns):
        return f"unexpected answer to the canned image: {list(getattr(frame, 'columns', []))}"
    values = [float(frame[column].iloc[0]) for column in columns]
    if not all(math.isfinite(v) for v in values) or abs(sum(values) - 1) > 1e-3:
        return f"the canned image's probabilities are not a distribution: {values}"
    return None


def create_app(settings: ServerSettings):
    """Load the served version and build its app (build_app)."""
    import mlflow

    return build_app(mlflow.pyfunc.load_model(settings.model.uri), settings)


def app_from_environment():
    """The app of a uvicorn worker process (workers > 1): settings from the CXR_SERVER_SETTINGS variable."""
    return create_app(ServerSettings.model_validate_json(os.environ[SETTINGS_ENV]))


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


@contextlib.contextmanager
def _exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT end the process with status 0 inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(settings: ServerSettings, sock: socket.socket) -> None:
    """Serve on a bound socket until SIGTERM or SIGINT (see the module docstring).

    Args:
        settings: what to serve, and how (``settings.serving.workers`` processes).
        sock: from bind_socket.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    options = {
        "log_level": "info",
        # In-flight requests may finish (each is bounded by the request timeout) before workers stop.
        "timeout_graceful_shutdown": math.ceil(settings.serving.request_timeout_s) + 1,
        # A worker loading the model (tens of seconds) still answers the supervisor's pings.
        "timeout_worker_healthcheck": 60,
    }
    if settings.serving.workers == 1:
        # While the model loads, and again when uvicorn has shut down (it re-raises the signal it
        # caught): exit with status 0, not killed by the signal or with a KeyboardInterrupt traceback.
        with _exit_on_signals():
            uvicorn.Server(uvicorn.Config(create_app(settings), **options)).run(sockets=[sock])
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    config = uvicorn.Config(
        f"{__name__}:app_from_environment", factory=True, workers=settings.serving.workers, **options
    )
    Multiprocess(config, sockets=[sock]).run()
