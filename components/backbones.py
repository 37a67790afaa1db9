"""Backbone registry and the paper's classification head.

Each entry knows its Keras constructor, its default and minimum input size and
how it normalises pixels. Normalisation is built into the model as a plain
Keras layer (not a Lambda), so a saved `.keras` model takes raw 0..255 pixels
and loads without unsafe deserialisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class UnknownBackboneError(ValueError):
    pass


class WeightsUnavailableError(RuntimeError):
    pass


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: str  # attribute of keras.applications
    default_size: int
    min_size: int
    normalisation: str  # "tf": x/127.5 - 1
    imagenet_file: str  # file name Keras caches under $KERAS_HOME/models
    has_alpha: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "InceptionV3", "InceptionV3", 299, 75, "tf",
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            "Xception", "Xception", 299, 71, "tf",
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            "MobileNet", "MobileNet", 224, 32, "tf",
            "mobilenet_{alpha}_{size}_tf_no_top.h5", has_alpha=True,
        ),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights (KERAS_HOME, else ~/.keras)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_file(spec: BackboneSpec, image_size: int, alpha: float) -> str:
    # MobileNet ships weights for alpha in {0.25, 0.5, 0.75, 1.0} and sizes {128, 160, 192, 224}.
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}.get(alpha, str(alpha))
    size = image_size if image_size in (128, 160, 192, 224) else 224
    return spec.imagenet_file.format(alpha=alpha_text, size=size)


def resolve_weights(spec: BackboneSpec, weights: str, image_size: int, alpha: float) -> str | None:
    """Turn the config's `weights` into what keras.applications accepts.

    `none` -> None; a file path -> that path; `imagenet` -> "imagenet" only if
    the file is already in the Keras cache, because this system runs offline.
    """
    if weights in ("none", "None", "", None):
        return None
    if weights == "imagenet":
        cached = keras_cache_dir() / imagenet_weights_file(spec, image_size, alpha)
        if not cached.exists():
            raise WeightsUnavailableError(
                f"ImageNet weights for {spec.name} are not in the Keras cache ({cached}) and this "
                "system does not download at run time. Either copy the file there (set KERAS_HOME "
                "to a folder whose models/ holds it), or set `weights:` in the run config to a local "
                "weights file (.h5 / .weights.h5), or use `weights: none` to train from scratch."
            )
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {weights!r} for {spec.name} does not exist")
    return str(path)


def normalisation_layer(mode: str):
    import keras

    if mode == "tf":
        return keras.layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="preprocess_input")
    raise ValueError(f"unknown normalisation {mode!r}")


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
    """
    import keras

    spec = get_backbone(backbone)
    if image_size < spec.min_size:
        raise ValueError(f"{backbone} needs image_size >= {spec.min_size}, got {image_size}")
    resolved = resolve_weights(spec, weights, image_size, alpha)
    kwargs = {"alpha": alpha} if spec.has_alpha else {}
    base = getattr(keras.applications, spec.constructor)(
        include_top=False, weights=resolved, input_shape=(image_size, image_size, 3), **kwargs
    )
    pretrained = resolved is not None
    base.trainable = not pretrained
    if not pretrained:
        set_batchnorm_momentum(base, scratch_bn_momentum)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = normalisation_layer(spec.normalisation)(inputs)
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
    """Set the moving-average momentum of every BatchNormalization layer, nested ones too."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
        elif hasattr(layer, "layers"):
            set_batchnorm_momentum(layer, momentum)


def probabilities(model_output, num_classes: int):
    """Model output -> (N, num_classes) class probabilities (binary: [1-p, p])."""
    import numpy as np

    output = np.asarray(model_output, dtype=np.float64)
    if num_classes == 2:
        p = output.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return output
