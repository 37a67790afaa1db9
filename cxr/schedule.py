"""`cxr schedule`: one interface over ZenML schedules of the training pipeline.

create: the cron is validated and its next three runs printed (components.schedules); then, on the
stack's orchestrator,
- Kubernetes: ZenML submits a CronJob; `concurrency_policy: Forbid` is set (a run does not start
  while the previous one runs), and ZenML can pause, resume and delete it;
- Kubeflow: ZenML creates a recurring run; its cron has six fields, seconds first (converted), and
  what ZenML and KFP cannot update there is printed;
- any other schedulable orchestrator: the five-field cron as it is;
- an orchestrator ZenML refuses schedules on (the local stack): nothing is scheduled (exit 1) and the
  crontab line and systemd timer + service that run the same `cxr train` are printed.
list / pause / resume / delete: ZenML's Client, refusing with a reason where the orchestrator cannot
pause or delete (ZenML itself only logs a warning and does nothing).
"""

from __future__ import annotations

import inspect
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.config import RunConfig, merged_yaml_file
from components.errors import CxrError
from components.schedules import (
    ScheduledJob,
    ScheduleRecord,
    crontab_line,
    format_schedules,
    next_runs,
    record_next_runs,
    systemd_units,
    to_kfp_cron,
)
from cxr.stack import STACK_NAME, LocalPaths, ensure_local_stack
from cxr.zenml_keys import zenml_config_keys

# ZenML's stack of a fresh store; `cxr schedule` then uses the local stack, as `cxr train` does.
ZENML_DEFAULT_STACK = "default"
# A scheduled run must not start while the previous one runs (KubernetesOrchestratorSettings).
KUBERNETES_SETTINGS = {"orchestrator.kubernetes": {"concurrency_policy": "Forbid"}}
# The training pipeline's parameter `cxr schedule create --if-data-changed` sets on orchestrator schedules.
IF_DATA_CHANGED_PARAMETER = "if_data_changed"
REFUSED_EXIT = 1


class ScheduleError(CxrError, RuntimeError):
    """A schedule cannot be created, found, paused, resumed or deleted; the message says why."""


def _client():
    from zenml.client import Client

    return Client()


def select_stack(paths: LocalPaths, project_root: Path, stack: str | None) -> Any:
    """Activate `stack` (or keep the active one; the local stack when it is ZenML's default); return it.

    Raises:
        StackNotFoundError: the stack does not exist (cxr.runner.use_stack).
        ScheduleError: its orchestrator's integration is not installed.
    """
    from cxr.runner import use_stack

    client = _client()
    if stack is not None:  # as `cxr train --stack`: that stack, or the local one created and activated
        use_stack(paths, project_root, stack)
    elif client.active_stack_model.name in (ZENML_DEFAULT_STACK, STACK_NAME):
        ensure_local_stack(paths, project_root)  # creates and activates it
    try:
        return client.active_stack
    except ImportError as error:
        raise ScheduleError(
            f"stack {client.active_stack_model.name}: its orchestrator's integration is not installed "
            f"({error}); install it with `zenml integration install <flavor>`"
        ) from None


def now_utc() -> datetime:
    return datetime.now(UTC)


def local_job(
    name: str,
    cron: str,
    config: str,
    paths: LocalPaths,
    project_root: Path,
    if_data_changed: bool,
    zenml_configs: list[str],
    overrides: list[str],
) -> ScheduledJob:
    """The `cxr train` a crontab line or systemd timer runs, with absolute paths."""
    return ScheduledJob(
        name=name,
        cron=cron,
        project_root=project_root.resolve(),
        cxr=Path(sys.prefix) / "bin" / "cxr",
        workdir=paths.workdir.resolve(),
        config=Path(config).resolve(),
        if_data_changed=if_data_changed,
        zenml_configs=[Path(p).resolve() for p in zenml_configs],
        overrides=overrides,
    )


def _next_runs_text(cron: str, zone_label: str, after: datetime) -> str:
    times = next_runs(cron, after)
    return f"Next runs ({zone_label}): " + ", ".join(t.strftime("%a %Y-%m-%d %H:%M") for t in times)


def refusal_text(job: ScheduledJob, stack_name: str, orchestrator: str, flavor: str, after: datetime) -> str:
    """What `cxr schedule create` prints where ZenML refuses schedules: the crontab line and systemd units."""
    units = systemd_units(job)
    user_units = "~/.config/systemd/user"
    return "\n".join(
        [
            f"ZenML refuses schedules on stack '{stack_name}': its orchestrator '{orchestrator}' ({flavor}) does "
            "not support them. Nothing was scheduled.",
            "Run the same job with cron or a systemd timer instead. A run that starts while the previous one still "
            f"runs is skipped (flock -n on {job.lock}) and says so in {job.log}.",
            _next_runs_text(job.cron, f"local time, {after.astimezone().tzname()}", after.astimezone()),
            "",
            "# crontab line (crontab -e):",
            crontab_line(job),
            "",
            f"# or a systemd timer + service: {user_units}/{units.timer_name}",
            units.timer.rstrip(),
            f"# {user_units}/{units.service_name}",
            units.service.rstrip(),
            f"# then: systemctl --user daemon-reload && systemctl --user enable --now {units.timer_name}",
        ]
    )


