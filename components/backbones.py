"""Backbone registry and the paper's classification head.

Each entry, added by ``register_backbone`` (keyword-only; ``cxr backbones``
lists them), knows its Keras constructor, its default and minimum input size,
the file Keras caches its ImageNet no-top weights in, and how it normalises
pixels (its ``preprocessing``, a key of PREPROCESSING_MODES). Normalisation
is built into the model as plain Keras layers (no Lambda), so a saved
`.keras` model takes raw 0..255 RGB pixels (grayscale repeated to 3 channels
upstream) and loads without unsafe deserialisation.

Weights sources (`build_classifier(..., weights=...)`, the run config's
`backbones[].weights`):

- ``none``: random initialisation (train from scratch).
- ``imagenet``: Keras' ImageNet no-top file, read only from the Keras cache
  ``$KERAS_HOME/models`` (pre-seed it on air-gapped clusters); never
  downloaded at run time.
- a local file: backbone weights (``.weights.h5`` written by
  ``base.save_weights`` or a Keras ``.h5`` file) for the backbone as
  ``keras.applications.<X>(weights=None)`` builds it; a file named like the
  backbone's Keras ImageNet file is treated as that file (this matters only
  for EfficientNet, see below). A ``.keras`` file is a whole classifier built
  here: its backbone warm-starts the new model.
- ``s3://bucket/key``: the same, read through components.storage into a
  temporary file (StorageError names the URI).
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a registered
  MLflow model (components.serving's pyfunc); its backbone warm-starts the new
  model. Backbone and input size must match.

Every backbone is built by ``keras.applications.<X>(weights=None)`` and then
loaded from a file, so all models of one backbone have the same structure
whatever the source (Keras' EfficientNet adds a layer only for
``weights="imagenet"``; its effect is folded into the Normalization layer).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.errors import CxrError


class UnknownBackboneError(CxrError, ValueError):
    """No backbone of that name is registered; the message lists the registered ones."""


class WeightsUnavailableError(CxrError, RuntimeError):
    """The starting weights cannot be had (not in the Keras cache, no such file or model)."""


class IncompatibleWeightsError(CxrError, ValueError):
    """A warm-start model's backbone does not fit the model being built."""


# ImageNet channel statistics (RGB), as in keras.applications.imagenet_utils.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = {
    "tf": "x / 127.5 - 1",
    "torch": "(x / 255 - ImageNet mean) / ImageNet std, per RGB channel",
    "caffe": "RGB -> BGR, then minus the ImageNet mean (BGR, 0..255 scale)",
    "none": "identity: the backbone rescales its input itself",
}

MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


# The name of the Keras model among a registered pyfunc model's artifacts (components.serving).
KERAS_ARTIFACT = "keras_model"


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """One registered backbone (see `register_backbone` for the fields)."""

    name: str
    constructor: str  # attribute of keras.applications
    default_size: int
    min_size: int
    preprocessing: str  # a key of PREPROCESSING_MODES
    imagenet_file: str  # file name Keras caches under $KERAS_HOME/models ({alpha}, {size} filled in)
    module: str  # keras.applications.<module>.preprocess_input is the reference preprocessing
    has_alpha: bool = False
    imagenet_alphas: tuple[float, ...] = ()  # alphas with published ImageNet weights
    imagenet_sizes: tuple[int, ...] = ()  # sizes with their own ImageNet file; others use 224's

    def preprocess_input(self, images):
        """The backbone's preprocessing (the layers built into its models) on 0..255 RGB pixels.

        Args:
            images: Batch (N, H, W, 3) of RGB pixels in 0..255, float32.

        Returns:
            The batch as the backbone expects it, (N, H, W, 3) float32.
        """
        return preprocess(self, images)


