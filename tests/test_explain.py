"""Grad-CAM (components.explain) on real Keras models: where the evidence lies, shapes, ranges, PNGs.

Localization is tested on a small trained CNN whose last feature map is 16 x 16 (receptive field
15 px): the backbone of build_classifier at 64 px ends in a 2 x 2 map whose cells each see the whole
image, so there a heat map says little about where (measured: over 5 seeds of MobileNet alpha 0.25
trained to 100% test accuracy on a bright 32 x 32 square, the mean heat inside it was above the mean
outside for 1 seed in 5 only). The classifiers of build_classifier are tested for what holds at any
size: the nested backbone is found, maps match a layer-by-layer reference computation, binary and
3-class shapes and ranges.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.explain import ExplainError, explanation_png, grad_cam, gradcam_layer, overlay

SIZE = 64
# The bright square of class 1 (rows and columns, pixels): inside one 32 x 32 quadrant.
SQUARE = slice(8, 24)


def square_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (count, 64, 64, 3) noisy gray images 0..255; odd rows (class 1) carry the bright square."""
    rng = np.random.default_rng(seed)
    gray = rng.normal(90.0, 10.0, size=(count, SIZE, SIZE)).clip(0, 255)
    labels = np.arange(count) % 2
    gray[labels == 1, SQUARE, SQUARE] = 230.0
    return np.repeat(gray[..., None], 3, axis=3).astype(np.float32), labels


def inside_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[SQUARE, SQUARE] = True
    return mask


def upsampled_and_scaled(cams: np.ndarray) -> np.ndarray:
    """Reference: (N, h, w) maps -> bilinear (PIL) to 64 x 64, divided by each map's maximum (0 stays 0)."""
    big = np.array(
        [np.asarray(Image.fromarray(c.astype(np.float32), "F").resize((SIZE, SIZE), Image.BILINEAR)) for c in cams]
    )
    peaks = big.reshape(len(big), -1).max(axis=1)[:, None, None]
    return np.divide(big, peaks, out=np.zeros_like(big), where=peaks > 0)


