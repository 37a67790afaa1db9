"""Augmentation throughput (paper preset) and the memory of offline expansion into shards.

1. images/s of the `paper` imgaug pipeline at 224 px, grayscale and RGB, with
   1 and 2 worker processes (chunks of 32 images, as components.shards does);
2. peak RSS of `write_shards` for the same originals expanded x1 and x10, each
   in a fresh process (the expansion streams: memory should not grow with the factor).

    python bench/augmentation.py --images 256 --size 224 --out bench/results/augmentation.md

On a GPU node's CPUs (no TensorFlow needed without the expansion part):

    python bench/augmentation.py --images 2048 --workers 1 2 4 8 16 --no-expansion \
        --out bench/results/augmentation_16_cores.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from machine_info import cpu_model  # noqa: E402

CHUNK = 32


def _augment(task):
    images, seed = task
    from components.augmentation import build_augmenter, resolve_operations

    augmenter = build_augmenter(resolve_operations("paper"))
    augmenter.seed_(seed)
    batch = images[..., None] if images.ndim == 3 else images
    return len(augmenter(images=batch))


def throughput(images: np.ndarray, workers: int) -> float:
    tasks = [(images[start : start + CHUNK], start) for start in range(0, len(images), CHUNK)]
    _augment(tasks[0])  # imports and first-call costs out of the timing
    if workers == 1:
        start = time.perf_counter()
        done = sum(_augment(task) for task in tasks)
        return done / (time.perf_counter() - start)
    from components.workers import process_pool

    with process_pool(workers) as pool:
        list(pool.map(_augment, tasks[:workers]))  # start the workers
        start = time.perf_counter()
        done = sum(pool.map(_augment, tasks))
        return done / (time.perf_counter() - start)


def expansion_peak(originals: int, size: int, copies: int) -> dict:
    """Run write_shards in a fresh process; return its peak RSS and time."""
    code = f"""
import json, resource, sys, tempfile, time
import numpy as np
sys.path.insert(0, {str(ROOT)!r})
from components.augmentation import resolve_operations
from components.shards import write_shards
images = (np.random.default_rng(0).random(({originals}, {size}, {size})) * 255).astype(np.uint8)
labels = np.arange({originals}) % 3
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    index = write_shards(images, labels, resolve_operations("paper"), {copies}, 0, out, workers=2)
print(json.dumps({{"images_written": index["images"], "seconds": time.perf_counter() - start,
                  "rss_before_mib": before, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--expansion-originals", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-expansion", action="store_true", help="skip the shard-writing memory part (needs TF)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    gray = (rng.random((args.images, args.size, args.size)) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=3)
    rows = []
    for name, images in (("grayscale", gray), ("RGB", rgb)):
        for workers in args.workers:
            rate = throughput(images, workers)
            rows.append({"images": name, "workers": workers, "images_per_s": round(rate, 1)})
            print(rows[-1], flush=True)
    expansions = []
    for copies in () if args.no_expansion else (1, 10):
        peak = expansion_peak(args.expansion_originals, args.size, copies)
        expansions.append({"copies_per_image": copies, **{k: round(v, 1) for k, v in peak.items()}})
        print(expansions[-1], flush=True)

    load = os.getloadavg()[0]
    lines = [
        "# Augmentation throughput and offline-expansion memory",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {cpu_model(platform.processor() or 'unknown CPU')}, {platform.platform()}, {os.cpu_count()} CPUs (shared; 1-min load average at the end {load:.1f})",
        f"- reproduce: `python bench/augmentation.py {' '.join(sys.argv[1:])}`",
        f"- `paper` preset (Table 2, all twelve operations), {args.images} random {args.size} px images, chunks of {CHUNK}",
        "",
        "| images | worker processes | augmented images/s |",
        "| --- | ---: | ---: |",
        *[f"| {r['images']} | {r['workers']} | {r['images_per_s']} |" for r in rows],
    ]
    if expansions:
        lines += [
            "",
            f"Offline expansion (`components.shards.write_shards`, 2 workers) of {args.expansion_originals} "
            f"originals at {args.size} px, each in a fresh process:",
            "",
            "| copies per image | images written | seconds | RSS before (MiB) | peak RSS (MiB) |",
            "| ---: | ---: | ---: | ---: | ---: |",
            *[
                f"| {e['copies_per_image']} | {e['images_written']} | {e['seconds']} | {e['rss_before_mib']} "
                f"| {e['peak_rss_mib']} |"
                for e in expansions
            ],
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