# name -> spec; filled by register_backbone below. `cxr backbones` lists it.
BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(
    *,
    name: str,
    constructor: str,
    default_size: int,
    min_size: int,
    preprocessing: str,
    imagenet_file: str,
    module: str,
    has_alpha: bool = False,
    imagenet_alphas: tuple[float, ...] = (),
    imagenet_sizes: tuple[int, ...] = (),
) -> BackboneSpec:
    """Register a backbone that the run config (``backbones[].name``) may name.

    Args:
        name: The name in the run config.
        constructor: The ``keras.applications`` attribute that builds it.
        default_size: Input side in pixels when the config gives no image_size.
        min_size: Smallest input side in pixels the architecture accepts.
        preprocessing: How it normalises 0..255 RGB pixels: a key of PREPROCESSING_MODES.
        imagenet_file: The file name Keras caches its ImageNet no-top weights under
            ``$KERAS_HOME/models`` (``{alpha}`` and ``{size}`` filled in).
        module: ``keras.applications.<module>.preprocess_input`` is the reference preprocessing.
        has_alpha: Whether it has a width multiplier (alpha).
        imagenet_alphas: Alphas with published ImageNet weights.
        imagenet_sizes: Input sizes with an ImageNet file of their own (others use 224's).

    Returns:
        The registered spec.

    Raises:
        ValueError: The name is taken, the preprocessing is unknown, or min_size > default_size.
    """
    if name in BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    if preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            f"backbone {name!r}: unknown preprocessing {preprocessing!r}; known: {list(PREPROCESSING_MODES)}"
        )
    if not 0 < min_size <= default_size:
        raise ValueError(f"backbone {name!r}: needs 0 < min_size <= default_size, got {min_size} and {default_size}")
    spec = BackboneSpec(
        name=name,
        constructor=constructor,
        default_size=default_size,
        min_size=min_size,
        preprocessing=preprocessing,
        imagenet_file=imagenet_file,
        module=module,
        has_alpha=has_alpha,
        imagenet_alphas=tuple(imagenet_alphas),
        imagenet_sizes=tuple(imagenet_sizes),
    )
    BACKBONES[name] = spec
    return spec


register_backbone(
    name="InceptionV3",
    constructor="InceptionV3",
    default_size=299,
    min_size=75,
    preprocessing="tf",
    imagenet_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    module="inception_v3",
)
register_backbone(
    name="Xception",
    constructor="Xception",
    default_size=299,
    min_size=71,
    preprocessing="tf",
    imagenet_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    module="xception",
)
register_backbone(
    name="MobileNet",
    constructor="MobileNet",
    default_size=224,
    min_size=32,
    preprocessing="tf",
    imagenet_file="mobilenet_{alpha}_{size}_tf_no_top.h5",
    module="mobilenet",
    has_alpha=True,
    imagenet_alphas=(0.25, 0.5, 0.75, 1.0),
    imagenet_sizes=(128, 160, 192, 224),
)
register_backbone(
    name="MobileNetV2",
    constructor="MobileNetV2",
    default_size=224,
    min_size=32,
    preprocessing="tf",
    imagenet_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
    module="mobilenet_v2",
    has_alpha=True,
    imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    imagenet_sizes=(96, 128, 160, 192, 224),
)
register_backbone(
    name="EfficientNetB0",
    constructor="EfficientNetB0",
    default_size=224,
    min_size=32,
    preprocessing="none",
    imagenet_file="efficientnetb0_notop.h5",
    module="efficientnet",
)
register_backbone(
    name="DenseNet121",
    constructor="DenseNet121",
    default_size=224,
    min_size=32,
    preprocessing="torch",
    imagenet_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    module="densenet",
)
register_backbone(
    name="ResNet50",
    constructor="ResNet50",
    default_size=224,
    min_size=32,
    preprocessing="caffe",
    imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    module="resnet50",
)


