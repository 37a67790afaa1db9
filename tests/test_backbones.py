"""Backbone registry, built-in preprocessing, the paper's head and every weights source.

Real backends, no mocks: a Keras cache pre-seeded with a file in Keras' own
ImageNet format, a real S3 server (rclone), a real SQLite MLflow registry.
Models are tiny (MobileNet alpha 0.25 at 32x32) except where a backbone's own
structure is the point.
"""

from __future__ import annotations

import importlib
import time

import h5py
import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from components import serving
from components.backbones import (
    BACKBONES,
    PREPROCESSING_MODES,
    IncompatibleWeightsError,
    UnknownBackboneError,
    WeightsUnavailableError,
    build_classifier,
    describe_backbones,
    find_backbone,
    imagenet_weights_file,
    keras_cache_dir,
    preprocess,
    preprocessing_layers,
    probabilities,
    register_backbone,
)
from components.storage import MissingFileError, StorageError

TINY = {"backbone": "MobileNet", "image_size": 32, "alpha": 0.25}
MARK = 0.0123


def tiny(weights="none", **overrides):
    args = {**TINY, **overrides}
    return build_classifier(args["backbone"], 2, args["image_size"], weights=weights, alpha=args["alpha"])


def first_kernel(model_or_base):
    base = find_backbone(model_or_base) if model_or_base.name.startswith("cxr_") else model_or_base
    return next(w for w in base.weights if "kernel" in w.path)


def marked_base(size=32, alpha=0.25):
    """A bare MobileNet backbone whose first kernel is MARK everywhere."""
    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3), alpha=alpha)
    kernel = first_kernel(base)
    kernel.assign(np.full(kernel.shape, MARK, np.float32))
    return base


# ------------------------------------------------------------ registry


def test_registry_entries_match_keras():
    assert set(BACKBONES) == {
        "InceptionV3",
        "Xception",
        "MobileNet",
        "MobileNetV2",
        "EfficientNetB0",
        "DenseNet121",
        "ResNet50",
    }
    for spec in BACKBONES.values():
        assert callable(getattr(keras.applications, spec.constructor))
        assert spec.min_size <= spec.default_size
        assert spec.imagenet_file.endswith(".h5")
        assert spec.preprocessing in PREPROCESSING_MODES
    # The cache names Keras itself uses (keras/src/applications/*.py).
    assert imagenet_weights_file(BACKBONES["MobileNet"], 128, 0.25) == "mobilenet_2_5_128_tf_no_top.h5"
    assert imagenet_weights_file(BACKBONES["MobileNet"], 300, 1.0) == "mobilenet_1_0_224_tf_no_top.h5"
    assert (
        imagenet_weights_file(BACKBONES["MobileNetV2"], 96, 0.35)
        == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    )
    assert imagenet_weights_file(BACKBONES["EfficientNetB0"], 224, 1.0) == "efficientnetb0_notop.h5"
    assert (
        imagenet_weights_file(BACKBONES["DenseNet121"], 224, 1.0)
        == "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    assert (
        imagenet_weights_file(BACKBONES["ResNet50"], 224, 1.0) == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


ENTRY = {
    "name": "Tiny",
    "constructor": "MobileNet",
    "default_size": 64,
    "min_size": 32,
    "preprocessing": "tf",
    "imagenet_file": "tiny.h5",
    "module": "mobilenet",
}


def test_register_backbone_takes_keyword_arguments_and_checks_the_entry():
    with pytest.raises(TypeError, match="positional"):
        register_backbone(*ENTRY.values())  # type: ignore[misc]
    with pytest.raises(ValueError, match="backbone 'MobileNet' is already registered"):
        register_backbone(**{**ENTRY, "name": "MobileNet"})
    with pytest.raises(ValueError, match="unknown preprocessing 'inception'"):
        register_backbone(**{**ENTRY, "preprocessing": "inception"})
    with pytest.raises(ValueError, match="needs 0 < min_size <= default_size, got 96 and 64"):
        register_backbone(**{**ENTRY, "min_size": 96})
    assert "Tiny" not in BACKBONES


def test_cxr_backbones_lists_every_backbone(capsys):
    from cxr.cli import main

    assert main(["backbones"]) == 0
    printed = capsys.readouterr().out
    assert printed == describe_backbones() + "\n"
    rows = {
        line.split()[0]: line.split()[1:]
        for line in printed.splitlines()
        if line.split()[:1] in ([n] for n in BACKBONES)
    }
    assert set(rows) == set(BACKBONES)
    for name, spec in BACKBONES.items():
        alpha = "yes" if spec.has_alpha else "no"
        assert rows[name] == [str(spec.default_size), str(spec.min_size), alpha, spec.preprocessing], name
    assert "  MobileNetV2: 0.35, 0.5, 0.75, 1, 1.3, 1.4\n" in printed
    assert "  caffe: RGB -> BGR, then minus the ImageNet mean (BGR, 0..255 scale)\n" in printed


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(
        UnknownBackboneError,
        match="DenseNet121, EfficientNetB0, InceptionV3, MobileNet, MobileNetV2, ResNet50, Xception",
    ):
        build_classifier("ResNet50x", 2, 64)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_built_in_preprocessing_equals_keras_preprocess_input(name):
    spec = BACKBONES[name]
    batch = np.random.default_rng(0).uniform(0, 255, (3, 5, 7, 3)).astype(np.float32)
    batch[0, 0, 0] = (0, 127.5, 255)
    expected = importlib.import_module(f"keras.applications.{spec.module}").preprocess_input(batch.copy())
    np.testing.assert_allclose(np.asarray(spec.preprocess_input(batch)), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe", "none"])
def test_preprocessing_layers_are_plain_keras_and_reload_in_safe_mode(mode, tmp_path):
    layers = preprocessing_layers(mode)
    assert all(type(layer).__module__.startswith("keras.") for layer in layers)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in layers)
    assert not any(layer.trainable_weights for layer in layers)
    model = keras.Sequential([keras.Input((4, 4, 3)), *layers])
    model.save(tmp_path / "pre.keras")
    reloaded = keras.saving.load_model(tmp_path / "pre.keras", safe_mode=True)
    batch = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(reloaded(batch)), np.asarray(model(batch)))


