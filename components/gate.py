"""The promotion gate: criteria from configuration, each reported as passed or failed with its numbers.

After TFX's Evaluator (an absolute value threshold plus a change threshold
against the baseline), with the uncertainty of both: floors are checked on a
metric's confidence-interval lower bound by default, and the change against
the champion on the paired bootstrap difference (the same patients resampled
for both models, components.bootstrap.paired_differences).

Criteria, in order (RegistryConfig.gate, components.config.GateConfig):

1. the data gate passed;
2. each floor, on the test split or on every external source;
3. with a champion: the comparison is made on test images the champion never
   saw (components.leakage); it fails, and the next three are not computed,
   when the champion's training images are not recorded or the unseen test
   images miss a class (few images are left to the paired interval);
4. with a champion: the change threshold on the primary metric (superiority:
   the difference's lower bound > ``min_improvement``; non-inferiority: >
   ``-non_inferiority_margin``);
5. with a champion: no slice with at least ``min_slice_size`` images loses
   more than ``slice_tolerance`` on the primary metric (point estimates);
6. with a champion: the ECE does not rise by more than ``calibration_tolerance``.

The candidate becomes champion only if every criterion passes.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from components.assessment import Assessment, Predictions
from components.bootstrap import Difference
from components.config import FloorCriterion, GateConfig
from components.leakage import Overlap

TEST = "test"
EXTERNAL_PREFIX = "external:"


class GateCriterion(BaseModel):
    """One criterion of the gate with its numbers (``detail``), as shown in the card and stored on the version."""

    name: str
    passed: bool
    detail: str


class GateDecision(BaseModel):
    """The gate's verdict: ``promote`` when every criterion passed; ``reason`` sums it up in one line."""

    promote: bool
    criteria: list[GateCriterion]
    reason: str
    champion_version: str | None = None


def _fmt(value: float | None) -> str:
    return "undefined" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def floor_criteria(floor: FloorCriterion, assessments: dict[str, Assessment]) -> list[GateCriterion]:
    """Check one floor on the test split or on every external source.

    Args:
        floor: the configured floor (metric key, minimum, CI lower bound or point value, where).
        assessments: the candidate's assessments by split name ("test", "external:<source>").

    Returns:
        One criterion per split the floor applies to; a floor on external data with no
        external source configured is one passed criterion that says so.
    """
    if floor.on == TEST:
        splits = [TEST] if TEST in assessments else []
    else:
        splits = [name for name in assessments if name.startswith(EXTERNAL_PREFIX)]
    what = "95% CI lower bound" if floor.bound == "lower" else "point estimate"
    if not splits:
        return [
            GateCriterion(
                name=f"floor {floor.metric} on {floor.on}",
                passed=True,
                detail=f"no {floor.on} split in this run: not applicable",
            )
        ]
    criteria = []
    for split in splits:
        assessment = assessments[split]
        if floor.bound == "lower":
            interval = assessment.intervals.get(floor.metric)
            value = None if interval is None else interval.low
        else:
            value = assessment.metrics.scalar(floor.metric)
        passed = _defined(value) and value >= floor.min
        criteria.append(
            GateCriterion(
                name=f"floor {floor.metric} on {split}",
                passed=passed,
                detail=f"{what} {_fmt(value)} {'>=' if passed else '<'} {floor.min:.4f}"
                + ("" if _defined(value) else " (undefined counts as failed)"),
            )
        )
    return criteria


def comparison_criterion(
    champion_version: str,
    *,
    recorded: bool,
    overlap: Overlap | None,
    kept: Predictions | None,
    candidate_version: str = "VERSION",
) -> GateCriterion:
    """Whether the champion can be compared fairly: on test images it never trained or was selected on.

    How few images are too few is left to the paired bootstrap interval (a handful of images
    cannot give a lower bound above the change threshold); what cannot be compared at all is
    a split without every class.

    Args:
        champion_version: the champion's version.
        recorded: whether the champion's training and validation images are recorded (its evidence).
        overlap: the test split against the champion's images (None without a test split).
        kept: the candidate's test predictions of the images the champion never saw.
        candidate_version: the candidate's version, for the command the detail suggests.

    Returns:
        The criterion; failed when the champion's images are unknown or the unseen images miss a class.
    """
    name = f"champion v{champion_version} compared on test images it never saw"
    by_hand = (
        f"review the card and promote by hand if warranted (cxr promote {candidate_version} --reason TEXT --force; "
        "--force also overrides any failed floor)"
    )
    if not recorded:
        return GateCriterion(
            name=name,
            passed=False,
            detail=(
                f"v{champion_version}'s training and validation images are not recorded (registered before they "
                f"were, or not by cxr train): it may have trained on this test split, so no fair comparison; {by_hand}"
            ),
        )
    if overlap is None:
        return GateCriterion(name=name, passed=True, detail="no test split in this run: not applicable")
    detail = overlap.describe()
    if kept is None:
        return GateCriterion(name=name, passed=False, detail=f"{detail}; no image left to compare on; {by_hand}")
    present = {kept.class_names[y] for y in kept.y_true}
    missing = [c for c in kept.class_names if c not in present]
    if missing:
        detail += f"; no image of {', '.join(missing)} left to compare on; {by_hand}"
    return GateCriterion(name=name, passed=not missing, detail=detail)


