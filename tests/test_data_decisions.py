"""Stewards decide (issue 13): `cxr data versions | approve | reject` and `data.require_approval`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from components.data_decisions import (
    DECISIONS_EXPERIMENT,
    DECISIONS_FILE,
    DataDecisionError,
    DataNotApprovedError,
    Validation,
    decisions_in_mlflow,
    find_version,
    latest_decision,
    log_decision,
    merge_decisions,
    new_decision,
    read_decisions,
    record_decision,
    require_approved,
    validation_from_summary,
    validations_in_mlflow,
    validations_in_reports,
    version_tags,
    versions_seen,
    versions_table,
)

VERSION = "0123456789abcdef"


def at(hour: int) -> datetime:
    return datetime(2026, 12, 1, hour, 0, 0, tzinfo=UTC)


def validation(version: str = VERSION, hour: int = 9, verdict: str = "PASSED", run: str = "run-a") -> Validation:
    return Validation(
        dataset_version=version,
        run=run,
        validated_at=at(hour).isoformat(),
        verdict=verdict,
        sources=["synthetic"],
        rows=24,
        used=22,
        excluded=2,
    )


# ---------------------------------------------------------------- records


def test_a_decision_records_who_when_and_why_in_utc():
    decision = new_decision(VERSION, "approved", "  looked at every class  ", "ana", now=at(10))
    assert decision.decided_at == "2026-12-01T10:00:00+00:00"
    assert decision.reason == "looked at every class"
    assert decision.by == "ana"
    assert len(decision.id) == 32


@pytest.mark.parametrize(("reason", "by", "message"), [(" ", "ana", "--reason is blank"), ("ok", "", "--by NAME")])
def test_a_blank_reason_or_name_is_refused(reason, by, message):
    with pytest.raises(DataDecisionError, match=message):
        new_decision(VERSION, "approved", reason, by)


def test_decisions_round_trip_through_the_work_folders_file(tmp_path):
    path = tmp_path / "reports" / DECISIONS_FILE
    assert read_decisions(path) == []
    first = new_decision(VERSION, "approved", "fine", "ana", now=at(10))
    second = new_decision(VERSION, "rejected", "a label swap", "bo", now=at(11))
    record_decision(path, first)
    record_decision(path, second)
    assert read_decisions(path) == [first, second]


def test_an_unreadable_decisions_file_is_named(tmp_path):
    path = tmp_path / DECISIONS_FILE
    path.write_text("{not json")
    with pytest.raises(DataDecisionError, match=re.escape(f"{path}: not a record of data decisions")):
        read_decisions(path)


def test_the_newest_decision_holds():
    approved = new_decision(VERSION, "approved", "fine", "ana", now=at(10))
    rejected = new_decision(VERSION, "rejected", "a label swap", "bo", now=at(11))
    other = new_decision("fedcba9876543210", "approved", "fine", "ana", now=at(12))
    assert latest_decision([rejected, approved, other], VERSION) == rejected
    assert latest_decision([approved], "fedcba9876543210") is None


def test_the_same_decision_from_the_file_and_from_mlflow_counts_once():
    decision = new_decision(VERSION, "approved", "fine", "ana", now=at(10))
    later = new_decision(VERSION, "rejected", "no", "bo", now=at(11))
    assert merge_decisions([later, decision], [decision]) == [decision, later]


# ---------------------------------------------------------------- the approval check


def test_an_undecided_version_is_refused_with_the_command_that_approves_it():
    with pytest.raises(DataNotApprovedError) as raised:
        require_approved(VERSION, [])
    message = str(raised.value)
    assert "\n" not in message
    assert f"dataset version {VERSION} has no steward approval" in message
    assert f'cxr data approve {VERSION} --reason "..."' in message


def test_a_rejected_version_stays_refused_and_says_who_rejected_it():
    approved = new_decision(VERSION, "approved", "fine", "ana", now=at(10))
    rejected = new_decision(VERSION, "rejected", "a label swap", "bo", now=at(11))
    with pytest.raises(DataNotApprovedError, match=r"was rejected by bo at 2026-12-01T11:00:00\+00:00: a label swap"):
        require_approved(VERSION, [approved, rejected])


def test_an_approved_version_passes():
    approved = new_decision(VERSION, "approved", "fine", "ana", now=at(10))
    assert require_approved(VERSION, [approved]) == approved


# ---------------------------------------------------------------- versions seen


def test_a_version_is_named_in_full_or_by_its_unique_start():
    known = [VERSION, "fedcba9876543210", "0123ffffffffffff"]
    assert find_version(VERSION, known) == VERSION
    assert find_version("fedc", known) == "fedcba9876543210"
    with pytest.raises(DataDecisionError, match="'0123' is ambiguous"):
        find_version("0123", known)
    with pytest.raises(DataDecisionError, match=r"unknown dataset version 'deadbeef': versions seen: 0123"):
        find_version("deadbeef", known)
    with pytest.raises(DataDecisionError, match=r"'fed'; give at least 4 characters of it: versions seen"):
        find_version("fed", known)
    with pytest.raises(DataDecisionError, match=r"'deadbeef': no version seen yet \(cxr validate records one\)"):
        find_version("deadbeef", [])


def test_versions_seen_group_validations_and_show_the_decision():
    approved = new_decision(VERSION, "approved", "fine", "ana", now=at(12))
    rows = versions_seen(
        [
            validation(hour=9, verdict="BLOCKED"),
            validation(hour=11, run="run-b"),
            validation(hour=11, run="mlflow-run-id"),  # the same validation, found in MLflow too
            validation("fedcba9876543210", hour=10),
        ],
        [approved],
    )
    assert [row.dataset_version for row in rows] == [VERSION, "fedcba9876543210"]
    assert rows[0].runs == 2
    assert rows[0].first_seen == at(9).isoformat()
    assert rows[0].verdict == "PASSED"
    assert rows[0].decision == approved
    assert rows[1].decision is None
    table = versions_table(rows)
    assert "approved by ana at 2026-12-01T12:00:00+00:00" in table
    assert table.splitlines()[2].endswith("undecided")


def test_versions_are_read_from_the_steward_summaries_of_the_reports_folder(tmp_path):
    summary = {
        "dataset_version": VERSION,
        "generated_at": at(9).isoformat(),
        "verdict": "PASSED WITH WARNINGS",
        "counts": {"total": 30, "used": 28, "excluded": 2},
        "class_by_source": {"columns": ["a", "b"]},
    }
    folder = tmp_path / "reports" / "cxr_data_validation-1"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "reports" / "broken").mkdir()
    (tmp_path / "reports" / "broken" / "summary.json").write_text("{")
    found = validations_in_reports(tmp_path / "reports")
    assert found == [validation_from_summary(summary, "cxr_data_validation-1")]
    assert found[0].sources == ["a", "b"]
    assert found[0].rows == 30


def test_decisions_and_validations_are_found_in_mlflow(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    validated = validation(hour=9)
    experiment = client.create_experiment("cxr_data_validation", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(experiment, tags=version_tags(validated))
    client.create_run(experiment)  # a run without the tags is not a validation
    assert decisions_in_mlflow(client) == []
    decision = new_decision(VERSION, "approved", "fine", "ana", now=at(10))
    run_id = log_decision(client, decision, tmp_path / "artifacts")
    assert (
        client.get_run(run_id).info.experiment_id == client.get_experiment_by_name(DECISIONS_EXPERIMENT).experiment_id
    )
    assert decisions_in_mlflow(client) == [decision]
    assert validations_in_mlflow(client) == [validated.model_copy(update={"run": run.info.run_id})]


# ---------------------------------------------------------------- the command line


@pytest.fixture
def own_tracking(monkeypatch):
    """The command below points MLflow at its own work folder; this process's setting comes back after."""
    import mlflow

    original = mlflow.get_tracking_uri()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(original)