# ------------------------------------------------------------ model and head


@pytest.mark.parametrize("classes, units, activation", [(2, 1, "sigmoid"), (3, 3, "softmax")])
def test_paper_head_shape(classes, units, activation):
    model = build_classifier("MobileNet", classes, 32, weights="none", alpha=0.25)
    names = [layer.__class__.__name__ for layer in model.layers]
    head = names[names.index("Functional") + 1 :]
    assert head == ["GlobalAveragePooling2D", "BatchNormalization", "Flatten", "Dense", "Dropout", "Dense"]
    assert model.layers[-3].units == 128
    assert model.layers[-2].rate == 0.5
    assert model.layers[-1].units == units
    assert model.layers[-1].activation.__name__ == activation
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    output = model(np.full((2, 32, 32, 3), 128, np.float32))
    probs = probabilities(output, classes)
    assert probs.shape == (2, classes)
    assert np.allclose(probs.sum(axis=1), 1.0)


SMALLEST_ALPHA = {"MobileNet": 0.25, "MobileNetV2": 0.35}  # others: 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_at_its_minimum_size(name):
    spec = BACKBONES[name]
    alpha = SMALLEST_ALPHA.get(name, 1.0)
    model = build_classifier(name, 3, spec.min_size, weights="none", alpha=alpha)
    assert model.layers[1].name == "preprocess_input"
    assert find_backbone(model).trainable  # from scratch: trainable
    output = np.asarray(model(np.full((1, spec.min_size, spec.min_size, 3), 200, np.float32)))
    assert output.shape == (1, 3)
    assert np.isfinite(output).all()
    with pytest.raises(ValueError, match=f"needs image_size >= {spec.min_size}"):
        build_classifier(name, 3, spec.min_size - 1, weights="none", alpha=alpha)


# ------------------------------------------------------------ weights: imagenet (Keras cache)


