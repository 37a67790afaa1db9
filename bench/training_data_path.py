"""Is the data path the bottleneck of training? And does training memory grow with the expansion factor?

1. `throughput`: N originals expanded xF (originals + F-1 copies each) into
   TFRecord shards; then the same training (components.training.train_classifier,
   what the train steps run) for 2 epochs on
     a. `arrays`: the very images of the shards, held in memory (no augmentation
        and no reading: the ceiling),
     b. `shards`: the shards, read from disk by tf.data (offline mode),
     c. `on_the_fly`: the originals, with F-1 fresh copies each made per epoch by
        `--workers` processes (on_the_fly mode).
   Reported: images/s of the second epoch (the first includes graph tracing).
   Goal: b >= 90 % of a. Also the input pipeline alone (shards read, parsed,
   resized, batched; no model), to set against GPU training rates.
2. `memory`: 1,000 originals, trained for one epoch from shards x1 (1,000
   images) and x10 (10,000), and, for contrast, from in-memory arrays of the
   same sizes. Each in a fresh process; peak RSS (ru_maxrss) of that process.
   Goal: shards x10 grows by < 20 % over x1.

    python bench/training_data_path.py throughput --originals 500 --factor 4 --size 224 \
        --out bench/results/training_data_path.md
    python bench/training_data_path.py memory --originals 1000 --size 224 \
        --out bench/results/training_memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from machine_info import cpu_model  # noqa: E402

CLASSES = 3
BACKBONE = {"name": "MobileNet", "alpha": 0.25}


def originals(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random uint8 images (upscaled noise: augmentation and PNG-free, content does not matter here)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(count, 16, 16), dtype=np.uint8)
    images = np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BILINEAR)) for s in small])
    return images, np.arange(count) % CLASSES


def expand(images, labels, factor: int, folder: Path, workers: int) -> dict:
    from components.augmentation import resolve_operations
    from components.shards import write_shards

    return write_shards(
        images, labels, resolve_operations("paper"), factor - 1, seed=0, out_dir=folder, workers=workers
    )


def train(training_data, val, size: int, epochs: int, batch_size: int) -> list[float]:
    """train_classifier as the train step calls it; returns each epoch's seconds."""
    import keras

    from components.backbones import build_classifier
    from components.config import TrainingConfig
    from components.training import train_classifier

    seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    train_classifier(
        lambda: build_classifier(BACKBONE["name"], CLASSES, size, weights="none", alpha=BACKBONE["alpha"]),
        training_data,
        val,
        num_classes=CLASSES,
        seed=0,
        callbacks=[EpochTimer()],
        verbose=0,
        training=TrainingConfig(epochs=epochs, batch_size=batch_size, learning_rate=1e-3, patience=100),
    )
    return seconds


def input_only(folder: Path, size: int, batch_size: int) -> float:
    """images/s of the shard reader alone (one epoch, after a warm-up epoch)."""
    from components.shards import ShardSet

    dataset = ShardSet.open(folder).at_size(size).dataset(batch_size, shuffle_seed=0)
    for _ in dataset:
        pass
    started, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - started)


def run_throughput(args) -> dict:
    from components.augmentation import resolve_operations
    from components.online_augmentation import OnTheFlyData
    from components.shards import ShardSet, read_records
    from components.training import ArrayData

    images, labels = originals(args.originals, args.size)
    val = originals(64, args.size, seed=1)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "shards"
        started = time.perf_counter()
        index = expand(images, labels, args.factor, folder, args.workers)
        results["expand_images_per_s"] = index["images"] / (time.perf_counter() - started)
        results["input_only_images_per_s"] = input_only(folder, args.size, args.batch_size)
        cases = {
            "arrays": lambda: ArrayData(*read_records(folder)),
            "shards": lambda: ShardSet.open(folder).at_size(args.size),
            "on_the_fly": lambda: OnTheFlyData(
                images, labels, resolve_operations("paper"), args.factor - 1, seed=0, workers=args.workers
            ),
        }
        for name in args.cases:
            seconds = train(cases[name](), val, args.size, epochs=2, batch_size=args.batch_size)
            results[name] = {
                "epoch_seconds": [round(s, 2) for s in seconds],
                "images_per_s": index["images"] / seconds[-1],
            }
            print(name, results[name], flush=True)
    results["images_per_epoch"] = index["images"]
    return results


