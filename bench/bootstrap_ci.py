"""Benchmark: bootstrap CIs for every metric, 10,000 predictions x 1,000 resamples, on one core.

Goal: drawing the stratified patient-level resamples (components.bootstrap.bootstrap_weights)
and the percentile CIs of every metric (metric_intervals: 14 overall metrics and 7 per
class, ROC-AUC and PR-AUC included) take under 5 s on one core. The predictions are
generated: 3 classes, patients with 1 to 5 images (about 3 on average, all of one class),
informative but imperfect probabilities rounded to 3 decimals (so scores tie).

The process pins itself to one CPU (os.sched_setaffinity, like `taskset -c 0`) and sets
OMP/MKL/OPENBLAS_NUM_THREADS=1 before numpy loads. For scale, it also times the paired
comparison of two models (paired_differences: every metric, both models on the same
resamples) and a Python loop over resamples with the point-estimate function
(classification_metrics on the repeated rows), extrapolated from a few resamples.

Reproduce (from the repository root):

    .venv/bin/python bench/bootstrap_ci.py --images 10000 --resamples 1000 --out bench/results/bootstrap_ci.md
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"  # before numpy loads: BLAS on one thread

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.bootstrap import bootstrap_weights, metric_intervals, paired_differences  # noqa: E402
from components.metrics import ARGMAX, classification_metrics, metric_keys  # noqa: E402

GOAL_S = 5.0
CLASSES = ("COVID-19", "normal", "pneumonia")
REPRODUCE = ".venv/bin/python bench/bootstrap_ci.py --images 10000 --resamples 1000 --out bench/results/bootstrap_ci.md"


def generate(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labels, two models' probabilities (N, 3) and patient ids: 1-5 images per patient, one class each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=n_images)  # mean 3
    patient_of_image = np.repeat(np.arange(n_images), sizes)[:n_images]
    patient_class = rng.integers(0, 3, size=n_images)
    y_true = patient_class[patient_of_image]
    models = []
    for signal in (1.2, 1.0):
        logits = rng.normal(0, 1, size=(n_images, 3))
        logits[np.arange(n_images), y_true] += signal
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        models.append(np.round(probabilities, 3))
    return y_true, models[0], models[1], [f"patient-{p}" for p in patient_of_image]


def timed(function, repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def machine() -> str:
    from machine_info import cpu_model  # bench/ is on sys.path when a bench script runs

    cpu = cpu_model(platform.processor() or platform.machine())
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        memory = float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible (shared), {memory:.0f} GiB RAM; pinned to CPU "
        f"{sorted(os.sched_getaffinity(0))}; {platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, numpy {np.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-resamples", type=int, default=10, help="resamples timed in the Python-loop baseline")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed one)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args(argv)

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    y_true, candidate, baseline, patients = generate(args.images, seed=0)
    n_patients = len(set(patients))
    keys = metric_keys(CLASSES)

    weight_s, weights = timed(lambda: bootstrap_weights(patients, y_true, args.resamples, seed=42), args.repeats)
    interval_s, intervals = timed(
        lambda: metric_intervals(y_true, candidate, CLASSES, ARGMAX, weights, level=0.95), args.repeats
    )
    paired_s, _ = timed(
        lambda: paired_differences(y_true, candidate, ARGMAX, baseline, ARGMAX, CLASSES, weights), args.repeats
    )
    point_s, point = timed(lambda: classification_metrics(y_true, candidate, CLASSES), args.repeats)

    def loop():
        for row in weights[: args.loop_resamples]:
            drawn = np.repeat(np.arange(len(y_true)), row)
            classification_metrics(y_true[drawn], candidate[drawn], CLASSES)

    loop_s, _ = timed(loop, 1)
    loop_per_resample = loop_s[0] / args.loop_resamples

    total = [w + i for w, i in zip(weight_s, interval_s, strict=True)]
    best, median = min(total), statistics.median(total)
    met = median < GOAL_S

    def cells(seconds: list[float]) -> str:
        return f"{statistics.median(seconds):.3f} | {min(seconds):.3f} | {max(seconds):.3f}"

    rows = [
        ("bootstrap_weights (B x N int32 matrix)", weight_s),
        (f"metric_intervals, all {len(keys)} metrics", interval_s),
        ("**counted toward the goal** (the two above)", total),
        (f"paired_differences, all {len(keys)} metrics, 2 models (not counted)", paired_s),
        ("classification_metrics once, the point estimates (not counted)", point_s),
    ]
    lines = [
        "# Bootstrap CI benchmark",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}; OMP/MKL/OPENBLAS_NUM_THREADS=1",
        f"- Reproduce: `{REPRODUCE}`"
        + (
            ""
            if (args.images, args.resamples) == (10_000, 1_000)
            else f" (this run: `--images {args.images} --resamples {args.resamples}`)"
        ),
        f"- Data: {args.images} generated predictions, 3 classes, {n_patients} patients (1 to 5 images each, "
        f"mean {args.images / n_patients:.2f}), probabilities rounded to 3 decimals; {args.resamples} stratified "
        f"patient-level resamples; {args.repeats} repeats.",
        f"- Goal: resamples plus CIs of every metric under {GOAL_S:.0f} s on one core: "
        f"**{'met' if met else 'NOT met'}** (median {median:.2f} s, best {best:.2f} s).",
        "",
        "| phase | median s | best s | worst s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {cells(seconds)} |" for name, seconds in rows]
    lines += [
        "",
        f"For comparison, a Python loop calling classification_metrics on each resample's repeated rows "
        f"takes {loop_per_resample * 1000:.0f} ms per resample ({args.loop_resamples} timed): "
        f"{loop_per_resample * args.resamples:.0f} s for {args.resamples} resamples, "
        f"{loop_per_resample * args.resamples / statistics.median(interval_s):.0f}x the vectorised metric_intervals.",
        "",
        f"Point estimates and 95% CIs on this data: f1_macro {point.f1_macro:.3f} "
        f"[{intervals['f1_macro'].low:.3f}, {intervals['f1_macro'].high:.3f}], roc_auc_macro "
        f"{point.roc_auc_macro:.3f} [{intervals['roc_auc_macro'].low:.3f}, {intervals['roc_auc_macro'].high:.3f}], "
        f"ece {point.ece:.3f} [{intervals['ece'].low:.3f}, {intervals['ece'].high:.3f}].",
        "",
        "The development machine's 2 cores are shared with other work: timings vary by about a factor of 2 "
        "from run to run; the median of the repeats is the figure.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
