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
