"""Data drift: do a batch's inputs and outputs look like those the champion was trained and validated on?

A model answers any input, so a batch from another scanner, another hospital, or a broken
pre-processing step (inverted, blurred, rescaled images) still gets confident predictions. Before
predicting, the batch's features are compared with a reference saved at registration
(``DriftReference``, the JSON artifact ``evaluation/drift_reference.json`` of the registered
version's run); after predicting, the predictions are compared with the champion's predictions on
its validation split.

Features, in three groups:

* ``image`` (per image): ``width`` and ``height`` (pixels, the manifest's columns), and from the
  uint8 model-input grayscale image (components.imaging.load_images) ``intensity_mean``,
  ``intensity_std``, ``intensity_skewness`` (0..255 gray levels; skewness unitless) and
  ``sharpness`` (variance of a 3x3 Laplacian, gray levels squared: it falls when images are
  blurred); categorical ``mode`` (PIL mode) and ``bit_depth`` (bits per channel).
* ``embedding``: ``ood_score`` (the Mahalanobis distance of components.ood) and
  ``embedding_pc1..embedding_pcK``, the projections of the penultimate-layer embeddings on the
  first K principal axes of the reference embeddings.
* ``output``: ``predicted_class`` (categorical, argmax class name) and ``confidence`` (max probability).

Tests, one per feature:

* continuous: the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, two-sided,
  exact or asymptotic p-value as scipy chooses); the effect size is its statistic D, the largest
  gap between the two empirical CDFs (0..1).
* categorical: Pearson's chi-square test of homogeneity on the 2 x K table of counts
  (reference, current) x categories (``scipy.stats.chi2_contingency``, no Yates correction);
  the effect size is Cramér's V = sqrt(chi2 / n) for a 2 x K table (Cramér 1946, "Mathematical
  Methods of Statistics", section 21.9), 0..1.

A feature has drifted when its p-value is below its threshold AND its effect is at least
``min_effect`` (large batches make negligible shifts significant). The threshold is the
family-wise level ``p_value`` divided by the number of features tested in one report
(Bonferroni correction; ``correction: none`` keeps ``p_value``). Each feature has a severity:
``block`` (the batch is not predicted), ``warn`` (reported, the run goes on) or ``off`` (not tested).

No ZenML, MLflow or TensorFlow here: numpy, pandas, scipy, pydantic; matplotlib for the plots,
imported lazily.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.errors import CxrError

# The artifact of a registered version's run (next to evaluation/ood_reference.json).
DRIFT_ARTIFACT = "evaluation/drift_reference.json"

# Feature groups.
IMAGE = "image"
EMBEDDING = "embedding"
OUTPUT = "output"

# Feature names.
WIDTH = "width"
HEIGHT = "height"
INTENSITY_MEAN = "intensity_mean"
INTENSITY_STD = "intensity_std"
INTENSITY_SKEWNESS = "intensity_skewness"
SHARPNESS = "sharpness"
MODE = "mode"
BIT_DEPTH = "bit_depth"
OOD_SCORE = "ood_score"  # components.ood.OOD_SCORE_COLUMN
EMBEDDING_PC = "embedding_pc"  # embedding_pc1..embedding_pcK; as a config key: all of them
PREDICTED_CLASS = "predicted_class"
CONFIDENCE = "confidence"

# Per-image statistics of the model-input grayscale image (image_statistics' columns).
PIXEL_STATISTICS = (INTENSITY_MEAN, INTENSITY_STD, INTENSITY_SKEWNESS, SHARPNESS)
# Manifest columns compared as they are.
MANIFEST_CONTINUOUS = (WIDTH, HEIGHT)
MANIFEST_CATEGORICAL = (MODE, BIT_DEPTH)
IMAGE_CONTINUOUS = MANIFEST_CONTINUOUS + PIXEL_STATISTICS
IMAGE_CATEGORICAL = MANIFEST_CATEGORICAL
OUTPUT_CONTINUOUS = (CONFIDENCE,)
OUTPUT_CATEGORICAL = (PREDICTED_CLASS,)
CATEGORICAL = IMAGE_CATEGORICAL + OUTPUT_CATEGORICAL

INPUT_SCOPE = "input"
OUTPUT_SCOPE = "output"

Severity = Literal["block", "warn", "off"]
Verdict = Literal["blocked", "warning", "passed", "not checked"]

_PC_NAME = re.compile(rf"^{EMBEDDING_PC}(\d+)$")


class DriftError(CxrError, ValueError):
    """Drift cannot be checked: inputs whose shapes or lengths do not match; the message says which."""


class DriftReferenceError(DriftError):
    """A drift reference cannot be fitted (mismatched lengths, fewer than 2 images) or does not fit the inputs."""


def embedding_feature(index: int) -> str:
    """The name of the projection on the `index`-th principal axis (1-based): ``embedding_pc<index>``."""
    return f"{EMBEDDING_PC}{index}"


def feature_group(feature: str) -> str:
    """The group (IMAGE, EMBEDDING or OUTPUT) of a feature name.

    Args:
        feature: a feature name (``sharpness``, ``embedding_pc3``, ``confidence``...).

    Returns:
        IMAGE, EMBEDDING or OUTPUT.

    Raises:
        DriftError: the name is not a feature.
    """
    if feature in IMAGE_CONTINUOUS or feature in IMAGE_CATEGORICAL:
        return IMAGE
    if feature in (OOD_SCORE, EMBEDDING_PC) or _PC_NAME.match(feature):
        return EMBEDDING
    if feature in OUTPUT_CONTINUOUS or feature in OUTPUT_CATEGORICAL:
        return OUTPUT
    raise DriftError(f"unknown drift feature {feature!r}")


def _default_severity(feature: str) -> Severity:
    # Blocking by default: what the model sees (its embedding) and the pixels themselves (an inverted
    # MONOCHROME1 export, a blurred or washed-out series). A new scanner's size, mode or bit depth, and
    # the outputs, only warn: the model resizes and converts, and a different case mix is not an error.
    return "block" if feature_group(feature) == EMBEDDING or feature in PIXEL_STATISTICS else "warn"


def _config_keys(components: int) -> list[str]:
    return [
        *IMAGE_CONTINUOUS,
        *IMAGE_CATEGORICAL,
        OOD_SCORE,
        EMBEDDING_PC,
        *(embedding_feature(index) for index in range(1, components + 1)),
        *OUTPUT_CATEGORICAL,
        *OUTPUT_CONTINUOUS,
    ]


def _default_features() -> dict[str, FeatureDrift]:
    names = [*IMAGE_CONTINUOUS, *IMAGE_CATEGORICAL, OOD_SCORE, EMBEDDING_PC, *OUTPUT_CATEGORICAL, *OUTPUT_CONTINUOUS]
    return {name: FeatureDrift(severity=_default_severity(name)) for name in names}


# ---------------------------------------------------------------- configuration


class FeatureDrift(BaseModel):
    """How one feature is checked.

    Attributes:
        severity: ``block`` (a drift stops the batch before predicting), ``warn`` (reported, the
            run goes on) or ``off`` (not tested).
        p_value: this feature's family-wise significance level, in (0, 1); None: DriftConfig.p_value.
        min_effect: the smallest effect (KS D or Cramér's V, 0..1) that counts as drift; None:
            DriftConfig.min_effect.
    """

    model_config = ConfigDict(extra="forbid")

    severity: Severity
    p_value: float | None = Field(None, gt=0, lt=1)
    min_effect: float | None = Field(None, ge=0, le=1)


class DriftConfig(BaseModel):
    """Drift checks of a batch (the run config's ``batch.drift``).

    Attributes:
        enabled: False: no feature is tested (every report says "not checked").
        p_value: family-wise significance level, in (0, 1).
        correction: ``bonferroni``: each feature's threshold is its p_value divided by the number
            of features tested in one report; ``none``: the p_value itself.
        min_effect: a significant shift smaller than this (KS statistic D, or Cramér's V; 0..1) is
            not drift.
        min_images: a batch with fewer current images (or predictions) is not tested.
        components: K, the principal components of the embedding compared (embedding_pc1..K).
        features: per-feature settings, by feature name; the key ``embedding_pc`` applies to every
            embedding_pc<i> without a key of its own. A feature without a key gets its default:
            ``block`` for the embedding features (ood_score, embedding_pc*) and the pixel statistics
            (intensity_mean, intensity_std, intensity_skewness, sharpness), ``warn`` for size, mode,
            bit depth and the output features.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    p_value: float = Field(0.01, gt=0, lt=1)
    correction: Literal["bonferroni", "none"] = "bonferroni"
    min_effect: float = Field(0.1, ge=0, le=1)
    min_images: int = Field(10, ge=2)
    components: int = Field(5, ge=1)
    features: dict[str, FeatureDrift] = Field(default_factory=_default_features)

    @model_validator(mode="after")
    def _known_features(self) -> DriftConfig:
        known = _config_keys(self.components)
        unknown = sorted(set(self.features) - set(known))
        if unknown:
            raise ValueError(
                f"unknown drift feature(s) {unknown} in features; known names: {', '.join(known)} "
                f"(embedding_pc1..embedding_pc{self.components} follow components: {self.components})"
            )
        return self

    def setting(self, feature: str) -> FeatureDrift:
        """The resolved setting of one feature (its key, else ``embedding_pc``, else its default).

        Args:
            feature: a feature name (``sharpness``, ``embedding_pc2``...).

        Returns:
            A FeatureDrift whose p_value and min_effect are filled (from this config when unset).

        Raises:
            DriftError: `feature` is not a feature name.
        """
        setting = self.features.get(feature)
        if setting is None and _PC_NAME.match(feature):
            setting = self.features.get(EMBEDDING_PC)
        if setting is None:
            setting = FeatureDrift(severity=_default_severity(feature))
        return FeatureDrift(
            severity=setting.severity,
            p_value=self.p_value if setting.p_value is None else setting.p_value,
            min_effect=self.min_effect if setting.min_effect is None else setting.min_effect,
        )


# ---------------------------------------------------------------- features


def image_statistics(grays: np.ndarray) -> pd.DataFrame:
    """Per-image pixel statistics of model-input grayscale images.

    Args:
        grays: uint8 (N, S, S) images (components.imaging.load_images), gray levels 0..255; any
            (N, H, W) array of gray levels is accepted.

    Returns:
        A DataFrame of N rows (in the order of `grays`), float64 columns ``intensity_mean`` and
        ``intensity_std`` (gray levels, population std), ``intensity_skewness`` (Fisher-Pearson
        moment coefficient m3 / m2^1.5, unitless; 0 for a constant image) and ``sharpness``
        (variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] over the interior pixels, gray
        levels squared; 0 for images smaller than 3 x 3).

    Raises:
        DriftError: `grays` is not 3-D.
    """
    x = np.asarray(grays)
    if x.ndim != 3:
        raise DriftError(f"grays must be (N, S, S) images, got shape {x.shape}")
    x = x.astype(np.float64)
    n = len(x)
    flat = x.reshape(n, -1)
    if flat.shape[1] == 0:
        raise DriftError(f"grays must have at least one pixel, got shape {x.shape}")
    mean = flat.mean(axis=1)
    centred = flat - mean[:, None]
    m2 = (centred**2).mean(axis=1)
    m3 = (centred**3).mean(axis=1)
    std = np.sqrt(m2)
    skewness = np.divide(m3, m2**1.5, out=np.zeros(n), where=m2 > 1e-12)
    if x.shape[1] >= 3 and x.shape[2] >= 3:
        laplacian = (
            x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4.0 * x[:, 1:-1, 1:-1]
        ).reshape(n, -1)
        sharpness = laplacian.var(axis=1)
    else:
        sharpness = np.zeros(n)
    return pd.DataFrame(
        {INTENSITY_MEAN: mean, INTENSITY_STD: std, INTENSITY_SKEWNESS: skewness, SHARPNESS: sharpness},
        dtype=np.float64,
    )


class FeatureValues(BaseModel):
    """The values of a batch's features, as the tests and the plots take them.

    Attributes:
        images: the images (or predictions) they come from.
        continuous: feature -> float values (one per image, missing values left out).
        categorical: feature -> counts of each category (str).
    """

    model_config = ConfigDict(extra="forbid")

    images: int
    continuous: dict[str, list[float]] = Field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = Field(default_factory=dict)


def _category(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))  # bit_depth read back from Parquet as float: 8.0 -> "8"
    return str(value)


def _counts(values: Sequence[Any] | pd.Series) -> dict[str, int]:
    series = pd.Series(values, dtype=object).dropna()
    counts: dict[str, int] = {}
    for value in series:
        key = _category(value)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _finite(values: Any) -> list[float]:
    array = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    return array[np.isfinite(array)].tolist()


def _check_lengths(rows: pd.DataFrame | None, grays: np.ndarray, embeddings: Any, ood_scores: Any) -> int:
    n = len(grays)
    lengths = {"grays": n}
    if rows is not None:
        lengths["rows"] = len(rows)
    if embeddings is not None:
        lengths["embeddings"] = len(embeddings)
    if ood_scores is not None:
        lengths["ood_scores"] = len(ood_scores)
    if len(set(lengths.values())) != 1:
        raise DriftReferenceError(
            "rows, grays, embeddings and ood_scores must describe the same images, got lengths "
            + ", ".join(f"{name} {length}" for name, length in lengths.items())
        )
    return n


def _project(embeddings: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    return (embeddings - mean[None, :]) @ components.T


def input_features(
    rows: pd.DataFrame | None,
    grays: np.ndarray,
    embeddings: np.ndarray | None,
    ood_scores: np.ndarray | None,
    reference: DriftReference,
) -> FeatureValues:
    """The image and embedding features of a batch, projected on the reference's principal axes.

    Args:
        rows: manifest rows aligned with `grays`; the columns ``width``, ``height`` (pixels),
            ``mode`` (PIL mode str) and ``bit_depth`` (int) are used when present. None: no
            manifest features.
        grays: uint8 (N, S, S) model-input grayscale images.
        embeddings: float (N, D) penultimate-layer embeddings, D as in the reference; None: no
            embedding_pc features.
        ood_scores: float (N,) Mahalanobis distances (components.ood); None: no ood_score.
        reference: the DriftReference (its principal axes).

    Returns:
        FeatureValues of the N images (features whose input is absent are left out).

    Raises:
        DriftReferenceError: the lengths do not match, or the embeddings' D is not the reference's.
    """
    n = _check_lengths(rows, grays, embeddings, ood_scores)
    values = FeatureValues(images=n)
    if rows is not None:
        for name in MANIFEST_CONTINUOUS:
            if name in rows.columns:
                values.continuous[name] = _finite(rows[name])
        for name in MANIFEST_CATEGORICAL:
            if name in rows.columns:
                values.categorical[name] = _counts(rows[name])
    if n:
        stats = image_statistics(grays)
        for name in PIXEL_STATISTICS:
            values.continuous[name] = _finite(stats[name])
    else:
        for name in PIXEL_STATISTICS:
            values.continuous[name] = []
    if ood_scores is not None:
        values.continuous[OOD_SCORE] = _finite(np.asarray(ood_scores, dtype=np.float64).reshape(-1))
    if embeddings is not None and reference.pca_components:
        x = np.asarray(embeddings, dtype=np.float64)
        dimension = len(reference.pca_mean)
        if x.ndim != 2 or (n and x.shape[1] != dimension):
            raise DriftReferenceError(
                f"embeddings must be (N, {dimension}) as the drift reference's, got shape {x.shape}"
            )
        projected = (
            _project(x, np.asarray(reference.pca_mean), np.asarray(reference.pca_components))
            if n
            else np.zeros((0, len(reference.pca_components)))
        )
        for index in range(projected.shape[1]):
            values.continuous[embedding_feature(index + 1)] = _finite(projected[:, index])
    return values


def _class_probabilities(probabilities: Any, class_names: list[str]) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if len(class_names) == 2 and (p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1)):
        p = p.reshape(-1)
        p = np.stack([1.0 - p, p], axis=1)  # a binary model's P(class 1), components.backbones.probabilities
    if p.ndim != 2 or p.shape[1] != len(class_names):
        raise DriftError(f"probabilities must be (N, {len(class_names)}) for classes {class_names}, got {p.shape}")
    if not np.isfinite(p).all():
        raise DriftError("probabilities hold NaN or infinite values")
    return p


def output_features(probabilities: np.ndarray, class_names: list[str]) -> FeatureValues:
    """The output features of a batch of predictions.

    Args:
        probabilities: float (N, C) class probabilities (rows sum to 1); for 2 classes also (N,)
            or (N, 1) P(class 1).
        class_names: the C classes, in the model's output order.

    Returns:
        FeatureValues: ``predicted_class`` counts (every class name, 0 included) and
        ``confidence`` (max probability of each row, 0..1).

    Raises:
        DriftError: the probabilities are not (N, C) or not finite.
    """
    p = _class_probabilities(probabilities, class_names)
    predicted = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    counts = {name: int((predicted == index).sum()) for index, name in enumerate(class_names)}
    confidence = p.max(axis=1).tolist() if len(p) else []
    return FeatureValues(images=len(p), continuous={CONFIDENCE: confidence}, categorical={PREDICTED_CLASS: counts})


# ---------------------------------------------------------------- reference


class DriftReference(BaseModel):
    """What drift is measured against (JSON artifact ``evaluation/drift_reference.json``).

    Attributes:
        images: reference images (the champion's train + val images).
        continuous: feature -> a seeded sample (at most ``max_values``) of reference values.
        categorical: feature -> counts of each category (``mode`` {"L": 30}, ``bit_depth``
            {"8": 30}, ``predicted_class`` {"COVID-19": 12, ...}).
        class_names: the model's classes, in output order.
        pca_mean: (D,) mean of the reference embeddings; empty without embeddings.
        pca_components: (K, D) rows = unit principal axes of the reference embeddings, by
            decreasing variance; empty without embeddings.
        output_images: validation predictions the output features come from.
    """

    model_config = ConfigDict(extra="forbid")

    images: int = Field(..., ge=0)
    continuous: dict[str, list[float]]
    categorical: dict[str, dict[str, int]]
    class_names: list[str]
    pca_mean: list[float] = Field(default_factory=list)
    pca_components: list[list[float]] = Field(default_factory=list)
    output_images: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _shapes(self) -> DriftReference:
        sizes = {len(row) for row in self.pca_components}
        if self.pca_components and sizes != {len(self.pca_mean)}:
            raise ValueError(f"pca_components rows must have len(pca_mean) = {len(self.pca_mean)} values")
        return self

    @property
    def components(self) -> int:
        """K, the principal axes stored."""
        return len(self.pca_components)


def _sample(values: list[float], limit: int, rng: np.random.Generator) -> list[float]:
    if len(values) <= limit:
        return values
    keep = np.sort(rng.choice(len(values), size=limit, replace=False))
    return [values[index] for index in keep]


def fit_drift_reference(
    rows: pd.DataFrame | None,
    grays: np.ndarray,
    embeddings: np.ndarray | None,
    ood_scores: np.ndarray | None,
    val_probabilities: np.ndarray | None,
    class_names: list[str],
    components: int = 5,
    max_values: int = 1000,
    seed: int = 0,
) -> DriftReference:
    """Fit the drift reference of a model from its training (and validation) images and predictions.

    Principal axes: the right singular vectors of the centred reference embeddings
    (``numpy.linalg.svd``), K = min(components, D, N - 1).

    Args:
        rows: manifest rows (``width``, ``height``, ``mode``, ``bit_depth``) aligned with `grays`;
            None: no manifest features.
        grays: uint8 (N, S, S) model-input grayscale images (components.imaging.load_images), N >= 2.
        embeddings: float32 (N, D) penultimate-layer embeddings of the same images; None: no
            embedding_pc features.
        ood_scores: float (N,) their OOD scores (components.ood); None: no ood_score.
        val_probabilities: float (M, C) the model's class probabilities on its validation split
            (rows sum to 1; binary (M,) P(class 1) accepted); None or M == 0: no output features.
        class_names: the C classes, in output order.
        components: K wanted (DriftConfig.components).
        max_values: each continuous feature keeps a seeded sample of at most this many values.
        seed: the sample's seed.

    Returns:
        The DriftReference.

    Raises:
        DriftReferenceError: fewer than 2 images, lengths that do not match, or embeddings that
            are not (N, D) finite values.
        DriftError: probabilities that are not (M, C).
    """
    n = _check_lengths(rows, grays, embeddings, ood_scores)
    if n < 2:
        raise DriftReferenceError(f"a drift reference needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    pca_mean: list[float] = []
    pca_components: list[list[float]] = []
    if embeddings is not None:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] == 0:
            raise DriftReferenceError(f"embeddings must be (N, D), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DriftReferenceError("embeddings hold NaN or infinite values")
        mean = x.mean(axis=0)
        k = min(components, x.shape[1], n - 1)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        pca_mean = mean.tolist()
        pca_components = vt[:k].tolist()
    reference = DriftReference(
        images=n,
        continuous={},
        categorical={},
        class_names=list(class_names),
        pca_mean=pca_mean,
        pca_components=pca_components,
    )
    values = input_features(rows, grays, embeddings, ood_scores, reference)
    continuous = {name: _sample(sample, max_values, rng) for name, sample in values.continuous.items()}
    categorical = dict(values.categorical)
    output_images = 0
    if val_probabilities is not None and len(val_probabilities):
        outputs = output_features(val_probabilities, list(class_names))
        output_images = outputs.images
        continuous.update({name: _sample(s, max_values, rng) for name, s in outputs.continuous.items()})
        categorical.update(outputs.categorical)
    return reference.model_copy(
        update={"continuous": continuous, "categorical": categorical, "output_images": output_images}
    )


# ---------------------------------------------------------------- tests and reports


class FeatureResult(BaseModel):
    """The test of one feature.

    Attributes:
        feature: the feature's name.
        group: IMAGE, EMBEDDING or OUTPUT.
        test: ``ks`` (scipy.stats.ks_2samp) or ``chi2`` (scipy.stats.chi2_contingency).
        statistic: KS D, or Pearson's chi-square; None when not tested.
        p_value: the test's p-value; None when not tested.
        effect: KS D or Cramér's V (0..1); None when not tested.
        alpha: the p-value threshold after correction; None when not tested.
        min_effect: the smallest effect that counts as drift.
        drifted: p_value < alpha and effect >= min_effect.
        severity: the feature's severity (DriftConfig.setting).
        reference_n: reference values (images, or validation predictions) compared.
        current_n: current values compared.
        note: why the feature was not tested ("" when it was).
    """

    model_config = ConfigDict(extra="forbid")

    feature: str
    group: str
    test: Literal["ks", "chi2"]
    statistic: float | None = None
    p_value: float | None = None
    effect: float | None = None
    alpha: float | None = None
    min_effect: float
    drifted: bool = False
    severity: Severity
    reference_n: int = 0
    current_n: int = 0
    note: str = ""

    @property
    def tested(self) -> bool:
        """Whether the test ran (it has a p-value)."""
        return self.p_value is not None


class DriftReport(BaseModel):
    """The drift tests of one batch, for one scope.

    Attributes:
        scope: ``input`` (image and embedding features, before predicting) or ``output``.
        results: one FeatureResult per feature.
    """

    model_config = ConfigDict(extra="forbid")

    scope: str
    results: list[FeatureResult]

    @property
    def tested(self) -> list[str]:
        """The features that were tested."""
        return [result.feature for result in self.results if result.tested]

    @property
    def blocking(self) -> list[str]:
        """The drifted features with severity ``block``."""
        return [result.feature for result in self.results if result.drifted and result.severity == "block"]

    @property
    def warnings(self) -> list[str]:
        """The drifted features with severity ``warn``."""
        return [result.feature for result in self.results if result.drifted and result.severity == "warn"]

    @property
    def verdict(self) -> Verdict:
        """``blocked`` (a blocking drift), ``warning``, ``passed``, or ``not checked`` (no feature tested)."""
        if self.blocking:
            return "blocked"
        if self.warnings:
            return "warning"
        return "passed" if self.tested else "not checked"

    def result(self, feature: str) -> FeatureResult:
        """The result of one feature.

        Args:
            feature: its name.

        Returns:
            Its FeatureResult.

        Raises:
            KeyError: the report has no such feature.
        """
        for result in self.results:
            if result.feature == feature:
                return result
        raise KeyError(f"{feature!r} is not in this {self.scope} drift report: {[r.feature for r in self.results]}")

    def summary(self) -> str:
        """Human-readable lines: one per drifted feature, or one line saying why nothing drifted.

        Returns:
            Lines such as ``block ood_score: ks statistic 0.62, p 1.2e-08 < 0.00083, effect 0.62 >= 0.1``
            joined by newlines; without drift ``input drift: passed (12 features tested)``, or
            ``input drift: not checked (<the first note>)``.
        """
        lines = [
            f"{result.severity} {result.feature}: {result.test} statistic {result.statistic:.4g}, "
            f"p {result.p_value:.3g} < {result.alpha:.3g}, effect {result.effect:.3g} >= {result.min_effect:.3g}"
            for result in self.results
            if result.drifted
        ]
        if lines:
            return "\n".join(lines)
        if self.tested:
            return f"{self.scope} drift: passed ({len(self.tested)} features tested)"
        reason = next((result.note for result in self.results if result.note), "no features")
        return f"{self.scope} drift: not checked ({reason})"


def ks_test(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp, two-sided).

    Args:
        reference: float values, at least one.
        current: float values, at least one.

    Returns:
        (D, p-value): D in [0, 1] is the largest gap between the two empirical CDFs.
    """
    from scipy.stats import ks_2samp

    result = ks_2samp(np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


def chi2_test(reference: Mapping[str, int], current: Mapping[str, int]) -> tuple[float, float, float]:
    """Pearson's chi-square test of homogeneity on the 2 x K table of category counts, and Cramér's V.

    scipy.stats.chi2_contingency without Yates' continuity correction; categories with no count on
    either side are left out. Cramér's V = sqrt(chi2 / (n * (min(2, K) - 1))) = sqrt(chi2 / n).

    Args:
        reference: category -> count, total >= 1.
        current: category -> count, total >= 1.

    Returns:
        (chi2, p-value, Cramér's V in [0, 1]); (0, 1, 0) when both sides hold one same category.
    """
    from scipy.stats import chi2_contingency

    categories = sorted(key for key in set(reference) | set(current) if reference.get(key, 0) + current.get(key, 0))
    if len(categories) < 2:
        return 0.0, 1.0, 0.0
    table = np.array([[reference.get(key, 0) for key in categories], [current.get(key, 0) for key in categories]])
    chi2, p_value, _, _ = chi2_contingency(table, correction=False)
    return float(chi2), float(p_value), float(min(1.0, np.sqrt(chi2 / table.sum())))


def _test(
    scope_features: list[str],
    reference: DriftReference,
    current: FeatureValues,
    reference_n: dict[str, int],
    config: DriftConfig,
    scope: str,
    reason: str | None,
) -> DriftReport:
    planned: list[tuple[str, FeatureDrift, str]] = []  # (feature, setting, note)
    for feature in scope_features:
        setting = config.setting(feature)
        categorical = feature in CATEGORICAL
        have_reference = feature in (reference.categorical if categorical else reference.continuous)
        ref_values = reference.categorical.get(feature, {}) if categorical else reference.continuous.get(feature, [])
        cur_values = current.categorical.get(feature) if categorical else current.continuous.get(feature)
        ref_count = sum(ref_values.values()) if categorical else len(ref_values)
        cur_count = None if cur_values is None else (sum(cur_values.values()) if categorical else len(cur_values))
        if reason is not None:
            note = reason
        elif setting.severity == "off":
            note = "off in the drift config"
        elif not have_reference or ref_count == 0:
            note = "absent from the drift reference"
        elif cur_count is None:
            note = "absent from the current batch"
        elif cur_count == 0:
            note = "no current values (all missing)"
        else:
            note = ""
        planned.append((feature, setting, note))
    tested = sum(1 for _, _, note in planned if not note)
    results = []
    for feature, setting, note in planned:
        categorical = feature in CATEGORICAL
        base = {
            "feature": feature,
            "group": feature_group(feature),
            "test": "chi2" if categorical else "ks",
            "min_effect": setting.min_effect,
            "severity": setting.severity,
            "reference_n": reference_n.get(feature, 0),
        }
        if note:
            results.append(FeatureResult(**base, note=note))
            continue
        alpha = setting.p_value / tested if config.correction == "bonferroni" else setting.p_value
        if categorical:
            ref_counts, cur_counts = reference.categorical[feature], current.categorical[feature]
            statistic, p_value, effect = chi2_test(ref_counts, cur_counts)
            ref_n, cur_n = sum(ref_counts.values()), sum(cur_counts.values())
        else:
            ref_values, cur_values = reference.continuous[feature], current.continuous[feature]
            statistic, p_value = ks_test(ref_values, cur_values)
            effect = statistic
            ref_n, cur_n = len(ref_values), len(cur_values)
        results.append(
            FeatureResult(
                **{**base, "reference_n": ref_n},
                statistic=statistic,
                p_value=p_value,
                effect=effect,
                alpha=alpha,
                drifted=bool(p_value < alpha and effect >= setting.min_effect),
                current_n=cur_n,
            )
        )
    return DriftReport(scope=scope, results=results)


def _not_checked_reason(config: DriftConfig, images: int) -> str | None:
    if not config.enabled:
        return "drift checks disabled (enabled: false)"
    if images < config.min_images:
        return f"too few images: {images} < min_images {config.min_images}"
    return None


def input_feature_names(reference: DriftReference, components: int | None = None) -> list[str]:
    """The input features tested: image features, ood_score, embedding_pc1..K.

    Args:
        reference: the DriftReference.
        components: K at most (DriftConfig.components); None: every axis the reference stores.
            A reference may store more axes than a batch tests (registration stores 10).

    Returns:
        Feature names in report order.
    """
    k = reference.components if components is None else min(components, reference.components)
    return [
        *IMAGE_CONTINUOUS,
        *IMAGE_CATEGORICAL,
        OOD_SCORE,
        *(embedding_feature(index) for index in range(1, k + 1)),
    ]


def input_drift(
    reference: DriftReference,
    rows: pd.DataFrame | None,
    grays: np.ndarray,
    embeddings: np.ndarray | None,
    ood_scores: np.ndarray | None,
    config: DriftConfig,
) -> DriftReport:
    """Test a batch's image and embedding features against the reference.

    Every feature of ``input_feature_names(reference)`` gets a result; a feature without reference
    values, or without current values (no such column in `rows`, `embeddings` or `ood_scores` None),
    is not tested and says so in its note. Bonferroni divides by the number of features tested.

    Args:
        reference: the champion's DriftReference.
        rows: the batch's manifest rows aligned with `grays` (``width``, ``height``, ``mode``,
            ``bit_depth`` used when present); None: no manifest features.
        grays: uint8 (N, S, S) model-input grayscale images.
        embeddings: float (N, D) penultimate-layer embeddings (D as in the reference); None: no
            embedding_pc features.
        ood_scores: float (N,) OOD scores (components.ood); None: no ood_score.
        config: the DriftConfig.

    Returns:
        The DriftReport, scope ``input``.

    Raises:
        DriftReferenceError: lengths that do not match, or embeddings whose D is not the reference's.
    """
    n = _check_lengths(rows, grays, embeddings, ood_scores)
    reason = _not_checked_reason(config, n)
    current = input_features(rows, grays, embeddings, ood_scores, reference)
    names = input_feature_names(reference, config.components)
    reference_n = dict.fromkeys(names, reference.images)
    return _test(names, reference, current, reference_n, config, INPUT_SCOPE, reason)


def output_drift(reference: DriftReference, probabilities: np.ndarray, config: DriftConfig) -> DriftReport:
    """Test a batch's predictions (predicted-class mix, confidence) against the validation predictions.

    Args:
        reference: the champion's DriftReference (class_names, predicted_class, confidence).
        probabilities: float (N, C) class probabilities of the batch, C = len(reference.class_names)
            (binary (N,) P(class 1) accepted).
        config: the DriftConfig.

    Returns:
        The DriftReport, scope ``output``.

    Raises:
        DriftError: the probabilities are not (N, C) or not finite.
    """
    current = output_features(probabilities, reference.class_names)
    reason = _not_checked_reason(config, current.images)
    names = [*OUTPUT_CATEGORICAL, *OUTPUT_CONTINUOUS]
    reference_n = dict.fromkeys(names, reference.output_images)
    return _test(names, reference, current, reference_n, config, OUTPUT_SCOPE, reason)


# ---------------------------------------------------------------- plots


def drift_figure_png(
    reference_values: Sequence[float] | Mapping[str, int],
    current_values: Sequence[float] | Mapping[str, int],
    feature: str,
) -> bytes:
    """A small plot of one feature, reference vs current (matplotlib, Agg canvas, no pyplot state).

    Continuous features: overlaid density histograms on shared bins. Categorical features (when
    `reference_values` is a mapping of counts): grouped bars of each category's share.

    Args:
        reference_values: float values, or category -> count.
        current_values: float values, or category -> count (a sequence of category values is
            counted when the reference is a mapping).
        feature: the feature's name (the title).

    Returns:
        PNG bytes, 3.2 x 2.2 inches at 80 dpi (256 x 176 pixels).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2, 2.2), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if isinstance(reference_values, Mapping):
        current = current_values if isinstance(current_values, Mapping) else _counts(list(current_values))
        categories = sorted(set(reference_values) | set(current))
        positions = np.arange(len(categories))
        for offset, (label, counts) in zip(
            (-0.2, 0.2), (("reference", reference_values), ("current", current)), strict=True
        ):
            total = max(sum(counts.values()), 1)
            shares = [counts.get(key, 0) / total for key in categories]
            axes.bar(positions + offset, shares, width=0.4, label=label)
        axes.set_xticks(positions, categories, fontsize=6, rotation=30 if len(categories) > 3 else 0)
        axes.set_ylabel("share", fontsize=7)
    else:
        ref = np.asarray(_finite(list(reference_values)))
        cur = np.asarray(_finite(list(current_values)))
        both = np.concatenate([ref, cur])
        if len(both):
            low, high = float(both.min()), float(both.max())
            bins = np.linspace(low, high if high > low else low + 1.0, 21)
            for label, values in (("reference", ref), ("current", cur)):
                if len(values):
                    axes.hist(values, bins=bins, density=True, alpha=0.5, label=label)
        axes.set_ylabel("density", fontsize=7)
    axes.set_title(feature, fontsize=8)
    axes.tick_params(labelsize=6)
    axes.legend(fontsize=6)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def drift_figures(reference: DriftReference, current: FeatureValues, report: DriftReport) -> dict[str, bytes]:
    """PNG plots (drift_figure_png) of the features a report tested.

    Args:
        reference: the DriftReference.
        current: the batch's FeatureValues (input_features or output_features).
        report: the DriftReport of the same batch.

    Returns:
        feature -> PNG bytes, in report order, for every tested feature.
    """
    figures = {}
    for result in report.results:
        if not result.tested:
            continue
        if result.feature in CATEGORICAL:
            figures[result.feature] = drift_figure_png(
                reference.categorical[result.feature], current.categorical[result.feature], result.feature
            )
        else:
            figures[result.feature] = drift_figure_png(
                reference.continuous[result.feature], current.continuous[result.feature], result.feature
            )
    return figures
