"""Benchmark: the batch pipeline's prediction against a bare ``model.predict`` on the same decoded images.

Goal (issue 11, "Batch inference pipeline"): the pipeline's prediction step runs at >= 0.8x the
images/s of a bare ``model.predict`` on the same decoded images.

The model: --backbone (default MobileNet, alpha 1.0) at --size px (default 224), weights none,
3 classes (components.backbones.build_classifier: the cost of a real backbone and head). The
images: real radiographs of ../shared/datasets/covid-chestxray-dataset/images (the first
--images files that decode), repeated to --images when there are fewer.

Timed, median of --repeats, in one process after a warm-up:

1. bare: ``model.predict(x, batch_size=B)`` on the decoded float32 (N, S, S, 3) array;
2. step compute: what ``components.batch.score_images`` does per chunk of B images once they are
   decoded: one forward pass giving the probabilities and the penultimate-layer embedding
   (components.ood.with_embedding, ``predict_on_batch``), the binary/softmax probabilities, the
   gray-to-RGB repeat; the ratio of the goal is 2 over 1;
3. step with decode: ``score_images`` itself (read, decode, resize included), for context: the
   decode is the same work evaluation and serving do, and it is not in the bare figure;
4. the drift checks (components.drift input_drift + output_drift) on those N images, for context.

Reproduce (from the repository root):

    .venv/bin/python bench/batch_inference.py --images 512 --size 224 --repeats 3 --out bench/results/batch_inference.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "covid-chestxray-dataset" / "images"


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from components.backbones import build_classifier, probabilities
    from components.batch import score_images
    from components.drift import DriftConfig, fit_drift_reference, input_drift, output_drift
    from components.imaging import ImageDecodeError, load_images
    from components.ood import embedding_layer, with_embedding

    files = []
    for path in sorted(SHARED.glob("*")):
        try:
            load_images([str(path)], 8)
        except ImageDecodeError:
            continue
        files.append(str(path))
        if len(files) == args.images:
            break
    uris = (files * (args.images // max(len(files), 1) + 1))[: args.images]
    model = build_classifier(args.backbone, 3, args.size, weights="none")
    grays = load_images(uris, args.size)
    x = np.repeat(grays.astype(np.float32)[..., None], 3, axis=3)
    runner = with_embedding(model, embedding_layer(model))
    model.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)  # warm-up
    runner.predict_on_batch(x[: args.batch_size])

    def bare():
        model.predict(x, batch_size=args.batch_size, verbose=0)

    def step_compute():
        for start in range(0, len(grays), args.batch_size):
            chunk = np.repeat(grays[start : start + args.batch_size].astype(np.float32)[..., None], 3, axis=3)
            output, embedding = runner.predict_on_batch(chunk)
            probabilities(output, 3)
            np.asarray(embedding, dtype=np.float32)

    def step_with_decode():
        score_images(model, uris, args.size, 3, args.batch_size)

    scored = score_images(model, uris, args.size, 3, args.batch_size)
    rows = pd.DataFrame({"uri": uris, "width": 512, "height": 512, "mode": "L", "bit_depth": 8})
    half = len(uris) // 2
    reference = fit_drift_reference(
        rows.iloc[:half].reset_index(drop=True),
        scored.grays[:half],
        scored.embeddings[:half],
        np.zeros(half),
        scored.probabilities[:half],
        ["COVID-19", "normal", "pneumonia"],
    )
    config = DriftConfig()

    def drift():
        input_drift(
            reference,
            rows.iloc[half:].reset_index(drop=True),
            scored.grays[half:],
            scored.embeddings[half:],
            np.zeros(len(uris) - half),
            config,
        )
        output_drift(reference, scored.probabilities[half:], config)

    results = {}
    # Alternate bare and step so that background load on the shared machine hits both alike.
    bare_times, step_times = [], []
    for _ in range(args.repeats):
        bare_times.append(_median_seconds(bare, 1))
        step_times.append(_median_seconds(step_compute, 1))
    results["bare model.predict"] = statistics.median(bare_times)
    results["step compute (forward + embedding)"] = statistics.median(step_times)
    results["step with decode (score_images)"] = _median_seconds(step_with_decode, args.repeats)
    results["drift checks (input + output)"] = _median_seconds(drift, args.repeats)
    ratio = results["bare model.predict"] / results["step compute (forward + embedding)"]
    with_decode = results["bare model.predict"] / results["step with decode (score_images)"]

    lines = [
        "# Batch inference: prediction step vs bare model.predict",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the end; Python {platform.python_version()}.",
        f"Model: {args.backbone} at {args.size} px, weights none, 3 classes; {args.images} real radiographs "
        f"({len(files)} distinct files of covid-chestxray-dataset); batch {args.batch_size}; median of {args.repeats}.",
        "",
        "| path | seconds | images/s |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {seconds:.2f} | {args.images / seconds:.1f} |" for name, seconds in results.items()]
    lines += [
        "",
        f"Step compute over bare: **{ratio:.2f}x** the images/s of bare model.predict (goal >= 0.8x: "
        f"{'met' if ratio >= 0.8 else 'NOT met'}). With the step's decoding counted and bare's not: "
        f"**{with_decode:.2f}x**.",
        "",
        "Command: `.venv/bin/python bench/batch_inference.py "
        f"--images {args.images} --size {args.size} --repeats {args.repeats} --out {args.out}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
