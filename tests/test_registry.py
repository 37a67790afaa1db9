"""Registry, aliases, the promotion gate against a re-evaluated champion, the lock and the history.

Real MLflow stores (SQLite, and a real `mlflow server` for the outage), no mocks.
Registered versions point at a placeholder source: promotion reads predictions
(Evidence and the champion predictor), not model files; the predictor here
returns the predictions of a model of the quality tagged on the version
(tests.factories.scored_predictions), which is what re-evaluating that model
on the candidate's own test split would return.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from components import registry, serving
from components.backbones import build_classifier
from components.config import EvaluationConfig, GateConfig, RegistryConfig
from components.imaging import encode_png
from components.leakage import SplitImages
from components.metrics import Decision
from tests.factories import hex_digest, scored_predictions
from tests.servers import free_port, sqlite_mlflow, stop_process_group, wait_ready

QUALITY_TAG = "test_quality"
FAST = EvaluationConfig(bootstrap_resamples=200)


def test_split_fingerprint_ignores_order_and_duplicates():
    assert registry.split_fingerprint(["b", "a", "a"]) == registry.split_fingerprint(["a", "b"])
    assert registry.split_fingerprint(["a", "b"]) != registry.split_fingerprint(["a", "c"])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """Each test registers its own model name in this module's store."""
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "registry") as store:
        yield store


def evidence(quality: float, seed: int = 0, gate: GateConfig | None = None) -> registry.Evidence:
    return registry.Evidence(
        decision=Decision(rule="argmax"),
        predictions=[scored_predictions(quality, seed=seed)],
        evaluation=FAST,
        registry=RegistryConfig(gate=gate or GateConfig()),
        seed=0,
    )


def trained_on(patients: list[str], images_per_patient: int = 2) -> SplitImages:
    """The recorded images of a run that trained on `patients` (train split; other bytes than any test image)."""
    keys = [hex_digest(f"train-{p}-{i}", 16) for p in patients for i in range(images_per_patient)]
    return SplitImages(
        near_duplicate_max_distance=0,
        split=["train"] * len(keys),
        sha256=keys,
        phash=[""] * len(keys),
        patient_id=[p for p in patients for _ in range(images_per_patient)],
    )


# A run's own training patients: none of them is in a test split of scored_predictions (patients p0..p99).
OWN_TRAINING = trained_on([f"train-p{n}" for n in range(20)])


def register(
    client: MlflowClient, name: str, quality: float, seen: SplitImages | None = OWN_TRAINING, evidence_logged=True
) -> str:
    """A version whose model would score `quality` on any test split of scored_predictions.

    Its run logs its evidence with `seen` as its recorded images (what it trained on), as
    steps/register.py does; without `evidence_logged` the version has no evidence at all.
    """
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    experiment = client.get_experiment_by_name("registry")
    run = client.create_run("0" if experiment is None else experiment.experiment_id)
    if evidence_logged:
        logged = evidence(quality).model_copy(update={"images": seen})
        client.log_text(run.info.run_id, logged.model_dump_json(), registry.EVIDENCE_ARTIFACT)
    version = client.create_model_version(
        name, source="s3://placeholder-bucket/model", run_id=run.info.run_id, tags={QUALITY_TAG: str(quality)}
    )
    return str(version.version)


def predictor(champion, like):
    """Re-evaluate `champion` on the images of `like`: the quality tagged on it, same patients and keys."""
    quality = float(champion.tags[QUALITY_TAG])
    return [scored_predictions(quality, split=p.split, seed=0) for p in like]


def promote(client, name, version, quality, **options) -> registry.Promotion:
    return registry.promote_with_gate(client, name, version, evidence(quality), predictor, **options)


def test_a_first_version_no_better_than_chance_is_never_champion(tracking):
    client, name = MlflowClient(), "first-at-chance"
    version = register(client, name, 0.5)
    result = promote(client, name, version, 0.5)
    assert result.alias == "challenger"
    assert registry.current_champion(client, name) is None
    failed = [c.name for c in result.criteria if not c.passed]
    assert "floor roc_auc_macro on test" in failed


def test_champion_moves_only_on_a_paired_improvement_and_the_history_records_it(tracking):
    client, name = MlflowClient(), "paired"
    first = promote(client, name, register(client, name, 0.8), 0.8)
    assert first.alias == "champion"
    assert "no champion yet" in first.reason

    worse = promote(client, name, register(client, name, 0.7), 0.7)
    assert worse.alias == "challenger"
    assert worse.champion_version == "1"
    assert worse.differences["f1_macro"].high < 0  # re-evaluated champion is better on the same patients

    better = promote(client, name, register(client, name, 0.95), 0.95)
    assert better.alias == "champion", better.reason
    assert better.differences["f1_macro"].low > 0
    assert str(registry.current_champion(client, name).version) == "3"

    tags = client.get_model_version(name, "2").tags
    assert tags[registry.TAG_REASON] == worse.reason
    assert '"passed": false' in tags[registry.TAG_CRITERIA]
    history = registry.promotion_history(client, name)
    assert [(e.alias, e.version, e.previous) for e in history] == [
        ("champion", "1", None),
        ("challenger", "2", None),
        ("champion", "3", "1"),
    ]


