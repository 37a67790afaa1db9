"""What a `cxr` command shows on the console, and the log file that keeps everything.

Every command that opens a work folder writes `<workdir>/logs/<UTC time>-<command>-<pid>.log`: every
record at the root logger's level, tracebacks included. The console is spared three kinds of records,
each matched exactly (logger name and message), never by level or by logger alone:

- the traceback ZenML's local orchestrator logs with a step that failed on a user-facing error
  (components.errors.CxrError and the like): the CLI prints the error's message, the log keeps the trace;
- ZenML's "Failed to run step `<step>`: <message>" for such an error: the message would show twice;
- warnings known to be harmless in this project (HARMLESS, each with the reason).

The filters sit on the loggers that emit these records and hand the full record to the log file
before the console sees the trimmed one (or none).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOCAL_ORCHESTRATOR_LOGGER = "zenml.orchestrators.local.local_orchestrator"
STEP_LAUNCHER_LOGGER = "zenml.orchestrators.step_launcher"


def _zenml_file_logger(module: str) -> str:
    """The name of a ZenML logger made with `get_logger(__file__)`: the module's file path (ZenML not imported)."""
    spec = importlib.util.find_spec("zenml")
    if spec is None or spec.origin is None:
        return module
    return str(Path(spec.origin).parent.joinpath(*module.split(".")[1:]).with_suffix(".py"))


COMPILER_LOGGER = _zenml_file_logger("zenml.config.compiler")
STEP_FAILED = "Step %s failed."  # the local orchestrator, with the step's traceback (logger.exception)
FAILED_TO_RUN_STEP = "Failed to run step `%s`: %s"  # the step launcher, the exception's message as argument


@dataclass(frozen=True)
class Harmless:
    """A record known to be harmless here: its logger, its exact text, and why it is harmless."""

    logger: str
    text: str
    why: str
    template: bool = False  # `text` is the record's format string (its argument varies, e.g. a step name)

    def matches(self, record: logging.LogRecord) -> bool:
        if record.name != self.logger:
            return False
        if self.template:
            return record.msg == self.text
        return record.getMessage() == self.text


HARMLESS = (
    Harmless(
        "zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker",
        "Failed to disable MLflow autologging for the following frameworks: ['fastai'].",
        "fastai is not installed, so MLflow cannot import its autologging module, and there is nothing of "
        "fastai to autolog either; ZenML's tracker tries to disable it before every step.",
    ),
    Harmless(
        "zenml.utils.warnings.controller",
        "[ZML002](USAGE) - You are specifying docker settings but no component in your stack makes use of "
        "them. Consider switching stacks or removing the settings.",
        "zenml_config.yaml's docker settings are for container orchestrators (Kubernetes, Kubeflow); the "
        "local orchestrator runs steps in this process and needs no image.",
    ),
    Harmless(
        LOCAL_ORCHESTRATOR_LOGGER,
        "Specifying step resources is not supported for the local orchestrator, ignoring resource "
        "configuration for step %s.",
        "zenml_config.yaml asks a GPU and CPUs for the train steps of a Kubernetes cluster; a local run "
        "uses this machine as it is.",
        template=True,
    ),
    Harmless(
        COMPILER_LOGGER,
        "Configuration for step invocations {'expand_training_data'} cannot be applied to any pipeline step "
        "invocations, ignoring...",
        "zenml_config.yaml configures the offline augmentation step, which only a training run with "
        "augmentation.mode offline has; every other pipeline reads the same file.",
    ),
)

# Python warnings (logging.captureWarnings, which ZenML turns on, prints them as log records).
HARMLESS_WARNINGS = (
    # google.api_core (imported by a GX dependency) announces that a future release drops Python 3.11, the
    # version the project pins; the installed release supports it.
    (FutureWarning, r"You are using a Python version \(3\.11\.\d+\) which Google will stop supporting"),
)


class RunLog(logging.FileHandler):
    """The command's log file; `step_failed` says whether a pipeline step failed on a user-facing error."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.path = path
        self.step_failed = False
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.addFilter(_not_yet_written)

    def write(self, record: logging.LogRecord) -> None:
        """Write the full record (once) whatever the console filters do with it afterwards."""
        if not getattr(record, "_cxr_in_run_log", False):
            self.handle(record)
            record._cxr_in_run_log = True


def _not_yet_written(record: logging.LogRecord) -> bool:
    return not getattr(record, "_cxr_in_run_log", False)


_active: RunLog | None = None


def active_run_log() -> RunLog | None:
    """The log file of the command running in this process, or None (no work folder opened yet)."""
    return _active


def open_run_log(folder: Path, command: str, argv: list[str]) -> RunLog:
    """Start the command's log file in `folder` (created) and attach it to the root logger.

    Args:
        folder: the work folder's logs folder (cxr.stack.LocalPaths.logs).
        command: the command's name, part of the file name.
        argv: the command's arguments, its first line.

    Returns:
        The handler; the same one when this command already opened it.
    """
    global _active
    if _active is not None:
        return _active
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", command) or "cxr"
    _active = RunLog(folder / f"{stamp}-{name}-{os.getpid()}.log")
    logging.getLogger().addHandler(_active)
    header = f"cxr {' '.join(argv)} (work folder {folder.parent})"
    _active.write(logging.getLogger(__name__).makeRecord(__name__, logging.INFO, __file__, 0, header, (), None))
    return _active


def close_run_log() -> None:
    """Detach and close the command's log file (a next command in this process opens its own)."""
    global _active
    if _active is not None:
        logging.getLogger().removeHandler(_active)
        _active.close()
        _active = None


def log_exception(error: BaseException, message: str) -> None:
    """Write `message` and the traceback of `error` to the command's log file only (if open)."""
    if _active is None:
        return
    record = logging.getLogger(__name__).makeRecord(
        __name__, logging.ERROR, __file__, 0, message, (), (type(error), error, error.__traceback__)
    )
    _active.write(record)


class ConsoleFilter(logging.Filter):
    """On the loggers of HARMLESS and of failed steps: keep the console to the product's own message."""

    def __init__(self, user_facing: Callable[[BaseException], bool]) -> None:
        super().__init__()
        self.user_facing = user_facing

    def filter(self, record: logging.LogRecord) -> bool:
        harmless = any(known.matches(record) for known in HARMLESS)
        failed_step = (
            record.name == STEP_LAUNCHER_LOGGER
            and record.msg == FAILED_TO_RUN_STEP
            and isinstance(record.args, tuple)
            and len(record.args) == 2
            and isinstance(record.args[1], BaseException)
            and self.user_facing(record.args[1])
        )
        trace = bool(record.exc_info) and record.exc_info[1] is not None and self.user_facing(record.exc_info[1])
        if not (harmless or failed_step or trace):
            return True
        if _active is not None:
            _active.write(record)
            if trace and record.name == LOCAL_ORCHESTRATOR_LOGGER and record.msg == STEP_FAILED:
                _active.step_failed = True
        if harmless or failed_step:
            return False
        record.exc_info, record.exc_text = None, None
        return True


def install_console_filters(user_facing: Callable[[BaseException], bool]) -> None:
    """Attach ConsoleFilter to each logger it concerns (once) and ignore HARMLESS_WARNINGS."""
    names = {known.logger for known in HARMLESS} | {LOCAL_ORCHESTRATOR_LOGGER, STEP_LAUNCHER_LOGGER}
    for name in sorted(names):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, ConsoleFilter) for existing in logger.filters):
            logger.addFilter(ConsoleFilter(user_facing))
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