def schedule_run_config(
    flavor: str, project_root: Path, zenml_overlays: list[str], workdir: Path, train_step_ids: list[str] = ()
) -> Path:
    """The ZenML run config of a scheduled training pipeline: zenml_config.yaml, the overlays, and on the
    Kubernetes orchestrator `concurrency_policy: Forbid` merged last (it wins over an overlay's).

    Raises:
        ConfigError: an overlay cannot be read or is not a mapping (components.config.merged_yaml_file).
    """
    import yaml

    overlays = [project_root / "zenml_config.yaml", *zenml_overlays]
    if flavor == "kubernetes":
        forbid = workdir / "zenml_schedule_kubernetes.yaml"
        forbid.write_text(yaml.safe_dump({"settings": KUBERNETES_SETTINGS}))
        overlays.append(forbid)
    return merged_yaml_file(
        overlays, workdir / "zenml_schedule_config.yaml", train_step_ids=train_step_ids, known_keys=zenml_config_keys()
    )


def create_schedule(
    *,
    name: str,
    cron: str,
    config: RunConfig,
    config_path: str,
    paths: LocalPaths,
    project_root: Path,
    if_data_changed: bool,
    zenml_overlays: list[str],
    overrides: list[str],
    stack: str | None = None,
) -> tuple[int, str]:
    """Schedule the training pipeline on the stack's orchestrator; returns (exit status, text to print).

    Where ZenML refuses schedules (`orchestrator.config.is_schedulable` False, the check ZenML makes
    before it would submit one) the status is 1 and the text holds the crontab line and systemd units.

    Raises:
        ScheduleError: a schedule of that name exists, or --if-data-changed cannot be passed on.
        CronError: the cron is not valid (checked by the caller first).
    """
    schedule_run_config("", project_root, zenml_overlays, paths.workdir)  # ConfigError: a bad overlay, first
    active = select_stack(paths, project_root, stack)
    orchestrator = active.orchestrator
    flavor = orchestrator.flavor
    if not orchestrator.config.is_schedulable:
        job = local_job(name, cron, config_path, paths, project_root, if_data_changed, zenml_overlays, overrides)
        return REFUSED_EXIT, refusal_text(job, active.name, orchestrator.name, flavor, now_utc())

    client = _client()
    if client.list_schedules(name=name).total:
        raise ScheduleError(f"a schedule named {name!r} exists; delete it first (cxr schedule delete {name})")
    lines = [_next_runs_text(cron, "UTC, the cluster's clock", now_utc())]
    submitted = cron
    if flavor == "kubeflow":
        kfp = to_kfp_cron(cron)
        submitted = kfp.expression
        lines.append(f"Kubeflow cron (seconds first): {kfp.expression}")
        lines += [f"Cannot be updated on Kubeflow: {limit}" for limit in kfp.cannot_update]
    elif flavor == "kubernetes":
        lines.append("Kubernetes CronJob: concurrencyPolicy Forbid (a run does not start while the previous one runs)")
    else:
        lines.append(f"Concurrent runs: as the {flavor} orchestrator schedules them (cxr sets nothing there)")

    from zenml.config.schedule import Schedule

    from cxr.runner import ensure_synthetic_dataset, resolved_config
    from pipelines.training import training_pipeline
    from steps.names import train_step_id

    parameters: dict[str, Any] = {}
    if if_data_changed:
        if IF_DATA_CHANGED_PARAMETER not in inspect.signature(training_pipeline.entrypoint).parameters:
            raise ScheduleError(
                f"--if-data-changed: a {flavor} schedule runs the training pipeline itself, not `cxr train`, so it "
                "cannot skip unchanged data; on Kubernetes apply the retraining CronJob instead (infra/k8s/"
                "retraining, in `kubectl apply -k infra/k8s/overlays/team`: it runs `cxr train --if-data-changed "
                "--stack cxr_k8s_incluster`, one run at a time)"
            )
        parameters[IF_DATA_CHANGED_PARAMETER] = True
    ensure_synthetic_dataset(config)
    zenml_config = schedule_run_config(
        flavor, project_root, zenml_overlays, paths.workdir, [train_step_id(b.name) for b in config.backbones]
    )
    training_pipeline.with_options(
        config_path=str(zenml_config), schedule=Schedule(name=name, cron_expression=submitted)
    )(
        run=resolved_config(config),
        docs_dir=str(paths.reports / "data_docs"),
        reports_dir=str(paths.reports),
        **parameters,
    )
    record = schedule_record(client.get_schedule(name, allow_name_prefix_match=False), now_utc())
    header = f"Schedule '{name}' created on stack '{active.name}' (orchestrator {orchestrator.name}, {flavor})."
    return 0, "\n".join([header, *lines, "", format_schedules([record])])


