"""`cxr train --if-data-changed`: the listing, the file cache and the decision, on real folders and a real S3 server.

Each scenario changes real files (one added, one changed, one touched with the same bytes, one
removed, none changed), lists them again and decides against a champion that recorded the
listing and the dataset version of the data it was trained on. The dataset version computed
through the cache is compared with the one computed by reading every file
(components.manifest.dataset_version of the manifest ingest builds), and the number of files read
is counted: none when the listing settles it, only the new or changed ones otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from components.config import parse_run_config
from components.manifest import dataset_version
from components.registry import CHAMPION, TAG_DATASET_VERSION
from components.retraining import (
    ALREADY_TRAINED,
    CHAMPION_UNVERSIONED,
    CONTENT_UNCHANGED,
    DATA_CHANGED,
    DECISIONS_FILE,
    LISTING_ARTIFACT,
    LISTING_UNCHANGED,
    NO_CHAMPION,
    Champion,
    DataListing,
    FileInfoCache,
    data_listing,
    decide,
    relisted,
    training_manifest,
)
from components.retraining import current_dataset_version as version_with_cache
from tests.factories import write_class_folders, write_noise_image

LABELS = ("COVID-19", "normal", "pneumonia")


def run_config(root: str, model_name: str = "retraining-test", **changes):
    """A run config with one `folder` source at `root` (local or s3://); files read inline."""
    config = {
        "name": "retraining-test",
        "task": "multiclass",
        "data": {"sources": [{"kind": "folder", "root": root, "name": "drop"}], "workers": 1},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "registry": {"model_name": model_name},
        **changes,
    }
    return parse_run_config(config)


def full_version(config) -> str:
    """The dataset version read from every file, without any cache (what ingest registers)."""
    return dataset_version(training_manifest(config))


def must_not_read():
    raise AssertionError("the listing should have settled it without reading the data")


class Scenario:
    """A champion trained on the data as it was, and decisions on the data as it is now."""

    def __init__(self, config, cache_path: Path, settle_s: float = 0.0):
        self.config, self.settle_s = config, settle_s
        self.cache = FileInfoCache(cache_path)
        self.champion: Champion | None = None

    def train_now(self, version: str = "1") -> None:
        """Record the data now as the champion's (what a training run does)."""
        time.sleep(self.settle_s)
        listing = data_listing(self.config)
        self.champion = Champion(
            model_name="m", version=version, dataset_version=full_version(self.config), listing=listing
        )

    def decide(self, version_now=None, trained_on=lambda version: None):
        time.sleep(self.settle_s)
        listing = data_listing(self.config)
        self.last_listing = listing
        version_now = version_now or (lambda: version_with_cache(self.config, listing, self.cache))
        return decide("retraining-test", "m", listing, self.champion, version_now, trained_on)


def later(path: Path, seconds: int = 10) -> None:
    """Move a file's modification time `seconds` into the future (a touch, or a copy over it)."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + seconds * 1_000_000_000))


def check_scenarios(scenario: Scenario, folder: Path) -> None:
    """The scenarios shared by the local and the S3 tests; `folder` is where the source's files lie on disk."""
    scenario.train_now()

    unchanged = scenario.decide(version_now=must_not_read)
    assert unchanged.reason == LISTING_UNCHANGED
    assert not unchanged.train
    assert unchanged.files_read == 0
    assert (unchanged.added, unchanged.changed, unchanged.removed) == (0, 0, 0)

    touched = folder / "normal" / "nor0_0.png"
    later(touched)
    same_bytes = scenario.decide()
    assert same_bytes.reason == CONTENT_UNCHANGED
    assert not same_bytes.train
    assert same_bytes.changed == 1
    assert same_bytes.dataset_version == scenario.champion.dataset_version

    changed = folder / "pneumonia" / "pne1_0.png"
    write_noise_image(changed, seed=99, size=(64, 64))
    later(changed, 20)
    decision = scenario.decide()
    assert decision.reason == DATA_CHANGED
    assert decision.train
    assert decision.changed == 2  # the touched file and this one, against the champion's listing
    assert decision.files_read == 1  # the touched file was read once already: cached
    assert decision.dataset_version == full_version(scenario.config)
    assert decision.dataset_version != scenario.champion.dataset_version

    scenario.train_now("2")
    write_noise_image(folder / "COVID-19" / "COV9_0.png", seed=7, size=(64, 64))
    added = scenario.decide()
    assert added.reason == DATA_CHANGED
    assert (added.added, added.changed, added.removed) == (1, 0, 0)
    assert added.files_read == 1
    assert added.dataset_version == full_version(scenario.config)

    scenario.train_now("3")
    (folder / "COVID-19" / "COV9_0.png").unlink()
    removed = scenario.decide()
    assert removed.reason == DATA_CHANGED
    assert removed.removed == 1
    assert removed.files_read == 0  # every remaining file is cached
    assert removed.dataset_version == full_version(scenario.config)


def test_decisions_on_a_local_folder(tmp_path):
    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=3, size=64)
    scenario = Scenario(run_config(str(folder)), tmp_path / "cache.json")
    check_scenarios(scenario, folder)


