"""Benchmark: what the pipeline's evaluation costs over a bare ``model.predict`` plus the metrics, on 2,000 images.

Goal (issue 10): evaluating a model on 2,000 images in the pipeline is within 10 % of a
bare ``model.predict`` on the same arrays plus the metric computation.

Data: 2,000 generated 256 px grayscale PNGs (tests.factories.radiograph) written once to
a temporary folder, 2 images per patient, 3 classes, two sources, age groups and views
with some unknown; the manifest has the columns components.evaluation reads and splits
by patient into val and test (half each). The model: MobileNet alpha 0.25 at 128 px,
weights none (components.backbones.build_classifier; untrained: the timings, not the
metrics, are the point).

Timed, each a median of --repeats after one warm-up, in one process:

- (a) the pipeline path (what the evaluate and promote steps run for these images):
  ``evaluate_classifier`` (read and decode the PNGs of val and test, predict through
  components.training.predict_probabilities, the decision on val, the point metrics of
  val and test) plus ``assess`` of the test split (1,000 patient-bootstrap resamples,
  CIs of every metric, the slices by source, age group and view with their own CIs);
- (b) bare: ``model.predict`` on the already-decoded uint8 arrays of all 2,000 images
  (gray channel repeated to RGB; same batch size), the decision on val,
  ``classification_metrics`` of val and test, and ``bootstrap_weights`` +
  ``metric_intervals`` of the test split with the same resamples (no slices);
- the decode alone: ``load_images`` of the 2,000 files (read, decode, resize), which is
  inside (a) and outside (b). The ratio is given both ways: decode out of both sides
  ((a) - decode vs (b)) and decode in both ((a) vs (b) + decode); the slices' part of (a)
  is timed too.

Threads: the process pins itself to --cpus (default one CPU, os.sched_setaffinity), sets
OMP/MKL/OPENBLAS_NUM_THREADS and TensorFlow's intra- and inter-op threads to that many
before TensorFlow loads, as bench/bootstrap_ci.py does.

Reproduce (from the repository root):

    .venv/bin/python bench/evaluation_overhead.py --images 2000 --out bench/results/evaluation_overhead.md
"""

from __future__ import annotations

import argparse
import os
import sys

_PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_PARSER.add_argument("--images", type=int, default=2000)
_PARSER.add_argument("--size", type=int, default=128, help="the model's input size in pixels")
_PARSER.add_argument("--png-size", type=int, default=256, help="side of the generated PNGs")
_PARSER.add_argument("--batch-size", type=int, default=32)
_PARSER.add_argument("--resamples", type=int, default=1000)
_PARSER.add_argument("--repeats", type=int, default=3)
_PARSER.add_argument("--cpus", type=int, nargs="+", default=None, help="CPUs to pin to (default: the first allowed)")
_PARSER.add_argument("--workdir", type=str, default=None, help="folder for the PNGs (default: a temporary one)")
_PARSER.add_argument("--out", type=str, default=None, help="markdown file to write (default: print only)")
ARGS = _PARSER.parse_args() if __name__ == "__main__" else None

if ARGS is not None:  # before numpy and TensorFlow load: their thread pools follow the pinning
    _CPUS = set(ARGS.cpus) if ARGS.cpus else {min(os.sched_getaffinity(0))}
    os.sched_setaffinity(0, _CPUS)
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_variable] = str(len(_CPUS))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hashlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

GOAL = 1.10
CLASSES = ["COVID-19", "normal", "pneumonia"]
SOURCES = ["ieee8023", "actualmed"]
AGE_GROUPS = ["adult", "adult", "adult", "pediatric", ""]
VIEWS = ["PA", "PA", "AP", "AP Supine", ""]
REPRODUCE = ".venv/bin/python bench/evaluation_overhead.py --images 2000 --out bench/results/evaluation_overhead.md"


