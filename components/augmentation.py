"""The paper's Table 2 augmentation, built from config with imgaug.

Random augmentation is train-only: it is applied by the augment step to the
training split and never to validation, test or serving inputs.

Seeding: imgaug's `Sequential(..., seed=s)` alone is not reproducible because
children draw from the global RNG, so every pipeline is re-seeded with
`seed_()` right before use, once per copy, from (seed, copy index).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from components.errors import CxrError

# Geometric ops share one Affine warp (scale, rotate, shear) to warp each image once.
PAPER_OPERATIONS: dict[str, dict[str, Any]] = {
    "fliplr": {"enabled": True, "p": 0.5},
    "flipud": {"enabled": True, "p": 0.2},
    "scale": {"enabled": True, "range": [0.8, 1.2]},
    "rotate": {"enabled": True, "range": [-10, 10]},
    "shear": {"enabled": True, "range": [-16, 16]},
    "elastic": {"enabled": True, "alpha": [0.5, 3.5], "sigma": 0.25},
    "perspective": {"enabled": True, "scale": [0.01, 0.1]},
    "gaussian_blur": {"enabled": True, "sigma": [0.0, 3.0]},
    "average_blur": {"enabled": True, "k": [3, 5]},
    "median_blur": {"enabled": True, "k": [3, 5]},
    "sharpen": {"enabled": True, "alpha": [0.0, 1.0], "lightness": [0.9, 1.1]},
    "emboss": {"enabled": True, "alpha": [0.0, 1.0], "strength": [0.0, 2.0]},
    "gaussian_noise": {"enabled": True, "scale": [0.0, 0.01 * 255], "per_channel": 0.5},
}
# How the ops are combined (not per-op parameters): probability that the
# geometric warp / elastic / perspective step runs at all, interpolation orders,
# and how many pixel-level ops (blur, sharpen, emboss, noise) an image gets.
PAPER_COMPOSITION: dict[str, Any] = {
    "geometric_p": 0.5,
    "elastic_p": 0.5,
    "perspective_p": 0.5,
    "order": [0, 1],
    "pixel_ops": [0, 3],
}

LIGHT_OVERRIDES = {
    "flipud": {"enabled": False},
    "shear": {"enabled": False},
    "elastic": {"enabled": False},
    "perspective": {"enabled": False},
    "average_blur": {"enabled": False},
    "median_blur": {"enabled": False},
    "emboss": {"enabled": False},
    "sharpen": {"enabled": False},
    "rotate": {"range": [-5, 5]},
    "gaussian_blur": {"sigma": [0.0, 1.0]},
}

COMPOSITION_KEY = "composition"


class AugmentationConfigError(CxrError, ValueError):
    """An augmentation preset, operation or parameter in the run config does not exist or cannot be used."""


def resolve_operations(preset: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build the full operation table from a preset and per-operation overrides.

    Args:
        preset: "paper" (the paper's Table 2: PAPER_OPERATIONS), "light" (fewer, milder
            operations: LIGHT_OVERRIDES) or "none" (every operation disabled).
        overrides: {operation: {parameter: value}} merged over the preset, e.g.
            ``{"rotate": {"range": [-5, 5]}}``; the ``composition`` entry overrides PAPER_COMPOSITION.

    Returns:
        {operation: {"enabled": bool, parameters...}, "composition": {...}}, JSON-serialisable
        (ranges are [low, high] lists; angles in degrees, scales as factors, sigmas in pixels).

    Raises:
        AugmentationConfigError: an unknown preset, operation or parameter.
    """
    if preset == "paper":
        operations = copy.deepcopy(PAPER_OPERATIONS)
    elif preset == "light":
        operations = _merge(copy.deepcopy(PAPER_OPERATIONS), LIGHT_OVERRIDES)
    elif preset == "none":
        operations = {name: {**params, "enabled": False} for name, params in PAPER_OPERATIONS.items()}
    else:
        raise AugmentationConfigError(f"unknown augmentation preset {preset!r}; valid: paper, light, none")
    operations[COMPOSITION_KEY] = copy.deepcopy(PAPER_COMPOSITION)
    return _merge(operations, overrides or {})