def test_decisions_on_s3(s3_env, tmp_path):
    folder = Path(s3_env["dir"]) / "retraining" / "drop"
    write_class_folders(folder, LABELS, patients_per_label=3, size=64)
    scenario = Scenario(run_config("s3://retraining/drop"), tmp_path / "cache.json", settle_s=s3_env["settle_s"])
    check_scenarios(scenario, folder)
    listing = scenario.last_listing
    assert listing.sources[0].files[0].stamp.startswith("etag=")


def test_the_cache_reads_each_file_once_and_survives_a_restart(tmp_path):
    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=2, size=64)
    config = run_config(str(folder))
    listing = data_listing(config)
    first = version_with_cache(config, listing, FileInfoCache(tmp_path / "cache.json"))
    assert first == (full_version(config), 6)
    # Another process (the next scheduled run) with the same listing: nothing read at all.
    assert version_with_cache(config, listing, FileInfoCache(tmp_path / "cache.json")) == (first[0], 0)
    # A config change that decides the manifest (the task) changes the listing, not the cached reads.
    binary = run_config(str(folder), task="binary")
    version, read = version_with_cache(binary, data_listing(binary), FileInfoCache(tmp_path / "cache.json"))
    assert read == 0
    assert version == full_version(binary)


def test_the_cache_learns_a_training_runs_reads_except_files_changed_meanwhile(tmp_path):
    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=2, size=64)
    (folder / "normal" / "broken.png").write_bytes(b"not an image")
    config = run_config(str(folder))
    before = data_listing(config)
    manifest = training_manifest(config)  # what the run's ingest step built
    changed = folder / "pneumonia" / "pne1_0.png"
    later(changed)  # touched while the run read the data
    cache = FileInfoCache(tmp_path / "cache.json")
    assert cache.learn_from_manifest(manifest, before, relisted(before)) == 5  # 6 images, less the touched one
    version, read = version_with_cache(config, data_listing(config), cache)
    assert read == 2  # the touched file and the broken one (its row records no usable read)
    assert version == full_version(config)


def test_no_champion_or_no_version_tag_trains_without_reading(tmp_path):
    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=1, size=64)
    scenario = Scenario(run_config(str(folder)), tmp_path / "cache.json")
    first = scenario.decide(version_now=must_not_read)
    assert first.reason == NO_CHAMPION
    assert first.train
    scenario.champion = Champion(model_name="m", version="4", dataset_version=None)
    untagged = scenario.decide(version_now=must_not_read)
    assert untagged.reason == CHAMPION_UNVERSIONED
    assert untagged.train


def test_a_champion_without_a_listing_is_compared_on_content(tmp_path):
    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=1, size=64)
    scenario = Scenario(run_config(str(folder)), tmp_path / "cache.json")
    scenario.champion = Champion(model_name="m", version="1", dataset_version=full_version(scenario.config))
    decision = scenario.decide()
    assert decision.reason == CONTENT_UNCHANGED
    assert decision.added is None
    assert "no listing recorded" in decision.line()


def test_data_a_rejected_version_was_trained_on_is_not_trained_again(tmp_path):
    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=1, size=64)
    scenario = Scenario(run_config(str(folder)), tmp_path / "cache.json")
    scenario.train_now("1")
    write_noise_image(folder / "normal" / "nor5_0.png", seed=5, size=(64, 64))
    decision = scenario.decide(trained_on=lambda version: "2")
    assert decision.reason == ALREADY_TRAINED
    assert decision.trained_version == "2"


# ---------------------------------------------------------------- the command


def register_champion(client: MlflowClient, name: str, listing: DataListing, version_of_data: str) -> str:
    """A champion as steps/register.py and `cxr train` leave it: dataset version tag, listing in its run."""
    client.create_registered_model(name)
    run_id = client.create_run("0").info.run_id
    client.log_text(run_id, listing.model_dump_json(), LISTING_ARTIFACT)
    version = client.create_model_version(
        name, source="s3://placeholder/model", run_id=run_id, tags={TAG_DATASET_VERSION: version_of_data}
    )
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return str(version.version)


