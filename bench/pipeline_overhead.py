"""What the pipeline costs over bare Keras, end to end for the training step.

The real `cxr_training` pipeline (local ZenML stack, MLflow tracker, in a
temporary folder) trains MobileNet on synthetic data; its `train_MobileNet`
step's wall time (ZenML's start to end: loading its input artifacts, the
validation images, per-epoch checkpoints to the artifact store, MLflow
logging, saving the model artifact) is set against a bare Keras script doing
the same training on the same arrays: resize, read the validation images,
build, compile, `fit` for the same epochs. Each pipeline run and each bare
run is a fresh process (TensorFlow imported before the clock starts), and
they alternate (pipeline, bare, pipeline, bare, ...) so that neither gets a
quieter stretch of a shared machine alone. Goal: the step costs <= 10 % over
bare Keras.

    python bench/pipeline_overhead.py --patients 40 --copies 3 --size 160 --epochs 3 \
        --out bench/results/pipeline_overhead.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

# The parent makes the folder; its child processes (one per run) share it.
WORKDIR = Path(os.environ.get("CXR_BENCH_WORKDIR") or tempfile.mkdtemp(prefix="cxr-bench-overhead-"))
os.environ["CXR_BENCH_WORKDIR"] = str(WORKDIR)
os.environ["KERAS_HOME"] = str(WORKDIR / "keras")

from cxr.stack import configure_environment  # noqa: E402  (before anything imports ZenML)

PATHS = configure_environment(WORKDIR / "work")


def run_config(args) -> dict:
    return {
        "name": "bench-overhead",
        "task": "multiclass",
        "seed": 0,
        "data": {
            "synthetic": {
                "root": str(WORKDIR / "data"),
                "n_patients_per_class": args.patients,
                "images_per_patient": 2,
                "image_size": 256,
                "seed": 0,
            },
            "sources": [{"kind": "folder", "root": str(WORKDIR / "data"), "name": "synthetic", "default_view": "PA"}],
        },
        "validation": {"near_duplicate_max_distance": 2},
        "augmentation": {"preset": "paper", "copies_per_image": args.copies},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": args.size, "weights": "none"}],
        "training": {"epochs": args.epochs, "batch_size": 32, "learning_rate": 1e-3, "patience": 100},
        "registry": {"model_name": "bench-overhead"},
    }


def pipeline_run(config) -> dict:
    from zenml.client import Client

    from cxr.runner import run_training

    summary = run_training(config, PATHS, ROOT)
    run = Client().get_pipeline_run(summary["run_name"])
    step = run.steps["train_MobileNet"]
    trained = step.outputs["training_summary"][0].load()
    return {
        "run_name": summary["run_name"],
        "step_seconds": (step.end_time - step.start_time).total_seconds(),
        "fit_seconds": trained["seconds"],
        "checkpoint_seconds": trained["checkpoint_seconds"],
        "mlflow_logging_seconds": trained["mlflow_logging_seconds"],
        "train_images": trained["train_images"],
        "epochs": trained["epochs_run"],
    }


def bare_keras(run_name: str, config) -> dict:
    """The same training, written as a user would without the pipeline."""
    import keras
    from zenml.client import Client

    from components.backbones import build_classifier
    from components.labels import TASK_LABELS
    from components.training import balanced_class_weights, compile_classifier, make_dataset, resize_stack, split_arrays

    run = Client().get_pipeline_run(run_name)
    images = run.steps["augment_training_data"].outputs["train_images"][0].load()
    labels = run.steps["augment_training_data"].outputs["train_labels"][0].load()
    split = run.steps["split_data"].outputs["split_manifest"][0].load()
    classes = list(TASK_LABELS[config.task])
    backbone, training = config.backbones[0], config.training
    started = time.perf_counter()
    images = resize_stack(images, backbone.image_size)
    val = split_arrays(split, "val", classes, backbone.image_size)
    keras.utils.set_random_seed(0)
    model = build_classifier("MobileNet", len(classes), backbone.image_size, weights="none", alpha=backbone.alpha)
    compile_classifier(model, len(classes), training.learning_rate)
    model.fit(
        make_dataset(images, labels, training.batch_size, shuffle_seed=0),
        validation_data=make_dataset(*val, training.batch_size),
        epochs=training.epochs,
        class_weight=balanced_class_weights(labels, len(classes)),
        verbose=0,
    )
    return {"seconds": time.perf_counter() - started, "train_images": len(images)}


def child(role: str, args, run_name: str | None) -> dict:
    """Run one pipeline or one bare training in a fresh process; its JSON result."""
    command = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--patients",
        str(args.patients),
        "--copies",
        str(args.copies),
        "--size",
        str(args.size),
        "--epochs",
        str(args.epochs),
    ]
    if run_name:
        command += ["--run-name", run_name]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=40, help="synthetic patients per class (2 images each)")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--role", choices=["pipeline", "bare"], help="(internal) one run in this process")
    parser.add_argument("--run-name", help="(internal) the pipeline run whose arrays bare Keras trains on")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from components.config import parse_run_config

    config = parse_run_config(run_config(args))
    if args.role == "pipeline":
        from cxr.stack import ensure_local_stack

        ensure_local_stack(PATHS, ROOT)
        print(json.dumps(pipeline_run(config)))
        return
    if args.role == "bare":
        import keras  # noqa: F401  (imported before the clock, as the step's process has it)

        print(json.dumps(bare_keras(args.run_name, config)))
        return
    rows = []
    for repeat in range(args.repeats):
        step = child("pipeline", args, None)
        bare = child("bare", args, step["run_name"])
        # What the pipeline adds, timed where it happens: the step outside training (loading
        # inputs, saving the model), per-epoch checkpoints and early-stopping bookkeeping,
        # live MLflow metrics. Unlike the wall-clock difference, this is not buried in the
        # +-20 % run-to-run noise of a shared 2-core machine.
        added = (
            (step["step_seconds"] - step["fit_seconds"]) + step["checkpoint_seconds"] + step["mlflow_logging_seconds"]
        )
        rows.append(
            {
                "repeat": repeat,
                **step,
                "bare_seconds": bare["seconds"],
                "overhead": step["step_seconds"] / bare["seconds"] - 1,
                "added_seconds": added,
                "added_fraction": added / (step["step_seconds"] - added),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        write(rows, args)


def write(rows: list[dict], args) -> None:
    machine = f"{cpu_model(platform.processor() or 'unknown CPU')}, {os.cpu_count()} cores"
    lines = [
        "# The training step in the pipeline vs bare Keras",
        "",
        f"Command: `python bench/pipeline_overhead.py --patients {args.patients} --copies {args.copies} "
        f"--size {args.size} --epochs {args.epochs} --repeats {args.repeats}`",
        "",
        f"Machine: {machine}; no GPU. MobileNet alpha 0.25 at {args.size} px from scratch, batch 32, "
        f"{args.epochs} epochs, {rows[0]['train_images']} training images (in-memory mode, x{args.copies + 1}).",
        "",
        "Each row: one pipeline run and one bare run, each in a fresh process, one after the other.",
        "",
        "Wall clock, step vs bare:",
        "",
        "| repeat | train step (s) | of which train_classifier (s) | bare Keras (s) | step over bare | "
        "step images/s | bare images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        work = row["train_images"] * row["epochs"]
        lines.append(
            f"| {row['repeat']} | {row['step_seconds']:.1f} | {row['fit_seconds']:.1f} | "
            f"{row['bare_seconds']:.1f} | {100 * row['overhead']:+.1f} % | {work / row['step_seconds']:.1f} | "
            f"{work / row['bare_seconds']:.1f} |"
        )
    lines += [
        "",
        "What the pipeline adds, timed where it happens (step outside training: inputs loaded, model saved; "
        "per-epoch checkpoints and early stopping; live MLflow metrics):",
        "",
        "| repeat | outside training (s) | checkpoints (s) | MLflow metrics (s) | added | of the training |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['repeat']} | {row['step_seconds'] - row['fit_seconds']:.2f} | "
            f"{row['checkpoint_seconds']:.2f} | {row['mlflow_logging_seconds']:.2f} | "
            f"{row['added_seconds']:.2f} s | {100 * row['added_fraction']:.1f} % |"
        )
    lines += ["", "```json", json.dumps(rows, indent=2), "```"]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
