"""Benchmark: validate a generated 100,000-row manifest (GX + near-duplicates + steward summary).

Goal: the whole validation (manifest suite, split suite, steward summary and
HTML page, GX import included) takes under 30 s. The manifest is generated:
random sha256 and pHash values, several sources, two images per patient, with
planted problems so that checks fail and report (exact duplicates among used
rows, rows already excluded as duplicates, near-duplicate pairs, rows
excluded for file problems, a few lateral views).

With the shared datasets present it also measures the pHash distance
distribution of real radiographs (ieee8023 covid-chestxray-dataset and
Actualmed), which chose the default `near_duplicate_max_distance`.

Reproduce (from the repository root):

    .venv/bin/python bench/validation_100k.py --rows 100000 --out bench/results/validation.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

GOAL_S = 30.0
LIST_UP_TO = 6  # real pairs listed one by one up to this distance
# What looking at the listed pairs side by side showed (a person's judgement, not computed here).
VISUAL_CHECK = """\
Looking at the pairs side by side (November 2026, this snapshot): every pair at distance 0 is the
same radiograph (one same-bytes pair; four films of patient 97 filed again as patient 178; patient
78's film again as patient 201; two near-identical films of patient 51). At distance 4, four of five
pairs are the same film or a near-identical film of one person (patient 137's film again as 202;
AR-1/AR-2 of patient 192 and extubation-1 of patient 196, the same person), and one pair is two
different patients (95 and 114). At distance 6 only two of ten pairs are the same person (follow-up
films of patient 253; patient 192/196 again); the other eight are different patients whose films
look alike at 32x32. From 8 up, pairs are overwhelmingly different films (66 at 8, 315 at 10).

Chosen default: `near_duplicate_max_distance: 4` (distances are even, so 4 also means 5). It
catches every duplicate seen here, including the same film under two patient ids, which
patient-grouped splitting cannot see, at the cost of one chance pair in these 227,475 pairs of
different films (a rate estimated from a single event). Chance pairs grow with the square of the
dataset: at that rate about 10 at 2,000 images and about 200 at 10,000, and some will straddle
splits and block by default. For large sets use 2 (no chance pair here; it would still catch 7 of
the 11 duplicates), or review the pairs and set `severity: {no_near_duplicates_across_splits:
warning}`. Synthetic radiographs (components.synthetic) are far more alike than real ones: in the
quickstart set (540 images) 116 pairs of different synthetic patients lie within 4 bits."""
ROOT = Path(__file__).resolve().parent.parent
REPRODUCE = ".venv/bin/python bench/validation_100k.py --rows 100000 --out bench/results/validation.md"


def _maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    return np.array([row.tobytes().hex() for row in raw], dtype=object)


def generate_manifest(rows: int, seed: int = 0) -> pd.DataFrame:
    """A multiclass manifest of `rows` rows with planted problems (see module doc)."""
    from components.labels import (
        COVID,
        EXCLUDE_DUPLICATE,
        EXCLUDE_LATERAL,
        EXCLUDE_MISSING_FILE,
        EXCLUDE_TRUNCATED,
        NORMAL,
        PNEUMONIA,
    )
    from components.manifest import MANIFEST_COLUMNS

    rng = np.random.default_rng(seed)
    n = rows
    sources = np.array(["ieee", "actualmed", "kermany", "bimcv"], dtype=object)
    source = sources[rng.integers(0, len(sources), n)]
    patient = np.arange(n) // 2  # two images per patient
    labels = np.array([COVID, NORMAL, PNEUMONIA], dtype=object)
    label = labels[patient % 3]
    frame = pd.DataFrame(
        {
            "uri": [f"s3://bench-bucket/{s}/images/img{i:06d}.png" for i, s in enumerate(source)],
            "source": source,
            "sha256": _hex(rng, n, 32),
            "phash": _hex(rng, n, 8),
            "width": rng.integers(256, 4096, n),
            "height": rng.integers(256, 4096, n),
            "mode": np.array(["L", "RGB"], dtype=object)[rng.integers(0, 2, n)],
            "bit_depth": 8,
            "view": np.array(["PA", "AP", "AP Supine"], dtype=object)[rng.integers(0, 3, n)],
            "patient_id": [f"{s}:p{p}" for s, p in zip(source, patient, strict=False)],
            "age_group": np.array(["adult", "pediatric", ""], dtype=object)[rng.integers(0, 3, n)],
            "finding": label,
            "label": label,
            "exclusion_reason": "",
            "exclusion_detail": "",
        }
    )
    picks = rng.permutation(n)
    cursor = 0

    def take(k: int) -> np.ndarray:
        nonlocal cursor
        chosen = picks[cursor : cursor + k]
        cursor += k
        return chosen

    k = max(1, n // 200)  # 0.5 % of the rows per planted problem
    sha = frame["sha256"].to_numpy(dtype=object)
    phash = frame["phash"].to_numpy(dtype=object)
    reason = frame["exclusion_reason"].to_numpy(dtype=object)
    detail = frame["exclusion_detail"].to_numpy(dtype=object)
    label = frame["label"].to_numpy(dtype=object)
    uri = frame["uri"].to_numpy(dtype=object)
    # Exact duplicates among used rows (sha256_unique fails) ...
    a, b = take(k), take(k)
    sha[b], phash[b] = sha[a], phash[a]
    # ... and copies the manifest already excluded as duplicates.
    a, b = take(k), take(k)
    sha[b], phash[b], reason[b], label[b] = sha[a], phash[a], EXCLUDE_DUPLICATE, ""
    detail[b] = [f"same bytes as {u}" for u in uri[a]]
    # Near-duplicates: 1 to 4 bits flipped.
    for a, b in zip(take(k), take(k), strict=False):
        value = int(phash[a], 16)
        for bit in rng.choice(64, int(rng.integers(1, 5)), replace=False):
            value ^= 1 << int(bit)
        phash[b] = f"{value:016x}"
    # Rows excluded for file problems (no hashes) and lateral views.
    broken = take(2 * k)
    sha[broken], phash[broken], label[broken] = "", "", ""
    reason[broken] = np.where(np.arange(len(broken)) % 2, EXCLUDE_MISSING_FILE, EXCLUDE_TRUNCATED)
    lateral = take(k)
    reason[lateral], label[lateral] = EXCLUDE_LATERAL, ""
    frame = frame.assign(sha256=sha, phash=phash, exclusion_reason=reason, exclusion_detail=detail, label=label)
    frame.loc[broken, "mode"] = ""
    frame.loc[broken, ["width", "height", "bit_depth"]] = 0
    frame.loc[lateral, "view"] = "L"
    for column in ("width", "height", "bit_depth"):
        frame[column] = frame[column].astype("int64")
    return frame[MANIFEST_COLUMNS]


def split_by_patient(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Used rows with a random patient-grouped split (70/15/15)."""
    used = manifest[manifest["exclusion_reason"] == ""].reset_index(drop=True)
    patients = used["patient_id"].unique()
    rng = np.random.default_rng(seed)
    draw = rng.random(len(patients))
    split = np.where(draw < 0.7, "train", np.where(draw < 0.85, "val", "test"))
    return used.assign(split=used["patient_id"].map(dict(zip(patients, split, strict=False))))


def run_benchmark(rows: int) -> tuple[list[tuple[str, float, float]], dict]:
    phases: list[tuple[str, float, float]] = []

    def phase(name: str, start: float) -> float:
        now = time.perf_counter()
        phases.append((name, now - start, _maxrss_mib()))
        return now

    start = time.perf_counter()
    manifest = generate_manifest(rows)
    split_manifest = split_by_patient(manifest)
    start = phase("generate manifest + split (not counted)", start)

    import great_expectations  # noqa: F401

    from components.duplicates import near_duplicate_pairs
    from components.steward_report import build_summary, excluded_rows_csv, render_html
    from components.validation import validate_manifest, validate_split

    start = phase("import GX and components", start)
    used = manifest[manifest["exclusion_reason"] == ""]
    pairs = near_duplicate_pairs(used["phash"].tolist(), 4)
    start = phase("near_duplicate_pairs alone (also inside the next two)", start)
    with tempfile.TemporaryDirectory() as docs:
        manifest_report = validate_manifest(manifest, "multiclass", docs)
        start = phase("validate_manifest (GX, 4 suites, Data Docs)", start)
        split_report = validate_split(split_manifest, "multiclass", docs)
        start = phase("validate_split (GX, 4 suites, Data Docs)", start)
        summary = build_summary(manifest, "multiclass", manifest_report, split_manifest, split_report, "bench")
        start = phase("build_summary", start)
        page = render_html(summary)
        csv_text = excluded_rows_csv(manifest)
        phase("render_html + excluded_rows_csv", start)
    facts = {
        "rows": len(manifest),
        "used": len(used),
        "near_pairs": len(pairs),
        "manifest_failed": [r.name for r in manifest_report.results if not r.success],
        "split_failed": [r.name for r in split_report.results if not r.success],
        "exact_pairs": len(summary.exact_duplicates),
        "html_kib": len(page.encode()) / 1024,
        "csv_kib": len(csv_text.encode()) / 1024,
    }
    return phases, facts


# ---------------------------------------------------------------- real pHash distances


def real_phash_distances(datasets: Path, max_distance: int = 12) -> tuple[str, dict]:
    """Pairwise pHash distances of the readable real images; a markdown table 0..max_distance."""
    from components.candidates import read_metadata_csv
    from components.image_info import describe_uri
    from components.manifest import build_manifest
    from components.sources import Ieee8023Options

    start = time.perf_counter()
    ieee = build_manifest([Ieee8023Options(root=str(datasets / "covid-chestxray-dataset"), name="ieee")], "multiclass")
    frame = ieee[["uri", "source", "patient_id", "sha256", "phash"]].copy()
    actualmed = datasets / "actualmed-covid-chestxray-dataset"
    if actualmed.is_dir():  # no adapter reads its `imagename` column yet: read the files directly
        table = read_metadata_csv(str(actualmed / "metadata.csv"), ("patientid", "imagename"), "actualmed")
        rows = []
        for record in table.to_dict("records"):
            uri = str(actualmed / "images" / record["imagename"])
            info = describe_uri(uri)
            rows.append(
                {
                    "uri": uri,
                    "source": "actualmed",
                    "patient_id": f"actualmed:{record['patientid']}",
                    "sha256": info["sha256"],
                    "phash": info["phash"],
                }
            )
        frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    frame = frame[frame["phash"] != ""].reset_index(drop=True)
    values = np.array([int(h, 16) for h in frame["phash"]], dtype=np.uint64)
    i, j = np.triu_indices(len(values), 1)
    distance = np.bitwise_count(values[i] ^ values[j])
    patient = frame["patient_id"].to_numpy()
    sha = frame["sha256"].to_numpy()
    source = frame["source"].to_numpy()
    same_patient = patient[i] == patient[j]
    lines = [
        "| distance | pairs | same patient id | same bytes | across sources |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in range(max_distance + 1):
        at = distance == d
        lines.append(
            f"| {d} | {int(at.sum())} | {int((at & same_patient).sum())} | "
            f"{int((at & (sha[i] == sha[j])).sum())} | {int((at & (source[i] != source[j])).sum())} |"
        )
    close = np.flatnonzero(distance <= LIST_UP_TO)
    close = close[np.argsort(distance[close], kind="stable")]
    lines += [
        "",
        f"Pairs at distance <= {LIST_UP_TO} (file names, patient ids):",
        "",
        "| distance | image A | patient A | image B | patient B |",
        "| ---: | --- | --- | --- | --- |",
    ]
    uri = frame["uri"].to_numpy()
    for k in close:
        a, b = i[k], j[k]
        lines.append(
            f"| {int(distance[k])} | {Path(uri[a]).name[:48]} | {patient[a]} | "
            f"{Path(uri[b]).name[:48]} | {patient[b]} |"
        )
    facts = {
        "images": len(values),
        "pairs": len(distance),
        "median": float(np.median(distance)),
        "p1": float(np.percentile(distance, 1)),
        "seconds": time.perf_counter() - start,
    }
    return "\n".join(lines), facts


# ---------------------------------------------------------------- report


def machine() -> str:
    from machine_info import cpu_model  # bench/ is on sys.path when a bench script runs

    cpu = cpu_model(platform.processor() or platform.machine())
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        memory = float("nan")
    import great_expectations as gx

    return (
        f"{cpu}, {os.cpu_count()} CPUs visible (shared), {memory:.0f} GiB RAM; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, great_expectations {gx.__version__}"
    )


def markdown(rows: int, phases, facts, real: tuple[str, dict] | None) -> str:
    counted = [(name, s, m) for name, s, m in phases if "not counted" not in name and "alone" not in name]
    total = sum(s for _, s, _ in counted)
    peak = max(m for _, _, m in phases)
    met = total < GOAL_S
    lines = [
        "# Validation benchmark",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Reproduce: `{REPRODUCE}`" + ("" if rows == 100_000 else f" (this run: `--rows {rows}`)"),
        f"- Manifest: {facts['rows']} generated rows, {facts['used']} used; planted: exact duplicates among used "
        "rows, rows excluded as duplicates, near-duplicate pairs (1-4 bits), rows excluded for file problems, "
        "lateral views.",
        f"- Goal: whole validation (GX import, both suites with Data Docs, near-duplicates, steward summary and "
        f"page) under {GOAL_S:.0f} s: **{'met' if met else 'NOT met'}** ({total:.1f} s).",
        "",
        "| phase | wall s | peak RSS so far (MiB) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {seconds:.2f} | {rss:.0f} |" for name, seconds, rss in phases]
    lines += [
        f"| **total counted toward the goal** | **{total:.2f}** | {peak:.0f} |",
        "",
        f"Found: {facts['near_pairs']} near-duplicate pairs (distance <= 4) among used rows, "
        f"{facts['exact_pairs']} exact-duplicate pairs listed; failed manifest checks: "
        f"{', '.join(facts['manifest_failed']) or 'none'}; failed split checks: "
        f"{', '.join(facts['split_failed']) or 'none'}. Steward page {facts['html_kib']:.0f} KiB, "
        f"excluded-rows CSV {facts['csv_kib']:.0f} KiB.",
        "",
        "Peak memory is the process's maximum resident set size (`resource.getrusage`), which only grows: "
        "each row shows the peak reached by the end of that phase.",
    ]
    if real is not None:
        table, info = real
        lines += [
            "",
            "## pHash distances between real radiographs",
            "",
            f"All pairs of the {info['images']} readable images (used and excluded) of the ieee8023 "
            "covid-chestxray-dataset snapshot and the Actualmed subset in `../shared/datasets` "
            f"({info['pairs']} pairs, {info['seconds']:.0f} s): median distance {info['median']:.0f}, "
            f"1st percentile {info['p1']:.0f}. Distances are even: the hash sets the 32 of 64 DCT "
            "coefficients above their median, so two hashes differ in an even number of bits.",
            "",
            table,
            "",
            VISUAL_CHECK,
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print only)")
    parser.add_argument(
        "--datasets",
        type=Path,
        default=ROOT.parent / "shared" / "datasets",
        help="folder with the real datasets for the pHash distance table",
    )
    parser.add_argument("--no-real-data", action="store_true", help="skip the real pHash distance table")
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    phases, facts = run_benchmark(args.rows)
    real = None
    if not args.no_real_data and (args.datasets / "covid-chestxray-dataset").is_dir():
        real = real_phash_distances(args.datasets)
    text = markdown(args.rows, phases, facts, real)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
