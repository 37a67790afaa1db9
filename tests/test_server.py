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
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from components import serving
from components.config import ServingConfig
from components.imaging import encode_png
from components.server import (
    MODEL_VERSION_HEADER,
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
