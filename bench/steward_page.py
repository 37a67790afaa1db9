"""Benchmark: the steward page with its thumbnails for a 5,000-row manifest: build time, page size, load time.

The manifest's rows point at the real radiographs of the shared datasets
(ieee8023 covid-chestxray-dataset and Actualmed: full-size PNG and JPEG files,
as a steward's drop holds them; rows reuse files when there are fewer files
than rows), across 4 sources and the 3 classes, with 900 excluded rows under 5
reasons (some of them files that are missing or not images) and 200
near-duplicate pairs. What is timed: ``build_summary``, ``build_gallery``
(reading and decoding every sampled file, 4 threads) and ``render_html``; the
page's size; and its load in headless Chromium (tests/browser.py: navigation
until every image has loaded), when Chromium is installed.

Reproduce (from the repository root):

    .venv/bin/python bench/steward_page.py --rows 5000 --out bench/results/steward_page.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
REPRODUCE = ".venv/bin/python bench/steward_page.py --rows 5000 --out bench/results/steward_page.md"
SOURCES = ("ieee8023", "actualmed", "hospital_a", "hospital_b")
LABELS = ("COVID-19", "normal", "pneumonia")
EXCLUDED = {"lateral view": 400, "unknown finding": 300, "not an image (content)": 100, "missing file": 100}


def real_files() -> list[str]:
    """Every PNG/JPEG of the shared datasets, sorted."""
    files = [
        str(path)
        for folder in ("covid-chestxray-dataset/images", "actualmed-covid-chestxray-dataset/images")
        for path in (DATASETS / folder).glob("*")
        if path.suffix.lower() in (".png", ".jpg", ".jpeg")
    ]
    if not files:
        sys.exit(f"no images under {DATASETS}: this benchmark reads the shared datasets")
    return sorted(files)


def generate_manifest(rows: int, files: list[str], seed: int = 0) -> pd.DataFrame:
    """`rows` manifest rows over the real files: used rows per class and source, excluded rows per reason."""
    sys.path.insert(0, str(ROOT))
    from components.manifest import MANIFEST_COLUMNS
    from tests.factories import manifest_row

    rng = np.random.default_rng(seed)
    reasons = [reason for reason, count in EXCLUDED.items() for _ in range(count)]
    records = []
    for index in range(rows):
        uri = files[index % len(files)]
        source = SOURCES[rng.integers(len(SOURCES))]
        label = LABELS[rng.integers(len(LABELS))]
        row = manifest_row(uri, label, source, view="PA" if index % 7 else "")
        row["sha256"] = f"{index:064x}"  # distinct rows (files are reused when rows outnumber them)
        if index < len(reasons):
            reason = reasons[index]
            row.update(label="", exclusion_reason=reason, exclusion_detail=f"bench: {reason}")
            if reason == "missing file":
                row.update(uri=f"{uri}.missing", sha256="")
        records.append(row)
    return pd.DataFrame(records, columns=MANIFEST_COLUMNS)


def near_pairs(manifest: pd.DataFrame, count: int) -> list[dict]:
    used = manifest[manifest["exclusion_reason"] == ""].reset_index(drop=True)
    return [
        {
            "uri_a": used.loc[2 * i, "uri"],
            "uri_b": used.loc[2 * i + 1, "uri"],
            "distance": i % 5,
            "same_patient": False,
            "patient_a": used.loc[2 * i, "patient_id"],
            "patient_b": used.loc[2 * i + 1, "patient_id"],
            "source_a": used.loc[2 * i, "source"],
            "source_b": used.loc[2 * i + 1, "source"],
        }
        for i in range(count)
    ]


def browser_load_s(page: Path) -> float | None:
    """Seconds from navigation to every image loaded, in headless Chromium; None without Chromium."""
    from tests.browser import ChromiumMissingError, check_page, launch_chromium

    try:
        with launch_chromium() as chromium:
            check_page(page, chromium)  # warm-up (first launch of the context)
            start = time.perf_counter()
            check = check_page(page, chromium)
            elapsed = time.perf_counter() - start
    except ChromiumMissingError:
        return None
    if check.problems():
        sys.exit(f"the page has problems: {check.problems()[:5]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from components.steward_report import build_gallery, build_summary, render_html
    from components.validation import ValidationReport

    files = real_files()
    manifest = generate_manifest(args.rows, files)
    report = ValidationReport(success=True, results=[], data_docs_index="", summary="", stage="manifest")
    report.listings = {"near_duplicates": near_pairs(manifest, args.pairs), "exact_duplicates": []}

    times = {}
    start = time.perf_counter()
    summary = build_summary(manifest, "multiclass", report, dataset_version="bench")
    times["build_summary"] = time.perf_counter() - start
    start = time.perf_counter()
    gallery = build_gallery(summary, manifest)
    times["build_gallery (read + decode + thumbnail, 4 threads)"] = time.perf_counter() - start
    start = time.perf_counter()
    page = render_html(summary, gallery=gallery)
    times["render_html"] = time.perf_counter() - start
    thumbs = gallery.thumbnails()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "summary.html"
        path.write_text(page, encoding="utf-8")
        load = browser_load_s(path)

    size_kib = len(page.encode()) / 1024
    total = sum(times.values())
    read_bytes = sum(os.path.getsize(t.uri) for t in thumbs if t.image)
    lines = [
        "# Steward page with thumbnails",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {platform.machine()}, {os.cpu_count()} CPU(s) "
        "(shared with other work: figures are noisy). Python " + platform.python_version() + ".",
        "",
        f"Command: `{REPRODUCE}`",
        "",
        f"Manifest: {len(manifest):,} rows over {len(files)} real radiographs of the shared datasets "
        f"(full-size PNG/JPEG), {len(SOURCES)} sources x {len(LABELS)} classes, "
        f"{sum(EXCLUDED.values())} excluded rows under {len(EXCLUDED)} reasons, {args.pairs} near-duplicate pairs.",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in times.items()),
        f"| **total** | **{total:.2f}** |",
        "",
        f"- Thumbnails: {len(thumbs)} ({sum(1 for t in thumbs if t.image)} images, "
        f"{sum(1 for t in thumbs if not t.image)} placeholders): {len(gallery.pairs)} of {gallery.pairs_total} pairs, "
        f"{sum(len(v) for v in gallery.excluded.values())} excluded images over {len(gallery.excluded)} reasons, "
        f"{sum(len(v) for v in gallery.samples.values())} samples over {len(gallery.samples)} class x source cells.",
        f"- Files read for them: {read_bytes / 2**20:.1f} MiB.",
        f"- Page: {size_kib:,.0f} KiB, one self-contained file.",
        f"- Load in headless Chromium, every image decoded: {load:.2f} s."
        if load is not None
        else "- Chromium: absent",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