def small_cnn(seed: int = 0):
    """Rescaling -> a nested conv model (as build_classifier nests its backbone; 16 x 16 x 16 out) -> GAP -> sigmoid."""
    import keras

    keras.utils.set_random_seed(seed)
    inner_input = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inner_input)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    features = keras.Model(inner_input, x, name="features")
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(
        features(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    )
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture(scope="module")
def trained_cnn():
    import keras

    model = small_cnn()
    images, labels = square_images(128, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(images, labels, batch_size=16, epochs=6, verbose=0)
    return model


@pytest.fixture(scope="module")
def mobilenet_binary():
    from components.backbones import build_classifier

    return build_classifier("MobileNet", 2, SIZE, weights="none", alpha=0.25)


@pytest.fixture(scope="module")
def mobilenet_3_classes():
    from components.backbones import build_classifier

    return build_classifier("MobileNet", 3, SIZE, weights="none", alpha=0.25)


def test_the_heat_of_class_1_lies_on_its_square(trained_cnn):
    images, labels = square_images(32, seed=1)
    ones = images[labels == 1]
    predicted = trained_cnn.predict(images, verbose=0)[:, 0] > 0.5
    assert (predicted == labels).mean() >= 0.9  # the model has learned the square
    maps = grad_cam(trained_cnn, ones, [1] * len(ones))
    inside, outside = maps[:, inside_mask()].mean(axis=1), maps[:, ~inside_mask()].mean(axis=1)
    print(f"mean heat inside the square {inside.mean():.3f}, outside {outside.mean():.3f}")
    assert inside.mean() > 2 * outside.mean()
    assert (inside > outside).all()


def test_the_feature_map_of_a_nested_backbone_is_its_output(trained_cnn, mobilenet_binary):
    assert gradcam_layer(trained_cnn) == "features"
    assert gradcam_layer(mobilenet_binary) == "mobilenet_0.25_64"


def test_with_a_gap_dense_head_grad_cam_is_cam(trained_cnn):
    """Selvaraju et al. 2017, section 3.1: for conv -> GAP -> Dense the map is CAM, ReLU(sum_k w_k A_k)."""
    import keras

    images, labels = square_images(4, seed=2)
    features = keras.Model(trained_cnn.inputs, trained_cnn.get_layer("pooled").input)
    maps = np.asarray(features.predict(images, verbose=0))  # (4, 16, 16, 16)
    kernel = np.asarray(trained_cnn.get_layer("probability").kernel)[:, 0]
    signs = np.where(labels == 1, 1.0, -1.0)  # class 1: the logit z; class 0: -z
    cam = np.maximum(np.einsum("nhwk,k,n->nhw", maps, kernel, signs), 0.0)
    np.testing.assert_allclose(grad_cam(trained_cnn, images, labels), upsampled_and_scaled(cam), atol=1e-5)


def test_mobilenet_maps_match_a_layer_by_layer_computation(mobilenet_3_classes):
    """The nested backbone's output taken from the outer graph: the same map as running the layers one by one."""
    import tensorflow as tf

    model = mobilenet_3_classes
    images, _ = square_images(3, seed=3)
    classes = [0, 1, 2]
    backbone = model.get_layer("mobilenet_0.25_64")
    position = model.layers.index(backbone)
    x = tf.constant(images)
    for layer in model.layers[1:position]:
        x = layer(x, training=False)
    with tf.GradientTape() as tape:
        fmap = backbone(x, training=False)
        tape.watch(fmap)
        y = fmap
        for layer in model.layers[position + 1 : -1]:
            y = layer(y, training=False)
        head = model.get_layer("probability")
        logits = tf.matmul(y, head.kernel) + head.bias
        total = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
    weights = tf.reduce_mean(tape.gradient(total, fmap), axis=(1, 2))
    cam = np.maximum(np.einsum("nhwk,nk->nhw", np.asarray(fmap), np.asarray(weights)), 0.0)
    np.testing.assert_allclose(grad_cam(model, images, classes), upsampled_and_scaled(cam), atol=1e-4)


@pytest.mark.parametrize("fixture", ["mobilenet_binary", "mobilenet_3_classes"])
def test_maps_are_one_per_image_in_zero_one(fixture, request):
    model = request.getfixturevalue(fixture)
    images, _ = square_images(5, seed=4)
    maps = grad_cam(model, images, batch_size=2)
    assert maps.shape == (5, SIZE, SIZE)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0


def test_without_classes_the_predicted_class_is_explained(mobilenet_3_classes):
    from components.backbones import probabilities

    images, _ = square_images(4, seed=5)
    predicted = np.argmax(probabilities(mobilenet_3_classes.predict(images, verbose=0), 3), axis=1)
    np.testing.assert_array_equal(
        grad_cam(mobilenet_3_classes, images), grad_cam(mobilenet_3_classes, images, predicted)
    )


def test_binary_logit_maps_are_the_maps_of_p_and_1_minus_p(trained_cnn):
    images, _ = square_images(4, seed=6)
    for cls in (0, 1):
        logit = grad_cam(trained_cnn, images, [cls] * 4)
        probability = grad_cam(trained_cnn, images, [cls] * 4, score="probability")
        np.testing.assert_allclose(logit, probability, atol=1e-4)


def test_bad_images_and_classes_are_named(mobilenet_3_classes):
    images, _ = square_images(2, seed=7)
    with pytest.raises(ExplainError, match=r"images must be float32 \(N, 64, 64, 3\)"):
        grad_cam(mobilenet_3_classes, images[:, :32])
    with pytest.raises(ExplainError, match=r"class indices must be in 0\.\.2"):
        grad_cam(mobilenet_3_classes, images, [0, 3])
    with pytest.raises(ExplainError, match="one class index per image"):
        grad_cam(mobilenet_3_classes, images, [0])


def test_no_images_no_maps(mobilenet_binary):
    assert grad_cam(mobilenet_binary, np.zeros((0, SIZE, SIZE, 3), np.float32)).shape == (0, SIZE, SIZE)


def test_a_model_without_convolutions_has_no_feature_map():
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)), name="mlp")
    with pytest.raises(ExplainError, match="'mlp' has no convolutional layer"):
        gradcam_layer(model)


def test_every_backbone_has_a_feature_map_at_its_minimum_size():
    import keras

    from components.backbones import BACKBONES, build_classifier

    for name, spec in sorted(BACKBONES.items()):
        model = build_classifier(name, 3, spec.min_size, weights="none", alpha=0.25 if spec.has_alpha else 1.0)
        layer = gradcam_layer(model)
        assert isinstance(model.get_layer(layer), keras.Model), name  # the nested backbone
        maps = grad_cam(model, np.full((1, spec.min_size, spec.min_size, 3), 128.0, np.float32), [2])
        assert maps.shape == (1, spec.min_size, spec.min_size), name
        keras.backend.clear_session()


def test_overlay_is_rgb_of_the_image_size_and_red_where_hot():
    gray = np.full((40, 30), 100, np.uint8)
    heat = np.zeros((40, 30), np.float32)
    heat[:20] = 1.0
    picture = overlay(gray, heat, alpha=0.5)
    assert picture.shape == (40, 30, 3)
    assert picture.dtype == np.uint8
    assert picture[5, 5, 0] > picture[5, 5, 2]  # hot: red over blue
    assert picture[35, 5, 2] > picture[35, 5, 0]  # cold: blue over red


def test_overlay_resizes_a_smaller_heat_map_and_refuses_bad_alpha():
    assert overlay(np.zeros((64, 64), np.uint8), np.ones((2, 2), np.float32)).shape == (64, 64, 3)
    with pytest.raises(ExplainError, match="alpha"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((4, 4)), alpha=1.5)


def test_explanation_png_is_image_and_overlay_side_by_side():
    gray = (np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8)
    heat = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    with Image.open(io.BytesIO(explanation_png(gray, heat))) as picture:
        assert picture.format == "PNG"
        assert picture.size == (128, 48)
        pixels = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(pixels[:, :64, 0], gray)  # left: the image itself


def test_explanation_png_refuses_a_colour_array():
    with pytest.raises(ExplainError, match="2-D grayscale"):
        explanation_png(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