def change_criterion(difference: Difference | None, gate: GateConfig, metric: str, champion: str) -> GateCriterion:
    """The change threshold on the paired difference (candidate minus champion) of the primary metric.

    Args:
        difference: the paired bootstrap difference on the test split (None when it could not be computed).
        gate: superiority (lower bound > min_improvement) or non-inferiority (lower bound > -margin).
        metric: the primary metric's key.
        champion: the champion's version, for the detail.

    Returns:
        The criterion.
    """
    if gate.comparison == "superiority":
        needed, label = gate.min_improvement, f"min_improvement {gate.min_improvement:.4f}"
    else:
        needed, label = -gate.non_inferiority_margin, f"-non_inferiority_margin {-gate.non_inferiority_margin:.4f}"
    low = None if difference is None else difference.low
    passed = _defined(low) and low > needed
    point = None if difference is None else difference.point
    high = None if difference is None else difference.high
    return GateCriterion(
        name=f"{gate.comparison} on {metric} vs champion v{champion} (paired, test)",
        passed=passed,
        detail=(
            f"difference {_fmt(point)} (95% CI {_fmt(low)} to {_fmt(high)}); lower bound "
            f"{'>' if passed else '<='} {label}"
        ),
    )


def slice_criteria(
    candidate: Assessment, champion: Assessment, metric: str, tolerance: float, min_slice_size: int
) -> GateCriterion:
    """No slice of at least `min_slice_size` images may lose more than `tolerance` on `metric` (point values).

    Args:
        candidate: the candidate's test assessment (with slices).
        champion: the champion's test assessment on the same images.
        metric: the primary metric's key.
        tolerance: the largest loss allowed.
        min_slice_size: smaller slices are shown in the card but not gated.

    Returns:
        One criterion naming the worst slice.
    """
    theirs = {(s.column, s.value): s for s in champion.slices}
    losses = []
    for mine in candidate.slices:
        other = theirs.get((mine.column, mine.value))
        if mine.n_images < min_slice_size or other is None:
            continue
        ours, base = mine.metrics.scalar(metric), other.metrics.scalar(metric)
        if _defined(ours) and _defined(base):
            losses.append((base - ours, f"{mine.column}={mine.value or 'unknown'}", ours, base))
    name = f"no slice loses more than {tolerance:.4f} {metric}"
    if not losses:
        return GateCriterion(name=name, passed=True, detail=f"no slice with at least {min_slice_size} images")
    loss, label, ours, base = max(losses)
    passed = loss <= tolerance
    return GateCriterion(
        name=name,
        passed=passed,
        detail=f"worst of {len(losses)} slices: {label} {ours:.4f} vs champion {base:.4f} (loss {loss:.4f})",
    )


def calibration_criterion(candidate: Assessment, champion: Assessment, tolerance: float) -> GateCriterion:
    """The candidate's test ECE may exceed the champion's by at most `tolerance`.

    Args:
        candidate: the candidate's test assessment.
        champion: the champion's, on the same images.
        tolerance: the largest rise allowed.

    Returns:
        The criterion.
    """
    rise = candidate.metrics.ece - champion.metrics.ece
    return GateCriterion(
        name=f"calibration: ECE rises by at most {tolerance:.4f}",
        passed=rise <= tolerance,
        detail=f"ECE {candidate.metrics.ece:.4f} vs champion {champion.metrics.ece:.4f} (rise {rise:+.4f})",
    )


def evaluate_gate(
    candidate: dict[str, Assessment],
    gate: GateConfig,
    primary_metric: str,
    min_slice_size: int,
    champion: dict[str, Assessment] | None = None,
    differences: dict[str, Difference] | None = None,
    champion_version: str | None = None,
    data_gate_passed: bool = True,
    compared: dict[str, Assessment] | None = None,
    comparison: GateCriterion | None = None,
) -> GateDecision:
    """Apply every criterion (module docstring) and decide.

    Args:
        candidate: the candidate's assessments by split ("test", "external:<source>").
        gate: the configured gate.
        primary_metric: the metric compared with the champion.
        min_slice_size: EvaluationConfig.min_slice_size.
        champion: the champion's assessments on the same images, or None when there is no champion.
        differences: paired differences (candidate - champion) on the test split by metric key.
        champion_version: the champion's version, for the details.
        data_gate_passed: whether the run's data gate passed (a run stops before this when not).
        compared: the candidate's assessments on the images the champion is compared on (those it
            never saw); default `candidate`.
        comparison: comparison_criterion's verdict on those images; when it failed, the change,
            slice and calibration criteria are not computed.

    Returns:
        The GateDecision.
    """
    criteria = [
        GateCriterion(
            name="data gate passed",
            passed=data_gate_passed,
            detail="blocking data checks passed" if data_gate_passed else "a blocking data check failed",
        )
    ]
    for floor in gate.floors:
        criteria += floor_criteria(floor, candidate)
    if comparison is not None:
        criteria.append(comparison)
    mine = candidate if compared is None else compared
    if champion is not None and TEST in champion and TEST in mine and (comparison is None or comparison.passed):
        criteria.append(
            change_criterion((differences or {}).get(primary_metric), gate, primary_metric, str(champion_version))
        )
        criteria.append(
            slice_criteria(mine[TEST], champion[TEST], primary_metric, gate.slice_tolerance, min_slice_size)
        )
        criteria.append(calibration_criterion(mine[TEST], champion[TEST], gate.calibration_tolerance))
    failed = [criterion for criterion in criteria if not criterion.passed]
    versus = f"vs champion v{champion_version}" if champion_version is not None else "no champion yet"
    if failed:
        reason = f"{versus}: failed {len(failed)} of {len(criteria)} criteria: " + "; ".join(
            f"{c.name} ({c.detail})" for c in failed
        )
    else:
        reason = f"{versus}: all {len(criteria)} criteria passed"
    return GateDecision(promote=not failed, criteria=criteria, reason=reason, champion_version=champion_version)
