"""The manifest artifact is versioned by content: the same files give the same dataset
version (and a cache hit downstream when caching keys on data, not artifact ids);
one changed file on disk gives a new version and a cache miss."""

import shutil

import pytest
from PIL import Image

from components.manifest import build_manifest, dataset_version, manifest_frame
from components.sources import FolderOptions
from tests.factories import write_class_folders

pytestmark = pytest.mark.slow


def test_dataset_version_follows_file_content(tmp_path):
    write_class_folders(tmp_path)
    sources = [FolderOptions(root=str(tmp_path), name="f")]
    first = dataset_version(build_manifest(sources, "multiclass"))
    assert first == dataset_version(build_manifest(sources, "multiclass"))
    assert len(first) == 16
    Image.new("L", (64, 64), 7).save(tmp_path / "normal" / "nor0_0.png")
    assert dataset_version(build_manifest(sources, "multiclass")) != first


def test_the_same_files_elsewhere_keep_their_version_and_a_renamed_file_does_not(tmp_path):
    first_root, moved_root = tmp_path / "drop", tmp_path / "elsewhere" / "deeper" / "copy"
    write_class_folders(first_root)
    version = dataset_version(build_manifest([FolderOptions(root=str(first_root), name="f")], "multiclass"))
    shutil.copytree(first_root, moved_root)
    assert dataset_version(build_manifest([FolderOptions(root=str(moved_root), name="f")], "multiclass")) == version
    (moved_root / "normal" / "nor0_0.png").rename(moved_root / "normal" / "renamed.png")
    assert dataset_version(build_manifest([FolderOptions(root=str(moved_root), name="f")], "multiclass")) != version


def test_paths_quoted_in_exclusion_details_do_not_enter_the_version(tmp_path):
    write_class_folders(tmp_path / "a")
    first = build_manifest([FolderOptions(root=str(tmp_path / "a"), name="f")], "multiclass")
    missing = {**first.iloc[0].to_dict(), "exclusion_reason": "missing file"}
    missing["exclusion_detail"] = f"[Errno 2] No such file or directory: '{tmp_path / 'a' / 'normal' / 'gone.png'}'"
    quoted = manifest_frame([*first.to_dict("records"), missing])
    moved = quoted.assign(
        uri=quoted["uri"].str.replace(str(tmp_path / "a"), str(tmp_path / "b"), regex=False),
        exclusion_detail=quoted["exclusion_detail"].str.replace(str(tmp_path / "a"), str(tmp_path / "b"), regex=False),
    )
    assert moved["exclusion_detail"].iloc[-1] != quoted["exclusion_detail"].iloc[-1]
    assert dataset_version(moved) == dataset_version(quoted)


def test_a_row_without_a_file_does_not_pin_the_version_to_absolute_paths(tmp_path):
    """A metadata row that names no file has uri "": the folder the source's files share ignores it."""
    write_class_folders(tmp_path / "a")
    first = build_manifest([FolderOptions(root=str(tmp_path / "a"), name="f")], "multiclass")
    nameless = {**first.iloc[0].to_dict(), "uri": "", "exclusion_reason": "missing file"}
    with_nameless = manifest_frame([*first.to_dict("records"), nameless])
    moved = with_nameless.assign(uri=with_nameless["uri"].str.replace(str(tmp_path / "a"), str(tmp_path / "b")))
    assert dataset_version(moved) == dataset_version(with_nameless)


def test_changed_file_invalidates_the_cache_of_downstream_steps(local_stack, tmp_path):
    from zenml import pipeline
    from zenml.config import CachePolicy

    from components.config import DataConfig, SplitConfig
    from steps.ingest import ingest_data
    from steps.names import INGEST_STEP, MANIFEST, SPLIT_STEP
    from steps.split import split_data

    write_class_folders(tmp_path)
    data = DataConfig(sources=[{"kind": "folder", "root": str(tmp_path), "name": "f"}], workers=1)
    split = SplitConfig(train=0.5, val=0.25, test=0.25)
    by_content = split_data.with_options(cache_policy=CachePolicy(include_artifact_ids=False))

    @pipeline(enable_cache=True)
    def ingest_and_split() -> None:
        manifest = ingest_data(data=data, task="multiclass", seed=0)
        by_content(manifest, split=split, seed=0, near_duplicate_max_distance=2)

    def run_once() -> tuple[str, str]:
        run = ingest_and_split()
        version = run.steps[INGEST_STEP].outputs[MANIFEST][0].run_metadata["dataset_version"]
        return version, run.steps[SPLIT_STEP].status.value

    first_version, first_status = run_once()
    second_version, second_status = run_once()
    Image.new("L", (64, 64), 7).save(tmp_path / "normal" / "nor0_0.png")
    third_version, third_status = run_once()

    assert second_version == first_version
    assert second_status == "cached"
    assert third_version != first_version
    assert third_status == "completed"
