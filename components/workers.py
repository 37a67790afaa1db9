"""Process pools for CPU-bound work (decoding and hashing images, augmenting them).

forkserver where the platform has it: forking a process that runs threads
(ZenML, MLflow, TensorFlow, boto3 connection pools) can deadlock the child;
spawn elsewhere. Workers take the parent's environment as it is when the pool
is made: fork-server workers would otherwise see it as it was when the server
started, missing e.g. AWS variables set since.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor


def available_cores() -> int:
    """Count the CPU cores this process may run on (a container's CPU set, not the host's count).

    Returns:
        len(os.sched_getaffinity(0)) where the platform has it (Linux), else os.cpu_count(); at least 1.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """Turn a config's worker count into a number of processes.

    Args:
        workers: 0 for one per available core, else the count itself.

    Returns:
        The number of workers, at least 1 when `workers` >= 0.
    """
    return workers if workers > 0 else available_cores()


def process_pool(workers: int, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    """Make a process pool whose workers start from a fork server (or spawn) with the parent's environment.

    Args:
        workers: number of processes.
        preload: modules the fork server imports once, so that each pool's workers start in
            milliseconds (effective only if no fork server runs yet in this process).

    Returns:
        A ProcessPoolExecutor; use it as a context manager or shut it down.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", *preload])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_adopt_environment, initargs=(dict(os.environ),)
    )


def _adopt_environment(environment: dict[str, str]) -> None:
    """Pool initializer: make the worker's environment the parent's."""
    for name in set(os.environ) - set(environment):
        del os.environ[name]
    os.environ.update(environment)
