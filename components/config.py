"""The run-config schema: one pydantic model, validated when a config is loaded.

An invalid config is rejected before anything runs, with the dotted path of
the offending field and the reason. Steps receive only JSON-serialisable
slices of it (``model_dump(mode="json")``).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.backbones import BACKBONES, get_backbone, parse_models_uri, weights_kind
from components.drift import DriftConfig  # declared beside its tests
from components.errors import CxrError
from components.labels import TASK_LABELS, Task, label_map_for_task
from components.metric_keys import LOWER_IS_BETTER, metric_keys
from components.sources import SourceConfig  # validated by the options model of its kind
from components.validation.settings import ValidationConfig  # declared beside its checks


class ConfigError(CxrError, ValueError):
    """A run config is unreadable or invalid; the message names file, field and reason."""


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid")


class SyntheticData(_Strict):
    """The embedded default dataset (synthetic radiographs), generated before ingest."""

    root: str = ".cxr/data/synthetic"
    n_patients_per_class: int = Field(20, ge=2)
    images_per_patient: int = Field(3, ge=1)
    image_size: int = Field(256, ge=32, le=2048)
    seed: int = 0


class DataConfig(_Strict):
    """Where the images come from (`sources`), the embedded synthetic set, quick-run cap and read workers."""

    synthetic: SyntheticData | None = None
    # Each entry is validated by the options model registered for its kind
    # (components.sources; `cxr sources` lists the kinds and their options).
    sources: list[SourceConfig] = Field(..., min_length=1)
    # Quick-run knob: keep at most this many usable images (whole patients,
    # per class in proportion); the rest stay in the manifest, marked excluded.
    max_images: int | None = Field(None, ge=10)
    # Parallel file reads when building the manifest: processes for local
    # files, threads for s3:// sources; 0 = one per CPU core.
    workers: int = Field(0, ge=0, le=256)
    # Replace every patient id by a keyed hash (HMAC-SHA256; the key from the environment variable
    # CXR_PSEUDONYMIZATION_KEY, never from the repo) in the manifest and all that follows it; the
    # images of one patient keep one id, so the patient-level split and leakage checks still hold.
    pseudonymize_patient_ids: bool = False
    # `cxr train` trains only on a dataset version a data steward approved (`cxr data approve VERSION`);
    # `cxr validate` still validates and reports any version.
    require_approval: bool = False

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        names = [source.name for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {duplicates}")
        return self


class SplitConfig(_Strict):
    """Train / validation / test fractions of the patient-grouped split (they sum to 1)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class AugmentationConfig(_Strict):
    """Training-split augmentation (never validation, test or serving inputs).

    mode:
      - ``in_memory``: originals and copies held as arrays and passed between
        steps; fine for small sets (the quickstart, tests).
      - ``offline``: originals and copies written, streaming, as TFRecord
        shards into the artifact store by `workers` processes; train steps read
        them from disk (the paper's x64 at any size; memory stays bounded).
      - ``on_the_fly``: train steps keep only the originals; `workers`
        processes make `copies_per_image` fresh copies of each every epoch.
    """

    preset: Literal["paper", "light", "none"] = "paper"
    # Augmented copies added per training image (the paper's x64 is copies_per_image=63).
    copies_per_image: int = Field(1, ge=0, le=256)
    mode: Literal["in_memory", "offline", "on_the_fly"] = "in_memory"
    # Augmenting processes for offline and on_the_fly (0: one per available core).
    workers: int = Field(0, ge=0, le=256)
    images_per_shard: int = Field(2048, ge=16)
    # Per-operation overrides: {"rotate": {"enabled": false}, "gaussian_blur": {"sigma": [0, 1]}}
    operations: dict[str, dict[str, Any]] = {}

    def disabled(self) -> AugmentationConfig:
        """The same settings with augmentation off: originals only, in memory (the ablation's "without")."""
        return self.model_copy(update={"preset": "none", "copies_per_image": 0, "mode": "in_memory", "operations": {}})

    def resolved_operations(self) -> dict[str, Any]:
        """The preset with this config's overrides applied (components.augmentation.resolve_operations)."""
        from components.augmentation import resolve_operations

        return resolve_operations(self.preset, self.operations)

    @model_validator(mode="after")
    def _known_operations(self) -> AugmentationConfig:
        from components.augmentation import resolve_operations

        resolve_operations(self.preset, self.operations)  # raises naming the unknown op/parameter
        return self


