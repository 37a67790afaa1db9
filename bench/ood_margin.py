"""Benchmark: the out-of-distribution score's margin on a TRAINED backbone, on real radiographs.

Question (issue 11): does the served model's ``ood_score`` (components.ood: Mahalanobis distance of the
head embedding to the nearest class mean, Lee et al. 2018, Ledoit-Wolf covariance; threshold the
99th percentile of validation scores) separate radiographs from what is not a radiograph, once the
backbone has been trained (earlier figures were on a tiny untrained network only)?

Model: --backbone (default MobileNet, alpha --alpha 0.5) at --size px (128), weights none (no
ImageNet weights can be downloaded here), trained from scratch for --epochs on the binary task
(COVID-19 vs non-COVID) of the ieee8023 covid-chestxray-dataset in ../shared/datasets
(components.manifest.build_manifest, the ``ieee8023`` source kind: frontal X-rays, labelled),
patient-grouped split 70/15/15 (components.splitting.split_dataset). The OOD reference is fitted
as at registration (components.ood.reference_for_rows: training embeddings, validation threshold).

Scored sets (each image preprocessed as evaluation does: gray, resized to --size):
- in distribution: the held-out test radiographs; the Actualmed radiographs (another hospital);
- shifted radiographs: the test radiographs inverted (255 - x), heavily blurred (Gaussian sigma 4 px
  at the model's size);
- not radiographs: uniform noise, constant gray, a horizontal gradient, a checkerboard, and crops of
  a photograph (matplotlib's bundled sample ``grace_hopper.jpg``).

Reported per set: images, the share flagged (score > threshold), the median score over the
threshold, and the ROC-AUC of the score separating the set from the held-out test radiographs.

Reproduce (from the repository root):

    .venv/bin/python bench/ood_margin.py --epochs 8 --out bench/results/ood_margin.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import keras
    import matplotlib
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    from sklearn.metrics import roc_auc_score

    from components.backbones import build_classifier
    from components.imaging import load_images, resize_grayscale
    from components.manifest import build_manifest, included
    from components.ood import embed_images, reference_for_rows
    from components.sources import parse_sources
    from components.splitting import split_dataset

    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    sources = parse_sources(
        [
            {"kind": "ieee8023", "root": str(SHARED / "covid-chestxray-dataset"), "name": "ieee8023"},
            {"kind": "actualmed", "root": str(SHARED / "actualmed-covid-chestxray-dataset"), "name": "actualmed"},
        ]
    )
    manifest = build_manifest(sources, "binary", workers=2)
    split = split_dataset(included(manifest), (0.7, 0.15, 0.15), args.seed, 4, external_sources=["actualmed"])
    class_names = ["COVID-19", "non-COVID"]
    rows = {name: split[split["split"] == name] for name in ("train", "val", "test", "external")}
    images = {name: load_images(frame["uri"].tolist(), args.size) for name, frame in rows.items()}
    labels = {name: np.array([class_names.index(v) for v in frame["label"]]) for name, frame in rows.items()}

    def rgb(grays):
        return np.repeat(grays.astype(np.float32)[..., None], 3, axis=3)

    model = build_classifier(args.backbone, 2, args.size, alpha=args.alpha, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(
        rgb(images["train"]),
        labels["train"].astype(np.float32),
        validation_data=(rgb(images["val"]), labels["val"].astype(np.float32)),
        epochs=args.epochs,
        batch_size=32,
        verbose=0,
    )
    test_probability = model.predict(rgb(images["test"]), verbose=0).reshape(-1)
    test_auc = roc_auc_score(labels["test"], test_probability)
    trained_s = time.perf_counter() - started

    reference = reference_for_rows(model, rows["train"], rows["val"], class_names, args.size, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    size, count = args.size, 50
    photo = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("L"))
    crops = []
    for _ in range(count):
        side = int(rng.integers(200, min(photo.shape)))
        top, left = (int(rng.integers(0, photo.shape[i] - side + 1)) for i in (0, 1))
        crops.append(resize_grayscale(photo[top : top + side, left : left + side], size))
    gradient = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1))
    checker = ((np.indices((size, size)).sum(axis=0) // 8) % 2 * 255).astype(np.uint8)
    sets = {
        "test radiographs (held out)": images["test"],
        "Actualmed radiographs (another hospital)": images["external"],
        "test radiographs inverted": 255 - images["test"],
        "test radiographs blurred (sigma 4 px)": np.stack([ndimage.gaussian_filter(g, 4) for g in images["test"]]),
        "uniform noise": rng.integers(0, 256, (count, size, size), dtype=np.uint8),
        "constant gray": np.full((count, size, size), 128, dtype=np.uint8),
        "gradient": (gradient[None] * rng.uniform(0.3, 1.0, (count, 1, 1))).astype(np.uint8),
        "checkerboard": np.repeat(checker[None], count, axis=0),
        "photograph crops (grace_hopper.jpg)": np.stack(crops),
    }
    layer = reference.layer
    scores = {name: reference.score(embed_images(model, layer, grays)) for name, grays in sets.items()}
    baseline = scores["test radiographs (held out)"]

    lines = [
        "# Out-of-distribution score on a trained backbone",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}.",
        f"Model: {args.backbone} alpha {args.alpha} at {args.size} px, weights none, trained {args.epochs} epochs "
        f"from scratch on {len(rows['train'])} ieee8023 radiographs (binary), {trained_s:.0f} s with data loading; "
        f"val loss {history.history['val_loss'][-1]:.3f}, test ROC-AUC {test_auc:.3f} on {len(rows['test'])} images.",
        f"OOD reference: {reference.fit_images} training embeddings, threshold {reference.threshold:.2f} "
        f"({reference.calibration} percentile {reference.percentile:g}, {reference.calibration_images} images).",
        "",
        "| set | images | flagged | median score / threshold | ROC-AUC vs held-out test |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in scores.items():
        flagged = float(np.mean(values > reference.threshold))
        if name == "test radiographs (held out)":
            auc = "n/a"
        else:
            truth = np.r_[np.zeros(len(baseline)), np.ones(len(values))]
            auc = f"{roc_auc_score(truth, np.r_[baseline, values]):.3f}"
        lines.append(
            f"| {name} | {len(values)} | {flagged:.0%} | {np.median(values) / reference.threshold:.2f} | {auc} |"
        )
    lines += ["", f"Command: `.venv/bin/python bench/ood_margin.py --epochs {args.epochs} --out {args.out}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