def get_backbone(name: str) -> BackboneSpec:
    """The registered backbone of a name.

    Args:
        name: A backbone name (``backbones[].name`` in the run config).

    Returns:
        Its spec.

    Raises:
        UnknownBackboneError: No backbone has that name (the message lists the valid ones).
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def describe_backbones() -> str:
    """What ``cxr backbones`` prints: every registered backbone, read from the registry.

    Returns:
        Text: a table of name, default and minimum input size (pixels), whether it
        has an alpha (width multiplier) and its preprocessing, then the alphas with
        ImageNet weights and what each preprocessing does.
    """
    header = ("name", "default size", "min size", "alpha", "preprocessing")
    rows = [
        (spec.name, str(spec.default_size), str(spec.min_size), "yes" if spec.has_alpha else "no", spec.preprocessing)
        for spec in sorted(BACKBONES.values(), key=lambda spec: spec.name)
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = ["Backbones (backbones[].name in a run config); sizes are input sides in pixels.", ""]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    alphas = [spec for spec in sorted(BACKBONES.values(), key=lambda spec: spec.name) if spec.has_alpha]
    if alphas:
        lines += ["", "ImageNet weights exist for alpha:"]
        lines += [f"  {spec.name}: {', '.join(f'{alpha:g}' for alpha in spec.imagenet_alphas)}" for spec in alphas]
    used = sorted({spec.preprocessing for spec in BACKBONES.values()})
    lines += ["", "Preprocessing (built into each model, which takes raw 0..255 RGB pixels):"]
    lines += [f"  {mode}: {PREPROCESSING_MODES[mode]}" for mode in used]
    return "\n".join(lines)


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights.

    Returns:
        ``$KERAS_HOME/models``, else ``~/.keras/models``.
    """
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_file(spec: BackboneSpec, image_size: int, alpha: float) -> str:
    """The file name Keras gives the backbone's ImageNet no-top weights.

    Args:
        spec: The backbone.
        image_size: Input side in pixels; sizes without a file of their own use 224's.
        alpha: Width multiplier (backbones that have one).

    Returns:
        The file name under ``keras_cache_dir()``.
    """
    if spec.name == "MobileNet":
        alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}.get(alpha, str(alpha))
    else:
        alpha_text = str(float(alpha))
    # Keras falls back to the 224 weights for other sizes (the convolutions do not depend on it).
    size = image_size if image_size in spec.imagenet_sizes else 224
    return spec.imagenet_file.format(alpha=alpha_text, size=size)


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """The parts of a registered-model URI.

    Args:
        uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Returns:
        (name, alias, version); alias or version is None.

    Raises:
        ValueError: `uri` has neither form (the message names both).
    """
    match = MODELS_URI.match(str(uri))
    if not match:
        raise ValueError(
            f"malformed registered-model URI {uri!r}; expected models:/<name>@<alias> or models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def weights_kind(weights: str | None) -> str:
    """Which source a `weights` value names.

    Args:
        weights: A ``backbones[].weights`` value.

    Returns:
        ``none``, ``imagenet``, ``s3``, ``registered`` (``models:/...``) or ``file``.
    """
    if weights in ("none", "None", "", None):
        return "none"
    if weights == "imagenet":
        return "imagenet"
    if str(weights).startswith("s3://"):
        return "s3"
    if str(weights).startswith("models:/"):
        return "registered"
    return "file"


def _imagenet_cached_file(spec: BackboneSpec, image_size: int, alpha: float) -> Path:
    if spec.has_alpha and spec.imagenet_alphas and alpha not in spec.imagenet_alphas:
        raise WeightsUnavailableError(
            f"{spec.name} has ImageNet weights only for alpha in {list(spec.imagenet_alphas)}, got {alpha}; "
            "use another alpha, a weights file, or `weights: none`"
        )
    cached = keras_cache_dir() / imagenet_weights_file(spec, image_size, alpha)
    if not cached.is_file():
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} are not in the Keras cache: expected the file "
            f"{cached.name} in the folder {cached.parent}, and this system does not download at run "
            "time. Either copy the file there (set KERAS_HOME to a folder whose models/ holds it), "
            "or set `weights:` in the run config to a local weights file (.h5 / .weights.h5), an "
            "s3:// URI or a registered model (models:/<name>@<alias>), or use `weights: none` to "
            "train from scratch."
        )
    return cached


def resolve_weights(spec: BackboneSpec, weights: str, image_size: int, alpha: float) -> str | None:
    """The local file a `weights` value names.

    Remote sources (s3://, models:/) need a temporary download: use `weights_source`.

    Args:
        spec: The backbone.
        weights: ``none``, ``imagenet`` or a local path.
        image_size: Input side in pixels (picks the ImageNet file).
        alpha: Width multiplier (picks the ImageNet file).

    Returns:
        None for ``none`` (random initialisation), the cached Keras file for
        ``imagenet``, else the path.

    Raises:
        WeightsUnavailableError: The ImageNet file is not cached (the message says
            where to put it), the alpha has no ImageNet weights, or the file does not exist.
        ValueError: `weights` is remote.
    """
    kind = weights_kind(weights)
    if kind == "none":
        return None
    if kind == "imagenet":
        return str(_imagenet_cached_file(spec, image_size, alpha))
    if kind in ("s3", "registered"):
        raise ValueError(f"{weights!r} is remote; resolve it with `weights_source` (a context manager)")
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {weights!r} for {spec.name} does not exist")
    return str(path)