class BackboneConfig(_Strict):
    """One backbone to train: a name registered in components.backbones (``cxr backbones`` lists them).

    Each backbone has its own preprocessing built into the model, so every model
    takes raw 0..255 pixels. ``weights`` says where its starting weights come from:

    - ``imagenet``: Keras' ImageNet file, read only from the Keras cache
      ``$KERAS_HOME/models`` (pre-seed it; nothing is downloaded at run time).
      Backbones with an alpha have ImageNet weights for some alphas only
      (``cxr backbones`` lists them).
    - ``none``: random initialisation, train from scratch.
    - a local path: a backbone weights file (``.weights.h5`` / Keras ``.h5``),
      or a ``.keras`` classifier whose backbone warm-starts this one.
    - ``s3://bucket/key``: the same, read from S3.
    - ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a
      registered MLflow model of the same backbone and image_size; its
      backbone weights warm-start this one.

    Files and models are checked when the backbone is built (on the worker
    that trains it), not here; only the URI forms are validated here.
    """

    name: str = Field(description="a registered backbone (`cxr backbones`)")
    image_size: int | None = Field(
        None, description="input side in pixels; default the backbone's own, at least its minimum"
    )
    alpha: float = Field(1.0, gt=0, le=1.4, description="width multiplier, only for backbones that have one")
    weights: str = Field(
        "imagenet", min_length=1, description="imagenet | none | a local file | s3://bucket/key | models:/..."
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        get_backbone(name)  # raises with the list of valid names
        return name

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: str) -> str:
        kind = weights_kind(weights)
        if kind == "s3":
            bucket, _, key = weights[len("s3://") :].partition("/")
            if not bucket or not key or key.endswith("/"):
                raise ValueError(f"{weights!r} names no object; expected s3://bucket/path/to/weights-file")
        elif kind == "registered":
            parse_models_uri(weights)  # ValueError naming both accepted forms
        return weights

    @model_validator(mode="after")
    def _size(self) -> BackboneConfig:
        spec = get_backbone(self.name)
        if self.image_size is None:
            self.image_size = spec.default_size
        if self.image_size < spec.min_size:
            raise ValueError(f"{self.name} needs image_size >= {spec.min_size}, got {self.image_size}")
        if self.alpha != 1.0 and not spec.has_alpha:
            with_alpha = [name for name, other in sorted(BACKBONES.items()) if other.has_alpha]
            listed = " and ".join([", ".join(with_alpha[:-1]), with_alpha[-1]] if len(with_alpha) > 1 else with_alpha)
            raise ValueError(f"{self.name} has no alpha (width multiplier); only {listed or 'none'} do")
        return self


