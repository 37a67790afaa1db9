import pandas as pd
import pytest

from components.splitting import (
    EXCLUDE_OVER_CAP,
    PatientLeakError,
    assert_no_patient_leak,
    assign_splits,
    limit_images,
)
from tests.factories import patient_rows


def manifest(n_patients_per_label=10, images_per_patient=3):
    return patient_rows(patients_per_label=n_patients_per_label, images_per_patient=images_per_patient)


def test_no_patient_in_two_splits_and_every_split_has_every_label():
    frame = manifest()
    splits = assign_splits(frame, (0.7, 0.15, 0.15), seed=1)
    with_splits = frame.assign(split=splits)
    assert with_splits.groupby("patient_id")["split"].nunique().max() == 1
    table = pd.crosstab(with_splits["label"], with_splits["split"])
    assert (table > 0).all().all()
    assert table["train"].sum() > table["val"].sum()


def test_split_is_seeded():
    frame = manifest()
    assert assign_splits(frame, (0.7, 0.15, 0.15), 4).equals(assign_splits(frame, (0.7, 0.15, 0.15), 4))
    assert not assign_splits(frame, (0.7, 0.15, 0.15), 4).equals(assign_splits(frame, (0.7, 0.15, 0.15), 5))


def test_leak_check_names_the_patient():
    frame = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "test", "val"]})
    with pytest.raises(PatientLeakError, match="'a'"):
        assert_no_patient_leak(frame)


def test_limit_images_keeps_whole_patients_and_marks_the_rest():
    frame = manifest(images_per_patient=3)
    limited = limit_images(frame, max_images=30, seed=0)
    kept = limited[limited["exclusion_reason"] == ""]
    assert len(limited) == len(frame)  # nothing dropped
    assert 27 <= len(kept) <= 33
    assert set(limited["exclusion_reason"]) == {"", EXCLUDE_OVER_CAP}
    per_patient = limited.groupby("patient_id")["exclusion_reason"].nunique()
    assert per_patient.max() == 1
    assert set(kept["label"]) == {"COVID-19", "normal", "pneumonia"}
    assert limit_images(frame, None, 0) is frame


def test_split_groups_merge_patients_linked_by_near_duplicates():
    import pandas as pd

    from components.splitting import split_groups

    frame = pd.DataFrame({"patient_id": ["b", "a", "c", "d", "c", "e"]})
    groups = split_groups(frame, [(0, 3), (3, 5)])  # b~d, d~e
    assert groups.tolist() == ["b", "a", "c", "b", "c", "b"]
    assert split_groups(frame).tolist() == frame["patient_id"].tolist()


# ---------------------------------------------------------------- external sources and evaluation drops


def two_sources(external_patients_per_label=2):
    """Source "a" (10 patients per label, 3 images each) and a smaller source "b" (ids and files of its own)."""
    from components.labels import COVID, NORMAL, PNEUMONIA
    from tests.factories import manifest_row, manifest_table

    external = manifest_table(
        manifest_row(f"/b/{label}/{p}_{i}.png", label, "b", patient_id=f"b:{label}-{p}")
        for label in (COVID, NORMAL, PNEUMONIA)
        for p in range(external_patients_per_label)
        for i in range(2)
    )
    return pd.concat([patient_rows(source="a"), external], ignore_index=True)


def test_external_sources_are_held_out_and_the_others_split_as_without_them():
    from components.splitting import EXTERNAL, SPLITS, split_counts_table, split_dataset

    frame = two_sources()
    split = split_dataset(frame, (0.7, 0.15, 0.15), 3, 2, external_sources=["b"])
    alone = split_dataset(frame[frame["source"] == "a"], (0.7, 0.15, 0.15), 3, 2)

    assert split.index.tolist() == frame.index.tolist()
    assert set(split.loc[split["source"] == "b", "split"]) == {EXTERNAL}
    assert set(split.loc[split["source"] == "a", "split"]) == set(SPLITS)
    assert split.loc[split["source"] == "a", "split"].equals(alone["split"])
    assert split_counts_table(split).columns.tolist() == [*SPLITS, EXTERNAL]
    assert split_counts_table(split)[EXTERNAL].tolist() == [4, 4, 4]


def test_an_evaluation_drop_is_not_split():
    from components.splitting import EXTERNAL, evaluated_sources, split_counts_table, split_dataset

    frame = two_sources()
    split = split_dataset(frame, (0.7, 0.15, 0.15), 3, 2, purpose="evaluation")

    assert set(split["split"]) == {EXTERNAL}
    assert len(split) == len(frame)
    assert split["split_group"].equals(split["patient_id"])  # no near-duplicates here: one group per patient
    assert split_counts_table(split).columns.tolist() == [EXTERNAL]
    assert evaluated_sources(["a", "b"], [], "evaluation") == ["a", "b"]
    assert evaluated_sources(["a", "b"], ["b"], "training") == ["b"]


@pytest.mark.parametrize(
    ("purpose", "external", "role"),
    [("training", ["b"], "an external source"), ("evaluation", [], "evaluation data")],
)
def test_a_held_out_source_without_labels_is_an_error_naming_it(purpose, external, role):
    from components.errors import CxrError
    from components.labels import EXCLUDE_UNLABELLED
    from components.splitting import UnlabelledSourceError, split_dataset

    frame = two_sources()
    unlabelled = frame["source"] == "b"
    frame.loc[unlabelled, ["finding", "label", "exclusion_reason"]] = ["todo", "", EXCLUDE_UNLABELLED]

    with pytest.raises(UnlabelledSourceError) as caught:
        split_dataset(frame, (0.7, 0.15, 0.15), 3, 2, external_sources=external, purpose=purpose)
    message = str(caught.value)
    assert message.startswith(f"{role}")
    assert "source 'b': none of its 12 row(s) is labelled and usable" in message
    assert f"{EXCLUDE_UNLABELLED} 12 (e.g. finding 'todo')" in message
    assert isinstance(caught.value, CxrError)  # the CLI prints it without a traceback


def test_limit_images_caps_each_held_out_source_on_its_own():
    frame = two_sources(external_patients_per_label=1)  # 6 external images among 96
    pooled = limit_images(frame, max_images=20, seed=0)
    held_out = limit_images(frame, max_images=20, seed=0, held_out_sources=["b"])

    kept = held_out[(held_out["exclusion_reason"] == "") & (held_out["source"] == "b")]
    assert set(kept["label"]) == {"COVID-19", "normal", "pneumonia"}  # at least one patient per class
    assert (pooled[pooled["source"] == "b"]["exclusion_reason"] == EXCLUDE_OVER_CAP).all()  # drowned when pooled
    assert limit_images(frame, 20, 0, held_out_sources=[]).equals(pooled)