def test_a_better_but_overconfident_candidate_fails_on_calibration(tracking):
    client, name = MlflowClient(), "overconfident"
    promote(client, name, register(client, name, 0.8), 0.8)
    candidate = register(client, name, 0.9)
    result = registry.promote_with_gate(
        client,
        name,
        candidate,
        registry.Evidence(
            decision=Decision(rule="argmax"),
            predictions=[scored_predictions(0.9, confidence=0.999)],
            evaluation=FAST,
            registry=RegistryConfig(),
            seed=0,
        ),
        predictor,
    )
    assert result.alias == "challenger"
    assert [c.name for c in result.criteria if not c.passed] == ["calibration: ECE rises by at most 0.0200"]


def test_the_decision_follows_the_champion_on_the_candidates_split_not_its_stored_number(tracking):
    """The champion's own stored test number (0.6 quality) would lose to the candidate's 0.8; re-evaluated on
    the candidate's split it scores 0.95, so the candidate stays challenger."""
    client, name = MlflowClient(), "re-evaluated"
    champion = register(client, name, 0.95)
    registry.move_alias(client, name, "champion", champion, action="promote", reason="set up")
    client.set_model_version_tag(name, champion, registry.TAG_METRIC_VALUE, "0.6")
    result = promote(client, name, register(client, name, 0.8), 0.8)
    assert result.alias == "challenger"
    assert result.champion_assessments["test"].metrics.f1_macro > result.assessments["test"].metrics.f1_macro


def memorising_predictor(memorised: set[str], unseen_right: float):
    """A champion that is right on every image of the patients it trained on (`memorised`) and right on only
    the first `unseen_right` share of the other patients: what a model that overfits its training set does."""

    def predict(champion, like):
        out = []
        for p in like:
            perfect = scored_predictions(1.0, split=p.split, seed=0)
            unseen = sorted({patient for patient in perfect.patient_ids if patient not in memorised})
            wrong = set(unseen[int(round(unseen_right * len(unseen))) :])
            rows = [
                row[::-1] if patient in wrong else row
                for row, patient in zip(perfect.probabilities, perfect.patient_ids, strict=True)
            ]
            out.append(perfect.model_copy(update={"probabilities": rows}))
        return out

    return predict


def test_a_champion_is_compared_only_on_test_images_it_never_saw(tracking):
    """The champion trained on 80 of the candidate's 100 test patients (another split of the same data): on all
    200 images it looks better (F1 about 0.84 vs 0.8) and would stay; on the 40 images of the 20 patients it
    never saw it is right on 4 of 20, and the candidate, right on most of them, becomes champion."""
    client, name = MlflowClient(), "seen-test-patients"
    memorised = {f"p{n}" for n in range(80)}
    champion = register(client, name, 0.84, seen=trained_on(sorted(memorised)))
    registry.move_alias(client, name, "champion", champion, action="promote", reason="set up")
    candidate = register(client, name, 0.8)
    predictor_ = memorising_predictor(memorised, unseen_right=0.2)

    naive = scored_predictions(0.8)
    theirs = predictor_(None, [naive])[0]
    assert np.mean(np.argmax(theirs.probabilities, axis=1) == np.asarray(theirs.y_true)) > 0.8  # looks better

    result = registry.promote_with_gate(client, name, candidate, evidence(0.8), predictor_)
    assert result.alias == "champion", result.reason
    comparison = next(c for c in result.criteria if c.name.startswith("champion v1 compared on test images"))
    assert comparison.passed
    assert "40 of 200 test images unseen by v1; 160 left out" in comparison.detail
    assert "160 same patient" in comparison.detail
    (overlap,) = result.overlaps
    assert len(overlap.excluded) == 160 and all(e.kind == "same patient" for e in overlap.excluded)
    assert np.sum(result.champion_assessments["test"].metrics.confusion_matrix) == 40
    assert np.sum(result.assessments["test"].metrics.confusion_matrix) == 200  # own figures: every image
    assert result.differences["f1_macro"].low > 0