def schedule_record(schedule: Any, now: datetime) -> ScheduleRecord:
    """ZenML's ScheduleResponse as a ScheduleRecord (orchestrator and pipeline names resolved)."""
    from zenml.enums import StackComponentType

    client = _client()
    orchestrator = flavor = pipeline = None
    if schedule.orchestrator_id is not None:
        try:
            component = client.get_stack_component(StackComponentType.ORCHESTRATOR, schedule.orchestrator_id)
            orchestrator, flavor = component.name, component.flavor_name
        except KeyError:
            pass
    if schedule.pipeline_id is not None:
        try:
            pipeline = client.get_pipeline(schedule.pipeline_id).name
        except KeyError:
            pass
    return ScheduleRecord(
        name=schedule.name,
        active=schedule.active,
        cron=schedule.cron_expression,
        orchestrator=orchestrator,
        flavor=flavor,
        pipeline=pipeline,
        created=schedule.created,
        next_runs=record_next_runs(schedule.cron_expression, flavor, schedule.active, now),
    )


def list_schedules() -> list[ScheduleRecord]:
    """Every schedule of the ZenML store (archived ones left out), oldest first."""
    client, now = _client(), now_utc()
    records, page = [], 1
    while True:
        found = client.list_schedules(sort_by="asc:created", page=page, size=100)
        records += [schedule_record(schedule, now) for schedule in found.items]
        if page >= found.total_pages:
            return records
        page += 1


def _schedule(name: str) -> Any:
    try:
        return _client().get_schedule(name, allow_name_prefix_match=False)
    except KeyError:
        names = ", ".join(record.name for record in list_schedules()) or "none"
        raise ScheduleError(f"no schedule named {name!r} (schedules: {names}; cxr schedule list)") from None


def _orchestrator(schedule: Any) -> Any:
    """The schedule's orchestrator as ZenML instantiates it (None when its component was deleted)."""
    from zenml.enums import StackComponentType
    from zenml.orchestrators import BaseOrchestrator

    if schedule.orchestrator_id is None:
        return None
    try:
        model = _client().get_stack_component(StackComponentType.ORCHESTRATOR, schedule.orchestrator_id)
    except KeyError:
        return None
    try:
        return BaseOrchestrator.from_model(model)
    except ImportError as error:
        raise ScheduleError(
            f"schedule {schedule.name}: the {model.flavor_name} orchestrator's integration is not installed "
            f"({error}); install it with `zenml integration install {model.flavor_name}`"
        ) from None


def _elsewhere(flavor: str | None) -> str:
    if flavor == "kubeflow":
        return "; do it in Kubeflow: the recurring run in the pipeline's experiment (KFP UI, or kfp.Client())"
    return ""


def set_active(name: str, active: bool) -> str:
    """Pause (active False) or resume a schedule on its orchestrator and in ZenML; returns what happened.

    Raises:
        ScheduleError: no such schedule, or its orchestrator cannot pause or resume schedules.
    """
    verb = "resume" if active else "pause"
    schedule = _schedule(name)
    if schedule.active == active:
        return f"schedule {name} is already {'active' if active else 'paused'}"
    orchestrator = _orchestrator(schedule)
    if orchestrator is None:
        raise ScheduleError(f"schedule {name}: its orchestrator was deleted from ZenML; cannot {verb} it")
    if not orchestrator.supports_schedule_updates:
        raise ScheduleError(
            f"schedule {name}: ZenML cannot {verb} schedules on the {orchestrator.flavor} orchestrator "
            f"'{orchestrator.name}'{_elsewhere(orchestrator.flavor)}"
        )
    _client().update_schedule(schedule.id, active=active)
    done = "resumed" if active else "paused"
    return f"schedule {name} {done} ({orchestrator.flavor} orchestrator '{orchestrator.name}')"


def delete_schedule(name: str) -> str:
    """Delete a schedule on its orchestrator (where ZenML can) and archive ZenML's record; returns what happened.

    Raises:
        ScheduleError: no such schedule.
    """
    schedule = _schedule(name)
    orchestrator = _orchestrator(schedule)
    _client().delete_schedule(schedule.id)
    if orchestrator is None:
        return f"schedule {name} deleted from ZenML (its orchestrator no longer exists there)"
    if not orchestrator.supports_schedule_deletion:
        return (
            f"schedule {name} deleted from ZenML; ZenML cannot delete what the {orchestrator.flavor} orchestrator "
            f"'{orchestrator.name}' scheduled{_elsewhere(orchestrator.flavor) or ' (nothing was scheduled there)'}"
        )
    return f"schedule {name} deleted ({orchestrator.flavor} orchestrator '{orchestrator.name}' and ZenML)"


def list_text() -> str:
    records = list_schedules()
    if not records:
        return (
            "no ZenML schedules. On the local stack ZenML refuses schedules: see `crontab -l` and "
            "`systemctl --user list-timers 'cxr-*'` for those cxr schedule create printed."
        )
    return format_schedules(records)