@contextlib.contextmanager
def weights_source(spec: BackboneSpec, weights: str, image_size: int, alpha: float) -> Iterator[str | None]:
    """Like `resolve_weights`, for every source: a local file that exists inside the block.

    s3:// objects are copied to a temporary file (keeping their name, which says
    the format); a registered model is downloaded and its `.keras` file yielded.

    Args:
        spec: The backbone.
        weights: Any ``backbones[].weights`` value.
        image_size: Input side in pixels.
        alpha: Width multiplier.

    Yields:
        The local file, or None for random initialisation.

    Raises:
        WeightsUnavailableError: As `resolve_weights`, or the registered model cannot be loaded.
        StorageError: The S3 object cannot be read (the message names the URI).
    """
    kind = weights_kind(weights)
    if kind in ("none", "imagenet", "file"):
        yield resolve_weights(spec, weights, image_size, alpha)
        return
    with tempfile.TemporaryDirectory(prefix="cxr-weights-") as tmp:
        if kind == "s3":
            from components.storage import parse_s3_uri, read_bytes

            _, key = parse_s3_uri(weights)
            name = Path(key).name or "weights.h5"
            target = Path(tmp) / name
            target.write_bytes(read_bytes(weights))  # StorageError names the URI
            yield str(target)
        else:
            yield str(download_registered_keras_model(weights, tmp))


def download_registered_keras_model(uri: str, dst: str | Path) -> Path:
    """Download a registered pyfunc model (components.serving) and find its Keras model.

    Args:
        uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.
        dst: Folder to download into.

    Returns:
        The `.keras` file (the model's KERAS_ARTIFACT, else its only `.keras` file).

    Raises:
        ValueError: Malformed URI.
        WeightsUnavailableError: MLflow cannot load the model.
        IncompatibleWeightsError: The model holds no single `.keras` file.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    parse_models_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as error:
        raise WeightsUnavailableError(f"cannot load the registered model {uri}: {error.message}") from error
    artifacts = {}
    if (local / "MLmodel").is_file():
        flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
        artifacts = flavor.get("artifacts") or {}
    entry = artifacts.get(KERAS_ARTIFACT)
    if entry and (local / entry["path"]).is_file():
        return local / entry["path"]
    found = sorted(local.rglob("*.keras"))
    if len(found) != 1:
        raise IncompatibleWeightsError(
            f"the registered model {uri} holds {len(found)} .keras files, expected one "
            f"(a components.serving pyfunc model with the {KERAS_ARTIFACT!r} artifact)"
        )
    return found[0]


def preprocessing_layers(mode: str) -> list:
    """Plain Keras layers that equal keras.applications' `preprocess_input` for a mode.

    Computed in float32 whatever the dtype policy.

    Args:
        mode: A key of PREPROCESSING_MODES.

    Returns:
        The layers, for channels-last (N, H, W, 3) RGB input in 0..255.

    Raises:
        ValueError: Unknown mode.
    """
    import keras
    import numpy as np

    if mode == "tf":
        return [keras.layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="preprocess_input", dtype="float32")]
    if mode == "torch":
        std = np.asarray(IMAGENET_STD_RGB)
        return [
            keras.layers.Rescaling(
                scale=(1.0 / (255.0 * std)).tolist(),
                offset=(-np.asarray(IMAGENET_MEAN_RGB) / std).tolist(),
                name="preprocess_input",
                dtype="float32",
            )
        ]
    if mode == "caffe":
        # RGB -> BGR and mean subtraction as one fixed (non-trainable) per-pixel linear map:
        # a 0/1 permutation matrix is exact in float32.
        permutation = np.eye(3, dtype=np.float32)[::-1]
        return [
            keras.layers.Dense(
                3,
                name="preprocess_input",
                trainable=False,
                dtype="float32",
                kernel_initializer=keras.initializers.Constant(permutation.tolist()),
                bias_initializer=keras.initializers.Constant((-np.asarray(CAFFE_MEAN_BGR)).tolist()),
            )
        ]
    if mode == "none":
        return [keras.layers.Identity(name="preprocess_input", dtype="float32")]
    raise ValueError(f"unknown preprocessing {mode!r}; known: {', '.join(PREPROCESSING_MODES)}")


def preprocess(spec_or_name: BackboneSpec | str, images):
    """Apply a backbone's built-in preprocessing to a batch.

    Args:
        spec_or_name: The backbone or its name.
        images: Batch (N, H, W, 3) of RGB pixels in 0..255, float32.

    Returns:
        The preprocessed batch, (N, H, W, 3) float32.

    Raises:
        UnknownBackboneError: Unknown name.
    """
    spec = get_backbone(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
    x = images
    for layer in preprocessing_layers(spec.preprocessing):
        x = layer(x)
    return x


def _finalize_states(model) -> None:
    """Layers that cache tensors derived from their weights (Normalization) refresh them."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def _fold_efficientnet_imagenet_std(base) -> None:
    """Fold Keras' EfficientNet ImageNet std rescaling into its Normalization layer.

    Keras' EfficientNet with weights="imagenet" divides by sqrt(std) after its
    Normalization layer, a layer it adds only then: (x - m) / sqrt(v * std).
    """
    import keras
    import numpy as np

    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    variance = np.asarray(norm.adapt_variance.numpy())
    norm.adapt_variance.assign(variance * np.asarray(IMAGENET_STD_RGB, dtype=variance.dtype))
    norm.finalize_state()