def memory_case(args) -> None:
    """One training run in this (fresh) process; prints its peak RSS as JSON."""
    from components.shards import ShardSet, read_records
    from components.training import ArrayData

    folder = Path(args.folder)
    val = originals(64, args.size, seed=1)
    data = ShardSet.open(folder).at_size(args.size) if args.case == "shards" else ArrayData(*read_records(folder))
    seconds = train(data, val, args.size, epochs=1, batch_size=args.batch_size)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "case": args.case,
                "images": data.count,
                "peak_rss_mib": round(peak_mib, 1),
                "epoch_seconds": round(seconds[0], 1),
            }
        )
    )


def run_memory(args) -> list[dict]:
    images, labels = originals(args.originals, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for factor in (1, 10):
            folder = Path(scratch) / f"x{factor}"
            expand(images, labels, factor, folder, args.workers)
            for case in args.cases:
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "memory-case",
                        "--case",
                        case,
                        "--folder",
                        str(folder),
                        "--size",
                        str(args.size),
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                row = {"factor": factor, **json.loads(output.strip().splitlines()[-1])}
                print(row, flush=True)
                rows.append(row)
    return rows


def machine() -> str:
    return f"{cpu_model(platform.processor() or 'unknown CPU')}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_throughput(results: dict, args, out: Path) -> None:
    base = results["arrays"]["images_per_s"] if "arrays" in results else None
    lines = [
        "# Training from shards and on the fly vs the same images in memory",
        "",
        f"Command: `python bench/training_data_path.py throughput --originals {args.originals} --factor {args.factor} "
        f"--size {args.size} --workers {args.workers} --batch-size {args.batch_size}`",
        "",
        f"Machine: {machine()}; no GPU. Model: MobileNet alpha {BACKBONE['alpha']} at {args.size} px from scratch, "
        f"batch {args.batch_size}, {results['images_per_epoch']} images per epoch ({args.originals} originals x "
        f"{args.factor}). Second epoch timed.",
        "",
        "| training data | images/s | vs arrays |",
        "|---|---|---|",
    ]
    for name in args.cases:
        rate = results[name]["images_per_s"]
        ratio = f"{100 * rate / base:.0f} %" if base else "–"
        lines.append(f"| {name} | {rate:,.1f} | {ratio} |")
    lines += [
        "",
        f"Input pipeline alone (shards read, parsed, resized to {args.size}, batched; no model): "
        f"{results['input_only_images_per_s']:,.0f} images/s.",
        f"Offline expansion ({args.workers} workers, paper preset): {results['expand_images_per_s']:,.0f} images/s written.",
        "",
        "```json",
        json.dumps(results, indent=2),
        "```",
    ]
    out.write_text("\n".join(lines) + "\n")


def write_memory(rows: list[dict], args, out: Path) -> None:
    lines = [
        "# Peak memory of training: 1,000 vs 10,000 images",
        "",
        f"Command: `python bench/training_data_path.py memory --originals {args.originals} --size {args.size} "
        f"--batch-size {args.batch_size}`",
        "",
        f"Machine: {machine()}. One epoch of MobileNet alpha {BACKBONE['alpha']} at {args.size} px in a fresh process "
        "per row; peak RSS of that process.",
        "",
        "| training data | expansion | images | peak RSS (MiB) | vs x1 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        first = next(r for r in rows if r["case"] == row["case"] and r["factor"] == 1)
        growth = 100 * (row["peak_rss_mib"] / first["peak_rss_mib"] - 1)
        lines.append(
            f"| {row['case']} | x{row['factor']} | {row['images']:,} | {row['peak_rss_mib']:,.0f} | {growth:+.0f} % |"
        )
    lines += ["", "```json", json.dumps(rows, indent=2), "```"]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "memory", "memory-case"])
    parser.add_argument("--originals", type=int, default=500)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=None)
    parser.add_argument("--case")
    parser.add_argument("--folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.what == "memory-case":
        return memory_case(args)
    if args.what == "throughput":
        args.cases = args.cases or ["arrays", "shards", "on_the_fly"]
        results = run_throughput(args)
        if args.out:
            write_throughput(results, args, args.out)
    else:
        args.cases = args.cases or ["shards", "arrays"]
        rows = run_memory(args)
        if args.out:
            write_memory(rows, args, args.out)


if __name__ == "__main__":
    main()
