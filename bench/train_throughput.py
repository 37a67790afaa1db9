"""Training images/s per backbone: a bare Keras `fit` on in-memory images, the paper's head.

Measures what the accelerator (or CPU) can consume, so that the data path
(augmentation, decoding, tf.data) can be sized against it. Each backbone is
timed in two modes: `frozen` (pretrained backbone frozen, head trained: the
paper's transfer setting) and `full` (every layer trained: from scratch or
fine-tuning). Weights are random (`weights: none`): throughput does not
depend on their values, and nothing is downloaded.

    python bench/train_throughput.py --backbones MobileNet InceptionV3 Xception \
        --batch-size 32 --steps 20 --out bench/results/train_throughput_cpu.md

Works with any Keras 3 backend (KERAS_BACKEND=tensorflow here; jax where
TensorFlow is not installed, e.g. the lent GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

SIZES = {"MobileNet": 224, "InceptionV3": 299, "Xception": 299}


def measure(backbone: str, size: int, batch_size: int, steps: int, mode: str, mixed: bool) -> dict:
    import keras

    from components.backbones import build_classifier

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    keras.utils.set_random_seed(0)
    model = build_classifier(backbone, 3, size, weights="none")
    if mode == "frozen":
        model.get_layer(index=2).trainable = False  # the backbone (after Input and preprocessing)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch_size * steps, size, size, 3), dtype=np.uint8).astype(np.float32)
    labels = rng.integers(0, 3, size=batch_size * steps)
    # Warm-up: compilation / autotuning happen on the first steps.
    model.fit(images[: batch_size * 3], labels[: batch_size * 3], batch_size=batch_size, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    return {
        "backbone": backbone,
        "image_size": size,
        "mode": mode,
        "mixed_precision": mixed,
        "batch_size": batch_size,
        "images": batch_size * steps,
        "seconds": round(seconds, 3),
        "images_per_s": round(batch_size * steps / seconds, 1),
    }


def device_description() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"keras {keras.__version__} on jax {jax.__version__}: {jax.devices()[0].device_kind}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"keras {keras.__version__} on tensorflow {tf.__version__}: {'GPU ' + str(gpus) if gpus else 'CPU'}"
    return f"keras {keras.__version__} on {backend}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["frozen", "full"], choices=["frozen", "full"])
    parser.add_argument("--mixed-precision", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--out", required=True, help="Markdown file; a .json with the raw rows is written beside it")
    args = parser.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for backbone in args.backbones:
        for mode in args.modes:
            for mixed in args.mixed_precision:
                row = measure(backbone, SIZES[backbone], args.batch_size, args.steps, mode, mixed == "on")
                print(json.dumps(row), flush=True)
                rows.append(row)
                write_results(out, rows)  # after every row: a run cut short keeps what it measured


def write_results(out: Path, rows: list[dict]) -> None:
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# Training throughput (bare Keras fit, paper head, random weights)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {device_description()}",
        f"- host: {platform.platform()}, {os.cpu_count()} CPUs",
        f"- reproduce: `python bench/train_throughput.py {' '.join(sys.argv[1:])}`",
        "- in-memory float32 images, one epoch after a 3-step warm-up; `frozen` = backbone frozen (head only), "
        "`full` = all layers trained",
        "",
        "| backbone | size | mode | mixed precision | batch | images/s |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    lines += [
        f"| {r['backbone']} | {r['image_size']} | {r['mode']} | {'on' if r['mixed_precision'] else 'off'} "
        f"| {r['batch_size']} | {r['images_per_s']} |"
        for r in rows
    ]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
