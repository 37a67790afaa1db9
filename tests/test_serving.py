"""The pyfunc serving model: logged for real, loaded in-process, and served over REST.

The models here are tiny "brightness" classifiers with fixed weights (raw
pixels -> Rescaling -> global average -> Dense), so the expected label of an
image is known: dark -> the first class, bright -> the last, and (multiclass)
mid-grey -> "normal".
"""

from __future__ import annotations

import functools
import io
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException
from PIL import Image

from components import serving
from components.imaging import encode_png
from components.labels import TASK_LABELS
from tests.factories import encode
from tests.servers import free_port as _free_port
from tests.servers import sqlite_mlflow, wait_ready
from tests.servers import stop_process_group as _stop

pytestmark = pytest.mark.slow

IMAGE_SIZE = 32
SERVE_READY_TIMEOUT_S = 90
VENV_BIN = Path(sys.executable).parent


def brightness_model(num_classes: int):
    """Raw pixels -> [-1, 1] -> mean -> Dense with fixed weights (no training needed)."""
    import keras

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if num_classes == 2:
        head = keras.layers.Dense(1, activation="sigmoid")
        outputs = head(x)
        head.set_weights([np.full((3, 1), 10.0 / 3), np.zeros(1)])  # bright -> class 1
    else:
        head = keras.layers.Dense(3, activation="softmax")
        outputs = head(x)
        # logits: dark -> class 0, mid-grey -> class 1, bright -> class 2.
        weights = np.tile(np.array([[-5.0, 0.0, 5.0]]) / 3, (3, 1))
        head.set_weights([weights, np.array([0.0, 2.0, 0.0])])
    return keras.Model(inputs, outputs)


def gray_png_b64(level: int, shape: tuple[int, int] = (64, 80)) -> str:
    """A uniform grey PNG as base64; the default shape passes ingest's 64x64 minimum."""
    return serving.encode_image_bytes(encode_png(np.full(shape, level, dtype=np.uint8)))