class TrainingConfig(_Strict):
    """Two phases (components.training.train_classifier).

    Phase 1 trains the head for up to `epochs` with the backbone frozen (when
    it is pretrained; from scratch everything trains and there is no phase 2).
    Phase 2 unfreezes the top `fine_tune_layers` layers of the backbone
    (BatchNorm layers stay frozen, in inference mode) and trains for up to
    `fine_tune_epochs` more at `fine_tune_learning_rate`. Both phases stop
    early on `monitor` (a balanced validation metric, higher is better, or
    val_loss, lower is better) and restore the best epoch's weights; phase 2
    keeps phase 1's weights unless it beats phase 1's best `monitor`.
    """

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)  # per replica: with N GPUs the global batch is N x batch_size
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=1)  # EarlyStopping on `monitor`, best weights restored
    # What early stopping and the best-epoch choice watch on the validation split. The
    # unweighted val_loss picks an untrained model when one class dominates (seen on the
    # public data: every image called COVID-19), so a balanced metric is the default.
    monitor: Literal["val_f1_macro", "val_balanced_accuracy", "val_roc_auc", "val_loss"] = "val_f1_macro"
    # cosine: the learning rate decays to 0 over each phase's epochs (steadier end of training).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    fine_tune_layers: int = Field(0, ge=0)  # 0: no phase 2
    fine_tune_epochs: int = Field(10, ge=0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0)
    # ReduceLROnPlateau on `monitor`, off unless reduce_lr_patience is set. It
    # changes a float learning rate, so it needs lr_schedule: constant, and it
    # only acts if its patience is shorter than EarlyStopping's.
    reduce_lr_patience: int | None = Field(None, ge=1)
    reduce_lr_factor: float = Field(0.2, gt=0, lt=1)
    min_learning_rate: float = Field(1e-7, ge=0)
    # Save a checkpoint after every epoch in the artifact store; a re-run of the
    # same training (same key) resumes from the last completed epoch.
    checkpoints: bool = True

    @model_validator(mode="after")
    def _reduce_lr_combination(self) -> TrainingConfig:
        if self.reduce_lr_patience is not None:
            if self.lr_schedule != "constant":
                raise ValueError(
                    "reduce_lr_patience (ReduceLROnPlateau) needs lr_schedule: constant; "
                    f"{self.lr_schedule} already sets the learning rate every step"
                )
            if self.reduce_lr_patience >= self.patience:
                raise ValueError(
                    f"reduce_lr_patience ({self.reduce_lr_patience}) must be shorter than patience "
                    f"({self.patience}), or EarlyStopping ends training before the learning rate drops"
                )
        return self


class ThresholdRule(_Strict):
    """How the binary task's operating threshold on P(COVID-19) is chosen, on the validation split only.

    ``youden``: the threshold maximising sensitivity + specificity - 1 (Youden 1950);
    ``min_sensitivity``: the highest threshold whose validation sensitivity is at least
    ``value``; ``fixed``: ``value`` itself. The multiclass task decides by argmax.
    """

    rule: Literal["youden", "min_sensitivity", "fixed"] = "youden"
    value: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _value_fits_rule(self) -> ThresholdRule:
        if self.rule == "youden" and self.value is not None:
            raise ValueError("rule youden takes no value")
        if self.rule != "youden" and self.value is None:
            raise ValueError(f"rule {self.rule} needs a value between 0 and 1")
        return self


SliceColumn = Literal["source", "age_group", "sex", "view"]


class EvaluationConfig(_Strict):
    """How models are evaluated (components.metrics, components.bootstrap): threshold, CIs, slices, external data."""

    threshold: ThresholdRule = ThresholdRule()
    # Stratified patient-level bootstrap (resamples patients, not images).
    bootstrap_resamples: int = Field(1000, ge=10)
    confidence_level: float = Field(0.95, gt=0.5, lt=1)
    # Equal-width bins over 0..1 for ECE, MCE and the reliability diagram.
    calibration_bins: int = Field(10, ge=2, le=100)
    slices: list[SliceColumn] = ["source", "age_group", "sex", "view"]
    # Slices with fewer images are shown and marked small, and no gate criterion applies to them.
    min_slice_size: int = Field(30, ge=1)
    # Configured sources never used for training or model selection: evaluated in their own column.
    external_sources: list[str] = []
    # Correctly and wrongly classified test images shown in the evaluation card, per kind.
    card_examples: int = Field(6, ge=0, le=50)


class FloorCriterion(_Strict):
    """An absolute floor: ``metric`` (its CI lower bound, or its point value) on ``on`` must be at least ``min``.

    ``metric`` is a key of SplitMetrics.scalar: ``f1_macro``, ``roc_auc_macro``,
    ``balanced_accuracy``, or per class ``sensitivity:COVID-19``, ``specificity:COVID-19`` ...
    ``on: external`` applies the floor to every external source.
    """

    metric: str
    min: float = Field(ge=0, le=1)
    bound: Literal["lower", "point"] = "lower"
    on: Literal["test", "external"] = "test"