def test_approving_a_version_never_seen_is_one_error_line(tmp_path, capsys, own_tracking):
    from cxr.cli import main

    (tmp_path / "w").mkdir()  # a work folder with nothing validated yet (a missing one is refused: below)
    code = main(["--workdir", str(tmp_path / "w"), "data", "approve", "deadbeef", "--reason", "fine"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: unknown dataset version 'deadbeef': no version seen yet (cxr validate records one)"]
    assert not (tmp_path / "w" / "reports" / DECISIONS_FILE).exists()


def approval_config(tmp_path: Path) -> Path:
    root = tmp_path / "synthetic"
    config = {
        "name": "approval",
        "task": "multiclass",
        "seed": 5,
        "data": {
            "synthetic": {"root": str(root), "n_patients_per_class": 6, "images_per_patient": 2, "image_size": 96},
            "sources": [{"kind": "folder", "root": str(root), "name": "synthetic", "default_view": "PA"}],
            "workers": 1,
            "require_approval": True,
        },
        "validation": {"min_width": 64, "min_height": 64, "min_images_per_class": 5, "near_duplicate_max_distance": 2},
        "augmentation": {"preset": "light", "copies_per_image": 0},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "training": {"epochs": 1, "batch_size": 8, "patience": 1},
        "evaluation": {"bootstrap_resamples": 100},
        "registry": {"model_name": "approval-test", "gate": {"floors": []}},
        "deployment": {"enabled": False},
    }
    path = tmp_path / "approval.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_validate_refuse_approve_train_then_reject(local_stack, tmp_path, capsys):
    """End to end: a validated version is refused for training until approved; a rejection refuses it again;
    a new work folder on the same tracking store sees the version and its decisions (from MLflow)."""
    from cxr.cli import main

    config = str(approval_config(tmp_path))
    workdir = ["--workdir", str(local_stack.workdir)]

    assert main([*workdir, "validate", "--config", config]) == 0
    out = capsys.readouterr().out
    version = re.search(r"dataset version ([0-9a-f]{16})", out).group(1)

    assert main([*workdir, "train", "--config", config]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: dataset version {version} has no steward approval (data.require_approval is on): "
        f'review its report (cxr validate), then cxr data approve {version} --reason "..."'
    ]

    assert main([*workdir, "data", "approve", version[:6], "--reason", "classes look right", "--by", "ana"]) == 0
    assert f"dataset version {version} approved by ana at " in capsys.readouterr().out
    assert main([*workdir, "data", "versions"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(version))
    assert "PASSED" in row
    assert "approved by ana" in row

    assert main([*workdir, "train", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"Dataset version {version} approved by ana at " in out
    assert "Registered model:  approval-test version 1" in out

    assert main([*workdir, "data", "reject", version, "--reason", "a label swap found", "--by", "bo"]) == 0
    capsys.readouterr()
    assert main([*workdir, "train", "--config", config]) == 1
    assert f"error: dataset version {version} was rejected by bo at " in capsys.readouterr().err
    recorded = read_decisions(local_stack.reports / DECISIONS_FILE)
    assert [(d.dataset_version, d.decision, d.by) for d in recorded[-2:]] == [
        (version, "approved", "ana"),
        (version, "rejected", "bo"),
    ]

    # A new work folder on the same tracking store (MLFLOW_TRACKING_URI, the session's, is kept).
    assert main(["--workdir", str(tmp_path / "new"), "data", "versions"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(version))
    assert "rejected by bo" in row


def test_a_mistyped_work_folder_is_refused_not_created(tmp_path, capsys, monkeypatch):
    from cxr.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    missing = tmp_path / "no-such-folder"
    assert main(["--workdir", str(missing), "data", "versions"]) == 2
    assert capsys.readouterr().err.startswith(f"error: no work folder {missing}: no data was validated there yet")
    assert not missing.exists()
