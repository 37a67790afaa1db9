"""User errors at the command line end with one `error:` line, before anything runs, never a traceback."""

import sys
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, load_run_config, merged_yaml_file, set_dotted
from cxr.cli import main
from tests.factories import write_noise_image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = PROJECT_ROOT / "configs" / "quickstart.yaml"
CXR = str(Path(sys.executable).with_name("cxr"))


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("error: ")
    return captured.err


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        ("backbones.5.weights", "backbones.5 needs a list index 0..0, got '5'"),
        ("backbones.x.weights", "needs a list index"),
        ("backbones.-1.weights", "needs a list index"),
        ("training.epochs.x", "training.epochs holds the value 20, which has no field 'x'"),
        ("training..epochs", "empty field name"),
    ],
)
def test_set_names_the_path_that_does_not_exist(dotted, message):
    data = yaml.safe_load(QUICKSTART.read_text())
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        set_dotted(data, dotted, 1)


def test_set_edits_one_item_of_a_default_list_the_file_leaves_out():
    """quickstart.yaml lists no gate floors: --set edits the default ones, the other stays."""
    floors = load_run_config(QUICKSTART, {"registry.gate.floors.0.min": 0.6}).registry.gate.floors
    assert [(f.metric, f.min) for f in floors] == [("roc_auc_macro", 0.6), ("balanced_accuracy", 0.5)]
    with pytest.raises(ConfigError, match=r"registry\.gate\.floors\.2 needs a list index 0\.\.1"):
        load_run_config(QUICKSTART, {"registry.gate.floors.2.min": 0.6})
    assert load_run_config(QUICKSTART, {"registry.gate.floors": []}).registry.gate.floors == []


def test_set_with_a_value_that_is_not_yaml_is_a_config_error(capsys):
    code = main(["check-config", "--config", str(QUICKSTART), "--set", "training.epochs=[1,2"])
    assert code == 2
    assert "not valid YAML" in _error_line(capsys)


def test_unreadable_run_config_files_are_named(tmp_path):
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("name: x\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="utf16.yaml is not UTF-8 text"):
        load_run_config(utf16)
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_run_config(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_run_config(empty)


def test_a_label_map_outside_the_task_is_refused_when_the_config_loads(tmp_path):
    data = yaml.safe_load(QUICKSTART.read_text())
    data["data"]["sources"][0]["label_map"] = {"normal": "banana"}
    path = tmp_path / "banana.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.label_map: .*'banana' is not a multiclass label"):
        load_run_config(path)


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ("train_steps: 3\n", "train_steps must be a mapping"),
        ("steps: [1]\n", "steps must be a mapping"),
        ("settings: [\n", "is not valid YAML"),
        ("- a\n- b\n", "must be a mapping at the top level"),
    ],
)
def test_a_bad_zenml_overlay_is_named(tmp_path, overlay, message):
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay)
    with pytest.raises(ConfigError, match=message):
        merged_yaml_file([PROJECT_ROOT / "zenml_config.yaml", path], tmp_path / "merged.yaml", ["train_MobileNet"])


def test_train_steps_get_their_own_settings_not_a_yaml_alias(tmp_path):
    merged = merged_yaml_file([PROJECT_ROOT / "zenml_config.yaml"], tmp_path / "m.yaml", ["train_a", "train_b"])
    text = merged.read_text()
    assert "&id" not in text
    assert "*id" not in text


def test_summary_json_into_a_folder_is_refused_before_the_run(tmp_path, capsys):
    code = main(["check-config", "--config", str(QUICKSTART)])  # the config itself is fine
    assert code == 0
    capsys.readouterr()
    code = main(["--workdir", str(tmp_path / "w"), "train", "--config", str(QUICKSTART), "--summary-json", "/"])
    assert code == 2
    assert "is a folder" in _error_line(capsys)
    assert not (tmp_path / "w" / "zenml_run_config.yaml").exists()  # nothing ran


def test_predict_without_a_registered_model_says_so_in_one_line(local_stack, tmp_path, capsys):
    image = write_noise_image(tmp_path / "x.png")
    code = main(["--workdir", str(local_stack.workdir), "predict", "--model-name", "no-such-model", str(image)])
    assert code == 1
    assert _error_line(capsys).startswith("error: no version of registered model 'no-such-model'")


@pytest.mark.parametrize(
    ("error", "keeps_trace"),
    [(FileNotFoundError(2, "No such file"), False), (ConfigError("bad"), False), (RuntimeError("a bug"), True)],
)
def test_the_failed_step_log_keeps_a_trace_only_for_bugs(error, keeps_trace):
    """The filter cxr puts on ZenML's orchestrator logger (end to end: tests/test_errors.py, warm start)."""
    import logging

    from cxr.cli import _is_user_facing
    from cxr.run_log import LOCAL_ORCHESTRATOR_LOGGER, STEP_FAILED, ConsoleFilter

    exc_info = (type(error), error, None)
    record = logging.LogRecord(LOCAL_ORCHESTRATOR_LOGGER, logging.ERROR, __file__, 1, STEP_FAILED, ("x",), exc_info)
    assert ConsoleFilter(_is_user_facing).filter(record)  # the record itself is kept
    assert (record.exc_info is not None) is keeps_trace