class GateConfig(_Strict):
    """When a candidate becomes champion (TFX Evaluator: absolute floors plus a change threshold).

    Every criterion is reported as passed or failed with its numbers; ``champion``
    only when all pass. Floors apply to the first version too.
    """

    floors: list[FloorCriterion] = [
        # No better than chance is never champion: ROC-AUC's 95% lower bound above 0.5.
        FloorCriterion(metric="roc_auc_macro", min=0.5),
        FloorCriterion(metric="balanced_accuracy", min=0.5, bound="point"),
    ]
    # superiority: the paired difference's CI lower bound on the primary metric must exceed
    # min_improvement; non_inferiority: it must exceed -non_inferiority_margin.
    comparison: Literal["superiority", "non_inferiority"] = "superiority"
    min_improvement: float = Field(0.0, ge=0)
    non_inferiority_margin: float = Field(0.02, ge=0, le=1)
    # No slice with at least evaluation.min_slice_size images may lose more than this on the primary metric.
    slice_tolerance: float = Field(0.05, ge=0, le=1)
    # The ECE may not rise above the champion's by more than this.
    calibration_tolerance: float = Field(0.02, ge=0, le=1)


class RegistryConfig(_Strict):
    """The MLflow registered model, the primary metric and the promotion gate."""

    model_name: str = Field("cxr-classifier", pattern=r"^[A-Za-z0-9_.-]+$")
    # Picks the backbone on validation, and is the metric the gate compares with the champion.
    primary_metric: Literal["f1_macro", "balanced_accuracy", "roc_auc_macro", "accuracy"] = "f1_macro"
    gate: GateConfig = GateConfig()
    # The served out-of-distribution flag (components.ood, fitted at registration): `ood` is true above this
    # percentile of the validation images' scores (training images' without validation rows); ~1% flagged at 99.
    ood_percentile: float = Field(99.0, gt=50, lt=100)


class DeploymentConfig(_Strict):
    """Deploying the champion with the stack's model deployer, serve before switch (steps/deployment.py)."""

    # The training pipeline deploys a new champion at its end; false: only `cxr deploy` does.
    enabled: bool = True
    # Test images stored with each version (components.deployment.CANARY_ARTIFACT) and sent to a new server.
    canary_images: int = Field(4, ge=1, le=64)
    # Largest absolute difference between the served probabilities and the evaluation's.
    canary_tolerance: float = Field(1e-5, gt=0, le=1)
    # The canary request's longest wall time, in seconds.
    latency_budget_s: float = Field(30.0, gt=0)
    # How long a new server may take to answer its health check, in seconds.
    start_timeout_s: float = Field(180.0, gt=0)
    # Server processes of the deployment (MLflow scoring server workers).
    workers: int = Field(1, ge=1, le=64)


class ServingConfig(_Strict):
    """`cxr serve` and the served model's input limits (README "Serving and prediction"); CLI options override."""

    host: str = "127.0.0.1"
    port: int = Field(5001, ge=1, le=65535)
    # Server processes, each with its own copy of the model (uvicorn workers).
    workers: int = Field(1, ge=1, le=64)
    # Larger request bodies get HTTP 413 before they are read.
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Images per request (rows); more get HTTP 400 before any is decoded.
    max_rows: int = Field(64, ge=1)
    # Declared width x height of one image; None: ingest's limit (components.imaging.MAX_IMAGE_PIXELS),
    # which a lower value tightens (never loosens).
    max_image_pixels: int | None = Field(None, ge=1)
    # Declared pixels of all images of one request together (bounds the decoding work of a request).
    max_request_pixels: int = Field(640_000_000, ge=1)
    # Seconds before a request gets HTTP 504; its work stops at the next image or batch.
    request_timeout_s: float = Field(60.0, gt=0, le=3600)
    # Micro-batching (components.server.MicroBatcher): the rows of concurrent requests go through the
    # model together, at most this many per model call (32: the model's own batch, PREDICT_BATCH_SIZE);
    # a larger request is cut into calls of this many. 1 turns it off (each request runs the model itself).
    max_batch_rows: int = Field(32, ge=1, le=1024)
    # Milliseconds a model call may wait for the rows of requests still being received or decoded; never
    # when the server has no other request in flight. 0: run with what is queued.
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000)


