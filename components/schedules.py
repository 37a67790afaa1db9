"""Scheduled retraining without ZenML: cron validation, next run times, KFP's cron, crontab and systemd text.

`cxr schedule create` (cxr/schedule.py) hands a cron to ZenML for orchestrators that schedule
(the Kubernetes orchestrator makes a CronJob; Kubeflow a recurring run, whose cron has six
fields, seconds first) and, on the local stack, where ZenML refuses schedules, prints the
crontab line and the systemd timer + service pair that run the same `cxr train`.

One cron dialect is accepted everywhere: five fields (minute, hour, day of month, month, day
of week) of numbers, names (jan-dec, sun-sat), `*`, ranges `a-b`, lists `a,b` and steps
`*/n` or `a-b/n`, or a macro (@hourly, @daily, @midnight, @weekly, @monthly, @yearly,
@annually). That is what Kubernetes CronJobs (robfig/cron's standard parser), Kubeflow
(robfig/cron with a seconds field) and crontab all read; croniter extensions (L, W, #, H, a
year field) and day of week 7 (crontab's second Sunday, refused by Kubernetes) are refused.

Concurrency: the scheduled command takes `flock -n` on `<workdir>/train.lock`, so a run that
starts while the previous one still holds the lock exits at once and a line in the schedule's
log says why (the lock is flock's, not one inside `cxr train`). Kubernetes: the CronJob gets
`concurrencyPolicy: Forbid` (cxr/schedule.py sets ZenML's `concurrency_policy`).
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime
from pathlib import Path

from croniter import CroniterBadDateError, CroniterError, croniter
from pydantic import BaseModel, Field

from components.config import ConfigError

__all__ = [
    "CronError",
    "KfpCron",
    "LOCK_SKIPPED_EXIT",
    "ScheduleRecord",
    "ScheduledJob",
    "SystemdUnits",
    "crontab_line",
    "format_schedules",
    "from_kfp_cron",
    "next_runs",
    "on_calendar",
    "schedule_name",
    "shell_command",
    "systemd_units",
    "to_kfp_cron",
    "train_argv",
    "validate_cron",
]

# (name, lowest, highest) of the five standard fields, in order.
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
SYNTAX = "numbers, names (jan-dec, sun-sat), *, ranges a-b, lists a,b and steps */n or a-b/n"
# flock's exit status when the lock is held (-E), told apart from the training run's own statuses.
LOCK_SKIPPED_EXIT = 75
LOCK_FILE = "train.lock"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# What the Kubeflow orchestrator of ZenML 0.98 does not do for a recurring run it created.
KUBEFLOW_LIMITS = (
    "ZenML's Kubeflow orchestrator implements neither update_schedule nor delete_schedule: "
    "`cxr schedule pause/resume` cannot reach the recurring run (enable or disable it in the KFP UI or with "
    "kfp.Client().disable_recurring_run(ID)), and `cxr schedule delete` removes only ZenML's record",
    "KFP has no update for a recurring run's cron: to change it, delete the recurring run and create the "
    "schedule again",
    "KFP starts at most max_concurrency=1 run of a recurring run at a time (kfp.Client's default, which ZenML keeps)",
)


class CronError(ConfigError):
    """A cron expression is not valid (the message names the field and why); exit status 2 at the CLI."""


def _value(text: str, field: int, expression: str) -> int:
    name, low, high = FIELDS[field]
    names = MONTHS if field == 3 else WEEKDAYS if field == 4 else ()
    if text.lower() in names:
        return names.index(text.lower()) + (1 if field == 3 else 0)
    if not text.isdigit():
        hint = f" or a name ({names[0]}-{names[-1]})" if names else ""
        raise CronError(f"cron {expression!r}: {name} field: {text!r} is not a number{hint}; the syntax is {SYNTAX}")
    value = int(text)
    if field == 4 and value == 7:
        raise CronError(f"cron {expression!r}: day of week 7: use 0 for Sunday (Kubernetes and Kubeflow take 0-6)")
    if not low <= value <= high:
        raise CronError(f"cron {expression!r}: {name} field: {value} is out of range {low}-{high}")
    return value


def _check_item(item: str, field: int, expression: str) -> None:
    name, low, high = FIELDS[field]
    if not item:
        raise CronError(f"cron {expression!r}: {name} field: an empty list item")
    bad = re.search(r"[^0-9A-Za-z*,/-]", item) or re.search(r"(?i)^(l|w|h)$|\dw$|^l-|\d+l$", item)
    if bad:
        raise CronError(
            f"cron {expression!r}: {name} field: {item!r} is not portable cron (Kubernetes, Kubeflow and crontab "
            f"take {SYNTAX})"
        )
    span, _, step = item.partition("/")
    if "/" in step:
        raise CronError(f"cron {expression!r}: {name} field: {item!r} has more than one step")
    if step:
        if not step.isdigit() or not 1 <= int(step) <= high - low + 1:
            raise CronError(f"cron {expression!r}: {name} field: step {step!r} must be a number 1-{high - low + 1}")
        if "-" not in span and span != "*":
            raise CronError(
                f"cron {expression!r}: {name} field: {item!r}: a step needs * or a range (write {span}-{high}/{step})"
            )
    if span == "*":
        return
    first, dash, last = span.partition("-")
    start = _value(first, field, expression)
    if dash:
        end = _value(last, field, expression)
        if start > end:
            raise CronError(f"cron {expression!r}: {name} field: range {span!r} ends before it starts")


def validate_cron(expression: str) -> str:
    """Check a five-field cron expression; return it normalised (a macro expanded, single spaces).

    Args:
        expression: e.g. "0 3 * * 1" (Mondays at 03:00) or "@daily".

    Returns:
        The five fields joined by single spaces, e.g. "0 3 * * 1"; "@weekly" becomes "0 0 * * 0".

    Raises:
        CronError: not five fields, a field with a value out of range, a name in the wrong field, a
            reversed range, a bad step, day of week 7, a croniter-only extension (L, W, #, H, a year or
            seconds field) or an unknown macro; the message names the field.
    """
    text = " ".join(str(expression).split())
    if not text:
        raise CronError("cron: empty expression; give five fields, e.g. '0 3 * * 1' (Mondays at 03:00)")
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise CronError(f"cron {text!r}: unknown macro; use one of {', '.join(MACROS)} or five fields")
        return MACROS[text.lower()]
    fields = text.split(" ")
    if len(fields) != 5:
        kfp = " (a Kubeflow cron with seconds first is made from the five fields)" if len(fields) == 6 else ""
        raise CronError(
            f"cron {text!r} has {len(fields)} fields; give 5: minute hour day-of-month month day-of-week{kfp}"
        )
    for index, field in enumerate(fields):
        for item in field.split(","):
            _check_item(item, index, text)
    if not croniter.is_valid(text):  # a second opinion; every case above should have caught it first
        raise CronError(f"cron {text!r} is not valid")
    return text


def next_runs(expression: str, after: datetime, count: int = 3) -> list[datetime]:
    """The next `count` times a cron expression fires, strictly after `after`, in `after`'s time zone.

    Args:
        expression: a five-field cron (validated here).
        after: a timezone-aware datetime; the cron is read in its time zone (DST shifts included).
        count: how many times, >= 1.

    Returns:
        `count` timezone-aware datetimes, increasing.

    Raises:
        CronError: the expression is not valid, or it never fires (e.g. "0 0 31 2 *", February 31st).
        ValueError: `after` has no time zone.
    """
    if after.tzinfo is None:
        raise ValueError("next_runs: `after` must be timezone-aware (the cron is read in its time zone)")
    text = validate_cron(expression)
    iterator = croniter(text, after)
    try:
        return [iterator.get_next(datetime) for _ in range(count)]
    except CroniterBadDateError:
        raise CronError(f"cron {text!r} never fires (no date matches its day of month and month)") from None
    except CroniterError as error:  # pragma: no cover - validate_cron refuses what croniter cannot read
        raise CronError(f"cron {text!r}: {error}") from None


class KfpCron(BaseModel):
    """A cron for Kubeflow Pipelines: six fields, seconds first (robfig/cron), and what KFP cannot update."""

    source: str = Field(description="the five-field cron it was made from")
    expression: str = Field(description="six fields: second minute hour day-of-month month day-of-week")
    cannot_update: list[str] = Field(description="what neither ZenML nor KFP can change on the recurring run")


def to_kfp_cron(expression: str) -> KfpCron:
    """Convert a five-field cron to Kubeflow's six-field cron (second 0 first).

    KFP reads the same minute..day-of-week syntax as Kubernetes (robfig/cron), so the fields are
    kept; a macro is expanded first (validate_cron).

    Args:
        expression: a five-field cron or a macro, e.g. "0 3 * * 1".

    Returns:
        KfpCron with expression "0 0 3 * * 1" and the list of what cannot be updated on Kubeflow.

    Raises:
        CronError: the expression is not valid (validate_cron).
    """
    text = validate_cron(expression)
    return KfpCron(source=text, expression=f"0 {text}", cannot_update=list(KUBEFLOW_LIMITS))


def from_kfp_cron(expression: str) -> str:
    """The five-field cron of a six-field KFP cron whose seconds field is 0 (to list its next runs).

    Args:
        expression: six fields, seconds first, e.g. "0 0 3 * * 1".

    Returns:
        e.g. "0 3 * * 1".

    Raises:
        CronError: not six fields, a seconds field other than "0", or an invalid remainder.
    """
    fields = " ".join(str(expression).split()).split(" ")
    if len(fields) != 6 or fields[0] != "0":
        raise CronError(f"KFP cron {expression!r}: expected six fields with seconds 0 first, e.g. '0 0 3 * * 1'")
    return validate_cron(" ".join(fields[1:]))


def on_calendar(expression: str) -> list[str]:
    """The systemd OnCalendar= values that fire exactly when the cron does (in local time, as cron does).

    Every restricted field is expanded to its list of values. When both day of month and day of
    week are restricted, cron fires on either and systemd only on both, so two values are returned
    (a timer with several OnCalendar= fires on any).

    Args:
        expression: a five-field cron or a macro.

    Returns:
        One or two strings such as "Mon *-*-* 03:00:00".

    Raises:
        CronError: the expression is not valid (validate_cron).
    """
    text = validate_cron(expression)
    minute, hour, dom, month, dow = croniter(text).expanded

    def values(expanded: list, low: int, high: int, width: int) -> str:
        if expanded == ["*"] or sorted(set(expanded)) == list(range(low, high + 1)):
            return "*"
        return ",".join(f"{value:0{width}d}" for value in sorted(set(expanded)))

    def weekdays(expanded: list) -> str:
        if expanded == ["*"] or sorted({v % 7 for v in expanded}) == list(range(7)):
            return ""
        names = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
        return ",".join(names[v % 7] for v in sorted({v % 7 for v in expanded})) + " "

    time = f"{values(hour, 0, 23, 2)}:{values(minute, 0, 59, 2)}:00"
    months, days, week = values(month, 1, 12, 2), values(dom, 1, 31, 2), weekdays(dow)
    if days != "*" and week:
        return [f"*-{months}-{days} {time}", f"{week}*-{months}-* {time}"]
    return [f"{week}*-{months}-{days} {time}"]


def schedule_name(name: str | None, config_path: str | Path) -> str:
    """The schedule's name: the one given, else `train-<config file stem>`.

    Args:
        name: --name, or None.
        config_path: the run config, e.g. configs/quick.yaml (-> "train-quick").

    Returns:
        A name of letters, digits, `_`, `.` and `-`, 1-63 characters, starting with a letter or digit
        (it names systemd units and log files).

    Raises:
        ConfigError: the name given does not match that pattern.
    """
    chosen = name if name is not None else "train-" + re.sub(r"[^A-Za-z0-9_.-]", "-", Path(config_path).stem)
    if not NAME_PATTERN.fullmatch(chosen):
        raise ConfigError(
            f"schedule name {chosen!r}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return chosen


class ScheduledJob(BaseModel):
    """The `cxr train` a local schedule runs: absolute paths, since cron and systemd start elsewhere."""

    name: str
    cron: str = Field(description="five-field cron, validated")
    project_root: Path
    cxr: Path = Field(description="the cxr executable of the project's virtual environment")
    workdir: Path
    config: Path
    if_data_changed: bool = False
    zenml_configs: list[Path] = []
    overrides: list[str] = Field(default=[], description="--set KEY=VALUE items, passed on")

    @property
    def lock(self) -> Path:
        """The lock file every scheduled `cxr train` of this work folder takes (flock -n)."""
        return self.workdir / LOCK_FILE

    @property
    def log(self) -> Path:
        """Where the scheduled runs' output and the skipped runs' reasons are appended."""
        return self.workdir / f"schedule-{self.name}.log"


def train_argv(job: ScheduledJob) -> list[str]:
    """The `cxr train` command line of a scheduled job (no lock, no log redirection).

    Args:
        job: the scheduled job.

    Returns:
        argv: [cxr, --workdir, W, train, --config, C, (--set K=V)..., (--zenml-config Z)..., [--if-data-changed]].
    """
    argv = [str(job.cxr), "--workdir", str(job.workdir), "train", "--config", str(job.config)]
    for item in job.overrides:
        argv += ["--set", item]
    for overlay in job.zenml_configs:
        argv += ["--zenml-config", str(overlay)]
    if job.if_data_changed:
        argv.append("--if-data-changed")
    return argv


def shell_command(job: ScheduledJob) -> str:
    """The /bin/sh command a crontab line or systemd service runs: cd, lock, train, log.

    `flock -n -E 75` skips the run when the previous one still holds `<workdir>/train.lock`, and
    a line saying so is appended to the schedule's log (`<workdir>/schedule-<name>.log`).

    Args:
        job: the scheduled job.

    Returns:
        One line of shell.
    """
    quote = shlex.quote
    log, lock = quote(str(job.log)), quote(str(job.lock))
    train = " ".join(quote(part) for part in train_argv(job))
    reason = f"{job.name}: skipped, the previous training run still holds {job.lock}"
    return (
        f"cd {quote(str(job.project_root))} && flock -n -E {LOCK_SKIPPED_EXIT} {lock} {train} >> {log} 2>&1; "
        f'test $? -ne {LOCK_SKIPPED_EXIT} || echo "$(date -Iseconds) "{quote(reason)} >> {log}'
    )


def crontab_line(job: ScheduledJob) -> str:
    """The crontab line of a scheduled job (for `crontab -e`; `%` escaped, as crontab requires).

    Args:
        job: the scheduled job.

    Returns:
        "<cron> <shell command>", one line.
    """
    return f"{job.cron} {shell_command(job).replace('%', chr(92) + '%')}"


class SystemdUnits(BaseModel):
    """A systemd timer and the oneshot service it starts (user units: ~/.config/systemd/user/)."""

    service_name: str
    service: str
    timer_name: str
    timer: str


def _systemd_word(text: str) -> str:
    """One ExecStart= word: double-quoted with C escapes; `%` and `$` doubled (specifiers, variables)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_units(job: ScheduledJob) -> SystemdUnits:
    """The systemd timer + service pair that runs the same command as the crontab line.

    The timer fires on the cron's times in local time (OnCalendar=, see on_calendar), does not
    catch up missed runs (Persistent=false, as cron), and systemd never starts the service while
    it still runs; the flock in the command also keeps it from overlapping a crontab or manual run.

    Args:
        job: the scheduled job.

    Returns:
        SystemdUnits with the unit names `cxr-<name>.service` / `cxr-<name>.timer` and their text.

    Raises:
        CronError: the job's cron is not valid.
    """
    unit = f"cxr-{job.name}"
    description = f"cxr scheduled training {job.name} ({job.config.name})"
    service = "\n".join(
        [
            "[Unit]",
            f"Description={description}",
            "",
            "[Service]",
            "Type=oneshot",
            f"ExecStart=/bin/sh -c {_systemd_word(shell_command(job))}",
            "",
        ]
    )
    timer = "\n".join(
        [
            "[Unit]",
            f"Description={description}: {job.cron}",
            "",
            "[Timer]",
            *(f"OnCalendar={value}" for value in on_calendar(job.cron)),
            "Persistent=false",
            f"Unit={unit}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return SystemdUnits(service_name=f"{unit}.service", service=service, timer_name=f"{unit}.timer", timer=timer)


class ScheduleRecord(BaseModel):
    """One schedule as `cxr schedule list` shows it (read from ZenML's ScheduleResponse by cxr/schedule.py)."""

    name: str
    active: bool
    cron: str | None = Field(description="as the orchestrator got it (six fields on Kubeflow)")
    orchestrator: str | None = Field(description="the orchestrator component's name; None when it was deleted")
    flavor: str | None = None
    pipeline: str | None = None
    created: datetime | None = None
    next_runs: list[datetime] = Field(default=[], description="UTC, empty when paused or not a cron")


def record_next_runs(cron: str | None, flavor: str | None, active: bool, now: datetime, count: int = 3):
    """The next run times of a schedule as ZenML recorded it (a Kubeflow six-field cron read back).

    Args:
        cron: the cron expression ZenML stored, or None (an interval schedule).
        flavor: the orchestrator flavor ("kubeflow" stores six fields).
        active: False for a paused schedule (no next runs).
        now: timezone-aware; the times are in its zone.
        count: how many.

    Returns:
        A list of datetimes; empty when paused, not a cron, or not a cron this module reads.
    """
    if not active or not cron:
        return []
    try:
        five = from_kfp_cron(cron) if flavor == "kubeflow" else cron
        return next_runs(five, now, count)
    except CronError:
        return []


def format_schedules(records: list[ScheduleRecord]) -> str:
    """The table `cxr schedule list` prints: name, state, cron, orchestrator, next run (UTC).

    Args:
        records: the schedules.

    Returns:
        Text lines; a header and one row per schedule.
    """
    rows = [("NAME", "STATE", "CRON", "ORCHESTRATOR", "PIPELINE", "NEXT RUN (UTC)")]
    for record in records:
        orchestrator = f"{record.orchestrator} ({record.flavor})" if record.orchestrator else "(deleted)"
        upcoming = record.next_runs[0].strftime("%Y-%m-%d %H:%M") if record.next_runs else "-"
        rows.append(
            (
                record.name,
                "active" if record.active else "paused",
                record.cron or "-",
                orchestrator,
                record.pipeline or "-",
                upcoming,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
