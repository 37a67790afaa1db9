"""Which evaluated images a version already saw (components.leakage): same bytes, same patient, near-copies."""

from __future__ import annotations

import pandas as pd
import pytest

from components.leakage import SplitImages, overlap_with, split_images
from tests.factories import scored_predictions


def recorded(rows: list[tuple[str, str, str, str]], max_distance: int = 4) -> SplitImages:
    """(split, sha256, phash, patient_id) rows as a version's recorded images."""
    frame = pd.DataFrame(rows, columns=["split", "sha256", "phash", "patient_id"])
    return split_images(frame, max_distance)


def test_each_seen_image_is_left_out_with_the_first_reason_that_applies():
    test = scored_predictions(0.8, n_patients=6, images_per_patient=1)
    phashes = ["0000000000000000", "ffffffffffffffff", "0f0f0f0f0f0f0f0f", "", "00ff00ff00ff00ff", "1234123412341234"]
    seen = recorded(
        [
            ("train", test.keys[0], "", "other:1"),  # same bytes as test row 0
            ("val", "a" * 16, "", test.patient_ids[1]),  # same patient as test row 1
            ("train", "b" * 16, "0f0f0f0f0f0f0f0e", "other:2"),  # 1 bit from test row 2
            ("test", test.keys[4], "", test.patient_ids[4]),  # its own test split: not seen
            ("external", "c" * 16, "1234123412341234", "other:3"),  # its external source: not seen
        ]
    )
    overlap = overlap_with(test, phashes, seen, "7")
    assert overlap.kept == [3, 4, 5]
    assert [(e.uri, e.kind) for e in overlap.excluded] == [
        (test.uris[0], "same bytes"),
        (test.uris[1], "same patient"),
        (test.uris[2], "near-duplicate"),
    ]
    assert "pHash distance 1 <= 4 bits" in overlap.excluded[2].reason
    assert overlap.describe() == (
        "3 of 6 test images unseen by v7; 3 left out as in its training/validation data "
        "(1 near-duplicate, 1 same bytes, 1 same patient)"
    )


def test_nothing_seen_keeps_every_image_and_the_threshold_is_the_versions_own():
    test = scored_predictions(0.8, n_patients=4, images_per_patient=1)
    seen = recorded([("train", "d" * 16, "0f0f0f0f0f0f0f00", "other:1")], max_distance=2)  # 4 bits from row 0
    overlap = overlap_with(test, ["0f0f0f0f0f0f0f0f", "", "", ""], seen, "1")
    assert overlap.kept == [0, 1, 2, 3] and not overlap.excluded
    assert overlap.describe() == "all 4 test images unseen by v1"


def test_mismatched_phashes_and_lists_are_refused():
    test = scored_predictions(0.8, n_patients=2, images_per_patient=1)
    with pytest.raises(ValueError, match="1 pHashes for 2 images"):
        overlap_with(test, [""], recorded([]), "1")
    with pytest.raises(ValueError, match="differ in length"):
        SplitImages(near_duplicate_max_distance=0, split=["train"], sha256=[], phash=[], patient_id=[])
