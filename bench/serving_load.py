"""Benchmark: `cxr serve` under load on 127.0.0.1, beside in-process ``mlflow.pyfunc`` prediction.

Goals (issue 11, "Serving that holds"): 0 5xx at 16 clients; REST p50 for one image at most
1.3x in-process; single-image REST throughput at 16 clients at least 0.8x in-process
prediction in batches of 16; batched throughput at least 0.9x in-process (here: 64 images
per request, one client, vs in-process batches of 64); server start under 15 s.

The model: MobileNet alpha 0.25 at --size px (default 128), weights none, 3 classes
(components.backbones.build_classifier; its probabilities mean nothing, its cost is a real
backbone's), logged as the project's pyfunc (components.serving.log_pyfunc_model) and
registered in a temporary SQLite MLflow store with the alias champion. The images: --images
SYNTHETIC radiographs (components.synthetic.render_radiograph) of --png-size px (default 256)
as PNG, base64, sent as JSON ``dataframe_split`` bodies serialised before timing.

Run, in one process and one run:

1. in-process: ``mlflow.pyfunc.load_model`` of the registered version, ``predict`` on a DataFrame
   of 1, 16 and 64 base64 images (decode included, as in the server), one call after the other
   for --duration s each, after a warm-up; before the REST runs and again after them (the
   machine is shared: the two tell how much the background moved);
2. for each server setting (micro-batching on: the defaults, ``serving.max_batch_rows`` 32 and
   ``max_batch_wait_ms`` 5; and, with --compare-unbatched, off: ``--max-batch-rows 1``):
   ``cxr serve`` started as a child process (its start time: from the command to ``/health``
   answering 200, the canned image through the model), then for 1, 4 and 16 concurrent clients
   x 1, 16 and 64 images per request: a warm-up, then --duration s of requests, each client a
   thread with its own ``requests.Session`` (keep-alive) posting one request after the other.
   Latency is per request (client side, send to body read); images/s counts the images of 2xx
   answers over the cell's wall time; non-2xx answers and connection errors are counted.

The load client: ``requests`` in threads (``concurrent.futures``). It is installed already
(a dependency of MLflow), well kept, and with pre-serialised bodies and one keep-alive session
per client it costs well under a millisecond of CPU per request; httpx is not installed and an
asyncio client would add a dependency for no gain at 16 clients; locust is far heavier. The
client runs on the same CPUs as the server, which in-process prediction does not pay: on the
2-core development machine that counts against REST.

Reproduce (from the repository root):

    .venv/bin/python bench/serving_load.py --duration 4 --compare-unbatched --out bench/results/serving_load.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

MODEL_NAME = "cxr-bench-serving"
CLASSES = ["COVID-19", "normal", "pneumonia"]
CXR = str(Path(sys.executable).with_name("cxr"))
REPRODUCE = (
    ".venv/bin/python bench/serving_load.py --duration 4 --compare-unbatched --out bench/results/serving_load.md"
)
GOALS = {
    "p50_single": 1.3,  # REST p50, one image, 1 client <= 1.3x in-process single
    "single_16_clients": 0.8,  # REST images/s, one image, 16 clients >= 0.8x in-process batches of 16
    "batched": 0.9,  # REST images/s, 64 images, 1 client >= 0.9x in-process batches of 64
    "start_s": 15.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="the model's input side in pixels")
    parser.add_argument("--png-size", type=int, default=256, help="side of the generated PNGs")
    parser.add_argument("--images", type=int, default=64, help="distinct images (at least the largest request)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64], help="images per request")
    parser.add_argument(
        "--cells",
        nargs="+",
        default=None,
        metavar="ROWSxCLIENTS",
        help="REST cells to run, e.g. 1x16 (default: every --rows x --clients); in-process runs --rows; a goal "
        "whose cells were not run is left out of the report",
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of each measured cell")
    parser.add_argument("--compare-unbatched", action="store_true", help="also serve with --max-batch-rows 1")
    parser.add_argument("--workdir", default=None, help="folder for the MLflow store (default: a temporary one)")
    parser.add_argument("--out", default=None, help="Markdown file to write (and a .json beside it)")
    return parser.parse_args(argv)


# --- setup ----------------------------------------------------------------------------------------


def register_model(workdir: Path, size: int) -> tuple[str, str]:
    """MobileNet alpha 0.25 at `size` px as the project's pyfunc, registered with alias champion.

    Returns:
        (tracking URI, version).
    """
    import mlflow
    from mlflow import MlflowClient

    from components import serving
    from components.backbones import build_classifier

    uri = f"sqlite:///{workdir}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving-load", artifact_location=(workdir / "artifacts").as_uri())
    keras_path = workdir / "model.keras"
    build_classifier("MobileNet", len(CLASSES), size, weights="none", alpha=0.25).save(keras_path)
    with mlflow.start_run(experiment_id=experiment):
        info = serving.log_pyfunc_model(
            str(keras_path),
            serving.build_contract("multiclass", "MobileNet-alpha0.25", size),
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    return uri, version


def make_images(count: int, png_size: int) -> list[str]:
    """`count` SYNTHETIC radiographs as base64 PNG strings (classes in turn)."""
    from components.imaging import encode_png
    from components.serving import encode_image_bytes
    from components.synthetic import CLASSES as FINDINGS
    from components.synthetic import render_radiograph

    rng = np.random.default_rng(0)
    return [
        encode_image_bytes(encode_png(render_radiograph(rng, FINDINGS[i % len(FINDINGS)], png_size)))
        for i in range(count)
    ]


def bodies(images: list[str], rows: int) -> list[bytes]:
    """JSON dataframe_split bodies of `rows` images each, cycling through the images."""
    count = max(1, len(images) // rows)
    return [
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[images[(k * rows + i) % len(images)]] for i in range(rows)],
                }
            }
        ).encode()
        for k in range(count)
    ]


# --- measuring --------------------------------------------------------------------------------------


def summary(latencies: list[float], images: int, wall: float, statuses: list[int]) -> dict:
    """Percentiles in ms, images/s of 2xx answers, counts of non-2xx and 5xx answers (0: no answer)."""
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(statuses),
        "non_2xx": sum(1 for s in statuses if not 200 <= s < 300),
        "5xx": sum(1 for s in statuses if s >= 500),
        "no_answer": sum(1 for s in statuses if s == 0),
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "images_per_s": images / wall if wall > 0 else float("nan"),
        "wall_s": wall,
    }


def in_process(model, images: list[str], rows: int, duration: float) -> dict:
    """``model.predict`` on DataFrames of `rows` base64 images, one call after the other, for `duration` s."""
    frames = [pd.DataFrame({"image": [images[(k * rows + i) % len(images)] for i in range(rows)]}) for k in range(4)]
    for frame in frames[:2]:
        model.predict(frame)  # warm-up (traces the model for this batch size)
    latencies, done, k = [], 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        model.predict(frames[k % len(frames)])
        latencies.append(time.perf_counter() - t0)
        done += rows
        k += 1
    wall = time.perf_counter() - start
    return summary(latencies, done, wall, [200] * len(latencies))


def load(url: str, payloads: list[bytes], rows: int, clients: int, duration: float) -> dict:
    """`clients` threads posting `payloads` (rows images each) one after the other for `duration` s."""
    headers = {"Content-Type": "application/json"}
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: list[int] = []
    images = [0]
    barrier = threading.Barrier(clients + 1)
    go = threading.Event()
    stop_at = [0.0]

    def client(number: int) -> None:
        session = requests.Session()
        for k in range(1):  # warm-up: connection open, model traced for this batch size
            session.post(f"{url}/invocations", data=payloads[(number + k) % len(payloads)], headers=headers)
        barrier.wait()
        go.wait()
        k, mine, codes, good = number, [], [], 0
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                answer = session.post(
                    f"{url}/invocations", data=payloads[k % len(payloads)], headers=headers, timeout=120
                )
                code = answer.status_code
            except requests.RequestException:
                code = 0
            mine.append(time.perf_counter() - t0)
            codes.append(code)
            good += rows if 200 <= code < 300 else 0
            k += clients
        session.close()
        with lock:
            latencies.extend(mine)
            statuses.extend(codes)
            images[0] += good

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client, number) for number in range(clients)]
        barrier.wait()
        start = time.perf_counter()
        stop_at[0] = start + duration
        go.set()
        for future in futures:
            future.result()
        wall = time.perf_counter() - start  # includes the requests in flight at the stop time
    return summary(latencies, images[0], wall, statuses)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(workdir: Path, tracking_uri: str, options: list[str], log: Path) -> tuple[subprocess.Popen, str, dict]:
    """`cxr serve` as a child process; returns it, its URL and the seconds to /ping and /health."""
    port = free_port()
    command = [CXR, "--workdir", str(workdir / "work"), "serve", "--model-name", MODEL_NAME, "--port", str(port)]
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*command, *options], stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    times: dict[str, float] = {}
    while "health_s" not in times:
        if process.poll() is not None:
            raise RuntimeError(f"cxr serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if time.perf_counter() - start > 180:
            stop_server(process)
            raise RuntimeError(f"cxr serve not ready after 180 s:\n{log.read_text()[-3000:]}")
        for probe in ("ping", "health"):
            if f"{probe}_s" in times:
                continue
            try:
                if requests.get(f"{url}/{probe}", timeout=5).status_code == 200:
                    times[f"{probe}_s"] = time.perf_counter() - start
            except requests.RequestException:
                break
        time.sleep(0.05)
    return process, url, times


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --- machine load ------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of the whole machine (all CPUs busy) when pid is None."""
    ticks = os.sysconf("SC_CLK_TCK")
    if pid is None:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        return (user + nice + system + irq + softirq) / ticks
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ticks