def test_imagenet_weights_offline_fail_with_instructions():
    with pytest.raises(WeightsUnavailableError, match="KERAS_HOME") as error:
        build_classifier("MobileNet", 2, 128, weights="imagenet", alpha=0.25)
    message = str(error.value)
    assert "weights: none" in message
    assert "mobilenet_2_5_128_tf_no_top.h5" in message
    assert str(keras_cache_dir()) in message
    with pytest.raises(WeightsUnavailableError, match="only for alpha in"):
        build_classifier("MobileNetV2", 2, 96, weights="imagenet", alpha=0.25)


def _write_keras_imagenet_file(base, path):
    """Write `base`'s weights in the legacy HDF5 layout of Keras' published ImageNet files."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)


@pytest.mark.slow
def test_imagenet_from_a_pre_seeded_cache_equals_keras_imagenet_model(monkeypatch, tmp_path):
    """EfficientNet is the hard case: Keras adds a std-rescaling layer only for weights="imagenet"."""
    keras_home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    size = 32
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(2)
    norm = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign([0.485, 0.456, 0.406])
    norm.adapt_variance.assign(np.square([0.229, 0.224, 0.225]))
    cached = keras_cache_dir() / imagenet_weights_file(BACKBONES["EfficientNetB0"], size, 1.0)
    cached.parent.mkdir(parents=True)
    _write_keras_imagenet_file(source, cached)

    # What keras.applications builds with weights="imagenet", its download served from our file.
    from keras.src.applications import efficientnet

    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *args, **kwargs: str(cached))
    reference = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(size, size, 3))

    model = build_classifier("EfficientNetB0", 2, size, weights="imagenet")
    base = find_backbone(model)
    assert not base.trainable  # pretrained: frozen for the first phase
    batch = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    ours = np.asarray(base(preprocess("EfficientNetB0", batch), training=False))
    np.testing.assert_allclose(ours, np.asarray(reference(batch, training=False)), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ weights: local file


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the wrong-alpha file
def test_weights_from_a_local_file(tmp_path):
    weights_file = tmp_path / "mobilenet_notop.weights.h5"
    marked_base().save_weights(weights_file)
    model = tiny(str(weights_file))
    assert np.allclose(first_kernel(model).numpy(), MARK)
    assert not find_backbone(model).trainable  # pretrained backbones are frozen in the first phase
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        tiny(str(tmp_path / "nope.h5"))
    with pytest.raises(IncompatibleWeightsError, match="cannot load weights"):
        tiny(str(weights_file), alpha=0.5)


# ------------------------------------------------------------ weights: S3


@pytest.mark.slow
def test_weights_from_s3(s3_env, registered):
    folder = s3_env["dir"] / "weights-bucket" / "backbones"
    folder.mkdir(parents=True)
    marked_base().save_weights(folder / "mobilenet_025.weights.h5")
    (folder / "classifier.keras").write_bytes(registered["keras_file"].read_bytes())
    time.sleep(s3_env["settle_s"])
    for uri in (
        "s3://weights-bucket/backbones/mobilenet_025.weights.h5",  # backbone weights
        "s3://weights-bucket/backbones/classifier.keras",
    ):  # a whole classifier: warm start
        model = tiny(uri)
        assert np.allclose(first_kernel(model).numpy(), MARK), uri
    missing = "s3://weights-bucket/backbones/nope.weights.h5"
    with pytest.raises(MissingFileError, match=missing):
        tiny(missing)
    with pytest.raises(StorageError, match="s3://no-such-bucket/w.h5"):
        tiny("s3://no-such-bucket/w.h5")


# ------------------------------------------------------------ weights: registered MLflow model


@pytest.fixture(scope="module")
def registered(session_paths, tmp_path_factory):
    """A tiny classifier (first backbone kernel = MARK) registered as cxr-warm version 1, alias champion.

    It lives in the session's SQLite store (tests/conftest.py): a store of its own would cost
    another schema creation (about 9 s here)."""
    from cxr.stack import ensure_mlflow_experiment

    uri = session_paths.tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_mlflow_experiment(uri, session_paths.mlflow_artifacts, "backbone-warm-start")
        model = tiny()
        kernel = first_kernel(model)
        kernel.assign(np.full(kernel.shape, MARK, np.float32))
        path = tmp_path_factory.mktemp("warm") / "warm.keras"
        model.save(path)
        with mlflow.start_run(experiment_id=experiment_id):
            serving.log_pyfunc_model(
                str(path), serving.build_contract("binary", "MobileNet", 32), registered_model_name="cxr-warm"
            )
        MlflowClient().set_registered_model_alias("cxr-warm", "champion", "1")
        yield {"keras_file": path}


@pytest.mark.slow
@pytest.mark.parametrize("uri", ["models:/cxr-warm@champion", "models:/cxr-warm/1"])
def test_warm_start_from_a_registered_model(registered, uri):
    model = build_classifier("MobileNet", 3, 32, weights=uri, alpha=0.25)  # the head may differ
    assert np.allclose(first_kernel(model).numpy(), MARK)
    assert not find_backbone(model).trainable
    assert model.output_shape == (None, 3)


@pytest.mark.slow
def test_warm_start_refuses_another_backbone_size_or_alpha(registered):
    with pytest.raises(IncompatibleWeightsError, match="it is MobileNet at 32x32; use the same backbone"):
        build_classifier("MobileNet", 2, 64, weights="models:/cxr-warm@champion", alpha=0.25)
    with pytest.raises(IncompatibleWeightsError, match="cannot warm-start MobileNetV2"):
        build_classifier("MobileNetV2", 2, 32, weights="models:/cxr-warm/1", alpha=0.35)
    with pytest.raises(IncompatibleWeightsError, match="another alpha"):
        build_classifier("MobileNet", 2, 32, weights="models:/cxr-warm/1", alpha=0.5)
    with pytest.raises(WeightsUnavailableError, match="models:/cxr-warm@nope"):
        build_classifier("MobileNet", 2, 32, weights="models:/cxr-warm@nope", alpha=0.25)
    with pytest.raises(ValueError, match="malformed registered-model URI"):
        build_classifier("MobileNet", 2, 32, weights="models:/cxr-warm", alpha=0.25)


def test_warm_start_from_a_local_keras_file(registered):
    model = tiny(str(registered["keras_file"]))
    assert np.allclose(first_kernel(model).numpy(), MARK)


# ------------------------------------------------------------ run config


@pytest.mark.parametrize(
    "weights",
    [
        "imagenet",
        "none",
        "weights/b.weights.h5",
        "s3://bucket/w/b.weights.h5",
        "models:/cxr-classifier@champion",
        "models:/cxr-classifier/3",
    ],
)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_config_accepts_every_backbone_and_weights_source(name, weights):
    from components.config import BackboneConfig

    config = BackboneConfig(name=name, weights=weights)
    assert config.image_size == BACKBONES[name].default_size
    assert config.weights == weights


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"weights": "s3://bucket"}, "names no object"),
        ({"weights": "s3://bucket/folder/"}, "names no object"),
        ({"weights": "models:/cxr-classifier"}, "models:/<name>@<alias> or models:/<name>/<version>"),
        ({"weights": ""}, "at least 1 character"),
        ({"name": "ResNet50", "alpha": 0.5}, "only MobileNet and MobileNetV2"),
        ({"name": "DenseNet121", "image_size": 16}, "needs image_size >= 32"),
        ({"name": "ResNet", "weights": "none"}, "valid backbones: DenseNet121, EfficientNetB0"),
    ],
)
def test_backbone_config_rejects(fields, message):
    from pydantic import ValidationError

    from components.config import BackboneConfig

    with pytest.raises(ValidationError, match=message):
        BackboneConfig(**{"name": "MobileNetV2", **fields})


def test_a_corrupt_keras_file_is_named_not_reported_missing(tmp_path):
    junk = tmp_path / "junk.keras"
    junk.write_text("junk")
    with pytest.raises(IncompatibleWeightsError, match="cannot read .*junk.keras as a .keras model"):
        build_classifier("MobileNet", 3, 32, weights=str(junk), alpha=0.25)