@pytest.fixture
def another_workdir(monkeypatch):
    """The commands below point MLflow at their own work folder: this process's setting comes back after."""
    import mlflow

    original = mlflow.get_tracking_uri()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(original)


def test_registry_commands_in_a_work_folder_without_a_registry_say_so(tmp_path, another_workdir, capsys):
    """A wrong --workdir must not look like an empty registry ("no versions"), nor leave one behind."""
    assert main(["--workdir", str(tmp_path), "models", "--model-name", "m"]) == 2
    err = _error_line(capsys)
    assert f"no MLflow registry in the work folder {tmp_path}" in err
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


def test_a_mistyped_work_folder_is_not_created(tmp_path, another_workdir, capsys):
    missing = tmp_path / "typo"
    assert main(["--workdir", str(missing), "predict-batch", "--config", "configs/quickstart.yaml"]) == 2
    assert f"no MLflow registry in the work folder {missing}" in _error_line(capsys)
    assert not missing.exists()


def test_a_tracking_server_that_is_down_is_one_error_line_within_seconds(
    tmp_path, another_workdir, capsys, monkeypatch
):
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    start = time.monotonic()
    assert main(["--workdir", str(tmp_path), "models", "--model-name", "m"]) == 1
    assert time.monotonic() - start < 60  # MLflow's own retries would wait about 250 s
    assert _error_line(capsys).startswith(f"error: the MLflow tracking server at http://127.0.0.1:{port} cannot be")


def test_a_corrupt_registry_database_is_one_error_line(tmp_path, another_workdir, capsys):
    database = tmp_path / "mlflow" / "mlflow.db"
    database.parent.mkdir(parents=True)
    database.write_text("garbage")
    assert main(["--workdir", str(tmp_path), "models", "--model-name", "m"]) == 1
    err = _error_line(capsys)
    assert "mlflow.db cannot be read: file is not a database" in err


# ---------------------------------------------------------------- a data drop the pipeline stops: one message


# ZenML's warnings known to be harmless here (cxr.run_log.HARMLESS), and the lines a user error used to repeat.
NOISE = (
    "Failed to disable MLflow autologging",
    "You are specifying docker settings",
    "cannot be applied to any pipeline step invocations",
    "Specifying step resources is not supported for the local orchestrator",
    "Failed to run step",
    "which Google will stop supporting",
)


def blocked_drop_config(tmp_path: Path) -> Path:
    """A small synthetic drop that a blocking check stops (more images per class asked than there are)."""
    root = tmp_path / "synthetic"
    config = {
        "name": "blocked",
        "task": "multiclass",
        "data": {
            "synthetic": {"root": str(root), "n_patients_per_class": 4, "images_per_patient": 2, "image_size": 96},
            "sources": [{"kind": "folder", "root": str(root), "name": "synthetic", "default_view": "PA"}],
            "workers": 1,
        },
        "validation": {"min_width": 64, "min_height": 64, "min_images_per_class": 1000},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "training": {"epochs": 1},
    }
    path = tmp_path / "blocked.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_blocked_drop_prints_one_message_and_the_log_file_keeps_the_trace(tmp_path):
    import subprocess

    workdir = tmp_path / "w"
    done = subprocess.run(
        [CXR, "--workdir", str(workdir), "train", "--config", str(blocked_drop_config(tmp_path))],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 1, console[-3000:]
    assert "Traceback" not in console
    for noise in NOISE:
        assert noise not in console
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: Manifest validation for task 'multiclass' FAILED")
    assert "[min_images_per_class]" in done.stderr
    logs = list((workdir / "logs").glob("*-train-*.log"))
    assert len(logs) == 1
    log = logs[0].read_text()
    assert f"(the failed step's trace is in {logs[0]})" in done.stderr
    assert "Traceback (most recent call last)" in log
    assert "ManifestValidationError" in log
    assert "Failed to run step `data_gate`" in log  # what the console was spared is in the log


def test_harmless_zenml_warnings_are_matched_by_logger_and_exact_text():
    """Each HARMLESS record is dropped from the console; the same text from another logger, or another
    framework in the fastai message, is not."""
    import logging

    from cxr.cli import _is_user_facing
    from cxr.run_log import HARMLESS, LOCAL_ORCHESTRATOR_LOGGER, ConsoleFilter

    console = ConsoleFilter(_is_user_facing)

    def record(logger: str, message: str, *args) -> logging.LogRecord:
        return logging.LogRecord(logger, logging.WARNING, __file__, 1, message, args, None)

    resources = next(known for known in HARMLESS if known.template)
    assert not console.filter(record(LOCAL_ORCHESTRATOR_LOGGER, resources.text, "train_MobileNet"))
    for known in HARMLESS:
        if not known.template:
            assert not console.filter(record(known.logger, known.text))
            assert console.filter(record("somewhere.else", known.text))
    tracker = HARMLESS[0].logger
    other = "Failed to disable MLflow autologging for the following frameworks: ['fastai', 'sklearn']."
    assert console.filter(record(tracker, other))