def find_backbone(model):
    """The backbone inside a classifier built by `build_classifier`.

    Args:
        model: The classifier (a keras Model).

    Returns:
        The nested keras Model that is its backbone.

    Raises:
        IncompatibleWeightsError: The model has no single nested backbone.
    """
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise IncompatibleWeightsError(
            f"model {model.name!r} has {len(nested)} nested backbones, expected one (a classifier built "
            "by components.backbones.build_classifier)"
        )
    return nested[0]


def _source_identity(model, contract: dict | None) -> tuple[str | None, int | None]:
    if contract and contract.get("backbone"):
        return contract.get("backbone"), contract.get("image_size")
    name = model.name[len("cxr_") :] if model.name.startswith("cxr_") else None
    backbone = next((spec.name for spec in BACKBONES.values() if spec.name.lower() == name), None)
    shape = model.inputs[0].shape if model.inputs else None
    return backbone, (int(shape[1]) if shape is not None and shape[1] is not None else None)


def _registered_contract(keras_file: Path) -> dict | None:
    """The model contract of the pyfunc model whose artifacts hold `keras_file`, if any.

    components.serving keeps the file at <model>/artifacts/<file>.keras.
    """
    from mlflow.models import Model

    for folder in list(keras_file.parents)[:2]:
        if (folder / "MLmodel").is_file():
            return (Model.load(str(folder / "MLmodel")).metadata or {}).get("contract")
    return None


def copy_backbone_weights(source_file: str | Path, base, spec: BackboneSpec, image_size: int, source: str) -> None:
    """Warm start: copy the backbone weights of a saved classifier into `base`.

    Args:
        source_file: A `.keras` classifier built by `build_classifier`.
        base: The backbone (keras Model) being built.
        spec: Its registry entry.
        image_size: Its input side in pixels.
        source: How the user named the weights (for messages).

    Raises:
        IncompatibleWeightsError: Not a readable .keras file, or another backbone, input size or alpha.
    """
    import keras

    try:
        source_model = keras.saving.load_model(str(source_file), compile=False)
    except (ValueError, OSError) as error:
        # Keras says "File not found" for any file that is not a readable .keras archive.
        raise IncompatibleWeightsError(
            f"cannot read {source} as a .keras model ({type(error).__name__}); expected a classifier saved by "
            "this project (model.keras)"
        ) from None
    backbone, size = _source_identity(source_model, _registered_contract(Path(source_file)))
    if backbone != spec.name or (size is not None and size != image_size):
        raise IncompatibleWeightsError(
            f"cannot warm-start {spec.name} at {image_size}x{image_size} from {source}: it is "
            f"{backbone or 'an unknown backbone'} at {size}x{size}; use the same backbone and image_size"
        )
    source_base = find_backbone(source_model)
    source_weights, target_weights = source_base.weights, base.weights
    mismatch = [
        (t.path, tuple(s.shape), tuple(t.shape))
        for s, t in zip(source_weights, target_weights, strict=False)
        if tuple(s.shape) != tuple(t.shape)
    ]
    if len(source_weights) != len(target_weights) or mismatch:
        detail = (
            f"first mismatch {mismatch[0]}" if mismatch else f"{len(source_weights)} vs {len(target_weights)} arrays"
        )
        raise IncompatibleWeightsError(
            f"the backbone weights of {source} do not fit {spec.name} ({detail}); was it trained with another alpha?"
        )
    for s, t in zip(source_weights, target_weights, strict=False):
        t.assign(s)
    _finalize_states(base)