def test_a_champion_that_saw_almost_every_test_image_cannot_be_compared(tracking):
    client, name = MlflowClient(), "seen-almost-all"
    # Patients alternate classes (p0 class 0, p1 class 1 ...): the one unseen patient, p98, is class 0.
    champion = register(client, name, 0.9, seen=trained_on([f"p{n}" for n in range(100) if n != 98]))
    registry.move_alias(client, name, "champion", champion, action="promote", reason="set up")
    result = promote(client, name, register(client, name, 0.95), 0.95)
    assert result.alias == "challenger"
    failed = [c for c in result.criteria if not c.passed]
    assert [c.name for c in failed] == ["champion v1 compared on test images it never saw"]
    assert "2 of 200 test images unseen by v1; 198 left out" in failed[0].detail
    assert "no image of COVID-19 left to compare on" in failed[0].detail
    assert "--force" in failed[0].detail
    assert result.champion_assessments is None  # no change, slice or calibration criterion without a class


def test_a_champion_whose_training_images_are_unknown_is_not_compared_blindly(tracking):
    client, name = MlflowClient(), "unknown-training"
    for logged in (True, False):  # evidence without images (an older version), and no evidence at all
        champion = register(client, name, 0.5, seen=None, evidence_logged=logged)
        registry.move_alias(client, name, "champion", champion, action="promote", reason="set up")
        result = promote(client, name, register(client, name, 0.95), 0.95)
        assert result.alias == "challenger"
        failed = [c for c in result.criteria if not c.passed]
        assert len(failed) == 1 and "training and validation images are not recorded" in failed[0].detail


def test_manual_force_and_rollback_are_recorded(tracking):
    client, name = MlflowClient(), "force-rollback"
    promote(client, name, register(client, name, 0.9), 0.9)
    weak = register(client, name, 0.6)
    forced = promote(client, name, weak, 0.6, action="promote", note="clinical review asked for it", force=True)
    assert forced.alias == "champion"
    assert forced.forced is True
    assert "FORCED" in forced.reason
    assert "clinical review" in forced.reason

    event = registry.rollback(client, name, reason="forced model misbehaves")
    assert (event.version, event.previous, event.action) == ("1", "2", "rollback")
    assert str(registry.current_champion(client, name).version) == "1"
    assert [e.action for e in registry.promotion_history(client, name)] == ["gate", "force", "rollback"]


def test_rollback_goes_back_down_the_line_and_only_to_an_earlier_champion(tracking):
    client, name = MlflowClient(), "line"
    for quality in (0.7, 0.8, 0.9):  # v1, v2, v3 each champion in turn
        assert promote(client, name, register(client, name, quality), quality).alias == "champion"
    weak = register(client, name, 0.5)  # v4: never champion
    with pytest.raises(registry.RollbackError, match="version 4 of 'line' is not an earlier champion still in line"):
        registry.rollback(client, name, reason="try v4", to_version=weak)
    assert registry.rollback(client, name, reason="v3 misbehaves").version == "2"
    assert registry.rollback(client, name, reason="v2 too").version == "1"  # not back to v3
    with pytest.raises(registry.RollbackError, match="no earlier champion of 'line' is left"):
        registry.rollback(client, name, reason="and v1?")
    assert registry.champion_lineage(registry.promotion_history(client, name)) == ["1"]


def test_rollback_without_an_earlier_champion_says_so(tracking):
    client, name = MlflowClient(), "no-earlier"
    promote(client, name, register(client, name, 0.9), 0.9)
    with pytest.raises(registry.RollbackError, match="no earlier champion"):
        registry.rollback(client, name, reason="why not")


def test_a_held_lock_times_out_with_its_holder_named_and_a_stale_one_is_broken(tracking):
    client, name = MlflowClient(), "locked"
    with registry.promotion_lock(client, name) as holder:
        with (
            pytest.raises(registry.PromotionLockTimeoutError, match="holds the lock"),
            registry.promotion_lock(client, name, timeout_s=0.5),
        ):
            pass
        assert holder.split(" pid ")[0] == registry.who()
        with registry.promotion_lock(client, name, timeout_s=1, stale_after_s=0):  # the first counts as stale
            pass
    with registry.promotion_lock(client, name, timeout_s=1):  # released
        pass


def test_a_lock_left_by_a_killed_process_on_this_machine_is_broken_at_once(tracking):
    client, name = MlflowClient(), "killed-holder"
    with registry.promotion_lock(client, name) as holder:
        pass
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = holder.replace(f" pid {os.getpid()} ", f" pid {finished.stdout.strip()} ")
    client.create_registered_model(f"{name}{registry.LOCK_SUFFIX}", description=dead)
    with registry.promotion_lock(client, name, timeout_s=2):  # would time out if the dead holder were waited for
        pass
    live = holder  # this very process: alive, so its lock is respected
    client.create_registered_model(f"{name}{registry.LOCK_SUFFIX}", description=live)
    with (
        pytest.raises(registry.PromotionLockTimeoutError),
        registry.promotion_lock(client, name, timeout_s=0.5),
    ):
        pass


