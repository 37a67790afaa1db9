"""Grad-CAM heat maps: where in an image a classifier's evidence for a class lies.

Method: Selvaraju, Cogswell, Das, Vedantam, Parikh and Batra (2017), "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization" (ICCV 2017, arXiv:1610.02391),
section 3: for a class c, the gradient of its score y^c with respect to the last convolutional
feature map A (N, h, w, K) is global-average-pooled into one weight per channel,
alpha_k^c = mean_ij dy^c / dA_ij^k; the map is ReLU(sum_k alpha_k^c A^k) (h, w), upsampled
(bilinear) to the input size and scaled to [0, 1] by its maximum.

The score y^c is the class's pre-activation score (the logit), as in the paper, when the model ends
in a Dense layer with a softmax or sigmoid activation (components.backbones.build_classifier's
``probability`` layer); otherwise the model's output probability. For a binary model (one sigmoid
output p = P(class 1)) the class 1 score is the logit z (class 0: -z); since dp/dA = p (1 - p) dz/dA
and d(1 - p)/dA = -dp/dA, this gives exactly the maps of the scores p and 1 - p, without their
vanishing gradient when p rounds to 0 or 1 in float32.

In a classifier of build_classifier the last feature map is the output of the backbone, one nested
Keras model (MobileNet at 64 px: 2 x 2 x 256), so the map is coarse: one cell per 32 px there.

Needs TensorFlow (the Keras backend here) for the gradient; overlays need numpy, PIL and matplotlib's
colour maps only. No ZenML, no MLflow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from components.errors import CxrError

# Name of the classifier's output layer (components.backbones.build_classifier, components.ood).
OUTPUT_LAYER = "probability"
# The colour map of the overlays (matplotlib's name): blue = no evidence, red = the most.
COLORMAP = "jet"
DEFAULT_ALPHA = 0.4


class ExplainError(CxrError, ValueError):
    """A Grad-CAM cannot be computed or drawn (no convolutional feature map, shapes or classes that do not fit)."""


def _is_convolution(layer: Any) -> bool:
    """Whether a layer is a 2-D convolution, or a nested model holding one."""
    import keras

    kinds = (
        keras.layers.Conv2D,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        keras.layers.Conv2DTranspose,
    )
    if isinstance(layer, kinds):
        return True
    return any(_is_convolution(inner) for inner in getattr(layer, "layers", ()))


def _output_rank(layer: Any) -> int | None:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer called several times has no single output
        return None
    if isinstance(output, list | tuple):
        return None
    return len(output.shape)


def gradcam_layer(model: Any) -> str:
    """The layer whose output is the classifier's last convolutional feature map.

    Args:
        model: a Keras functional classifier. In one built by components.backbones.build_classifier
            this is the backbone, a single nested Keras model whose output is its last conv map.

    Returns:
        The name of the last layer (in the model's layer order) with a 4-D output (N, h, w, C) that
        comes at or after a convolution (a Conv2D, DepthwiseConv2D, SeparableConv2D or
        Conv2DTranspose, or a nested model holding one): preprocessing layers before the first
        convolution (Rescaling, Normalization) do not count.

    Raises:
        ExplainError: the model has no such layer (no convolution, or none gives a 4-D output).
    """
    found = None
    convolved = False
    for layer in model.layers:
        convolved = convolved or _is_convolution(layer)
        if convolved and _output_rank(layer) == 4:
            found = layer.name
    if found is None:
        raise ExplainError(
            f"model {model.name!r} has no convolutional layer with a 4-D output (N, h, w, C): "
            "Grad-CAM needs a convolutional feature map"
        )
    return found


def _graph_output(model: Any, layer: Any) -> Any:
    """The symbolic tensor a layer gives in the model's own graph.

    For a nested model ``layer.output`` is the output of its inner graph, not connected to the outer
    model's inputs; the tensor its consumer takes is.
    """
    import keras

    tensors = list(model.outputs)
    for consumer in model.layers:
        if consumer is layer or isinstance(consumer, keras.layers.InputLayer):
            continue
        try:
            tensors += keras.tree.flatten(consumer.input)
        except (AttributeError, ValueError):
            continue
    for tensor in tensors:
        history = getattr(tensor, "_keras_history", None)
        if history is not None and history[0] is layer:
            return tensor
    raise ExplainError(f"the output of layer {layer.name!r} is not used in model {model.name!r}")


def _output_dense(model: Any) -> Any:
    """The model's last layer when it is a Dense with a softmax or sigmoid activation, else None."""
    import keras

    try:
        layer = model.get_layer(OUTPUT_LAYER)
    except ValueError:
        layer = model.layers[-1]
    if not isinstance(layer, keras.layers.Dense) or layer.output is not model.outputs[0]:
        return None
    name = getattr(layer.activation, "__name__", "")
    return layer if name in ("softmax", "sigmoid") else None


def _class_scores(logits_or_probs: Any, indices: Any, binary: bool, logits: bool) -> Any:
    import tensorflow as tf

    if binary:
        value = logits_or_probs[:, 0]
        if logits:
            return tf.where(indices == 1, value, -value)
        return tf.where(indices == 1, value, 1.0 - value)
    return tf.gather(logits_or_probs, indices, axis=1, batch_dims=1)


def _upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of float (N, h, w) maps to (N, height, width)."""
    out = np.empty((len(maps), height, width), dtype=np.float32)
    for index, cam in enumerate(maps):
        image = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
        out[index] = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    return out


def grad_cam(
    model: Any,
    images: np.ndarray,
    class_indices: Sequence[int] | None = None,
    layer: str | None = None,
    batch_size: int = 16,
    score: Literal["logit", "probability"] = "logit",
) -> np.ndarray:
    """Grad-CAM heat maps (Selvaraju et al. 2017) of images for one class each.

    Args:
        model: a Keras functional classifier (components.backbones.build_classifier; the served
            pyfunc holds it as ``unwrap_python_model().model``), run in inference mode.
        images: float32 (N, S, S, 3) raw pixels 0..255, as the served model gets them
            (components.serving.decode_batch, or components.imaging.load_images repeated to 3 channels).
        class_indices: N class indices (into the model's classes) to explain; None: each image's
            predicted class (the argmax of its probabilities, as the served ``label``).
        layer: the feature-map layer's name; None: gradcam_layer(model).
        batch_size: images per forward and backward pass.
        score: "logit": the class's pre-activation score when the model ends in a softmax or sigmoid
            Dense (the paper's y^c); "probability": its output probability (binary: p and 1 - p).
            For a binary model both give the same maps.

    Returns:
        float32 (N, S, S) maps in [0, 1], one per image (1 at its strongest evidence); an all-zero
        map where the gradient, or its weighted map, is zero or negative everywhere.

    Raises:
        ExplainError: images that are not (N, H, W, 3) of the model's input size, class indices out
            of range or not one per image, or a model without a convolutional feature map.
    """
    import keras
    import tensorflow as tf

    batch = np.asarray(images, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    fits = batch.ndim == 4 and all(want in (None, got) for want, got in zip(expected, batch.shape[1:], strict=True))
    if not fits:
        raise ExplainError(f"images must be float32 (N, {', '.join(map(str, expected))}), got shape {batch.shape}")
    units = int(model.outputs[0].shape[-1])
    binary = units == 1
    classes = 2 if binary else units
    if class_indices is not None:
        indices = np.asarray(list(class_indices), dtype=np.int64)
        if indices.shape != (len(batch),):
            raise ExplainError(f"need one class index per image: {len(batch)} images, {indices.size} class indices")
        if len(indices) and (indices.min() < 0 or indices.max() >= classes):
            raise ExplainError(f"class indices must be in 0..{classes - 1}, got {sorted(set(indices.tolist()))}")
    height, width = batch.shape[1:3]
    if len(batch) == 0:
        return np.zeros((0, height, width), dtype=np.float32)
    target = model.get_layer(layer or gradcam_layer(model))
    head = _output_dense(model) if score == "logit" else None
    feature_map = _graph_output(model, target)
    outputs = [feature_map, model.outputs[0]] + ([head.input] if head is not None else [])
    runner = keras.Model(model.inputs, outputs)
    maps = []
    for start in range(0, len(batch), batch_size):
        chunk = tf.convert_to_tensor(batch[start : start + batch_size])
        with tf.GradientTape() as tape:
            values = runner(chunk, training=False)
            fmap, probs = values[0], values[1]
            if head is not None:
                raw = tf.matmul(values[2], head.kernel)
                raw = raw + head.bias if head.bias is not None else raw
            else:
                raw = probs
            if class_indices is None:
                p = np.asarray(probs, dtype=np.float64)
                full = np.concatenate([1.0 - p, p], axis=1) if binary else p
                chosen = tf.constant(np.argmax(full, axis=1), dtype=tf.int64)
            else:
                chosen = tf.constant(indices[start : start + batch_size], dtype=tf.int64)
            total = tf.reduce_sum(_class_scores(raw, chosen, binary, head is not None))
        # Images are independent in inference mode: the gradient of the sum is each image's own.
        gradients = tape.gradient(total, fmap)
        weights = tf.reduce_mean(gradients, axis=(1, 2))  # (n, K): alpha_k^c
        cams = tf.nn.relu(tf.einsum("nhwk,nk->nhw", fmap, weights))
        maps.append(np.asarray(cams, dtype=np.float32))
    upsampled = _upsample(np.concatenate(maps), height, width)
    peaks = upsampled.reshape(len(upsampled), -1).max(axis=1)
    scale = np.divide(1.0, peaks, out=np.zeros_like(peaks), where=peaks > 0)
    return np.clip(upsampled * scale[:, None, None], 0.0, 1.0).astype(np.float32)


def _check_gray(gray: np.ndarray) -> np.ndarray:
    array = np.asarray(gray)
    if array.ndim != 2 or array.size == 0:
        raise ExplainError(f"the image must be a 2-D grayscale array (H, W), got shape {array.shape}")
    return np.clip(array, 0, 255).astype(np.uint8)


def _fit_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ExplainError(f"the heat map must be 2-D (H, W), got shape {heat.shape}")
    if heat.shape != shape:
        heat = _upsample(heat[None], *shape)[0]
    return np.clip(np.nan_to_num(heat), 0.0, 1.0)


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """A heat map in colour over a grayscale image.

    Args:
        gray: uint8 (H, W) grayscale image, 0..255 (what the model saw, or the original: the heat map
            is resized to it).
        heatmap: float (h, w) in [0, 1] (grad_cam's map of that image); resized (bilinear) to (H, W)
            when its shape differs.
        alpha: weight of the colour map, in [0, 1] (0: the image only).

    Returns:
        uint8 (H, W, 3) RGB: (1 - alpha) * image + alpha * jet colour of the heat (blue 0, red 1).

    Raises:
        ExplainError: arrays that are not 2-D, or alpha outside [0, 1].
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"alpha must be in [0, 1], got {alpha}")
    image = _check_gray(gray)
    heat = _fit_heatmap(heatmap, image.shape)
    colours = colormaps[COLORMAP](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * image[..., None].astype(np.float64) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def explanation_png(gray: np.ndarray, heatmap: np.ndarray) -> bytes:
    """The image and its heat-map overlay side by side, as a PNG.

    Args:
        gray: uint8 (H, W) grayscale image, 0..255.
        heatmap: float (h, w) in [0, 1]; resized to (H, W) when its shape differs.

    Returns:
        PNG bytes of an RGB image 2W wide and H high: the image on the left, overlay(gray, heatmap)
        on the right.

    Raises:
        ExplainError: arrays that are not 2-D.
    """
    image = _check_gray(gray)
    pair = np.concatenate([np.repeat(image[..., None], 3, axis=2), overlay(image, heatmap)], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pair, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