def cxr_train(workdir: Path, config: dict, capsys) -> tuple[int, str, str]:
    """`cxr --workdir W train --config <config> --if-data-changed` in-process: exit code, stdout, stderr."""
    from cxr.cli import main

    path = workdir.parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["--workdir", str(workdir), "train", "--config", str(path), "--if-data-changed"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cxr_train_if_data_changed_skips_and_records_why(local_stack, tmp_path, capsys):
    """(local_stack: ZenML is imported on the session's store first, so the command below keeps that store and
    finds the champion registered there; run alone, it would point ZenML and MLflow at its own work folder.)"""
    from cxr.retraining import check_data
    from cxr.stack import LocalPaths

    folder = tmp_path / "drop"
    write_class_folders(folder, LABELS, patients_per_label=2, size=64)
    name = "retraining-cli"
    config = run_config(str(folder), model_name=name)
    raw = {
        "name": "retraining-test",
        "task": "multiclass",
        "data": {"sources": [{"kind": "folder", "root": str(folder), "name": "drop"}], "workers": 1},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "registry": {"model_name": name},
    }
    client = MlflowClient()
    register_champion(client, name, data_listing(config), full_version(config))
    workdir = tmp_path / "work"

    code, out, _ = cxr_train(workdir, raw, capsys)
    assert code == 0
    assert "retraining: SKIP (listing_unchanged) retraining-cli champion v1" in out
    assert "Training run" not in out

    later(folder / "normal" / "nor1_0.png")
    code, out, _ = cxr_train(workdir, raw, capsys)
    assert code == 0
    assert "SKIP (content_unchanged)" in out

    write_noise_image(folder / "normal" / "nor1_0.png", seed=42, size=(64, 64))
    changed = check_data(config, LocalPaths(workdir.resolve()), if_data_changed=True)  # the command would train
    assert changed.train
    assert changed.decision.reason == DATA_CHANGED

    # A version trained on exactly this data but not promoted (a challenger): not trained again.
    client.create_model_version(
        name, source="s3://placeholder/model", tags={TAG_DATASET_VERSION: changed.decision.dataset_version}
    )
    again = check_data(config, LocalPaths(workdir.resolve()), if_data_changed=True)
    assert again.decision.reason == ALREADY_TRAINED
    assert again.decision.trained_version == "2"

    records = [json.loads(line) for line in (workdir / "reports" / DECISIONS_FILE).read_text().splitlines()]
    assert [record["reason"] for record in records] == [
        LISTING_UNCHANGED,
        CONTENT_UNCHANGED,
        DATA_CHANGED,
        ALREADY_TRAINED,
    ]
    # This work folder had read nothing yet (the champion was trained elsewhere): the first changed listing
    # reads the 6 files once; the next change reads only the changed file.
    assert [record["files_read"] for record in records] == [0, 6, 1, 0]


def test_a_source_that_cannot_be_listed_is_a_one_line_error(tmp_path, capsys):
    raw = {
        "name": "retraining-test",
        "task": "multiclass",
        "data": {"sources": [{"kind": "folder", "root": str(tmp_path / "missing"), "name": "drop"}]},
        "backbones": [{"name": "MobileNet", "weights": "none"}],
    }
    code, _, err = cxr_train(tmp_path / "work", raw, capsys)
    assert code == 1
    assert err.strip() == f"error: source 'drop': source root {tmp_path / 'missing'} is not a directory"


# ---------------------------------------------------------------- one real training run


@pytest.mark.slow
def test_a_trained_champion_records_its_listing_and_the_next_runs_skip(local_stack, tmp_path, capsys):
    """The one training run of this module: no champion -> train; the version it registers carries the listing,
    so the next run skips on the listing alone, and a touched file is recognised as the same content (the
    dataset version recomputed here equals the one the pipeline's ingest step registered)."""
    from cxr.cli import main

    data_root = tmp_path / "synthetic"
    name = "retraining-trained"
    config = {
        "name": "retraining-trained",
        "task": "multiclass",
        "seed": 3,
        "data": {
            "synthetic": {"root": str(data_root), "n_patients_per_class": 6, "images_per_patient": 2, "image_size": 96},
            "sources": [{"kind": "folder", "root": str(data_root), "name": "synthetic", "default_view": "PA"}],
        },
        "validation": {"min_width": 64, "min_height": 64, "min_images_per_class": 5, "near_duplicate_max_distance": 2},
        "augmentation": {"preset": "light", "copies_per_image": 0},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "training": {"epochs": 1, "batch_size": 8, "patience": 1},
        "evaluation": {"bootstrap_resamples": 100},
        "registry": {"model_name": name, "gate": {"floors": []}},
        "deployment": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    def train() -> str:
        code = main(["--workdir", str(local_stack.workdir), "train", "--config", str(path), "--if-data-changed"])
        out = capsys.readouterr().out
        assert code == 0, out
        return next(line for line in out.splitlines() if line.startswith("retraining: "))

    assert train().startswith(f"retraining: TRAIN (no_champion) {name} champion none")
    client = MlflowClient(local_stack.tracking_uri)
    champion = client.get_model_version_by_alias(name, CHAMPION)
    run = client.get_run(champion.run_id)
    assert run.data.tags["retraining.reason"] == NO_CHAMPION

    assert train().startswith(f"retraining: SKIP (listing_unchanged) {name} champion v1")

    later(next(data_root.rglob("*.png")))
    line = train()
    assert line.startswith(f"retraining: SKIP (content_unchanged) {name} champion v1")
    assert f"data {champion.tags[TAG_DATASET_VERSION]};" in line
    decisions = [
        json.loads(line) for line in (local_stack.workdir / "reports" / DECISIONS_FILE).read_text().splitlines()
    ]
    assert decisions[-1]["files_read"] == 1  # the run's ingest filled the cache: only the touched file is read

    moved = tmp_path / "moved" / "synthetic"
    shutil.copytree(data_root, moved)
    config["data"]["sources"][0]["root"] = str(moved)
    config["data"].pop("synthetic")
    path.write_text(yaml.safe_dump(config))
    assert train().startswith(f"retraining: SKIP (content_unchanged) {name} champion v1")