# ---------------------------------------------------------------- concurrency: two processes, one store


def _promote_in_turn(uri: str, jobs: list[tuple[str, str, float]], barrier) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    for name, version, quality in jobs:
        barrier.wait(timeout=120)
        promote(client, name, version, quality, lock_timeout_s=120)


def race_promotions(client: MlflowClient, uri: str, names: list[str]) -> list[int | None]:
    """For each model of `names`: v1 (0.5) is champion; v2 (0.9) and v3 (0.6) are then promoted from two
    processes at the same moment, on the store at `uri`. Returns the two processes' exit codes."""
    jobs_a, jobs_b = [], []
    for trial, name in enumerate(names):
        v1 = register(client, name, 0.5)
        registry.move_alias(client, name, "champion", v1, action="promote", reason="set up")
        v2, v3 = register(client, name, 0.9), register(client, name, 0.6)
        # Alternate which process gets the better candidate.
        (jobs_a if trial % 2 else jobs_b).append((name, v2, 0.9))
        (jobs_b if trial % 2 else jobs_a).append((name, v3, 0.6))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_promote_in_turn, args=(uri, jobs, barrier)) for jobs in (jobs_a, jobs_b)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    return [worker.exitcode for worker in workers]


def test_concurrent_promotions_leave_the_better_candidate_champion(tracking):
    """v1 (0.5) is champion; v2 (0.9) and v3 (0.6) are promoted from two processes at the same moment."""
    client, trials = MlflowClient(), 12
    exit_codes = race_promotions(client, tracking["uri"], [f"race-{t}" for t in range(trials)])
    assert exit_codes == [0, 0]
    champions = [str(registry.current_champion(client, f"race-{t}").version) for t in range(trials)]
    assert champions == ["2"] * trials
    for trial in range(trials):
        reasons = [client.get_model_version(f"race-{trial}", v).tags[registry.TAG_REASON] for v in ("2", "3")]
        # Exactly one of them compared with v1: the other saw the first's result under the lock.
        assert sum("vs champion v1" in reason for reason in reasons) == 1


# ---------------------------------------------------------------- an MLflow server that goes away


def test_an_mlflow_outage_before_aliasing_keeps_the_old_champion_and_says_what_failed(tmp_path, monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        os.path.join(os.path.dirname(sys.executable), "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/server.db",
        "--default-artifact-root",
        (tmp_path / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = tmp_path / "server.log"

    server = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    try:
        wait_ready(server, url, log, probe="/health")
        client, name = MlflowClient(url), "outage"
        assert promote(client, name, register(client, name, 0.8), 0.8).alias == "champion"
        candidate = register(client, name, 0.95)
        stop_process_group(server)
        with pytest.raises(registry.RegistryUnavailableError, match="failed while taking the promotion lock"):
            promote(client, name, candidate, 0.95)
    finally:
        stop_process_group(server)
    # The server's own store, read directly: the old champion is in place and no lock was left behind.
    store = MlflowClient(f"sqlite:///{tmp_path}/server.db")
    assert str(registry.current_champion(store, name).version) == "1"
    assert store.get_model_version(name, candidate).aliases == []
    assert promote(store, name, candidate, 0.95).alias == "champion"


# ---------------------------------------------------------------- a real model behind the alias


def test_the_champion_alias_resolves_to_a_servable_model(tracking, tmp_path):
    path = tmp_path / "mobilenet.keras"
    build_classifier("MobileNet", 2, 32, alpha=0.25).save(path)
    with mlflow.start_run(experiment_id=tracking["experiment_id"]):
        info = serving.log_pyfunc_model(str(path), serving.build_contract("binary", "MobileNet", 32))
    client, name = MlflowClient(), "servable"
    version = registry.register_version(
        info.model_uri,
        name,
        backbone="MobileNet",
        decision=Decision(rule="argmax"),
        metric_key="f1_macro",
        metric_value=0.8,
        test_fingerprint="abc",
        dataset_version="v",
    )
    registry.move_alias(client, name, "champion", str(version.version), action="promote", reason="test")
    assert registry.decision_of(client.get_model_version(name, "1")).rule == "argmax"
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    image = serving.encode_image_bytes(encode_png(np.zeros((64, 64), dtype=np.uint8)))
    result = model.predict(pd.DataFrame({"image": [image]}))
    assert result[["prob_non-COVID", "prob_COVID-19"]].sum(axis=1).iloc[0] == pytest.approx(1.0)