def machine() -> str:
    import keras
    import mlflow
    import tensorflow as tf

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{cpu_model(platform.processor() or platform.machine())}, {os.cpu_count()} CPUs visible (shared), "
        f"{memory:.0f} GiB RAM; {platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__} ({keras.backend.backend()} backend), MLflow "
        f"{mlflow.__version__}, requests {requests.__version__}"
    )


# --- the run -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grid = _grid(args)
    largest = max([*args.rows, *(rows for rows, _ in grid)])
    if args.images < largest:
        raise SystemExit(f"--images must be at least the largest request ({largest})")
    import mlflow

    load_before = os.getloadavg()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cxr-bench-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri, version = register_model(workdir, args.size)
    images = make_images(args.images, args.png_size)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    own = os.getpid()
    busy0, own0 = cpu_seconds(), cpu_seconds(own)
    started = time.perf_counter()

    results: dict = {"in_process_before": {}, "in_process_after": {}, "servers": {}}
    for rows in args.rows:
        results["in_process_before"][rows] = in_process(model, images, rows, args.duration)
        print(f"in-process {rows:>3} images/call: {_line(results['in_process_before'][rows])}", flush=True)

    settings = {"batched": []}
    if args.compare_unbatched:
        settings["unbatched"] = ["--max-batch-rows", "1"]
    server_cpu = 0.0
    sanity = {}
    for name, options in settings.items():
        process, url, start_times = start_server(workdir, tracking_uri, options, workdir / f"serve-{name}.log")
        cells: dict = {}
        try:
            print(f"server {name}: /ping {start_times['ping_s']:.1f} s, /health {start_times['health_s']:.1f} s")
            for rows, clients in grid:
                cells[f"{rows}x{clients}"] = cell = load(url, bodies(images, rows), rows, clients, args.duration)
                print(f"REST {name} {rows:>3} images x {clients:>2} clients: {_line(cell)}", flush=True)
            sanity[name] = _same_answers(url, model, images[:16])
            stats = requests.get(f"{url}/stats", timeout=10).json()
        finally:
            server_cpu += cpu_seconds(process.pid)
            stop_server(process)
        results["servers"][name] = {"options": options, "start": start_times, "cells": cells, "stats": stats}

    for rows in args.rows:
        results["in_process_after"][rows] = in_process(model, images, rows, args.duration)
        print(f"in-process (after) {rows:>3} images/call: {_line(results['in_process_after'][rows])}", flush=True)

    wall = time.perf_counter() - started
    others = max(cpu_seconds() - busy0 - (cpu_seconds(own) - own0) - server_cpu, 0.0) / wall
    results["load"] = {
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "uptime_before": uptime_before,
        "other_cpus_busy": others,
        "wall_s": wall,
    }
    results["sanity_max_abs_diff"] = sanity
    return report(args, results, version)