@functools.cache
def bomb_png() -> bytes:
    """A valid 16-bit grayscale PNG of 8,900 x 8,900 black pixels: about 154 KB of file, 158 MB of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 8900
    compressor = zlib.compressobj(9)
    row = bytes(1 + 2 * side)  # filter byte 0, then 16-bit zeros
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rgb_jpeg_b64(level: int) -> str:
    return serving.encode_image_bytes(encode(Image.new("RGB", (80, 64), (level, level, level)), "JPEG"))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "serving") as store:
        yield store


@pytest.fixture(scope="module")
def logged(tracking, tmp_path_factory):
    """task -> ModelInfo of a logged brightness model; also records log_model seconds."""
    folder = tmp_path_factory.mktemp("keras")
    infos, seconds = {}, {}
    for task, labels in TASK_LABELS.items():
        path = folder / f"{task}.keras"
        brightness_model(len(labels)).save(path)
        contract = serving.build_contract(task, "brightness-test", IMAGE_SIZE)
        with mlflow.start_run(experiment_id=tracking["experiment_id"]):
            start = time.perf_counter()
            infos[task] = serving.log_pyfunc_model(str(path), contract)
            seconds[task] = time.perf_counter() - start
    print(f"\nlog_pyfunc_model seconds: { {task: round(s, 2) for task, s in seconds.items()} }")
    return infos


def test_contract_and_signature():
    contract = serving.build_contract("binary", "MobileNet", 128)
    assert contract["class_names"] == ["non-COVID", "COVID-19"]
    assert contract["model_input"] == {"shape": [128, 128, 3], "dtype": "float32", "range": [0, 255]}
    signature = serving.model_signature(contract["class_names"])
    assert signature.inputs.input_names() == ["image"]
    assert signature.outputs.input_names() == ["prob_non-COVID", "prob_COVID-19", "label"]
    with pytest.raises(ValueError, match="class_names"):
        serving.validate_contract({"class_names": ["a"], "image_size": 32})
    names = [requirement.split("==")[0] for requirement in serving.pinned_requirements()]
    assert names[0] == "mlflow"
    assert {"keras", "pillow", "numpy", "pandas"} <= set(names)
    assert any(name.startswith("tensorflow") for name in names)


def test_decode_base64_image():
    wrapped = "\n".join(textwrap.wrap(gray_png_b64(7, (40, 50)), 20))  # e.g. `base64` CLI output
    assert serving.decode_base64_image(wrapped, 0).shape == (40, 50)
    with pytest.raises(ValueError, match="row 3: not valid base64"):
        serving.decode_base64_image("not base64!", 3)
    with pytest.raises(ValueError, match="row 1: expected a base64 string"):
        serving.decode_base64_image(None, 1)
    with pytest.raises(ValueError, match="row 2: cannot decode image"):
        serving.decode_base64_image(serving.encode_image_bytes(b"not an image"), 2)


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_pyfunc_predicts_probabilities_and_labels(logged, task):
    model = mlflow.pyfunc.load_model(logged[task].model_uri)
    names = list(TASK_LABELS[task])
    frame = pd.DataFrame({"image": [gray_png_b64(10), rgb_jpeg_b64(250)]})
    result = model.predict(frame)
    assert list(result.columns) == [f"prob_{name}" for name in names] + ["label"]
    probs = result[[f"prob_{name}" for name in names]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert set(result["label"]) <= set(names)
    assert list(result["label"]) == [names[0], names[-1]]  # dark -> first class, bright -> last


def test_pyfunc_rejects_bad_rows_naming_them(logged):
    model = mlflow.pyfunc.load_model(logged["multiclass"].model_uri)
    frame = pd.DataFrame({"image": [gray_png_b64(10), "%%% not base64", serving.encode_image_bytes(b"text")]})
    with pytest.raises(MlflowException) as caught:
        model.predict(frame)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "2 of 3 images" in caught.value.message
    assert "row 1" in caught.value.message
    assert "row 2" in caught.value.message
    with pytest.raises(MlflowException, match="missing inputs"):
        model.predict(pd.DataFrame({"picture": [gray_png_b64(10)]}))


def test_pyfunc_empty_input_gives_empty_output(logged):
    model = mlflow.pyfunc.load_model(logged["binary"].model_uri)
    result = model.predict(pd.DataFrame({"image": pd.Series([], dtype=object)}))
    assert result.empty
    assert list(result.columns) == ["prob_non-COVID", "prob_COVID-19", "label"]


def test_pyfunc_refuses_a_decompression_bomb_from_its_header(logged):
    """154 KB declaring 8,900 x 8,900 16-bit pixels: refused as ingest refuses it, without decoding (seconds, GBs)."""
    data = bomb_png()
    assert len(data) < 200_000
    model = mlflow.pyfunc.load_model(logged["binary"].model_uri)
    frame = pd.DataFrame({"image": [gray_png_b64(10), serving.encode_image_bytes(data)]})
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.perf_counter()
    with pytest.raises(MlflowException) as caught:
        model.predict(frame)
    seconds = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "row 1: declared size 8900x8900" in caught.value.message
    assert "40,000,000-pixel limit" in caught.value.message
    assert seconds < 2  # decoding it takes 9 to 13 s
    assert grown_mib < 100  # decoded, it holds 158 MB of pixels


def test_pyfunc_refuses_images_below_the_ingest_minimum(logged):
    model = mlflow.pyfunc.load_model(logged["binary"].model_uri)
    frame = pd.DataFrame({"image": [gray_png_b64(10, (1, 1)), gray_png_b64(10, (64, 64)), gray_png_b64(10, (64, 63))]})
    with pytest.raises(MlflowException) as caught:
        model.predict(frame)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "2 of 3 images" in caught.value.message
    assert "row 0: 1x1 pixels is below the 64x64 minimum" in caught.value.message
    assert "row 2: 63x64 pixels" in caught.value.message
    assert caught.value.row_errors.keys() == {0, 2}


def test_pyfunc_bounds_rows_and_pixels_per_request(logged):
    model = mlflow.pyfunc.load_model(logged["binary"].model_uri)
    classifier = model.unwrap_python_model()
    classifier.limits = serving.InputLimits(max_rows=2, max_request_pixels=64 * 80 * 2 - 1, max_image_pixels=64 * 90)
    with pytest.raises(MlflowException, match=r"3 images in one request; at most 2 \(serving.max_rows\)"):
        model.predict(pd.DataFrame({"image": [gray_png_b64(10)] * 3}))
    with pytest.raises(MlflowException, match=r"declare 10,240 pixels together, above the 10,239"):
        model.predict(pd.DataFrame({"image": [gray_png_b64(10)] * 2}))
    with pytest.raises(MlflowException, match=r"row 0: declared size 100x64 .* above the server's 5,760-pixel limit"):
        model.predict(pd.DataFrame({"image": [gray_png_b64(10, (64, 100))]}))
    assert len(model.predict(pd.DataFrame({"image": [gray_png_b64(10)]}))) == 1


def test_pyfunc_stops_at_its_deadline(logged):
    model = mlflow.pyfunc.load_model(logged["binary"].model_uri)
    frame = pd.DataFrame({"image": [gray_png_b64(10)] * 3})
    with serving.request_deadline(0), pytest.raises(MlflowException) as caught:
        model.predict(frame)
    assert caught.value.error_code == "DEADLINE_EXCEEDED"
    assert caught.value.get_http_status_code() == 504
    assert "after 0 of 3 images" in caught.value.message
    with serving.request_deadline(60):
        assert len(model.predict(frame)) == 3
    assert len(model.predict(frame)) == 3  # the deadline ended with its block


def test_predict_files(logged, tmp_path):
    paths = []
    for level in (5, 128, 250):
        path = tmp_path / f"x{level}.png"
        path.write_bytes(encode_png(np.full((64, 64), level, dtype=np.uint8)))
        paths.append(path)
    result = serving.predict_files(logged["multiclass"].model_uri, paths)
    assert list(result["path"]) == [str(path) for path in paths]
    assert list(result["label"]) == list(TASK_LABELS["multiclass"])


def test_predict_files_names_bad_files_and_scores_the_others(logged, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode_png(np.full((64, 64), 250, dtype=np.uint8)))
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    small = tmp_path / "small.png"
    small.write_bytes(encode_png(np.full((8, 8), 250, dtype=np.uint8)))
    locked = tmp_path / "locked.png"
    locked.write_bytes(good.read_bytes())
    locked.chmod(0)
    paths = [fake, good, tmp_path / "missing.png", small, locked, good]
    result = serving.predict_files(logged["binary"].model_uri, paths, chunk_rows=2)
    locked.chmod(0o600)
    errors = dict(zip(result["path"], result["error"], strict=True))
    assert list(result.columns) == ["path", "label", "prob_non-COVID", "prob_COVID-19", "error"]
    assert list(result["label"]) == ["", "COVID-19", "", "", "" if os.geteuid() else "COVID-19", "COVID-19"]
    assert errors[str(fake)].startswith("cannot decode image")
    assert errors[str(tmp_path / "missing.png")] == "no such file"
    assert errors[str(small)] == "8x8 pixels is below the 64x64 minimum (ingest's validation.min_width and min_height)"
    if os.geteuid():  # root reads any file
        assert errors[str(locked)] == "cannot read the file (Permission denied)"
    assert errors[str(good)] == ""
    assert np.isnan(result["prob_COVID-19"].iloc[0])


def test_collect_image_paths(tmp_path):
    folder = tmp_path / "drop"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "sub/c.jpeg", "notes.txt", "sub/d.dcm"):
        (folder / name).write_bytes(b"x")
    listing = tmp_path / "list.csv"
    listing.write_text("patient,path\np1,drop/b.png\np2,/abs/x.png\np3,\n")
    skipped = []
    found = serving.collect_image_paths([str(tmp_path / "one.png"), folder, listing, folder / "b.png"], skipped)
    assert skipped == [str(folder / "notes.txt")]
    assert found == [
        str(tmp_path / "one.png"),
        str(folder / "a.JPG"),
        str(folder / "b.png"),
        str(folder / "sub" / "c.jpeg"),
        str(folder / "sub" / "d.dcm"),
        "/abs/x.png",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(serving.PredictionInputError, match="no .png/.jpg/.jpeg/.dcm/.dicom image under the folder"):
        serving.collect_image_paths([tmp_path / "empty"])
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(serving.PredictionInputError, match="has no rows"):
        serving.collect_image_paths([tmp_path / "blank.csv"])
    (tmp_path / "nopath.csv").write_text("file,patient\na.jpg,p1\n")
    with pytest.raises(serving.PredictionInputError, match="has no column 'path' \\(or 'uri'\\); its columns: file"):
        serving.collect_image_paths([tmp_path / "nopath.csv"])


def test_a_broken_link_in_a_folder_is_a_row_that_says_so_and_undecodable_bytes_are_named(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    assert serving.collect_image_paths([folder]) == [str(folder / "gone.png")]
    with pytest.raises(ValueError, match="row 0: cannot decode image") as raised:
        serving.decode_base64_image(serving.encode_image_bytes(b"not an image"), 0)
    assert "BytesIO" not in str(raised.value)


def test_format_predictions_round_trips():
    table = pd.DataFrame(
        {
            "path": ["a.png", "b, c.png"],
            "label": ["COVID-19", ""],
            "prob_non-COVID": [0.25, np.nan],
            "prob_COVID-19": [0.75, np.nan],
            "error": ["", "cannot decode image (x)"],
        }
    )
    tsv = pd.read_csv(io.StringIO(serving.format_predictions(table, "tsv")), sep="\t")
    assert list(tsv.columns) == list(table.columns)
    assert tsv["prob_COVID-19"].iloc[0] == 0.75
    csv = pd.read_csv(io.StringIO(serving.format_predictions(table, "csv")))
    assert csv["path"].iloc[1] == "b, c.png"
    records = json.loads(serving.format_predictions(table, "json"))
    assert records[0] == {
        "path": "a.png",
        "label": "COVID-19",
        "prob_non-COVID": 0.25,
        "prob_COVID-19": 0.75,
        "error": None,
    }
    assert records[1]["prob_COVID-19"] is None
    assert records[1]["label"] is None


def test_logging_needs_an_active_run(tmp_path):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        serving.log_pyfunc_model(str(tmp_path / "m.keras"), serving.build_contract("binary", "x", 32))


# Loaded by every Python process of the server (via PYTHONPATH): `components` may
# only come from a model's code/ folder, as in a serving image without this repo.
HIDE_INSTALLED_PACKAGE = """
import os, sys
from importlib.machinery import PathFinder

