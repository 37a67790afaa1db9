"""Batch inference with a registered model (`cxr predict-batch`): load, score, check drift, write.

The model is the registered pyfunc's own Keras model, loaded in-process (no HTTP hop) from the
version an alias names when the run starts (``load_registered_classifier``). Each version
registered by the training pipeline carries a drift reference (DRIFT_ARTIFACT in its MLflow
run, ``drift_reference_for_rows``): image statistics, embeddings and validation outputs of the
images it was fitted and selected on. ``run_batch`` scores the drop, checks input drift on the
forward pass's embeddings and the images' statistics, and writes predictions only when no
blocking drift was found; output drift compares the predicted-class mix and confidences with
the version's validation predictions.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from components.batch import ScoredImages, predictions_table, score_images, used_rows
from components.batch_report import BatchPage, Thumbnail
from components.drift import (
    DRIFT_ARTIFACT,
    EMBEDDING,
    DriftReference,
    DriftReport,
    drift_figures,
    feature_group,
    fit_drift_reference,
    input_drift,
    input_features,
    output_drift,
    output_features,
)
from components.errors import CxrError
from components.imaging import encode_png

__all__ = [
    "DRIFT_ARTIFACT",
    "BatchDriftError",
    "NothingToScoreError",
    "BatchResult",
    "RegisteredClassifier",
    "batch_folder_name",
    "build_page",
    "drift_reference_for_rows",
    "evaluate_labelled",
    "load_drift_reference",
    "load_registered_classifier",
    "run_batch",
    "seen_by_version",
]

# At most this many training and validation images form a version's drift reference (seeded sample).
MAX_REFERENCE_IMAGES = 2000
# Principal components of the embedding stored with a reference (a batch tests the first batch.drift.components).
REFERENCE_COMPONENTS = 10


class BatchDriftError(CxrError, RuntimeError):
    """A blocking input drift stopped a batch before its predictions were written; carries the BatchSummary."""

    def __init__(self, summary: Any):
        self.summary = summary
        features = summary.blocking_features
        listed = ", ".join(features[:6]) + (f" and {len(features) - 6} more" if len(features) > 6 else "")
        super().__init__(
            f"input drift blocked the batch on {len(features)} feature(s) ({listed}): {summary.model_name} "
            f"v{summary.version} was not applied to data version {summary.dataset_version} and no prediction was "
            f"written; report: {summary.report}"
        )

    def __reduce__(self):
        return (type(self), (self.summary,))


class NothingToScoreError(CxrError, ValueError):
    """Every file of a batch was excluded; carries the BatchSummary (its exclusions)."""

    def __init__(self, summary: Any):
        self.summary = summary
        reasons = ", ".join(f"{count} {reason}" for reason, count in summary.excluded.items()) or "no file"
        super().__init__(
            f"nothing to score: all {summary.images} file(s) of data version {summary.dataset_version} were "
            f"excluded ({reasons}); report: {summary.report}"
        )

    def __reduce__(self):
        return (type(self), (self.summary,))


def seen_by_version(client: Any, classifier: RegisteredClassifier, rows: pd.DataFrame) -> int | None:
    """How many of `rows` (sha256) the version trained or was selected on; None when its images are not recorded.

    Args:
        client: MLflow client of the registry.
        classifier: the loaded version.
        rows: scored manifest rows (``sha256``).

    Returns:
        The count, or None for a version registered without its images (components.registry.Evidence).
    """
    from components.registry import load_evidence

    evidence = load_evidence(client, client.get_model_version(classifier.name, classifier.version))
    if evidence is None or evidence.images is None:
        return None
    seen = set(evidence.images.seen().sha256)
    return int(rows["sha256"].isin(seen).sum())


@dataclass
class RegisteredClassifier:
    """A registered version's Keras model and what scoring needs from its pyfunc."""

    name: str
    version: str
    model: Any  # keras.Model (components.backbones.build_classifier)
    class_names: list[str]
    image_size: int
    ood: Any  # components.ood.OodReference, or None for a version logged without one

    @property
    def label(self) -> str:
        """``<name>/<version>``, the predictions' model_version column (as the served model answers)."""
        return f"{self.name}/{self.version}"