def _grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The REST cells (images per request, clients) to run, in order."""
    if args.cells is None:
        return [(rows, clients) for rows in args.rows for clients in args.clients]
    grid = []
    for cell in args.cells:
        rows, _, clients = cell.lower().partition("x")
        if not (rows.isdigit() and clients.isdigit() and int(rows) > 0 and int(clients) > 0):
            raise SystemExit(f"--cells: {cell!r} is not ROWSxCLIENTS (e.g. 1x16)")
        grid.append((int(rows), int(clients)))
    return grid


def _same_answers(url: str, model, images: list[str]) -> float:
    """Largest |REST - in-process| probability over 16 images sent one per request, concurrently."""
    expected = model.predict(pd.DataFrame({"image": images}))
    columns = [c for c in expected.columns if c.startswith("prob_")]

    def post(image: str) -> dict:
        payload = {"dataframe_split": {"columns": ["image"], "data": [[image]]}}
        return requests.post(f"{url}/invocations", json=payload, timeout=60).json()["predictions"][0]

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        served = pd.DataFrame(list(pool.map(post, images)))
    return float(np.max(np.abs(served[columns].to_numpy() - expected[columns].to_numpy())))


def _line(cell: dict) -> str:
    return (
        f"{cell['requests']:>5} requests, p50 {cell['p50_ms']:7.1f} ms, p95 {cell['p95_ms']:7.1f}, "
        f"p99 {cell['p99_ms']:7.1f}, {cell['images_per_s']:7.1f} images/s, non-2xx {cell['non_2xx']}"
    )


def _ratio_text(value: float, goal: float, higher_is_better: bool) -> str:
    met = value >= goal if higher_is_better else value <= goal
    return f"**{value:.2f}×** (goal {'≥' if higher_is_better else '≤'} {goal}×: **{'met' if met else 'NOT met'}**)"


def report(args: argparse.Namespace, results: dict, version: str) -> int:
    before, after = results["in_process_before"], results["in_process_after"]

    def in_proc(rows: int, key: str) -> float:  # the mean of the runs before and after the REST runs
        return (before[rows][key] + after[rows][key]) / 2

    batched = results["servers"]["batched"]
    cells = batched["cells"]
    lines = [
        "# Serving under load: `cxr serve` on 127.0.0.1 vs in-process `mlflow.pyfunc`",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Load: `uptime` before the run: `{results['load']['uptime_before']}`; load average after: "
        + ", ".join(f"{v:.2f}" for v in results["load"]["loadavg_after"])
        + f"; other processes kept {results['load']['other_cpus_busy']:.2f} CPUs busy on average during the "
        f"{results['load']['wall_s']:.0f} s run (from /proc/stat, less this process and the servers).",
        f"- Reproduce: `{REPRODUCE}`",
        f"- Model: MobileNet alpha 0.25 at {args.size} px, weights none, 3 classes, the project's pyfunc "
        f"(version {version} of `{MODEL_NAME}` in a temporary SQLite store). Images: {args.images} SYNTHETIC "
        f"radiographs, {args.png_size} px PNG, base64 in JSON `dataframe_split` bodies. Each cell: a warm-up, "
        f"then {args.duration:g} s of requests; each client a thread with a keep-alive `requests.Session` "
        "posting one request after the other (the client shares the CPUs with the server).",
        "",
        "| mode | images per request | clients | requests | non-2xx | 5xx | p50 ms | p95 ms | p99 ms | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in (("in-process (before)", before), ("in-process (after)", after)):
        for rows, cell in runs.items():
            lines.append(_row(label, rows, 1, cell))
    for name, server in results["servers"].items():
        for key, cell in server["cells"].items():
            rows, clients = (int(v) for v in key.split("x"))
            lines.append(_row(f"REST, micro-batching {'on' if name == 'batched' else 'off'}", rows, clients, cell))
    lines.append("")
    for name, server in results["servers"].items():
        stats = server["stats"]["batching"]
        calls = (
            f"; {stats['requests']:,} predictions went through the model in {stats['model_calls']:,} calls "
            f"({stats['rows'] / max(stats['model_calls'], 1):.1f} rows per call on average, at most "
            f"{stats['largest_call_rows']})"
            if stats
            else ""
        )
        paths = server["stats"].get("invocations")  # requests read by the JSON fast path and by MLflow's parser
        if paths:
            calls += (
                f"; /invocations read {paths['fast_path']:,} requests itself (the JSON fast path) and passed "
                f"{paths['mlflow']:,} to MLflow's parser"
            )
        lines.append(
            f"- Server start, micro-batching {'on' if name == 'batched' else 'off'} (`cxr serve "
            f"{' '.join(server['options']) or '(defaults)'}`): /ping after {server['start']['ping_s']:.1f} s, "
            f"/health (the canned image through the model) after {server['start']['health_s']:.1f} s{calls}."
        )
    lines += ["", "Goals (REST with micro-batching on; in-process: the mean of the runs before and after):", ""]
    goals = {}
    grid = _grid(args)
    max_rows, max_clients = max(rows for rows, _ in grid), max(clients for _, clients in grid)
    five = sum(cells[f"{rows}x{clients}"]["5xx"] for rows, clients in grid if clients == max_clients)
    non2xx = sum(cell["non_2xx"] for server in results["servers"].values() for cell in server["cells"].values())
    goals["no_5xx_at_16"] = five == 0
    lines.append(
        f"- 5xx at {max_clients} clients: **{five}** (goal 0: **{'met' if five == 0 else 'NOT met'}**); "
        f"non-2xx answers in all cells of all servers: {non2xx}."
    )
    if "1x1" in cells and 1 in before:
        ratio = cells["1x1"]["p50_ms"] / in_proc(1, "p50_ms")
        goals["p50_single"] = ratio <= GOALS["p50_single"]
        lines.append(
            f"- REST p50 for one image, 1 client, vs in-process single: {cells['1x1']['p50_ms']:.1f} vs "
            f"{in_proc(1, 'p50_ms'):.1f} ms: {_ratio_text(ratio, GOALS['p50_single'], False)}."
        )
    if f"1x{max_clients}" in cells and 16 in before:
        ratio = cells[f"1x{max_clients}"]["images_per_s"] / in_proc(16, "images_per_s")
        goals["single_16_clients"] = ratio >= GOALS["single_16_clients"]
        lines.append(
            f"- REST images/s, one image per request, {max_clients} clients, vs in-process batches of 16: "
            f"{cells[f'1x{max_clients}']['images_per_s']:.1f} vs {in_proc(16, 'images_per_s'):.1f}: "
            f"{_ratio_text(ratio, GOALS['single_16_clients'], True)}."
        )
        if f"1x{max_clients}" in results["servers"].get("unbatched", {}).get("cells", {}):
            off = results["servers"]["unbatched"]["cells"][f"1x{max_clients}"]["images_per_s"]
            lines.append(
                f"  Micro-batching off: {off:.1f} images/s ({off / in_proc(16, 'images_per_s'):.2f}×); on vs off "
                f"{cells[f'1x{max_clients}']['images_per_s'] / off:.2f}×."
            )
    if max_rows > 1 and f"{max_rows}x1" in cells and max_rows in before:
        ratio = cells[f"{max_rows}x1"]["images_per_s"] / in_proc(max_rows, "images_per_s")
        goals["batched"] = ratio >= GOALS["batched"]
        lines.append(
            f"- REST images/s, {max_rows} images per request, 1 client, vs in-process batches of {max_rows}: "
            f"{cells[f'{max_rows}x1']['images_per_s']:.1f} vs {in_proc(max_rows, 'images_per_s'):.1f}: "
            f"{_ratio_text(ratio, GOALS['batched'], True)} (p50 {cells[f'{max_rows}x1']['p50_ms']:.0f} vs "
            f"{in_proc(max_rows, 'p50_ms'):.0f} ms, "
            f"{cells[f'{max_rows}x1']['p50_ms'] / in_proc(max_rows, 'p50_ms'):.2f}×)."
        )
    start_s = batched["start"]["health_s"]
    goals["start_s"] = start_s < GOALS["start_s"]
    lines.append(
        f"- Server start to ready (/health): {start_s:.1f} s (goal < {GOALS['start_s']:g} s: "
        f"**{'met' if goals['start_s'] else 'NOT met'}**)."
    )
    sanity = results["sanity_max_abs_diff"]
    lines += [
        "",
        "Sanity: 16 images sent one per request, concurrently, against one in-process call of 16: largest "
        "probability difference " + ", ".join(f"{k} {v:.1e}" for k, v in sanity.items()) + ".",
        "",
        "The development machine's 2 cores are shared with other work; figures vary from run to run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results["goals"] = goals
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if all(goals.values()) else 1


def _row(label: str, rows: int, clients: int, cell: dict) -> str:
    return (
        f"| {label} | {rows} | {clients} | {cell['requests']:,} | {cell['non_2xx']} | {cell['5xx']} | "
        f"{cell['p50_ms']:.1f} | {cell['p95_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['images_per_s']:.1f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
