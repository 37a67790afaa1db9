"""What the pipeline costs over bare Keras, end to end for the training step.

The real `cxr_training` pipeline (local ZenML stack, MLflow tracker, in a
temporary folder) trains MobileNet on synthetic data; its `train_MobileNet`
step's wall time (ZenML's start to end: loading its input artifacts, the
validation images, per-epoch checkpoints to the artifact store, MLflow
logging, saving the model artifact) is set against a bare Keras script doing
the same training on the same arrays in the same process: resize, read the
validation images, build, compile, `fit` for the same epochs. Pipeline and
bare runs alternate (pipeline, bare, pipeline, bare) so neither gets the warm
caches alone. Goal: the step costs <= 10 % over bare Keras.

    python bench/pipeline_overhead.py --patients 40 --copies 3 --size 160 --epochs 3 \
        --out bench/results/pipeline_overhead.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

WORKDIR = Path(tempfile.mkdtemp(prefix="cxr-bench-overhead-"))
os.environ["ZENML_REPOSITORY_PATH"] = str(ROOT)
os.environ["KERAS_HOME"] = str(WORKDIR / "keras")

from cxr.stack import configure_environment  # noqa: E402  (before anything imports ZenML)

PATHS = configure_environment(WORKDIR / "work")


def run_config(args) -> dict:
    return {
        "name": "bench-overhead",
        "task": "multiclass",
        "seed": 0,
        "data": {
            "synthetic": {"root": str(WORKDIR / "data"), "n_patients_per_class": args.patients,
                          "images_per_patient": 2, "image_size": 256, "seed": 0},
            "sources": [{"kind": "folder", "root": str(WORKDIR / "data"), "name": "synthetic",
                         "default_view": "PA"}],
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
    model.fit(make_dataset(images, labels, training.batch_size, shuffle_seed=0),
              validation_data=make_dataset(*val, training.batch_size), epochs=training.epochs,
              class_weight=balanced_class_weights(labels, len(classes)), verbose=0)
    return {"seconds": time.perf_counter() - started, "train_images": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=40, help="synthetic patients per class (2 images each)")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from components.config import parse_run_config
    from cxr.stack import ensure_local_stack

    ensure_local_stack(PATHS, ROOT)
    config = parse_run_config(run_config(args))
    rows = []
    for repeat in range(args.repeats):
        step = pipeline_run(config)
        bare = bare_keras(step["run_name"], config)
        rows.append({"repeat": repeat, **step, "bare_seconds": bare["seconds"],
                     "overhead": step["step_seconds"] / bare["seconds"] - 1})
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
        "| repeat | train step (s) | of which train_classifier (s) | bare Keras (s) | step over bare | "
        "step images/s | bare images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        work = row["train_images"] * row["epochs"]
        lines.append(f"| {row['repeat']} | {row['step_seconds']:.1f} | {row['fit_seconds']:.1f} | "
                     f"{row['bare_seconds']:.1f} | {100 * row['overhead']:+.1f} % | {work / row['step_seconds']:.1f} | "
                     f"{work / row['bare_seconds']:.1f} |")
    lines += ["", "```json", json.dumps(rows, indent=2), "```"]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