class OnlyModelCode:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "components":
            return None
        code_dirs = [p for p in sys.path if os.path.basename(p.rstrip(os.sep)) == "code"]
        spec = PathFinder.find_spec(name, code_dirs)
        if spec is None:
            raise ModuleNotFoundError("components is hidden outside a model's code/ folder", name=name)
        print(f"components imported from {spec.origin}", file=sys.stderr, flush=True)
        return spec

sys.meta_path.insert(0, OnlyModelCode)
"""


def _server_env(tracking, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking["uri"], MLFLOW_DISABLE_TELEMETRY="true")
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE_INSTALLED_PACKAGE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    # `models serve --env-manager local` runs `uvicorn` from PATH: put the venv's bin first.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _invoke(url: str, values: list, column: str = "image") -> requests.Response:
    payload = {"dataframe_split": {"columns": [column], "data": [[value] for value in values]}}
    return requests.post(f"{url}/invocations", json=payload, timeout=30)


def test_served_model_answers_rest_from_its_own_code(logged, tracking, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    command = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        logged["multiclass"].model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with log.open("w") as sink:
        # New session: the CLI and its uvicorn worker form one process group to kill.
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=_server_env(tracking, tmp_path),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        startup = wait_ready(process, url, log, SERVE_READY_TIMEOUT_S)
        print(f"\nmlflow models serve ready after {startup:.1f} s")

        answer = _invoke(url, [gray_png_b64(10), gray_png_b64(128, (64, 64))])
        assert answer.status_code == 200, answer.text
        predictions = pd.DataFrame(answer.json()["predictions"])
        names = list(TASK_LABELS["multiclass"])
        np.testing.assert_allclose(predictions[[f"prob_{n}" for n in names]].sum(axis=1), 1.0, atol=1e-6)
        assert list(predictions["label"]) == names[:2]

        bad = _invoke(url, [gray_png_b64(10), "definitely not base64 !"])
        assert bad.status_code == 400, bad.text
        assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "row 1" in bad.json()["message"]

        missing = _invoke(url, [gray_png_b64(10)], column="picture")
        assert missing.status_code == 400, missing.text

        imported = [line for line in log.read_text().splitlines() if "components imported from" in line]
        assert imported
        assert all(f"{os.sep}code{os.sep}components{os.sep}" in line for line in imported)
    finally:
        _stop(process)
    deadline = time.monotonic() + 5
    while _live_group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_group_members(process.pid) == []


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (Linux /proc; zombies wait for a reaper)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members
