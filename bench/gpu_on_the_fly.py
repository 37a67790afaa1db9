"""Can on-the-fly augmentation keep a GPU busy? Training images/s from memory vs from worker processes.

For one backbone, a Keras `fit` epoch (mixed precision where a GPU is
visible) is timed on
  a. `memory`: originals plus `--copies` augmented copies each, made beforehand;
  b. `on_the_fly`: the same count, with the copies drawn during the epoch by
     `--workers` processes (components.online_augmentation.OnTheFlyData's
     epoch_chunks, the code the on_the_fly train steps run).
Both feed uint8 batches through the same Python generator, so the only
difference is who makes the copies and when. Backend-agnostic Keras (no
tf.data), so it runs on the lent GPU machine, which has JAX but no TensorFlow.

    KERAS_BACKEND=jax python bench/gpu_on_the_fly.py --backbone MobileNet --size 224 \
        --originals 2048 --copies 3 --workers 4 8 15 --out bench/results/gpu_on_the_fly.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from machine_info import cpu_model  # noqa: E402
from training_data_path import CLASSES  # noqa: E402  (no TensorFlow at import)
from training_data_path import originals as smooth_random_originals  # noqa: E402


def batches(chunks, batch_size: int):
    """(uint8 N x S x S x 3, labels) batches from (images, labels) chunks."""
    images, labels = [], []
    held = 0
    for chunk_images, chunk_labels in chunks:
        images.append(chunk_images)
        labels.append(chunk_labels)
        held += len(chunk_images)
        while held >= batch_size:
            stacked, stacked_labels = np.concatenate(images), np.concatenate(labels)
            yield np.repeat(stacked[:batch_size, ..., None], 3, axis=-1), stacked_labels[:batch_size]
            images, labels = [stacked[batch_size:]], [stacked_labels[batch_size:]]
            held -= batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--originals", type=int, default=2048)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--frozen", action="store_true", help="train the head only (backbone frozen)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import keras

    from components.augmentation import augment_copies, resolve_operations
    from components.backbones import build_classifier
    from components.online_augmentation import OnTheFlyData

    gpu = keras.backend.backend() == "jax" and any(d.platform == "gpu" for d in __import__("jax").devices())
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "float32")
    originals, labels = smooth_random_originals(args.originals, args.size)
    operations = resolve_operations("paper")
    copies, origin = augment_copies(originals, operations, args.copies, seed=0)
    memory = (np.concatenate([originals, copies]), np.concatenate([labels, labels[origin]]))
    count = len(memory[0])
    steps = count // args.batch_size

    model = build_classifier(args.backbone, CLASSES, args.size, weights="none")
    if args.frozen:
        model.get_layer(index=2).trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")

    def timed_epoch(chunks) -> float:
        started = time.perf_counter()
        model.fit(batches(chunks, args.batch_size), steps_per_epoch=steps, epochs=1, verbose=0)
        return steps * args.batch_size / (time.perf_counter() - started)

    def generator_alone(chunks) -> float:
        """images/s of the batches without training: what the data path can deliver by itself."""
        started, seen = time.perf_counter(), 0
        for images, _ in batches(chunks, args.batch_size):
            seen += len(images)
        return seen / (time.perf_counter() - started)

    in_memory = lambda: ((memory[0][i : i + 32], memory[1][i : i + 32]) for i in range(0, count, 32))  # noqa: E731
    timed_epoch(in_memory())  # warm-up: compilation
    results = {"memory": timed_epoch(in_memory())}
    alone = {"memory": generator_alone(in_memory())}
    print("memory", round(results["memory"]), round(alone["memory"]), flush=True)
    for workers in args.workers:
        data = OnTheFlyData(originals, labels, operations, copies_per_image=args.copies, seed=0, workers=workers)
        timed_epoch(data.epoch_chunks(0))  # warm-up: the pool's fork server and imports
        name = f"on_the_fly_{workers}"
        results[name] = timed_epoch(data.epoch_chunks(1))
        alone[name] = generator_alone(data.epoch_chunks(2))
        print(workers, round(results[name]), round(alone[name]), flush=True)

    device = "GPU (" + str(__import__("jax").devices()[0].device_kind) + ")" if gpu else "CPU"
    lines = [
        f"# On-the-fly augmentation vs pre-made copies: {args.backbone} at {args.size} px "
        f"({'head only' if args.frozen else 'all layers'})",
        "",
        f"- reproduce: `KERAS_BACKEND={keras.backend.backend()} python bench/gpu_on_the_fly.py {' '.join(sys.argv[1:])}`",
        f"- device: {device}; CPU {cpu_model(platform.processor() or 'unknown')}, {os.cpu_count()} vCPUs; "
        f"Keras {keras.__version__} on {keras.backend.backend()}, {keras.mixed_precision.global_policy().name}",
        f"- {count} images per epoch ({args.originals} originals + {args.copies} `paper` copies each), "
        f"batch {args.batch_size}, "
        "random weights, one warm-up epoch per case",
        "",
        "| training data | training images/s | vs memory | data path alone, images/s |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {name} | {rate:,.0f} | {100 * rate / results['memory']:.0f} % | {alone[name]:,.0f} |"
            for name, rate in results.items()
        ],
    ]
    text = (
        "\n".join(lines)
        + "\n\n```json\n"
        + json.dumps({"training": results, "data_path_alone": alone}, indent=2)
        + "\n```\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