def load_registered_classifier(client: Any, model_uri: str, task: str) -> RegisteredClassifier:
    """Resolve `model_uri` to one version, check its task, load its Keras model in-process.

    Args:
        client: MLflow client of the registry.
        model_uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.
        task: the run config's task; the model's contract must match it.

    Returns:
        The RegisteredClassifier.

    Raises:
        ModelReferenceError, RegisteredModelNotFoundError, ModelContractMismatchError: as
            components.registered_evaluation (each names what exists or what differs).
    """
    import mlflow

    from components.labels import TASK_LABELS
    from components.registered_evaluation import (
        check_model_contract,
        model_contract,
        parse_model_reference,
        resolve_model_version,
    )

    reference = parse_model_reference(model_uri)
    number = str(resolve_model_version(client, reference).version)
    pinned = f"models:/{reference.name}/{number}"
    check_model_contract(model_contract(pinned), pinned, task, list(TASK_LABELS[task]))
    python_model = mlflow.pyfunc.load_model(pinned).unwrap_python_model()
    return RegisteredClassifier(
        name=reference.name,
        version=number,
        model=python_model.model,
        class_names=list(python_model.class_names),
        image_size=int(python_model.image_size),
        ood=getattr(python_model, "ood", None),
    )


def load_drift_reference(client: Any, classifier: RegisteredClassifier | str, name: str | None = None):
    """The drift reference stored with a version, or None when it was registered without one.

    Args:
        client: MLflow client of the registry and tracking server.
        classifier: the RegisteredClassifier (or a version number with `name`).
        name: the registered model's name when `classifier` is a version number.

    Returns:
        components.drift.DriftReference, or None.
    """
    from components.registry import read_run_text

    model_name, version = (
        (classifier.name, classifier.version) if isinstance(classifier, RegisteredClassifier) else (name, classifier)
    )
    text = read_run_text(client, client.get_model_version(model_name, version).run_id, DRIFT_ARTIFACT)
    return None if text is None else DriftReference.model_validate_json(text)


def drift_reference_for_rows(
    model: Any,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    val_probabilities: np.ndarray,
    class_names: list[str],
    image_size: int,
    ood: Any,
    seed: int = 0,
) -> DriftReference:
    """A version's drift reference from the images it was fitted and selected on (at registration).

    Image statistics (size, mode, bit depth, pixel statistics) come from the training and validation
    images together, and so do the embedding's principal axes. The embedding features' reference
    VALUES (ood_score, embedding_pc*) come from the validation images only: the model was fitted on
    the training images, whose embeddings sit closer to the class means than any new image's
    (measured: an undrifted synthetic drop got ood_score KS D 0.87 against training scores), so a
    training reference would flag every new drop. With fewer than 2 validation images the training
    images' values are kept.

    Args:
        model: the trained classifier.
        train_rows: manifest rows of its training split (uri, width, height, mode, bit_depth).
        val_rows: manifest rows of its validation split.
        val_probabilities: float (M, C) its validation predictions (the output reference).
        class_names: the classes in output order.
        image_size: the model's input side in pixels.
        ood: its components.ood.OodReference (the ood_score feature), or None.
        seed: the seed of the samples (at most MAX_REFERENCE_IMAGES images are embedded).

    Returns:
        The DriftReference (components.drift.fit_drift_reference).
    """
    rows = pd.concat([train_rows.assign(_val=False), val_rows.assign(_val=True)], ignore_index=True)
    if len(rows) > MAX_REFERENCE_IMAGES:
        rows = rows.sample(n=MAX_REFERENCE_IMAGES, random_state=seed).sort_index().reset_index(drop=True)
    scored = score_images(model, rows["uri"].tolist(), image_size, len(class_names))
    scores = ood.score(scored.embeddings) if ood is not None else None
    reference = fit_drift_reference(
        rows,
        scored.grays,
        scored.embeddings,
        scores,
        np.asarray(val_probabilities, dtype=np.float64),
        class_names,
        components=REFERENCE_COMPONENTS,
        seed=seed,
    )
    held_out = rows["_val"].to_numpy()
    if held_out.sum() < 2:
        return reference
    values = input_features(
        None,
        scored.grays[held_out],
        scored.embeddings[held_out],
        None if scores is None else scores[held_out],
        reference,
    )
    continuous = dict(reference.continuous)
    continuous.update({k: v for k, v in values.continuous.items() if feature_group(k) == EMBEDDING})
    return reference.model_copy(update={"continuous": continuous})


