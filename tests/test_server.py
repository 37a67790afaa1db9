"""`cxr serve`'s HTTP server (components/server.py) and the `cxr serve` / `cxr predict` commands.

Real servers on 127.0.0.1 (uvicorn in a thread of this process, or `cxr serve` as a child
process), a real registered model (the fixed-weight brightness classifier of
tests/test_serving.py) in a SQLite MLflow store. No mocks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components import serving
from components.config import ServingConfig
from components.imaging import encode_png
from components.server import (
    MODEL_VERSION_HEADER,
    MicroBatcher,
    ServedModel,
    ServerError,
    ServerSettings,
    bind_socket,
    build_app,
)
from components.validation import ValidationConfig
from cxr.cli import main
from tests.servers import free_port, sqlite_mlflow, stop_process_group, wait_ready
from tests.test_serving import _live_group_members, bomb_png, brightness_model, gray_png_b64

pytestmark = pytest.mark.slow

MODEL_NAME = "cxr-server-test"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = PROJECT_ROOT / "configs" / "quickstart.yaml"
CXR = str(Path(sys.executable).with_name("cxr"))
# The served test model: small limits, so that tests reach them with small requests.
MAX_ROWS = 4
MAX_BODY_BYTES = 400_000  # the bomb's request (about 206 KB) fits


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "server") as store:
        yield store


@pytest.fixture(scope="module")
def registered(tracking, tmp_path_factory) -> ServedModel:
    """A multiclass brightness model registered as MODEL_NAME, alias champion."""
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    brightness_model(3).save(path)
    with mlflow.start_run(experiment_id=tracking["experiment_id"]):
        info = serving.log_pyfunc_model(
            str(path), serving.build_contract("multiclass", "brightness-test", 32), registered_model_name=MODEL_NAME
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    return ServedModel(name=MODEL_NAME, version=version, alias="champion")


@pytest.fixture(scope="module")
def model(registered):
    return mlflow.pyfunc.load_model(registered.uri)


def _settings(registered: ServedModel, **serving_options) -> ServerSettings:
    section = ServingConfig(
        max_body_bytes=MAX_BODY_BYTES, max_rows=MAX_ROWS, max_request_pixels=MAX_ROWS * 64 * 80, **serving_options
    )
    return ServerSettings(
        model=registered, serving=section, limits=serving.InputLimits.from_config(section, ValidationConfig())
    )


@contextlib.contextmanager
def _running(app):
    """The app under uvicorn in a thread, on a free 127.0.0.1 port; yields its URL."""
    import uvicorn

    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def url(model, registered):
    with _running(build_app(model, _settings(registered))) as address:
        yield address


def _split(values: list[str]) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[value] for value in values]}}


def _post(url: str, payload: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=30)


def test_ping_version_and_readiness(url, registered):
    ping = requests.get(f"{url}/ping", timeout=10)
    assert ping.status_code == 200
    assert ping.headers[MODEL_VERSION_HEADER] == f"{MODEL_NAME}/{registered.version}"
    version = requests.get(f"{url}/version", timeout=10).json()
    assert version["model_name"] == MODEL_NAME
    assert version["model_version"] == registered.version
    assert version["mlflow_version"] == mlflow.__version__
    health = requests.get(f"{url}/health", timeout=30)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ready"
    assert health.json()["label"] in ("COVID-19", "normal", "pneumonia")  # the canned image went through the model


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "instances", "csv"])
def test_invocations_keep_mlflow_formats_and_name_the_version(url, registered, form):
    images = [gray_png_b64(10), gray_png_b64(250)]
    if form == "csv":
        answer = requests.post(
            f"{url}/invocations",
            data="image\n" + "\n".join(images),
            headers={"Content-Type": "text/csv"},
            timeout=30,
        )
    else:
        payload = _split(images) if form == "dataframe_split" else {form: [{"image": image} for image in images]}
        answer = _post(url, payload)
    assert answer.status_code == 200, answer.text
    assert answer.headers[MODEL_VERSION_HEADER] == f"{MODEL_NAME}/{registered.version}"
    assert answer.json()["model"] == {"name": MODEL_NAME, "version": registered.version}
    assert [row["label"] for row in answer.json()["predictions"]] == ["COVID-19", "pneumonia"]


def test_a_request_without_content_type_is_a_client_error(url):
    """MLflow's own server answers 500 (it splits a missing header)."""
    answer = requests.post(f"{url}/invocations", data=json.dumps(_split([gray_png_b64(10)])), timeout=30)
    assert "Content-Type" not in answer.request.headers
    assert answer.status_code == 415
    assert answer.json()["message"].startswith("no Content-Type header")
    other = requests.post(f"{url}/invocations", data=b"x", headers={"Content-Type": "text/plain"}, timeout=30)
    assert other.status_code == 415
    assert "text/plain" in other.json()["message"]
    broken = requests.post(
        f"{url}/invocations", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert broken.status_code == 400


def test_the_media_type_is_read_case_insensitively(url):
    """RFC 9110 8.3.1: type and subtype are case-insensitive (MLflow compares them as given: 415)."""
    answer = requests.post(
        f"{url}/invocations",
        data=json.dumps(_split([gray_png_b64(64)])),
        headers={"Content-Type": "APPLICATION/JSON; charset=utf-8"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_a_body_above_the_limit_gets_413(url):
    big = b"x" * (MAX_BODY_BYTES + 1)
    declared = requests.post(f"{url}/invocations", data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert declared.status_code == 413
    assert declared.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "serving.max_body_bytes" in declared.json()["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY_BYTES // 10_000 + 1):
            yield b"x" * 10_000

    chunked = requests.post(
        f"{url}/invocations", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert "Content-Length" not in chunked.request.headers
    assert chunked.status_code == 413


def test_rows_and_sizes_are_bounded_naming_the_rows(url):
    rows = _post(url, _split([gray_png_b64(10)] * (MAX_ROWS + 1)))
    assert rows.status_code == 400
    assert rows.json()["message"] == (
        f"{MAX_ROWS + 1} images in one request; at most {MAX_ROWS} (serving.max_rows): send them in smaller batches"
    )
    tiny = _post(url, _split([gray_png_b64(10), gray_png_b64(10, (1, 1))]))
    assert tiny.status_code == 400
    assert tiny.json()["message"].startswith("1 of 2 images could not be used: row 1: 1x1 pixels is below the 64x64")
    pixels = _post(url, _split([gray_png_b64(10, (64, 81))] * MAX_ROWS))
    assert pixels.status_code == 400
    assert "(serving.max_request_pixels)" in pixels.json()["message"]


def test_a_decompression_bomb_is_refused_from_its_header(url):
    payload = _split([serving.encode_image_bytes(bomb_png())])
    start = time.perf_counter()
    answer = _post(url, payload)
    seconds = time.perf_counter() - start
    assert answer.status_code == 400
    assert "row 0: declared size 8900x8900" in answer.json()["message"]
    assert seconds < 3  # MLflow's server decoded it: 9 to 13 s, 1.9 GB


def test_past_the_timeout_a_request_gets_504_and_readiness_503(model, registered):
    with _running(build_app(model, _settings(registered, request_timeout_s=1e-6))) as slow:
        answer = _post(slow, _split([gray_png_b64(10)] * MAX_ROWS))
        health = requests.get(f"{slow}/health", timeout=30)
    assert answer.status_code == 504
    assert answer.json()["error_code"] == "DEADLINE_EXCEEDED"
    assert "serving.request_timeout_s" in answer.json()["message"]
    assert health.status_code == 503
    assert health.json()["message"].startswith("not ready: the canned image took longer")


def test_a_taken_port_is_refused_before_anything_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind_socket("127.0.0.1", port)


@pytest.fixture
def restore_environ():
    """`cxr` points ZenML and MLflow at its work folder through os.environ: undo it after the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_cxr_serve_with_the_port_taken_says_so_in_one_line(tmp_path, capsys, restore_environ):
    workdir = tmp_path / "work"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.perf_counter()
        code = main(["--workdir", str(workdir), "serve", "--port", str(port)])
        seconds = time.perf_counter() - start
    assert code == 1
    assert _error_lines(capsys) == [
        f"error: port {port} on 127.0.0.1 is already in use (another server?); stop it or choose another with --port"
    ]
    assert seconds < 10
    assert not workdir.exists()  # nothing was set up or loaded


@pytest.mark.parametrize("command", ["serve", "predict"])
def test_no_champion_is_one_line_that_says_how_to_train_one(tracking, tmp_path, capsys, restore_environ, command):
    workdir = tmp_path / "work"
    image = tmp_path / "x.png"
    image.write_bytes(encode_png(np.zeros((64, 64), dtype=np.uint8)))
    options = ["--port", str(free_port())] if command == "serve" else [str(image)]
    name = ["--config", str(QUICKSTART), "--set", "registry.model_name=not-trained-yet"]
    code = main(["--workdir", str(workdir), command, *name, *options])
    lines = _error_lines(capsys)
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("error: no version of registered model 'not-trained-yet' holds the alias 'champion'")
    assert lines[0].endswith(
        f"train one: .venv/bin/cxr --workdir {workdir} train --config {QUICKSTART} "
        "(or check --model-name, --alias, --config and --workdir)"
    )


def test_a_missing_alias_names_the_aliases_the_model_has(tracking, registered, tmp_path, capsys, restore_environ):
    image = tmp_path / "x.png"
    image.write_bytes(encode_png(np.zeros((64, 64), dtype=np.uint8)))
    code = main(
        ["--workdir", str(tmp_path / "work"), "predict", "--model-name", MODEL_NAME, "--alias", "staging", str(image)]
    )
    assert code == 1
    assert _error_lines(capsys) == [
        f"error: no version of registered model {MODEL_NAME!r} holds the alias 'staging'; it has champion (version "
        f"{registered.version}): give --alias champion, or promote a version (cxr promote)"
    ]


def test_cxr_predict_writes_a_table_and_names_bad_files(tracking, registered, tmp_path, capsys, restore_environ):
    folder = tmp_path / "drop"
    folder.mkdir()
    for level in (5, 250):
        (folder / f"g{level}.png").write_bytes(encode_png(np.full((64, 64), level, dtype=np.uint8)))
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    listing = tmp_path / "list.csv"
    listing.write_text("path\ndrop/g250.png\nfake.png\nmissing.png\n")
    output = tmp_path / "out.json"
    config = ["--config", str(QUICKSTART), "--set", f"registry.model_name={MODEL_NAME}"]  # the name from the config
    code = main(
        ["--workdir", str(tmp_path / "w"), "predict", *config, str(folder), str(listing)]
        + ["--format", "json", "--output", str(output)]
    )
    lines = _error_lines(capsys)
    records = json.loads(output.read_text())
    assert code == 1
    # The list's drop/g250.png is the folder's: scored once.
    assert [Path(r["path"]).name for r in records] == ["g250.png", "g5.png", "fake.png", "missing.png"]
    assert [r["label"] for r in records] == ["pneumonia", "COVID-19", None, None]
    assert records[0]["error"] is None
    assert records[2]["error"].startswith("cannot decode image")
    assert records[3]["error"] == "no such file"
    assert lines[-1].startswith("error: 2 of 4 images could not be decoded or scored (error column): ")
    assert f"{tmp_path / 'fake.png'}: cannot decode image" in lines[-1]

    code = main(["--workdir", str(tmp_path / "w"), "predict", "--model-name", MODEL_NAME, str(folder)])
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), sep="\t")
    assert code == 0
    assert list(table.columns) == ["path", "label", "prob_COVID-19", "prob_normal", "prob_pneumonia", "error"]
    assert list(table["label"]) == ["pneumonia", "COVID-19"]


def _port_is_free(port: int) -> bool:
    """Nothing listens on the port, and a new server can bind it (TIME_WAIT connections do not count)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    try:
        bind_socket("127.0.0.1", port).close()
    except ServerError:
        return False
    return True


# Each case starts a server (about 10 s): SIGTERM on one process, SIGINT (Ctrl+C) on uvicorn's worker processes.
@pytest.mark.parametrize(("workers", "sig"), [(1, signal.SIGTERM), (2, signal.SIGINT)])
def test_cxr_serve_stops_cleanly_on_a_signal(tracking, registered, tmp_path, workers, sig):
    """The signal goes to `cxr serve` alone (not its process group): nothing of it is left, the port is free."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [CXR, "--workdir", str(tmp_path / "w"), "serve", "--model-name", MODEL_NAME]
    command += ["--port", str(port), "--workers", str(workers)]
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking["uri"])
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        startup = wait_ready(process, url, log, timeout_s=120, probe="/health")
        print(f"\ncxr serve (workers={workers}) ready after {startup:.1f} s")
        answer = _post(url, _split([gray_png_b64(250)]))
        assert answer.status_code == 200, answer.text
        assert answer.headers[MODEL_VERSION_HEADER] == f"{MODEL_NAME}/{registered.version}"
        assert len(_live_group_members(process.pid)) >= workers + (workers > 1)
        os.kill(process.pid, sig)
        code = process.wait(timeout=30)
        deadline = time.monotonic() + 5  # multiprocessing's resource tracker ends once its parent has
        while _live_group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left, free = _live_group_members(process.pid), _port_is_free(port)
    finally:
        stop_process_group(process)  # what the signal left, if anything
    assert code == 0, log.read_text()[-3000:]
    assert left == []
    assert free


# Micro-batching: the model call is shared by concurrent requests; each request still gets its own rows.
BATCH_ROWS = 3  # below MAX_ROWS, so that one request is cut into several model calls too
CLIENTS = 8


@pytest.fixture(scope="module")
def batched_url(model, registered):
    """A server gathering up to BATCH_ROWS rows per model call; a call waits up to 200 ms for requests decoding."""
    settings = _settings(registered, max_batch_rows=BATCH_ROWS, max_batch_wait_ms=200)
    with _running(build_app(model, settings)) as address:
        yield address


def _stats(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=10).json()["batching"]


def _concurrently(url: str, payloads: list[dict]) -> list[requests.Response]:
    """POST each payload from its own thread, all released at once; the answers in the payloads' order."""
    barrier = threading.Barrier(len(payloads))

    def post(payload: dict) -> requests.Response:
        barrier.wait()
        return _post(url, payload)

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(post, payloads))


def test_concurrent_requests_share_model_calls_and_get_their_own_rows(batched_url, registered):
    levels = [int(level) for level in np.linspace(0, 255, CLIENTS)]
    images = [gray_png_b64(level) for level in levels]
    # In-process, one batched call of a separately loaded copy of the model (no server involved).
    expected = mlflow.pyfunc.load_model(registered.uri).predict(pd.DataFrame({"image": images}))
    before = _stats(batched_url)
    answers = _concurrently(batched_url, [_split([image]) for image in images])
    after = _stats(batched_url)
    assert [answer.status_code for answer in answers] == [200] * CLIENTS
    assert {answer.headers[MODEL_VERSION_HEADER] for answer in answers} == {f"{MODEL_NAME}/{registered.version}"}
    served = pd.DataFrame([answer.json()["predictions"][0] for answer in answers])
    columns = [column for column in expected.columns if column.startswith("prob_")]
    np.testing.assert_allclose(served[columns].to_numpy(), expected[columns].to_numpy(), rtol=0, atol=1e-6)
    assert served["label"].tolist() == expected["label"].tolist()
    assert after["requests"] - before["requests"] == CLIENTS
    assert after["rows"] - before["rows"] == CLIENTS
    assert after["model_calls"] - before["model_calls"] < CLIENTS
    assert after["largest_call_rows"] <= BATCH_ROWS


def test_a_request_above_the_batch_rows_is_cut_and_comes_back_in_order(batched_url):
    before = _stats(batched_url)
    answer = _post(batched_url, _split([gray_png_b64(level) for level in (250, 10, 128, 250)]))
    after = _stats(batched_url)
    assert answer.status_code == 200, answer.text
    assert [row["label"] for row in answer.json()["predictions"]] == ["pneumonia", "COVID-19", "normal", "pneumonia"]
    assert after["model_calls"] - before["model_calls"] == 2  # 3 rows, then 1


def test_a_bad_request_among_concurrent_ones_fails_alone(batched_url, registered):
    payloads = [_split([gray_png_b64(250)]) for _ in range(CLIENTS)]
    payloads[3] = _split([gray_png_b64(250, (1, 1))])  # below ingest's minimum size
    payloads[5] = _split(["not base64 !"])
    answers = _concurrently(batched_url, payloads)
    assert [answer.status_code for answer in answers] == [200, 200, 200, 400, 200, 400, 200, 200]
    assert answers[3].json()["message"].startswith("1 of 1 images could not be used: row 0: 1x1 pixels is below")
    assert "row 0: not valid base64" in answers[5].json()["message"]
    assert {answer.headers[MODEL_VERSION_HEADER] for answer in answers} == {f"{MODEL_NAME}/{registered.version}"}
    assert {answers[i].json()["predictions"][0]["label"] for i in (0, 1, 2, 4, 6, 7)} == {"pneumonia"}


def test_with_one_row_per_call_each_request_runs_the_model_itself(model, registered):
    with _running(build_app(model, _settings(registered, max_batch_rows=1))) as unbatched:
        stats = requests.get(f"{unbatched}/stats", timeout=10).json()
        answer = _post(unbatched, _split([gray_png_b64(10), gray_png_b64(250)]))
    assert stats["batching"] is None
    assert stats["max_batch_rows"] == 1
    assert answer.status_code == 200, answer.text
    assert [row["label"] for row in answer.json()["predictions"]] == ["COVID-19", "pneumonia"]


def test_a_request_past_its_deadline_while_waiting_for_the_model_is_dropped_from_the_next_call():
    """The batcher itself, on a slow stand-in for the model: the timeout holds while a request waits its turn."""
    calls = threading.Event()

    def slow_forward(rows: np.ndarray) -> np.ndarray:
        calls.set()
        time.sleep(0.5)
        return rows.reshape(len(rows), -1)[:, :1]

    batcher = MicroBatcher(slow_forward, max_rows=4, max_wait_s=0, decoders=2)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(batcher.run, np.ones((1, 2, 2, 3), dtype=np.float32))  # no deadline: runs
            assert calls.wait(timeout=5)
            start = time.monotonic()
            with batcher.request(start + 0.05), pytest.raises(MlflowException) as late:
                batcher.run(np.zeros((2, 2, 2, 3), dtype=np.float32))
            waited = time.monotonic() - start
            assert first.result(timeout=5).tolist() == [[1.0]]
        deadline = time.monotonic() + 5
        while batcher.stats().expired_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = batcher.stats()
    finally:
        batcher.close()
    assert late.value.error_code == "DEADLINE_EXCEEDED"
    assert "past its deadline waiting for the model" in late.value.message
    assert waited < 0.4  # at its deadline, not when the model call before it ended
    assert stats.expired_rows == 2
    assert stats.model_calls == 1
    assert stats.requests == 2


# --- the fast path of /invocations (components.server.image_rows, predictions_json) -----------------------


@pytest.fixture(scope="module")
def mlflow_url(model, registered):
    """The same model served with every request through MLflow's own parser (json_fast_path=False)."""
    with _running(build_app(model, _settings(registered), json_fast_path=False)) as address:
        yield address


def _forms(images: list[str]) -> dict[str, dict]:
    """The JSON forms the fast path reads, each holding `images` in the column image."""
    return {
        "dataframe_split": _split(images),
        "dataframe_records": {"dataframe_records": [{"image": image} for image in images]},
        "instances": {"instances": [{"image": image} for image in images]},
        "inputs records": {"inputs": [{"image": image} for image in images]},
        "inputs columns": {"inputs": {"image": images}},
    }


def _invocation_counts(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=10).json()["invocations"]


def _post_bytes(url: str, body: bytes, content_type: str = "application/json") -> requests.Response:
    return requests.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=30)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("form", list(_forms([])))
def test_the_fast_path_answers_byte_for_byte_as_mlflow_does(url, mlflow_url, form, count):
    body = json.dumps(_forms([gray_png_b64(level) for level in (10, 128, 250)[:count]])[form]).encode()
    before = _invocation_counts(url)
    fast = _post_bytes(url, body)
    after = _invocation_counts(url)
    before_mlflow = _invocation_counts(mlflow_url)
    reference = _post_bytes(mlflow_url, body)
    after_mlflow = _invocation_counts(mlflow_url)
    assert after["fast_path"] - before["fast_path"] == 1
    assert after_mlflow["mlflow"] - before_mlflow["mlflow"] == 1
    assert reference.status_code == 200, reference.text
    assert fast.status_code == 200, fast.text
    assert fast.content == reference.content
    assert fast.headers["content-type"] == reference.headers["content-type"]
    assert len(fast.json()["predictions"]) == count


def test_the_fast_path_writes_floats_as_mlflow_does():
    """Probabilities that are not round numbers, an OOD flag, an empty and a many-row frame: MLflow's own text."""
    from mlflow.pyfunc import scoring_server

    from components.server import predictions_json

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=7)
    frames = [
        serving.probabilities_frame(probs, ["COVID-19", "normal", "pneumonia"]),
        serving.probabilities_frame(probs[:0], ["COVID-19", "normal", "pneumonia"]),
        pd.DataFrame(
            {"score": np.array([1e-300, 0.1, 1 / 3, 2.5e17, float("nan")]), "flag": [True, False] * 2 + [True]}
        ),
        pd.DataFrame({"small": np.float32([0.1, 1 / 3]), "count": np.int64([1, -2]), "name": ["a", "é"]}),
        pd.DataFrame({"objects": pd.Series([np.float32(0.5), np.int64(2)], dtype=object)}),  # MLflow's encoder
    ]
    for frame in frames:
        expected = io.StringIO()
        scoring_server.predictions_to_json(frame, expected)
        assert predictions_json(frame) == expected.getvalue()


ROW_ERRORS = {
    "bad base64": _split([gray_png_b64(10), "not base64 !"]),
    "too small": _split([gray_png_b64(10, (1, 1))]),
    "too many rows": _split([gray_png_b64(10)] * (MAX_ROWS + 1)),
    "not an image": {"dataframe_records": [{"image": serving.encode_image_bytes(b"not a png")}]},
}
FALLBACKS = {
    "wrong column": {"dataframe_split": {"columns": ["img"], "data": [[gray_png_b64(10)]]}},
    "two columns": {"dataframe_records": [{"image": gray_png_b64(10), "patient": "p1"}]},
    "a number": _split([5]),
    "no rows": _split([]),
    "params": {**_split([gray_png_b64(10)]), "params": {"threshold": 0.5}},
    "two forms": {**_split([gray_png_b64(10)]), "instances": [{"image": gray_png_b64(10)}]},
    "index": {"dataframe_split": {"columns": ["image"], "index": [7], "data": [[gray_png_b64(10)]]}},
    "a list": [gray_png_b64(10)],
    "instances of strings": {"instances": [gray_png_b64(10)]},
}


@pytest.mark.parametrize("case", list(ROW_ERRORS))
def test_the_fast_path_refuses_bad_rows_as_mlflow_does(url, mlflow_url, case):
    body = json.dumps(ROW_ERRORS[case]).encode()
    before = _invocation_counts(url)
    fast = _post_bytes(url, body)
    after = _invocation_counts(url)
    reference = _post_bytes(mlflow_url, body)
    assert after["fast_path"] - before["fast_path"] == 1
    assert reference.status_code == 400
    assert fast.status_code == reference.status_code
    assert fast.json()["error_code"] == reference.json()["error_code"]
    assert fast.json()["message"] == reference.json()["message"]


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_other_json_bodies_go_to_mlflow_unchanged(url, mlflow_url, case):
    body = json.dumps(FALLBACKS[case]).encode()
    before = _invocation_counts(url)
    fast = _post_bytes(url, body)
    after = _invocation_counts(url)
    reference = _post_bytes(mlflow_url, body)
    assert after["mlflow"] - before["mlflow"] == 1
    assert after["fast_path"] == before["fast_path"]
    assert fast.status_code == reference.status_code
    assert fast.content == reference.content


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"dataframe_split": \xff}', "application/json"),
        (json.dumps(_split(["x"])).encode(), "application/json; charset=latin-1"),
        (json.dumps(_split(["x"])).encode(), "application/json; format=pandas-split"),
        (b"image\nnot base64 !", "text/csv"),
    ],
    ids=["not json", "not utf-8", "charset", "parameter", "csv"],
)
def test_bodies_the_fast_path_cannot_read_get_mlflows_error_answers(url, mlflow_url, body, content_type):
    before = _invocation_counts(url)
    fast = _post_bytes(url, body, content_type)
    after = _invocation_counts(url)
    reference = _post_bytes(mlflow_url, body, content_type)
    assert after["fast_path"] == before["fast_path"]
    assert 400 <= reference.status_code < 500
    assert fast.status_code == reference.status_code
    assert fast.content == reference.content
