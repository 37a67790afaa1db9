"""Which evaluated images a registered version already saw: its training and validation images.

A version's test split is disjoint from its own training data (components.splitting),
but a *champion* re-evaluated on a candidate's test split, or any version evaluated on
a new drop (`cxr evaluate`), may have trained on some of those images: another seed
splits the same data differently (one trial here: 21 of 26 test patients of a second
run had been in the champion's training or validation split). Scoring a model on
images it trained on inflates its figures (4 to 26 points in the field's leaky-split
reports), so such images are left out of a comparison and listed with their reason.

Each registered version records every used image of its run (``SplitImages``: split,
sha256, pHash, patient ID) in its evidence (components.registry.Evidence). An
evaluated image counts as seen by a version when one of the version's train or val
images has, in this order of precedence:

- the same bytes (sha256);
- the same patient (``patient_id``, which is ``<source>:<id>``, components.manifest);
- a near-identical picture (pHash Hamming distance <= ``near_duplicate_max_distance``
  bits, the run's own validation setting: a re-encoded or re-sized copy of one film).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
from pydantic import BaseModel, model_validator

from components.assessment import Predictions
from components.duplicates import near_duplicate_pairs

__all__ = ["SEEN_SPLITS", "ExcludedImage", "Overlap", "SplitImages", "overlap_with", "split_images"]

# The splits a model learns from or is selected on: its weights and its early stopping, threshold and backbone.
SEEN_SPLITS = ("train", "val")


class SplitImages(BaseModel):
    """Every used image of a run's split manifest, one entry per image in each list.

    ``split`` is "train", "val", "test" or "external"; ``sha256`` the file's hex digest;
    ``phash`` its 64-bit perceptual hash (16 hex digits, "" when unknown);
    ``patient_id`` "<source>:<id>". ``near_duplicate_max_distance`` is the run's pHash
    threshold in bits (components.config validation checks).
    """

    near_duplicate_max_distance: int
    split: list[str]
    sha256: list[str]
    phash: list[str]
    patient_id: list[str]

    @model_validator(mode="after")
    def _same_lengths(self) -> SplitImages:
        lengths = {len(self.split), len(self.sha256), len(self.phash), len(self.patient_id)}
        if len(lengths) > 1:
            raise ValueError(f"SplitImages lists differ in length: {sorted(lengths)}")
        return self

    def seen(self) -> SplitImages:
        """The images the model learned from or was selected on (SEEN_SPLITS)."""
        rows = [i for i, split in enumerate(self.split) if split in SEEN_SPLITS]
        return self.model_copy(
            update={
                field: [getattr(self, field)[i] for i in rows] for field in ("split", "sha256", "phash", "patient_id")
            }
        )

    def phash_of(self) -> dict[str, str]:
        """sha256 -> pHash of every image (the first one where a digest repeats)."""
        out: dict[str, str] = {}
        for digest, phash in zip(self.sha256, self.phash, strict=True):
            out.setdefault(digest, phash)
        return out


def split_images(split_manifest: pd.DataFrame, near_duplicate_max_distance: int) -> SplitImages:
    """Record the images of a split manifest (components.splitting.split_dataset's result).

    Args:
        split_manifest: used rows with ``split``, ``sha256``, ``phash`` and ``patient_id`` columns.
        near_duplicate_max_distance: the run's pHash threshold in bits (0..64).

    Returns:
        The SplitImages, in manifest order; a missing pHash is "".
    """
    return SplitImages(
        near_duplicate_max_distance=int(near_duplicate_max_distance),
        split=split_manifest["split"].astype(str).tolist(),
        sha256=split_manifest["sha256"].astype(str).tolist(),
        phash=split_manifest["phash"].fillna("").astype(str).tolist(),
        patient_id=split_manifest["patient_id"].astype(str).tolist(),
    )


class ExcludedImage(BaseModel):
    """An evaluated image left out because the model had seen it (or its patient, or a copy of it)."""

    split: str
    uri: str
    sha256: str
    kind: Literal["same bytes", "same patient", "near-duplicate"]
    reason: str


class Overlap(BaseModel):
    """One evaluated split against one version's training and validation images.

    ``kept`` are the row indices (in the split's order) of images the version never saw;
    ``excluded`` lists every other row with its reason.
    """

    split: str
    version: str
    n_images: int
    kept: list[int]
    excluded: list[ExcludedImage]

    def counts(self) -> dict[str, int]:
        """Excluded images by kind of reason ("same bytes", "same patient", "near-duplicate")."""
        out: dict[str, int] = {}
        for image in self.excluded:
            out[image.kind] = out.get(image.kind, 0) + 1
        return out

    def describe(self) -> str:
        """One line: how many images remain, and what was excluded by kind."""
        if not self.excluded:
            return f"all {self.n_images} {self.split} images unseen by v{self.version}"
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts().items()))
        return (
            f"{len(self.kept)} of {self.n_images} {self.split} images unseen by v{self.version}; "
            f"{len(self.excluded)} left out as in its training/validation data ({kinds})"
        )


def overlap_with(predictions: Predictions, phashes: Sequence[str], seen: SplitImages, version: str) -> Overlap:
    """Split an evaluated split's images into those a version never saw and those it did.

    Args:
        predictions: the evaluated split (its keys are sha256 digests, patient_ids "<source>:<id>").
        phashes: the pHash of each row of `predictions`, in order ("" when unknown).
        seen: the version's recorded images; only its SEEN_SPLITS count, with its own
            ``near_duplicate_max_distance``.
        version: the version's number, for the reasons.

    Returns:
        The Overlap; each excluded image carries the first reason that applies (module docstring).

    Raises:
        ValueError: `phashes` does not have one entry per row, or a pHash is malformed.
    """
    if len(phashes) != len(predictions.keys):
        raise ValueError(f"{len(phashes)} pHashes for {len(predictions.keys)} images of {predictions.split!r}")
    trained = seen.seen()
    by_digest = set(trained.sha256)
    by_patient = set(trained.patient_id)
    n_seen = len(trained.phash)
    nearest: dict[int, tuple[int, int]] = {}  # evaluated row -> (distance, seen row)
    for i, j, distance in near_duplicate_pairs(list(trained.phash) + list(phashes), seen.near_duplicate_max_distance):
        if i < n_seen <= j and (j - n_seen not in nearest or distance < nearest[j - n_seen][0]):
            nearest[j - n_seen] = (distance, i)
    kept, excluded = [], []
    for row, (digest, patient) in enumerate(zip(predictions.keys, predictions.patient_ids, strict=True)):
        if digest in by_digest:
            kind = "same bytes"
            reason = f"same bytes as a training/validation image of v{version}"
        elif patient in by_patient:
            kind = "same patient"
            reason = f"same patient as training/validation images of v{version} (patient_id {patient})"
        elif row in nearest:
            distance, other = nearest[row]
            kind = "near-duplicate"
            reason = (
                f"near-duplicate (pHash distance {distance} <= {seen.near_duplicate_max_distance} bits) of "
                f"training/validation image sha256 {trained.sha256[other][:12]} of v{version}"
            )
        else:
            kept.append(row)
            continue
        excluded.append(
            ExcludedImage(split=predictions.split, uri=predictions.uris[row], sha256=digest, kind=kind, reason=reason)
        )
    return Overlap(
        split=predictions.split, version=str(version), n_images=len(predictions.keys), kept=kept, excluded=excluded
    )
