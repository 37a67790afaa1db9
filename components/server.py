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
* ``/stats``: the micro-batching counters of this process (requests, rows,
  model calls, largest call, rows dropped past their deadline), and how many
  ``/invocations`` requests the JSON fast path read and how many went to MLflow.
* ``/invocations``: a request without a Content-Type gets 415 (MLflow: 500);
  a body above ``max_body_bytes`` gets 413 before it is read (from its
  Content-Length, or as soon as a chunked body passes the limit); rows, image
  sizes and pixels are bounded by the model (components.serving.InputLimits,
  400 naming the rows). A 200 answer carries ``"model": {"name", "version"}``
  beside MLflow's ``"predictions"``.
* JSON fast path: for the project's classifier (one string column ``image``,
  no params), a JSON body in one of the common forms (``image_rows``:
  ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` with
  only that column, every value a string) is parsed once with the stdlib's
  ``json``, and its rows go straight to the classifier's own ``predict`` (the
  same decode, limits, micro-batcher and deadline); the answer is written as
  MLflow writes it (``predictions_json``: the same bytes). Any other body (CSV,
  Parquet, params, other columns or shapes, a parse error) goes to MLflow's
  ``scoring_server.invocations`` unchanged, with its own error answers. MLflow's
  path parses the JSON twice, builds the DataFrame through its schema, enforces
  the schema again in ``predict`` and writes the answer through
  ``DataFrame.to_dict``: 1.2 to 1.5 ms more CPU per single-image request on the
  development machine (bench/serving_load.py).
* Every response carries the header ``X-Model-Version: <name>/<version>``.
* Request timeout (``request_timeout_s``, replacing MLflow's middleware): a
  request still running then gets 504 DEADLINE_EXCEEDED at once; its work,
  in a worker thread, stops at its next image decode or batch of 32 images
  (or, waiting for the model, is dropped from the next model call) and its
  result is discarded.
* Micro-batching (``max_batch_rows`` > 1, ``MicroBatcher``): each request is
  parsed, checked and decoded in its own thread, as above; only the model
  call is shared: the decoded rows of concurrent requests go through the model
  together, at most ``max_batch_rows`` rows per call, and each request gets its
  own rows back. A bad image fails its own request (400) before it reaches the
  model; the others are not affected. A model call may wait up to
  ``max_batch_wait_ms`` for requests still being decoded, never when no other
  request is in flight. Queued rows go through in arrival order, so a large
  request delays the others by its own rows only. ``/stats`` counts requests,
  rows and model calls. Before the app serves, the model runs on 1 and 2 blank
  images, so that no request waits for TensorFlow to trace a new batch size.

``serve`` runs the app with uvicorn in this process (``workers: 1``), or in
uvicorn worker processes (``workers: N``, each loading the model), on a
socket bound before the model loads (``bind_socket``: a taken port is one
error, at once). SIGTERM and SIGINT stop it cleanly, exit status 0: no new
connections, requests in flight finish (at most the request timeout),
workers stop, the port is free.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import errno
import functools
import io
import json
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from components.config import ServingConfig
from components.errors import CxrError
from components.serving import IMAGE_COLUMN, InputLimits, example_input, prob_column, request_deadline

MODEL_VERSION_HEADER = "X-Model-Version"
# The settings of a worker process (workers > 1): JSON of ServerSettings.
SETTINGS_ENV = "CXR_SERVER_SETTINGS"
# MLflow's routes that this app answers itself.
_REPLACED_ROUTES = frozenset({"/invocations", "/health", "/version", "/stats"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# MLflow's answer when a model fails with anything but an MlflowException (scoring_server.invocations).
_UNEXPECTED_ERROR = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized input Dataframe is "
    "compatible with the model for inference."
)


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


# The JSON forms whose rows /invocations reads itself (the fast path; see build_app): the key, and whether
# it holds records ([{"image": b64}, ...]). "inputs" may also hold columns ({"image": [b64, ...]}).
_RECORD_FORMS = frozenset({"dataframe_records", "instances", "inputs"})


def _plain_json(content_type: str) -> bool:
    """``application/json``, with no parameter but ``charset=utf-8``: a media type MLflow parses as JSON."""
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    return mime == "application/json" and all(
        key == "charset" and value.lower() == "utf-8"
        for key, _, value in (parameter.partition("=") for parameter in parameters)
    )


def image_rows(body: bytes) -> list[str] | None:
    """The base64 images of a JSON request body in one of the common forms, or None for any other body.

    The forms: ``{"dataframe_split": {"columns": ["image"], "data": [[b64], ...]}}``,
    ``{"dataframe_records": [{"image": b64}, ...]}``, ``{"instances": [{"image": b64}, ...]}``,
    ``{"inputs": [{"image": b64}, ...]}`` and ``{"inputs": {"image": [b64, ...]}}``: that one key
    (no ``params``), the one column ``image``, at least one row, every value a string. None also
    for a body that is not JSON: MLflow's parser answers those (and its error answers stay as they are).

    Args:
        body: the request body (UTF-8 JSON).

    Returns:
        The N >= 1 base64 strings in row order, or None.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(payload, dict) or len(payload) != 1:
        return None
    ((form, value),) = payload.items()
    if form == "dataframe_split":
        if not (isinstance(value, dict) and value.keys() == {"columns", "data"} and value["columns"] == [IMAGE_COLUMN]):
            return None
        rows = value["data"]
        if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == 1 for row in rows):
            return None
        images = [row[0] for row in rows]
    elif form in _RECORD_FORMS and isinstance(value, list):
        if not all(isinstance(row, dict) and row.keys() == {IMAGE_COLUMN} for row in value):
            return None
        images = [row[IMAGE_COLUMN] for row in value]
    elif form == "inputs" and isinstance(value, dict) and value.keys() == {IMAGE_COLUMN}:
        images = value[IMAGE_COLUMN]
        if not isinstance(images, list):
            return None
    else:
        return None
    if not images or not all(isinstance(image, str) for image in images):
        return None
    return images


def predictions_json(frame: pd.DataFrame) -> str:
    """MLflow's JSON answer ``{"predictions": [{column: value, ...}, ...]}`` for a DataFrame, byte for byte.

    Columns of numbers, booleans and strings (the served model's) are written with the stdlib's
    ``json.dumps`` from their Python values (``tolist``): the same text as MLflow's
    ``scoring_server.predictions_to_json`` (records from ``DataFrame.to_dict``, floats as Python's
    ``repr``), at a fraction of the cost. Any other column, or a value ``json`` cannot write, goes
    through MLflow's own function.

    Args:
        frame: the model's output, N rows.

    Returns:
        The JSON text.
    """
    from mlflow.pyfunc import scoring_server

    columns = [str(column) for column in frame.columns]
    simple = len(set(columns)) == len(columns) and all(isinstance(column, str) for column in frame.columns)
    simple = simple and all(
        (isinstance(dtype, np.dtype) and dtype.kind in "fbiuO") or isinstance(dtype, pd.StringDtype)
        for dtype in frame.dtypes
    )
    if simple:
        values = [frame[column].tolist() for column in columns]
        try:
            return json.dumps(
                {"predictions": [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]}
            )
        except (TypeError, ValueError):  # an object column holding numpy scalars or other objects
            pass
    text = io.StringIO()
    scoring_server.predictions_to_json(frame, text)
    return text.getvalue()


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


class _Ticket:
    """One request of a MicroBatcher, from ``request`` until it hands its rows over (``decoding``) and returns."""

    __slots__ = ("batcher", "deadline", "decoding", "slot")

    def __init__(self, batcher: MicroBatcher, deadline: float | None, slot: bool):
        self.batcher = batcher
        self.deadline = deadline
        self.slot = slot
        self.decoding = True


class _Piece:
    """Up to max_rows rows of one request, queued for a model call, with the future of their output."""

    __slots__ = ("deadline", "future", "rows")

    def __init__(self, rows: np.ndarray, deadline: float | None):
        self.rows = rows
        self.deadline = deadline
        self.future: Future = Future()


# The request whose work runs in this thread (MicroBatcher.request); None outside one. Its batcher is
# the app's: apps built on the same loaded model (tests) each batch their own requests.
_TICKET: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar("cxr_batch_ticket", default=None)


def batch_runner(forward: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
    """The classifier's ``batch_runner``: inside ``MicroBatcher.request``, its batcher's ``run``; else ``forward``.

    Args:
        forward: the classifier's own model call (ChestXrayClassifier.forward).

    Returns:
        float32 (N, H, W, 3) -> the model's output for the N rows.
    """

    def run(batch: np.ndarray) -> Any:
        ticket = _TICKET.get()
        return forward(batch) if ticket is None else ticket.batcher.run(batch)

    return run


def _deadline_exceeded(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED

    return MlflowException(message, error_code=DEADLINE_EXCEEDED)


class BatchStats(BaseModel):
    """What a MicroBatcher has done since it started (``/stats``; one server process)."""

    requests: int = 0  # predictions that reached the model (HTTP requests and readiness checks)
    rows: int = 0  # images that went through the model
    model_calls: int = 0
    largest_call_rows: int = 0
    expired_rows: int = 0  # rows dropped from a model call: their request had run past its deadline


class MicroBatcher:
    """Runs the rows of concurrent requests through the model together, in one thread.

    A request's thread decodes its images (``request``), hands the float32 rows to ``run`` and
    blocks until its own rows' output comes back. One thread takes the queued rows in arrival
    order, at most ``max_rows`` per call, concatenates them, calls ``forward`` once and hands each
    request its slice. A request of more than ``max_rows`` rows is cut into pieces of ``max_rows``.
    Before a call, the thread may wait up to ``max_wait_s`` for more rows while other requests
    are still decoding (holding a slot of ``request``); with no other request in flight it runs at
    once, so a lone request pays no wait.

    Args:
        forward: float32 (N, H, W, 3) -> the model's output, an array whose first axis is the N rows
            (components.serving.ChestXrayClassifier.forward).
        max_rows: rows per model call (>= 1).
        max_wait_s: seconds a call may wait for requests still decoding (>= 0).
        decoders: requests decoding at once (slots of ``request``): the memory bound of decoding;
            requests waiting for the model hold no slot.
    """

    def __init__(self, forward: Callable[[np.ndarray], Any], max_rows: int, max_wait_s: float, decoders: int):
        self._forward = forward
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._slots = threading.BoundedSemaphore(decoders)
        self._condition = threading.Condition()
        self._queue: collections.deque[_Piece] = collections.deque()
        self._queued_rows = 0
        self._decoding = 0
        self._closed = False
        self._stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name="cxr-micro-batcher", daemon=True)
        self._thread.start()

    def stats(self) -> BatchStats:
        """A copy of the counters."""
        with self._condition:
            return self._stats.model_copy()

    @contextlib.contextmanager
    def request(self, deadline: float | None, slot: bool = True) -> Iterator[None]:
        """Around one request's work in its thread: its model calls go through this batcher, which may wait for it.

        Args:
            deadline: the request's deadline (``time.monotonic()`` seconds), or None.
            slot: take a decode slot (an HTTP request; the readiness check's one small image takes none).

        Raises:
            MlflowException: DEADLINE_EXCEEDED when no decode slot frees up before the deadline.
        """
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if slot and not self._slots.acquire(timeout=timeout):
            raise _deadline_exceeded("the request ran past its deadline waiting for a decode slot")
        ticket = _Ticket(self, deadline, slot)
        with self._condition:
            self._decoding += 1
        token = _TICKET.set(ticket)
        try:
            yield
        finally:
            _TICKET.reset(token)
            self._done_decoding(ticket)

    def _done_decoding(self, ticket: _Ticket) -> None:
        with self._condition:
            if not ticket.decoding:
                return
            ticket.decoding = False
            self._decoding -= 1
            self._condition.notify_all()
        if ticket.slot:
            self._slots.release()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for `batch`, computed together with the rows of concurrent requests.

        Called in the request's thread, inside ``request`` (through ``batch_runner``): the request's
        decode slot is given back and its deadline applies.

        Args:
            batch: float32 (N, H, W, 3) decoded rows of one request, N >= 1.

        Returns:
            The model's output for these N rows, in order (as ``forward`` gives it).

        Raises:
            MlflowException: DEADLINE_EXCEEDED past the request's deadline; whatever ``forward`` raised.
            RuntimeError: the batcher is closed (the server is stopping).
        """
        ticket = _TICKET.get()
        ticket = ticket if ticket is not None and ticket.batcher is self else None
        deadline = ticket.deadline if ticket is not None else None
        pieces = [
            _Piece(batch[start : start + self.max_rows], deadline) for start in range(0, len(batch), self.max_rows)
        ]
        with self._condition:
            if self._closed:
                raise RuntimeError("the server is stopping")
            self._queue.extend(pieces)
            self._queued_rows += len(batch)
            self._stats.requests += 1
            self._condition.notify_all()
        if ticket is not None:
            self._done_decoding(ticket)
        outputs = []
        for piece in pieces:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                outputs.append(piece.future.result(timeout=timeout))
            except TimeoutError:
                raise _deadline_exceeded("the request ran past its deadline waiting for the model") from None
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def close(self) -> None:
        """Stop taking rows; the thread ends once the rows already queued have gone through the model."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _next_call(self) -> list[_Piece] | None:
        """The pieces of the next model call (waiting as the class docstring says); None once closed and empty."""
        with self._condition:
            while not self._queue and not self._closed:
                self._condition.wait()
            if not self._queue:
                return None
            limit = time.monotonic() + self.max_wait_s
            while self._queued_rows < self.max_rows and self._decoding > 0 and not self._closed:
                left = limit - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            pieces, rows = [], 0
            while self._queue and (not pieces or rows + len(self._queue[0].rows) <= self.max_rows):
                pieces.append(self._queue.popleft())
                rows += len(pieces[-1].rows)
            self._queued_rows -= rows
            return pieces

    def _loop(self) -> None:
        while (pieces := self._next_call()) is not None:
            now = time.monotonic()
            live = [piece for piece in pieces if piece.deadline is None or piece.deadline > now]
            expired = [piece for piece in pieces if piece.deadline is not None and piece.deadline <= now]
            for piece in expired:  # its request has had its 504: nobody waits for these rows
                piece.future.set_exception(_deadline_exceeded("the request ran past its deadline"))
            done = 0
            if live:
                try:
                    rows = live[0].rows if len(live) == 1 else np.concatenate([piece.rows for piece in live])
                    output = self._forward(rows)
                except Exception as error:  # the model failed: every request of this call gets the error
                    for piece in live:
                        piece.future.set_exception(error)
                else:
                    for piece in live:
                        piece.future.set_result(output[done : done + len(piece.rows)])
                        done += len(piece.rows)
            with self._condition:
                self._stats.model_calls += bool(live)
                self._stats.rows += done
                self._stats.largest_call_rows = max(self._stats.largest_call_rows, done)
                self._stats.expired_rows += sum(len(piece.rows) for piece in expired)


def _drop_mlflow_timeout(app) -> None:
    """Remove MLflow's timeout middleware (it answers 504 and lets the work run on); /invocations has its own."""
    app.user_middleware[:] = [
        middleware
        for middleware in app.user_middleware
        if getattr(middleware.kwargs.get("dispatch"), "__name__", "") != "timeout_middleware"
    ]


def build_app(model, settings: ServerSettings, json_fast_path: bool = True):
    """The FastAPI app that serves a loaded pyfunc model (see the module docstring for its routes).

    Args:
        model: an ``mlflow.pyfunc.PyFuncModel`` (components.serving.ChestXrayClassifier inside: its
            input limits are set from ``settings.limits``).
        settings: the served version, the ``serving`` section and the input limits.
        json_fast_path: read the common JSON forms of the ``image`` column here (``image_rows``) and
            call the classifier's own ``predict``; False: every request through MLflow's parser (the
            tests compare the two).

    Returns:
        The app (an ASGI application), not yet running.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST
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
    _warm_up(classifier)
    batcher, executor = _batching(classifier, settings.serving)
    if batcher is not None:
        _close_on_shutdown(app, batcher, executor)

    fast = json_fast_path and _reads_images(model, classifier)
    counts = collections.Counter({"fast_path": 0, "mlflow": 0})
    counts_lock = threading.Lock()

    def invoke(data: bytes, content_type: str) -> scoring_server.InvocationsResponse:
        """One request's parse, check, decode and predict: the fast path for the common JSON forms, else MLflow's.

        The fast path answers what MLflow's path answers for those bodies (the same rows reach the
        same ``predict``; the same JSON text back; the model's errors as they are, any other error
        as MLflow words it), without MLflow's second JSON parse, DataFrame parsing, schema
        enforcement and ``DataFrame.to_dict``.
        """
        images = image_rows(data) if fast and _plain_json(content_type) else None
        with counts_lock:
            counts["mlflow" if images is None else "fast_path"] += 1
        if images is None:
            return scoring_server.invocations(data, content_type, model, input_schema)
        try:
            # dtype object: the strings as they are (pandas' str dtype would copy them into Arrow first).
            frame = classifier.predict(None, pd.DataFrame({IMAGE_COLUMN: pd.Series(images, dtype=object)}))
        except MlflowException:
            raise
        except Exception:
            raise MlflowException(
                _UNEXPECTED_ERROR, error_code=BAD_REQUEST, stack_trace=traceback.format_exc()
            ) from None
        return scoring_server.InvocationsResponse(predictions_json(frame), 200, "application/json")

    async def predict_in_thread(data: bytes, content_type: str):
        """The invocation (invoke) in a worker thread, the deadline carried into it."""
        if batcher is None:  # asyncio.to_thread copies this context (the deadline) into the thread
            return await asyncio.to_thread(invoke, data, content_type)
        deadline = time.monotonic() + timeout

        def work():
            with batcher.request(deadline):
                return invoke(data, content_type)

        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(context.run, work))

    def predict_canned(deadline: float):
        """The readiness check's prediction: through the batcher when there is one, as requests go."""
        if batcher is None:
            return model.predict(canned)
        with batcher.request(deadline, slot=False):
            return model.predict(canned)

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
        # Media types are case-insensitive (RFC 9110, 8.3.1); MLflow compares them as given.
        mime, separator, parameters = content_type.partition(";")
        content_type = mime.strip().lower() + separator + parameters
        data = await request.body()
        try:
            # The task wait_for creates, and asyncio.to_thread after it, carry the deadline into the thread.
            with request_deadline(timeout):
                result = await asyncio.wait_for(predict_in_thread(data, content_type), timeout)
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

    @app.get("/stats")
    async def stats():
        return {
            "model": served.label,
            "pid": os.getpid(),
            "max_batch_rows": settings.serving.max_batch_rows,
            "max_batch_wait_ms": settings.serving.max_batch_wait_ms,
            # None when micro-batching is off (max_batch_rows 1, or a model without forward).
            "batching": batcher.stats().model_dump() if batcher is not None else None,
            # /invocations requests read by the fast path (common JSON forms) and by MLflow's parser.
            "invocations": dict(counts),
        }

    @app.get("/health")
    async def health():
        start = time.perf_counter()
        try:
            with request_deadline(timeout):
                frame = await asyncio.wait_for(asyncio.to_thread(predict_canned, time.monotonic() + timeout), timeout)
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


def _reads_images(model, classifier: Any) -> bool:
    """Whether /invocations may read the JSON forms itself: the model takes one string column ``image``, no params.

    That is the project's ChestXrayClassifier (its signature: components.serving.model_signature);
    any other model goes through MLflow's parser only.
    """
    from mlflow.types import DataType

    metadata = model.metadata
    schema = metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec() or metadata.get_params_schema() is not None:
        return False
    if metadata._is_signature_from_type_hint():  # MLflow parses those differently (the "inputs" key only)
        return False
    return (
        schema.input_names() == [IMAGE_COLUMN]
        and schema.input_types() == [DataType.string]
        and callable(getattr(classifier, "predict", None))
        and isinstance(getattr(classifier, "image_size", None), int)
    )


def _warm_up(classifier: Any) -> None:
    """Run the model on 1 and then 2 blank images, so that a server is ready with every batch size traced.

    TensorFlow traces the Keras predict function for the first batch size, and again, for any batch
    size, at the second one (reduce_retracing): about a second each on 2 cores, which the first
    request of another size (or the first micro-batch of two requests) would otherwise wait for.
    Models without ``forward`` and ``image_size`` (not a ChestXrayClassifier) are left as they are.
    """
    size = getattr(classifier, "image_size", None)
    if not callable(getattr(classifier, "forward", None)) or not isinstance(size, int):
        return
    for rows in (1, 2):
        classifier.forward(np.zeros((rows, size, size, 3), dtype=np.float32))


def _batching(classifier: Any, serving: ServingConfig) -> tuple[MicroBatcher | None, ThreadPoolExecutor | None]:
    """A MicroBatcher (the classifier's batch_runner routes to it), and the threads of /invocations; or (None, None).

    None when ``serving.max_batch_rows`` is 1 or the model has no ``forward`` (not a ChestXrayClassifier).
    Decoding requests: as many as asyncio's default thread pool runs (CPUs + 4, at most 32), the memory
    bound of decoding as without batching; threads: that many more than twice ``max_batch_rows`` (at most
    256), so that a full call gathers while the previous one runs.
    """
    if serving.max_batch_rows <= 1 or not callable(getattr(classifier, "forward", None)):
        return None, None
    decoders = min(32, (os.cpu_count() or 1) + 4)
    batcher = MicroBatcher(classifier.forward, serving.max_batch_rows, serving.max_batch_wait_ms / 1000, decoders)
    classifier.batch_runner = batch_runner(classifier.forward)
    threads = min(256, decoders + 2 * serving.max_batch_rows)
    return batcher, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cxr-invocations")


def _close_on_shutdown(app, batcher: MicroBatcher, executor: ThreadPoolExecutor) -> None:
    """When the app shuts down (after requests in flight), stop the batcher's thread and the request threads."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application):
        async with inner(application) as state:
            try:
                yield state
            finally:
                batcher.close()
                executor.shutdown(wait=False)

    app.router.lifespan_context = lifespan


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