def batch_folder_name(model_name: str, version: str, data_version: str) -> str:
    """``<name>-v<version>-on-<dataset version>``, safe as one folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model_name}-v{version}-on-{data_version}")


@dataclass
class BatchResult:
    """What run_batch did; `predictions` is empty and the paths None when input drift blocked."""

    rows: pd.DataFrame  # the inference manifest (every row, reasons)
    scored_rows: pd.DataFrame
    scored: int
    excluded: int
    input_drift: DriftReport
    output_drift: DriftReport | None
    predictions: pd.DataFrame
    images: ScoredImages
    ood_scores: np.ndarray | None
    predicted: dict[str, int] = field(default_factory=dict)
    ood_flagged: int = 0
    parquet: Path | None = None
    csv: Path | None = None
    plots: dict[str, bytes] = field(default_factory=dict)


def _plots(
    reference: DriftReference | None,
    rows: pd.DataFrame,
    images: ScoredImages,
    ood_scores: np.ndarray | None,
    drift_in: DriftReport,
    drift_out: DriftReport | None,
) -> dict[str, bytes]:
    """A figure (reference against this batch) for every feature that was tested."""
    if reference is None:
        return {}
    plots = drift_figures(
        reference, input_features(rows, images.grays, images.embeddings, ood_scores, reference), drift_in
    )
    if drift_out is not None:
        plots |= drift_figures(reference, output_features(images.probabilities, reference.class_names), drift_out)
    return plots


def run_batch(
    classifier: RegisteredClassifier,
    rows: pd.DataFrame,
    reference: DriftReference | None,
    batch: Any,
    data_version: str,
    folder: Path,
) -> BatchResult:
    """Score the used rows of an inference manifest, check drift, write the outputs into `folder`.

    Args:
        classifier: the loaded version.
        rows: the inference manifest (components.batch.inference_manifest).
        reference: the version's drift reference, or None (drift then "not checked").
        batch: the run config's BatchConfig (batch_size, drift settings).
        data_version: the drop's dataset version.
        folder: where excluded.csv, drift.json and (unless blocked) predictions.parquet/.csv go.

    Returns:
        The BatchResult.

    Raises:
        MissingFileError, StorageError, ImageDecodeError: an image that ingest could read cannot be read now.
    """
    # A folder is one drop scored by one version: an earlier run's files (a predictions table of a run now
    # blocked, a killed run's partial files) must not survive next to this run's report.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    scored_rows = used_rows(rows)
    excluded = rows[rows["exclusion_reason"] != ""]
    excluded.loc[:, ["uri", "source", "exclusion_reason", "exclusion_detail"]].to_csv(
        folder / "excluded.csv", index=False
    )
    images = score_images(
        classifier.model,
        scored_rows["uri"].tolist(),
        classifier.image_size,
        len(classifier.class_names),
        batch.batch_size,
    )
    ood_scores = (
        classifier.ood.score(images.embeddings) if classifier.ood is not None and len(images.embeddings) else None
    )
    if classifier.ood is not None and ood_scores is None:
        ood_scores = np.zeros(0)
    scores_for_drift = ood_scores if ood_scores is not None else np.full(len(scored_rows), np.nan)
    if reference is None:
        drift_in = DriftReport(scope="input", results=[])
    else:
        drift_in = input_drift(reference, scored_rows, images.grays, images.embeddings, scores_for_drift, batch.drift)
    result = BatchResult(
        rows=rows,
        scored_rows=scored_rows,
        scored=len(scored_rows),
        excluded=len(excluded),
        input_drift=drift_in,
        output_drift=None,
        predictions=pd.DataFrame(),
        images=images,
        ood_scores=ood_scores,
    )
    if drift_in.blocking:
        result.plots = _plots(reference, scored_rows, images, ood_scores, drift_in, None)
        (folder / "drift.json").write_text(
            '{"input": ' + drift_in.model_dump_json() + ', "output": null}', encoding="utf-8"
        )
        return result
    threshold = classifier.ood.threshold if classifier.ood is not None else None
    table = predictions_table(
        scored_rows,
        images.probabilities,
        classifier.class_names,
        ood_scores,
        threshold,
        classifier.label,
        data_version,
    )
    drift_out = (
        DriftReport(scope="output", results=[])
        if reference is None
        else output_drift(reference, images.probabilities, batch.drift)
    )
    result.output_drift = drift_out
    result.predictions = table
    result.predicted = {name: int((table["label"] == name).sum()) for name in classifier.class_names}
    result.ood_flagged = int(table["ood"].sum())
    result.parquet, result.csv = folder / "predictions.parquet", folder / "predictions.csv"
    table.to_parquet(result.parquet, index=False)
    table.to_csv(result.csv, index=False)
    (folder / "drift.json").write_text(
        '{"input": ' + drift_in.model_dump_json() + ', "output": ' + drift_out.model_dump_json() + "}",
        encoding="utf-8",
    )
    result.plots = _plots(reference, scored_rows, images, ood_scores, drift_in, drift_out)
    return result


def evaluate_labelled(
    client: Any,
    model_uri: str,
    classifier: RegisteredClassifier,
    result: BatchResult,
    task: str,
    evaluation: Any,
    seed: int,
    run_name: str,
    data_version: str,
    folder: Path,
):
    """The evaluation card (components.drop_evaluation) on the drop's labelled rows, from the batch's predictions.

    Rows whose reference label is one of the model's classes are assessed per source
    ("external:<source>"), images the version trained or was selected on left out, with the decision
    rule recorded on the version; nothing is predicted again.

    Args:
        client: MLflow client of the registry.
        model_uri: the model reference as given.
        classifier: the loaded version.
        result: a BatchResult with predictions (not blocked).
        task: "binary" or "multiclass".
        evaluation: the run config's EvaluationConfig.
        seed: the bootstrap's seed.
        run_name: the run config's name.
        data_version: the drop's dataset version.
        folder: where the card goes.

    Returns:
        components.drop_evaluation.DropEvaluation, or None when no row is labelled or every labelled
        image was seen by the version (a note in the log says which).
    """
    from components.drop_evaluation import evaluate_on_drop
    from components.evaluation import EXTERNAL_PREFIX
    from components.registered_evaluation import NothingUnseenError, parse_model_reference, resolve_model_version

    rows = result.scored_rows
    labelled = rows[rows["label"].isin(classifier.class_names)]
    if labelled.empty:
        return None
    rows_by_split = [(f"{EXTERNAL_PREFIX}{source}", group) for source, group in labelled.groupby("source", sort=True)]
    by_uri = dict(zip(result.predictions["uri"], result.images.probabilities, strict=True))

    def predict(empty: list) -> list:
        return [p.model_copy(update={"probabilities": [list(map(float, by_uri[u])) for u in p.uris]}) for p in empty]

    reference = parse_model_reference(model_uri)
    version = resolve_model_version(client, reference)
    try:
        return evaluate_on_drop(
            client,
            reference,
            version,
            rows_by_split,
            predict,
            classifier.class_names,
            task,
            evaluation,
            seed,
            run_name,
            data_version,
            folder,
        )
    except NothingUnseenError:
        return None


def _caption(uri: str, probability: float, flagged: bool) -> str:
    return f"{PurePosixPath(uri).name} {probability:.2f}" + (" OOD" if flagged else "")


def build_page(
    classifier: RegisteredClassifier,
    result: BatchResult,
    batch: Any,
    run_name: str,
    data_version: str,
    seen: int | None = None,
):
    """The report's content (components.batch_report.BatchPage) from a BatchResult; `seen`: seen_by_version."""
    identity = [
        ("Model", f"{classifier.name} version {classifier.version}"),
        ("Data version", data_version),
        ("Run", run_name),
        (
            "Images",
            f"{len(result.rows)} in the drop, {result.scored} usable"
            + (
                " (none scored: input drift blocked)"
                if result.output_drift is None and result.scored
                else " and scored"
            )
            + f", {result.excluded} excluded",
        ),
        (
            "Seen by the model",
            "its training images are not recorded"
            if seen is None
            else f"{seen} of the usable images were in its training or validation data"
            + (" (drift against them is expected: embeddings sit closer to the class means)" if seen else ""),
        ),
        (
            "Out of distribution",
            "no reference with this version"
            if classifier.ood is None
            else f"{result.ood_flagged} image(s) above the threshold {classifier.ood.threshold:.2f}",
        ),
    ]
    page = BatchPage(
        title=f"Batch predictions: {classifier.name} v{classifier.version} on {data_version}",
        identity=identity,
        input_drift=result.input_drift,
        output_drift=result.output_drift,
        drift_plots=result.plots,
        predicted=result.predicted,
        excluded=result.rows[result.rows["exclusion_reason"] != ""],
        outputs=[
            (name, str(path))
            for name, path in (("Predictions (Parquet)", result.parquet), ("Predictions (CSV)", result.csv))
            if path is not None
        ],
    )
    if result.output_drift is None or not len(result.predictions):
        return page
    table = result.predictions
    for name in classifier.class_names:
        chosen = table.index[table["label"] == name]
        chosen = table.loc[chosen].sort_values("confidence", ascending=False).index[: batch.samples_per_class]
        page.samples[name] = [
            Thumbnail(
                encode_png(result.images.grays[i]),
                _caption(table.at[i, "uri"], table.at[i, "confidence"], bool(table.at[i, "ood"])),
            )
            for i in chosen
        ]
    if batch.explain:
        from components.explain import explanation_png, grad_cam

        count = min(batch.explain, len(table))
        grays = result.images.grays[:count]
        predicted = result.images.probabilities[:count].argmax(axis=1).tolist()
        heatmaps = grad_cam(
            classifier.model, np.repeat(grays.astype(np.float32)[..., None], 3, axis=3), class_indices=predicted
        )
        page.explanations = [
            Thumbnail(
                explanation_png(grays[i], heatmaps[i]),
                f"{PurePosixPath(table.at[i, 'uri']).name}: {table.at[i, 'label']} {table.at[i, 'confidence']:.2f}",
            )
            for i in range(count)
        ]
    return page
