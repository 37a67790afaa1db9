"""User-facing errors: one base class (components.errors.CxrError), and `cxr` ends a run that raises
one with a single `error:` line instead of a traceback."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import components
from components.errors import CxrError, MissingFileError, OutsideRootError, StorageError
from tests.factories import bomb_png

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CXR = str(Path(sys.executable).with_name("cxr"))

# Exception classes of components/ that are not about the user's input: raising one is a bug.
# By class name, so that moving a class between modules does not change this test.
INTERNAL_ERRORS = {
    "PatientLeakError",  # the splitter's own invariant (an AssertionError)
    "_Unusable",  # image_info, private: becomes an exclusion reason, never leaves the module
}

# Every one of these existed before CxrError and keeps its builtin base for `except ValueError` callers.
BUILTIN_BASES = {
    "ConfigError": ValueError,
    "AugmentationConfigError": ValueError,
    "UnknownBackboneError": ValueError,
    "WeightsUnavailableError": RuntimeError,
    "IncompatibleWeightsError": ValueError,
    "ImageDecodeError": ValueError,
    "SourceError": ValueError,
    "StorageError": RuntimeError,
    "ManifestValidationError": RuntimeError,
}


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the components package, by class name."""
    found = {}
    for module_info in pkgutil.walk_packages(components.__path__, prefix="components."):
        module = importlib.import_module(module_info.name)
        for name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[name] = value
    return found


@pytest.fixture(scope="module")
def exception_classes() -> dict[str, type[BaseException]]:
    return _exception_classes()


def test_every_user_facing_error_class_is_a_cxr_error(exception_classes):
    user_facing = {name: cls for name, cls in exception_classes.items() if name not in INTERNAL_ERRORS}
    assert set(BUILTIN_BASES) <= set(user_facing)  # the walk found the known ones
    not_cxr = sorted(name for name, cls in user_facing.items() if not issubclass(cls, CxrError))
    assert not_cxr == []


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_user_facing_errors_keep_their_builtin_base(exception_classes, name):
    assert issubclass(exception_classes[name], BUILTIN_BASES[name])


def test_storage_errors_are_shared_by_storage_and_s3():
    from components import s3, storage

    assert storage.StorageError is StorageError
    assert storage.MissingFileError is MissingFileError
    assert storage.OutsideRootError is OutsideRootError
    assert issubclass(s3.S3AccessDeniedError, StorageError)


def test_importing_components_leaves_pils_pixel_limit_alone():
    code = (
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
        "import components.imaging, components.image_info; print(Image.MAX_IMAGE_PIXELS == before)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_decoding_refuses_an_image_above_the_pixel_limit_from_its_header():
    from components.imaging import ImageDecodeError, decode_image_bytes

    # 8000 x 8000 = 64 Mpx: under PIL's own default limit (about 89 Mpx), over ours (40 Mpx).
    with pytest.raises(ImageDecodeError, match="bomb.png: .*40,000,000-pixel limit"):
        decode_image_bytes(bomb_png(8000, 8000), name="bomb.png")


@pytest.mark.slow
def test_warm_start_from_another_backbone_ends_cxr_train_with_one_error_line(local_stack, tmp_path):
    from components.backbones import build_classifier

    weights = tmp_path / "mobilenet-025-32px.keras"
    build_classifier("MobileNet", 3, 32, weights="none", alpha=0.25).save(weights)
    backbones = [{"name": "MobileNetV2", "alpha": 0.35, "image_size": 32, "weights": str(weights)}]
    overrides = {
        # A few dozen small images: the data steps run before the train step refuses the weights.
        "data.synthetic.n_patients_per_class": 6,
        "data.synthetic.images_per_patient": 2,
        "data.synthetic.image_size": 64,
        "data.workers": 1,  # 36 files: reading inline beats starting a process pool
        "augmentation.copies_per_image": 0,
        "training.epochs": 1,
        "backbones": json.dumps(backbones),
    }
    command = [
        CXR,
        "--workdir",
        str(local_stack.workdir),
        "train",
        "--config",
        str(PROJECT_ROOT / "configs/quickstart.yaml"),
    ]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    # In tmp_path: the config's relative synthetic-data root lands there.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))

    assert result.returncode == 1, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ")
    assert str(weights) in last_line
    assert "cannot warm-start MobileNetV2" in last_line
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout  # ZenML's log of the failed step keeps its one line only