def write_images(folder: Path, n_images: int, png_size: int) -> pd.DataFrame:
    """2 images per patient, PNG radiographs on disk; the split manifest (val / test by patient)."""
    from tests.factories import encode, manifest_row, radiograph

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_images):
        patient = index // 2
        path = folder / f"p{patient:05d}_{index % 2}.png"
        if not path.exists():
            path.write_bytes(encode(radiograph(seed=index, size=(png_size, png_size))))
        source = SOURCES[patient % len(SOURCES)]
        rows.append(
            manifest_row(
                str(path),
                CLASSES[patient % len(CLASSES)],
                source,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                patient_id=f"{source}:p{patient}",
                age_group=AGE_GROUPS[patient % len(AGE_GROUPS)],
                view=VIEWS[(patient // 3) % len(VIEWS)],
            )
        )
    manifest = pd.DataFrame(rows)
    patient_number = manifest["patient_id"].str.split(":p").str[1].astype(int)
    manifest["split"] = np.where(patient_number % 2 == 0, "val", "test")
    return manifest


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def machine(cpus: set[int]) -> str:
    import keras
    import tensorflow as tf

    cpu = cpu_model(platform.processor() or platform.machine())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible (shared), {memory:.0f} GiB RAM; pinned to CPU {sorted(cpus)} "
        f"(OMP/MKL/OPENBLAS and TensorFlow intra/inter-op threads {len(cpus)}); {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras "
        f"{keras.__version__} ({keras.backend.backend()} backend), numpy {np.__version__}"
    )


def other_processes() -> str:
    """What else was busy on the machine when the bench finished (top CPU users, not this process)."""
    lines = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[1:]
    busy = [line.split() for line in lines if line.split() and line.split()[0] != str(os.getpid())]
    busy = [fields for fields in busy if float(fields[1]) >= 5.0]
    if not busy:
        return "no other process above 5 % CPU"
    return "; ".join(f"{fields[3]} (pid {fields[0]}, {fields[1]} % CPU)" for fields in busy[:5])


def main() -> int:
    args = ARGS
    cpus = os.sched_getaffinity(0)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(len(cpus))
    tf.config.threading.set_inter_op_parallelism_threads(len(cpus))
    import keras

    from components.assessment import assess
    from components.backbones import build_classifier, probabilities
    from components.bootstrap import bootstrap_weights, metric_intervals
    from components.config import EvaluationConfig
    from components.evaluation import evaluate_classifier
    from components.metrics import choose_decision, classification_metrics
    from components.training import load_images

    folder = Path(args.workdir or tempfile.mkdtemp(prefix="cxr-bench-evaluation-"))
    generate_s, manifest = timed(lambda: write_images(folder, args.images, args.png_size))
    val_rows, test_rows = manifest[manifest["split"] == "val"], manifest[manifest["split"] == "test"]
    config = EvaluationConfig(bootstrap_resamples=args.resamples)
    keras.utils.set_random_seed(0)
    model = build_classifier("MobileNet", len(CLASSES), args.size, weights="none", alpha=0.25)
    backbone = _backbone(args.size)
    labels = np.asarray([CLASSES.index(label) for label in manifest["label"]])
    val_index = np.flatnonzero(manifest["split"].to_numpy() == "val")
    test_index = np.flatnonzero(manifest["split"].to_numpy() == "test")
    test_patients = test_rows["patient_id"].tolist()
    val_patients = val_rows["patient_id"].tolist()
    uris = manifest["uri"].tolist()

    bins = config.calibration_bins
    no_slices = config.model_copy(update={"slices": []})

    def pipeline():
        """The path, timed; then (not timed as part of it) assess without slices, to cost the slices."""
        start = time.perf_counter()
        evaluation = evaluate_classifier(model, manifest, backbone, CLASSES, config)
        test = next(p for p in evaluation.predictions if p.split == "test")
        assess_s, _ = timed(lambda: assess(test, evaluation.decision, config, seed=0))
        path_s = time.perf_counter() - start
        slices_s = assess_s - timed(lambda: assess(test, evaluation.decision, no_slices, seed=0))[0]
        return evaluation, path_s, slices_s

    def bare(grays: np.ndarray):
        output = model.predict(np.repeat(grays[..., None], 3, axis=-1), batch_size=args.batch_size, verbose=0)
        probs = probabilities(output, len(CLASSES))
        decision = choose_decision(labels[val_index], probs[val_index], CLASSES, config.threshold)
        val = classification_metrics(labels[val_index], probs[val_index], CLASSES, decision, bins, val_patients)
        test = classification_metrics(labels[test_index], probs[test_index], CLASSES, decision, bins, test_patients)
        weights = bootstrap_weights(test_patients, labels[test_index], args.resamples, seed=0)
        intervals = metric_intervals(
            labels[test_index], probs[test_index], CLASSES, decision, weights, config.confidence_level, bins
        )
        return val, test, intervals

    grays = load_images(uris, args.size)  # the warm-up of the decode; (b)'s arrays
    pipeline()  # warm-up: traces the predict function for tf.data input
    bare(grays)  # warm-up: and for numpy input
    decode, total, slices, bare_s = [], [], [], []
    for _ in range(args.repeats):
        seconds, grays = timed(lambda: load_images(uris, args.size))
        decode.append(seconds)
        evaluation, path_seconds, slices_seconds = pipeline()
        total.append(path_seconds)
        slices.append(slices_seconds)
        seconds, (val, test, intervals) = timed(lambda grays=grays: bare(grays))
        bare_s.append(seconds)
    return _report(args, folder, generate_s, manifest, decode, total, slices, bare_s, evaluation, test, intervals)


def _backbone(size: int):
    from components.config import BackboneConfig

    return BackboneConfig(name="MobileNet", alpha=0.25, image_size=size, weights="none")


def _report(args, folder, generate_s, manifest, decode, total, slices, bare_s, evaluation, test, intervals) -> int:
    median = statistics.median
    a, b, d = median(total), median(bare_s), median(decode)
    out_ratio = (a - d) / b
    in_ratio = a / (b + d)
    met = out_ratio <= GOAL
    n_val = int((manifest["split"] == "val").sum())
    n_test = len(manifest) - n_val

    def cells(values: list[float]) -> str:
        return f"{median(values):.2f} | {min(values):.2f} | {max(values):.2f}"

    pipeline_no_decode = [t - dd for t, dd in zip(total, decode, strict=True)]
    bare_with_decode = [bb + dd for bb, dd in zip(bare_s, decode, strict=True)]
    lines = [
        "# Evaluation overhead: the pipeline's evaluate + assess vs bare predict + metrics",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine(os.sched_getaffinity(0))}",
        f"- Reproduce: `{REPRODUCE}`",
        f"- Data: {len(manifest)} generated {args.png_size} px grayscale PNGs (2 per patient, 3 classes, "
        f"2 sources; written in {generate_s:.0f} s, not timed), split by patient into val {n_val} and test "
        f"{n_test} images; MobileNet alpha 0.25 at {args.size} px, weights none, batch size {args.batch_size}; "
        f"{args.resamples} patient-bootstrap resamples; {args.repeats} repeats after one warm-up, median.",
        "- Other processes at the end of the run: " + other_processes() + ".",
        "",
        "| phase | median s | best s | worst s |",
        "| --- | ---: | ---: | ---: |",
        f"| decode alone: `load_images` of the {len(manifest)} files (read, decode, resize to {args.size}) | "
        f"{cells(decode)} |",
        f"| (a) pipeline: `evaluate_classifier` (decode + predict val and test + decision + point metrics) + "
        f"`assess` of test (CIs + slices) | {cells(total)} |",
        f"| of which the slices of `assess` ({len(evaluation.predictions)} splits predicted; slices by "
        f"source, age group, view) | {cells(slices)} |",
        f"| (a) - decode | {cells(pipeline_no_decode)} |",
        f"| (b) bare: `model.predict` on the uint8 arrays + decision + `classification_metrics` (val, test) + "
        f"`bootstrap_weights` + `metric_intervals` (test) | {cells(bare_s)} |",
        f"| (b) + decode | {cells(bare_with_decode)} |",
        "",
        f"- Decode out of both sides ((a) - decode vs (b), the goal's comparison, on the same arrays): "
        f"**{out_ratio:.3f}** ({(out_ratio - 1) * 100:+.1f} %) of which the slices are "
        f"{median(slices) / b * 100:.1f} points; goal <= {GOAL:.2f}: **{'met' if met else 'NOT met'}**.",
        f"- Decode in both ((a) vs (b) + decode): **{in_ratio:.3f}** ({(in_ratio - 1) * 100:+.1f} %).",
        f"- Without the slices (which bare does not compute): (a) - decode - slices vs (b) = "
        f"{(a - d - median(slices)) / b:.3f}.",
        "",
        f"Test metrics of the untrained model (sanity: both paths agree): f1_macro pipeline "
        f"{evaluation.test.f1_macro:.4f}, bare {test.f1_macro:.4f}; CI of f1_macro bare "
        f"[{intervals['f1_macro'].low:.4f}, {intervals['f1_macro'].high:.4f}].",
        "",
        "The development machine's 2 cores are shared with other work; figures vary from run to run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print(f"PNGs in {folder}", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