def _merge(operations: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for name, params in overrides.items():
        if name not in operations:
            valid = ", ".join(sorted(operations))
            raise AugmentationConfigError(f"unknown augmentation operation {name!r}; valid: {valid}")
        unknown = set(params) - set(operations[name])
        if unknown:
            raise AugmentationConfigError(
                f"augmentation operation {name!r} has no parameter(s) {sorted(unknown)}; "
                f"valid: {sorted(operations[name])}"
            )
        operations[name].update(params)
    return operations


def enabled_operations(operations: dict[str, Any]) -> list[str]:
    """The names of the enabled operations of a table from resolve_operations, in table order."""
    return [name for name, params in operations.items() if name != COMPOSITION_KEY and params["enabled"]]


def build_augmenter(operations: dict[str, Any]):
    """Build the imgaug pipeline of an operation table (unseeded: augment_copies seeds it per copy).

    Flips first; scale, rotate and shear share one Affine warp (applied with probability
    ``geometric_p``); then elastic and perspective (each with its probability); then
    0..3 (``pixel_ops``) of: one blur, sharpen, emboss, Gaussian noise, in random order.

    Args:
        operations: a table from resolve_operations.

    Returns:
        An ``imgaug.augmenters.Sequential`` for (N, H, W, 1) uint8 batches.

    Raises:
        AugmentationConfigError: a median_blur kernel range holds no odd size.
    """
    import imgaug.augmenters as iaa

    ops = {name: params for name, params in operations.items() if name != COMPOSITION_KEY}
    composition = operations.get(COMPOSITION_KEY, PAPER_COMPOSITION)
    on = {name for name, params in ops.items() if params["enabled"]}
    children = []
    if "fliplr" in on:
        children.append(iaa.Fliplr(ops["fliplr"]["p"]))
    if "flipud" in on:
        children.append(iaa.Flipud(ops["flipud"]["p"]))
    affine = {}
    if "scale" in on:
        affine["scale"] = tuple(ops["scale"]["range"])
    if "rotate" in on:
        affine["rotate"] = tuple(ops["rotate"]["range"])
    if "shear" in on:
        affine["shear"] = tuple(ops["shear"]["range"])
    if affine:
        warp = iaa.Affine(**affine, order=list(composition["order"]), mode="constant", cval=0)
        children.append(iaa.Sometimes(composition["geometric_p"], warp))
    if "elastic" in on:
        elastic = iaa.ElasticTransformation(alpha=tuple(ops["elastic"]["alpha"]), sigma=ops["elastic"]["sigma"])
        children.append(iaa.Sometimes(composition["elastic_p"], elastic))
    if "perspective" in on:
        perspective = iaa.PerspectiveTransform(scale=tuple(ops["perspective"]["scale"]), keep_size=True)
        children.append(iaa.Sometimes(composition["perspective_p"], perspective))

    blurs = []
    if "gaussian_blur" in on:
        blurs.append(iaa.GaussianBlur(sigma=tuple(ops["gaussian_blur"]["sigma"])))
    if "average_blur" in on:
        blurs.append(iaa.AverageBlur(k=tuple(ops["average_blur"]["k"])))
    if "median_blur" in on:
        blurs.append(iaa.MedianBlur(k=_odd_kernel_sizes(ops["median_blur"]["k"])))
    pixel_ops = []
    if blurs:
        pixel_ops.append(iaa.OneOf(blurs))
    if "sharpen" in on:
        pixel_ops.append(
            iaa.Sharpen(alpha=tuple(ops["sharpen"]["alpha"]), lightness=tuple(ops["sharpen"]["lightness"]))
        )
    if "emboss" in on:
        pixel_ops.append(iaa.Emboss(alpha=tuple(ops["emboss"]["alpha"]), strength=tuple(ops["emboss"]["strength"])))
    if "gaussian_noise" in on:
        noise = ops["gaussian_noise"]
        pixel_ops.append(
            iaa.AdditiveGaussianNoise(loc=0, scale=tuple(noise["scale"]), per_channel=noise["per_channel"])
        )
    if pixel_ops:
        low, high = composition["pixel_ops"]
        children.append(iaa.SomeOf((low, min(high, len(pixel_ops))), pixel_ops, random_order=True))
    return iaa.Sequential(children)


def _odd_kernel_sizes(k_range: list[int]) -> list[int]:
    # MedianBlur needs odd kernels; a range like [3, 5] means the odd sizes in it.
    low, high = int(k_range[0]), int(k_range[1])
    sizes = [k for k in range(low, high + 1) if k % 2 == 1]
    if not sizes:
        raise AugmentationConfigError(f"median_blur k range {k_range} contains no odd kernel size")
    return sizes


def augment_copies(
    images: np.ndarray, operations: dict[str, Any], copies_per_image: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Make augmented copies of a batch of grayscale images, reproducibly.

    Copy c of every image draws from the seed ``seed * 100003 + c`` (the pipeline is
    re-seeded before each copy, see the module docstring).

    Args:
        images: uint8 (N, H, W) grayscale images.
        operations: a table from resolve_operations.
        copies_per_image: copies of each image (0: none).
        seed: the augmentation seed.

    Returns:
        (augmented, origin): uint8 (copies_per_image * N, H, W), copy-major (all first
        copies, then all second copies...), and int64 (copies_per_image * N,) the index in
        `images` of each copy's original. Empty when no operation is enabled.

    Raises:
        ValueError: `images` is not a uint8 (N, H, W) array.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W) grayscale images, got {images.dtype} {images.shape}")
    if copies_per_image == 0 or not enabled_operations(operations) or len(images) == 0:
        return images[:0].copy(), np.zeros(0, dtype=np.int64)
    augmenter = build_augmenter(operations)
    batches = []
    for copy_index in range(copies_per_image):
        augmenter.seed_(seed * 100_003 + copy_index)
        batches.append(augmenter(images=images[..., None])[..., 0])
    origin = np.tile(np.arange(len(images)), copies_per_image)
    return np.concatenate(batches).astype(np.uint8), origin


def expand_training_set(
    images: np.ndarray, labels: np.ndarray, operations: dict[str, Any], copies_per_image: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expand a training set in memory: the originals followed by their augmented copies.

    Args:
        images: uint8 (N, H, W) grayscale originals.
        labels: (N,) class indices.
        operations: a table from resolve_operations.
        copies_per_image: augmented copies of each original.
        seed: the augmentation seed.

    Returns:
        (images, labels) of length N * (1 + copies_per_image) (N when no operation is
        enabled); each copy carries its original's label.

    Raises:
        ValueError: `images` is not a uint8 (N, H, W) array.
    """
    augmented, origin = augment_copies(images, operations, copies_per_image, seed)
    return np.concatenate([images, augmented]), np.concatenate([labels, labels[origin]])


PREVIEW_ORIGINALS = 6
PREVIEW_COPIES = 4


def preview_sample(originals: np.ndarray, operations: dict[str, Any], seed: int) -> np.ndarray:
    """What the augmentation makes of the first few originals: a preview grid (see preview_grid).

    Args:
        originals: uint8 (N, H, W) grayscale training originals.
        operations: resolved operations (resolve_operations).
        seed: the augmentation seed.

    Returns:
        uint8 (rows*H, (1 + PREVIEW_COPIES)*W) grid: each row one of the first
        PREVIEW_ORIGINALS originals followed by PREVIEW_COPIES augmented copies.
    """
    sample = originals[:PREVIEW_ORIGINALS]
    augmented, origin = augment_copies(sample, operations, PREVIEW_COPIES, seed)
    return preview_grid(sample, augmented, origin)


def preview_grid(originals: np.ndarray, augmented: np.ndarray, origin: np.ndarray, max_rows: int = 6) -> np.ndarray:
    """Lay originals and their copies out as one image, a row per original.

    Args:
        originals: uint8 (N, H, W).
        augmented: uint8 (M, H, W) copies, as augment_copies returns them.
        origin: int (M,) index in `originals` of each copy's original.
        max_rows: at most this many originals are shown.

    Returns:
        uint8 (rows * H, width) grid, each row one original then its copies, right-padded
        with black to the widest row; an 8x8 black image when there are no originals.
    """
    rows = []
    for index in range(min(max_rows, len(originals))):
        copies = augmented[origin == index]
        rows.append(np.concatenate([originals[index], *copies], axis=1))
    if not rows:
        return np.zeros((8, 8), dtype=np.uint8)
    width = max(row.shape[1] for row in rows)
    return np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]))) for row in rows], axis=0)