class BatchConfig(_Strict):
    """`cxr predict-batch` (pipelines/batch_inference.py): scoring a drop of new images with a registered model."""

    # models:/<name>@<alias> or models:/<name>/<version>; None: models:/<registry.model_name>@champion.
    # An alias is resolved when the run starts and the version recorded.
    model: str | None = None
    # Images decoded and predicted together (memory about batch_size x S x S x 16 bytes at input side S).
    batch_size: int = Field(64, ge=1, le=4096)
    # Grad-CAM heat maps (components.explain) for the first this many images in the report; 0: none.
    explain: int = Field(0, ge=0, le=1000)
    # Images shown per predicted class in the report's sample strip.
    samples_per_class: int = Field(6, ge=0, le=50)
    # Input and output drift against the model's training and validation data (components.drift).
    drift: DriftConfig = DriftConfig()

    @field_validator("model")
    @classmethod
    def _is_models_uri(cls, uri: str | None) -> str | None:
        if uri is not None:
            try:
                parse_models_uri(uri)
            except ValueError:
                raise ValueError(
                    f"{uri!r} is not a registered model: give models:/<name>@<alias> or models:/<name>/<version>"
                ) from None
        return uri


class RunConfig(_Strict):
    """One run config (configs/*.yaml): what to train on, how, and where to register it."""

    name: str = "run"
    task: Task = "multiclass"
    seed: int = 42
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    split: SplitConfig = SplitConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    backbones: list[BackboneConfig] = Field(..., min_length=1)
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    batch: BatchConfig = BatchConfig()

    @model_validator(mode="after")
    def _unique_backbones(self) -> RunConfig:
        names = [backbone.name for backbone in self.backbones]
        if len(set(names)) != len(names):
            raise ValueError(f"each backbone may appear once, got {names}")
        return self

    @model_validator(mode="after")
    def _label_maps_fit_the_task(self) -> RunConfig:
        # A label_map is checked against the task here, before any data is read (ingest would refuse it later).
        for index, source in enumerate(self.data.sources):
            try:
                label_map_for_task(self.task, source.label_map)
            except ValueError as error:
                raise ValueError(f"data.sources.{index}.label_map: {error}") from None
        return self

    @model_validator(mode="after")
    def _external_sources_are_configured(self) -> RunConfig:
        names = [source.name for source in self.data.sources]
        unknown = [name for name in self.evaluation.external_sources if name not in names]
        if unknown:
            raise ValueError(
                f"evaluation.external_sources: {', '.join(map(repr, unknown))} not among data.sources "
                f"({', '.join(names)})"
            )
        if set(names) <= set(self.evaluation.external_sources):
            raise ValueError("evaluation.external_sources: every source is external; none is left to train on")
        return self

    @model_validator(mode="after")
    def _gate_metrics_exist(self) -> RunConfig:
        # A typo in a floor would otherwise surface only at promotion, after training.
        valid = metric_keys(TASK_LABELS[self.task])
        for index, floor in enumerate(self.registry.gate.floors):
            if floor.metric not in valid:
                raise ValueError(
                    f"registry.gate.floors.{index}.metric: {floor.metric!r} is not a metric of the {self.task} task; "
                    f"valid: {', '.join(valid)}"
                )
            if floor.metric in LOWER_IS_BETTER:
                raise ValueError(
                    f"registry.gate.floors.{index}.metric: {floor.metric} is lower-is-better and a floor is a minimum; "
                    "calibration is gated by registry.gate.calibration_tolerance"
                )
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        """The task's class names in model output order."""
        return TASK_LABELS[self.task]

    @property
    def largest_image_size(self) -> int:
        """The largest backbone input size in pixels (the augment step prepares images at this size)."""
        return max(backbone.image_size for backbone in self.backbones)


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def parse_run_config(data: Any, origin: str = "<config>") -> RunConfig:
    """Validate a run config given as plain data (the parsed YAML).

    Args:
        data: the mapping as read from YAML.
        origin: where it came from, for the message (a file name).

    Returns:
        The validated RunConfig.

    Raises:
        ConfigError: one line per invalid field, with its dotted path and the reason.
    """
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"invalid run config {origin}:\n{_format_errors(error)}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line, with the line and column in the file (its own text names "<unicode string>")."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None or mark is None:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{problem} at {where}" + (f" ({context})" if context else "")


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping).

    Args:
        path: the file.
        what: what the file is, for messages ("run config", "ZenML run config").

    Returns:
        The mapping.

    Raises:
        ConfigError: the file is missing, not a file, not UTF-8 text, not valid YAML,
            or not a mapping at the top level; the message names the file.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level")
    return data