def load_backbone_weights(base, spec: BackboneSpec, path: str, image_size: int, alpha: float, source: str) -> None:
    """Load a weights file, or warm-start from a `.keras` classifier, into the backbone.

    Args:
        base: The backbone (keras Model) being built.
        spec: Its registry entry.
        path: A `.weights.h5` / `.h5` backbone weights file or a `.keras` classifier.
        image_size: Input side in pixels.
        alpha: Width multiplier.
        source: How the user named the weights (for messages).

    Raises:
        IncompatibleWeightsError: The file does not fit this backbone.
    """
    if path.endswith(".keras"):
        copy_backbone_weights(path, base, spec, image_size, source)
        return
    try:
        base.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise IncompatibleWeightsError(f"cannot load weights {source} into {spec.name}: {error}") from error
    _finalize_states(base)
    if spec.constructor.startswith("EfficientNet") and Path(path).name == imagenet_weights_file(
        spec, image_size, alpha
    ):
        _fold_efficientnet_imagenet_std(base)


def build_classifier(
    backbone: str,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    alpha: float = 1.0,
    dropout: float = 0.5,
    dense_units: int = 128,
    scratch_bn_momentum: float = 0.9,
):
    """Backbone + the paper's head: GAP -> BatchNorm -> Flatten -> Dense(128) -> Dropout -> out.

    `num_classes == 2` builds the binary head Dense(1, sigmoid); otherwise
    Dense(num_classes, softmax). With pretrained weights the backbone is frozen
    and runs in inference mode (training=False), so its BatchNorm statistics
    stay those of ImageNet; trained from scratch it is trainable, and its
    BatchNorm layers use `scratch_bn_momentum`: Keras' default 0.99 needs
    thousands of steps before the moving statistics match the weights, so on a
    few hundred steps validation predictions collapse to one class and early
    stopping keeps the first epoch (measured on the synthetic set: macro-F1
    0.17 with 0.99, 0.95-0.99 with 0.9).

    Args:
        backbone: A registered backbone name.
        num_classes: Classes of the task (2: one sigmoid output).
        image_size: Input side in pixels, at least the backbone's min_size.
        weights: none | imagenet | a local file | s3://bucket/key |
            models:/<name>@<alias> or models:/<name>/<version> (see the module docstring).
        alpha: Width multiplier (backbones that have one).
        dropout: Dropout rate of the head.
        dense_units: Units of the head's Dense layer.
        scratch_bn_momentum: BatchNorm momentum of a backbone trained from scratch.

    Returns:
        A keras Model named ``cxr_<backbone>``: input (N, image_size, image_size, 3)
        float32 RGB in 0..255, output (N, 1) P(class 1) for 2 classes, else
        (N, num_classes) softmax probabilities, float32.

    Raises:
        UnknownBackboneError: Unknown backbone.
        ValueError: image_size below the backbone's minimum.
        WeightsUnavailableError: The weights cannot be had.
        IncompatibleWeightsError: The weights do not fit this backbone.
    """
    import keras

    spec = get_backbone(backbone)
    if image_size < spec.min_size:
        raise ValueError(f"{backbone} needs image_size >= {spec.min_size}, got {image_size}")
    kwargs = {"alpha": alpha} if spec.has_alpha else {}
    with weights_source(spec, weights, image_size, alpha) as path:
        base = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, input_shape=(image_size, image_size, 3), **kwargs
        )
        if path is not None:
            load_backbone_weights(base, spec, path, image_size, alpha, source=str(weights))
    pretrained = path is not None
    base.trainable = not pretrained
    if not pretrained:
        set_batchnorm_momentum(base, scratch_bn_momentum)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = inputs
    for layer in preprocessing_layers(spec.preprocessing):
        x = layer(x)
    x = base(x, training=False) if pretrained else base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probability", dtype="float32")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probability", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"cxr_{backbone.lower()}")


def set_batchnorm_momentum(model, momentum: float) -> None:
    """Set the moving-average momentum of every BatchNormalization layer, nested ones too.

    Args:
        model: A keras Model, changed in place.
        momentum: The new momentum (0..1).
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
        elif hasattr(layer, "layers"):
            set_batchnorm_momentum(layer, momentum)


def probabilities(model_output, num_classes: int):
    """Class probabilities from a classifier's output.

    Args:
        model_output: (N, 1) P(class 1) for a binary model, else (N, num_classes).
        num_classes: Classes of the task.

    Returns:
        (N, num_classes) float64 probabilities (binary: [1 - p, p]).
    """
    import numpy as np

    output = np.asarray(model_output, dtype=np.float64)
    if num_classes == 2:
        p = output.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return output