def load_run_config(
    path: str | Path, overrides: dict[str, Any] | None = None, missing: dict[str, Any] | None = None
) -> RunConfig:
    """Read a YAML run config, fill top-level fields it leaves out, apply dotted overrides, validate.

    Args:
        path: the YAML file.
        overrides: dotted overrides ({"training.epochs": 1}), applied last.
        missing: values for top-level fields the file leaves out (e.g. the `task` and `backbones`
            of a data-only config, from a registered model's contract).

    Raises:
        ConfigError: the file cannot be read (read_yaml_mapping), an override names no
            field (set_dotted), or the config is invalid (parse_run_config).
    """
    data = read_yaml_mapping(path, "run config")
    if not data:
        raise ConfigError(f"run config {path} is empty")
    for field, value in (missing or {}).items():
        data.setdefault(field, value)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value, defaults=run_config_default)
    return parse_run_config(data, origin=str(path))


def run_config_default(parts: Sequence[str]) -> Any:
    """The default value of a RunConfig field path, as JSON-like data (None when it has none).

    e.g. ["registry", "gate", "floors"] -> the default floors as a list of dicts: what
    ``--set registry.gate.floors.0.min=0.6`` edits when the file does not list floors.
    """
    field = RunConfig.model_fields.get(parts[0]) if parts else None
    if field is None or field.is_required():
        return None
    value: Any = _plain(field.get_default(call_default_factory=True))
    for part in parts[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _plain(value: Any) -> Any:
    """Pydantic models, also inside lists and dicts, as JSON-like data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def set_dotted(
    data: dict[str, Any], dotted: str, value: Any, defaults: Callable[[Sequence[str]], Any] | None = None
) -> None:
    """Set data["a"]["b"] = value for dotted="a.b" (lists indexed by number from 0).

    Args:
        data: the parsed YAML mapping, changed in place.
        dotted: the field path, e.g. "training.epochs" or "registry.gate.floors.0.min".
        value: the new value.
        defaults: the default value at a path (run_config_default); a path that goes through
            a field the file leaves out starts from it, so that an item of a default list
            can be edited. Without it a missing field starts as an empty mapping.

    Raises:
        ConfigError: a part is empty, a list index is not a number in range, or a part
            goes below a value that is neither a mapping nor a list.
    """
    parts = dotted.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if not part:
            raise ConfigError(f"--set {dotted}: empty field name in {dotted!r}")
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {dotted}: {where} needs a list index 0..{len(node) - 1}, got {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node:
                    default = None if defaults is None else defaults(parts[: depth + 1])
                    node[part] = default if isinstance(default, dict | list) else {}
                node = node[part]
        else:
            parent = ".".join(parts[:depth])
            raise ConfigError(f"--set {dotted}: {parent} holds the value {node!r}, which has no field {part!r}")


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overlay` merged in (nested mappings merged, the rest replaced)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


TRAIN_STEPS_KEY = "train_steps"


def merged_yaml_file(
    paths: list[str | Path],
    destination: str | Path,
    train_step_ids: Sequence[str] = (),
    known_keys: KeyTree | None = None,
) -> Path:
    """Merge ZenML run-config YAML files in order (later wins) into `destination`.

    Our one extension of ZenML's format: a top-level ``train_steps`` mapping
    holds the settings of every train step (resources, GPU pod settings) in
    one place; it is copied under ``steps.<id>`` for each of
    `train_step_ids`, below anything a file sets for that step id itself,
    and removed (ZenML rejects unknown keys).

    Args:
        paths: YAML files, each a mapping at the top level.
        destination: where the merged YAML is written.
        train_step_ids: the train step ids of the pipeline about to run.
        known_keys: the keys ZenML reads (a KeyTree, cxr.zenml_keys.zenml_config_keys); None: not checked.

    Returns:
        `destination`.

    Raises:
        ConfigError: a file cannot be read, is not a mapping, or its `train_steps`,
            `steps` or `settings` is not a mapping, or (with `known_keys`) it has keys ZenML
            would silently ignore (all of them named, with the closest known key).
    """
    merged: dict[str, Any] = {}
    for path in paths:
        data = read_yaml_mapping(path, "ZenML run config")
        for key in (TRAIN_STEPS_KEY, "steps", "settings"):
            if not isinstance(data.get(key, {}), dict):
                raise ConfigError(f"ZenML run config {path}: {key} must be a mapping, got {data[key]!r}")
        if problems := unknown_keys(data, known_keys):
            raise ConfigError(f"ZenML run config {path}: " + "; ".join(problems))
        merged = deep_merge(merged, data)
    train_settings = merged.pop(TRAIN_STEPS_KEY, None) or {}
    if train_settings:
        steps = merged.setdefault("steps", {})
        for step_id in train_step_ids:
            # A deep copy each: steps must not share (and YAML must not alias) one settings dict.
            steps[step_id] = deep_merge(copy.deepcopy(train_settings), steps.get(step_id) or {})
    destination = Path(destination)
    destination.write_text(yaml.safe_dump(merged, sort_keys=False))
    return destination


# What `unknown_keys` checks below a key: a KeyTree (its known keys), ANY_KEY (every key of the mapping is
# checked against one KeyTree: step ids), or None (not checked: free-form values such as parameters).
KeyTree = Mapping[str, Any]
ANY_KEY = "*"


def unknown_keys(data: Any, tree: KeyTree | None, where: str = "") -> list[str]:
    """Keys of `data` that `tree` does not know, each with its dotted path and the closest known key.

    ZenML ignores unknown keys in its run-config files (its models allow or ignore extras), so a
    misspelt `node_selector` under pod_settings would silently drop a GPU node selector.

    Args:
        data: a parsed YAML mapping (other values are not looked into).
        tree: {key: subtree or None}; a tree with the single key ANY_KEY applies its subtree to every key.
        where: the dotted path of `data` (for the messages).

    Returns:
        Messages such as ``"settings.orchestrator.kubernetes.pod_settings.node_selector: unknown key (did you
        mean 'node_selectors'?)"``, in file order; [] when every key is known.
    """
    if tree is None or not isinstance(data, Mapping):
        return []
    problems = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if ANY_KEY in tree:
            problems += unknown_keys(value, tree[ANY_KEY], path)
        elif key in tree:
            problems += unknown_keys(value, tree[key], path)
        else:
            close = difflib.get_close_matches(str(key), [str(k) for k in tree], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(map(str, tree)))})"
            problems.append(f"{path}: unknown key{hint}")
    return problems


def misspelt_step_ids(configured: Sequence[str], step_ids: Sequence[str]) -> list[str]:
    """Step ids a ZenML run config names that look like a misspelling of one of the pipeline's.

    ZenML ignores a `steps.<id>` that matches no step of the pipeline (one warning line), so a
    `train_mobilenet` for `train_MobileNet` loses its GPU settings. An id that resembles none of
    this pipeline's steps is left alone: one overlay serves several pipelines.

    Args:
        configured: the ids under `steps` of the merged config.
        step_ids: the pipeline's step invocation ids.

    Returns:
        Messages such as ``"steps.train_mobilenet: no such step (did you mean 'train_MobileNet'?)"``.
    """
    known = list(step_ids)
    by_lower = {step.lower(): step for step in known}
    problems = []
    for step in configured:
        if step in known:
            continue
        close = by_lower.get(step.lower()) or next(iter(difflib.get_close_matches(step, known, n=1, cutoff=0.8)), None)
        if close is not None:
            problems.append(f"steps.{step}: no such step in this pipeline (did you mean {close!r}?)")
    return problems
