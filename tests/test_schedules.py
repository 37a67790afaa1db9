"""`cxr schedule`: cron validation, next runs, KFP's cron, the crontab line and systemd units of the
local stack (where ZenML refuses schedules), and list/pause/delete through ZenML's Client.

Real croniter, real ZenML on the test session's local stack, real flock and systemd-analyze where
the machine has them. The Kubernetes CronJob is built by ZenML's own manifest builders when the
`kubernetes` package is installed.
"""

from __future__ import annotations

import fcntl
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from components.config import ConfigError
from components.schedules import (
    LOCK_SKIPPED_EXIT,
    CronError,
    ScheduledJob,
    crontab_line,
    format_schedules,
    from_kfp_cron,
    next_runs,
    on_calendar,
    schedule_name,
    shell_command,
    systemd_units,
    to_kfp_cron,
    validate_cron,
)
from cxr.cli import main

PROJECT_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = PROJECT_ROOT / "configs" / "quickstart.yaml"
CXR = Path(sys.prefix) / "bin" / "cxr"
JAN_1_2025 = datetime(2025, 1, 1, tzinfo=UTC)  # a Wednesday


# --- cron validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "names"),
    [
        ("0 25 * * 1", "hour field: 25 is out of range 0-23"),
        ("60 3 * * 1", "minute field: 60 is out of range 0-59"),
        ("0 3 0 * *", "day of month field: 0 is out of range 1-31"),
        ("0 3 * 13 *", "month field: 13 is out of range 1-12"),
        ("0 3 * * 7", "day of week 7: use 0 for Sunday"),
        ("0 3 * * funday", "day of week field: 'funday' is not a number or a name (sun-sat)"),
        ("0 3 * mon *", "month field: 'mon' is not a number or a name (jan-dec)"),
        ("0 3 L * *", "day of month field: 'L' is not portable cron"),
        ("0 3 15W * *", "day of month field: '15W' is not portable cron"),
        ("0 3 * * 1#2", "day of week field: '1#2' is not portable cron"),
        ("0 3 ? * 1", "day of month field: '?' is not portable cron"),
        ("0 17-9 * * *", "hour field: range '17-9' ends before it starts"),
        ("5/10 * * * *", "minute field: '5/10': a step needs * or a range (write 5-59/10)"),
        ("*/0 * * * *", "minute field: step '0' must be a number 1-60"),
        ("0 3,,4 * * *", "hour field: an empty list item"),
        ("0 3 * *", "has 4 fields; give 5: minute hour day-of-month month day-of-week"),
        ("0 0 3 * * 1", "has 6 fields; give 5"),
        ("@reboot", "unknown macro"),
        ("   ", "empty expression"),
    ],
)
def test_a_bad_cron_is_refused_naming_the_field(cron, names):
    with pytest.raises(CronError) as raised:
        validate_cron(cron)
    assert names in str(raised.value)


def test_a_bad_cron_is_one_error_line_and_exit_2(capsys, tmp_path):
    status = main(
        ["--workdir", str(tmp_path / "w"), "schedule", "create", "--config", str(QUICKSTART), "--cron", "0 25 * * 1"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err == "error: cron '0 25 * * 1': hour field: 25 is out of range 0-23\n"
    assert not (tmp_path / "w").exists()  # refused before the work folder was opened


@pytest.mark.parametrize(
    ("cron", "normalised"),
    [
        ("0  3 * *   1", "0 3 * * 1"),
        ("@weekly", "0 0 * * 0"),
        ("@DAILY", "0 0 * * *"),
        ("*/15 9-17 1,15 jan-mar mon-fri", "*/15 9-17 1,15 jan-mar mon-fri"),
        ("0 8-18/2 * * *", "0 8-18/2 * * *"),
    ],
)
def test_a_valid_cron_is_normalised(cron, normalised):
    assert validate_cron(cron) == normalised


# --- next runs ----------------------------------------------------------------------------------


def test_next_three_runs_of_mondays_at_three():
    assert next_runs("0 3 * * 1", JAN_1_2025) == [
        datetime(2025, 1, 6, 3, tzinfo=UTC),
        datetime(2025, 1, 13, 3, tzinfo=UTC),
        datetime(2025, 1, 20, 3, tzinfo=UTC),
    ]


def test_next_runs_are_strictly_after_the_start():
    assert next_runs("0 3 * * 1", datetime(2025, 1, 6, 3, tzinfo=UTC), count=1) == [
        datetime(2025, 1, 13, 3, tzinfo=UTC)
    ]


def test_day_of_month_and_day_of_week_both_restricted_fire_on_either():
    """Cron's rule: the 13th OR a Friday (Fri 3rd, Fri 10th, Mon 13th)."""
    assert next_runs("0 0 13 * 5", JAN_1_2025) == [
        datetime(2025, 1, 3, tzinfo=UTC),
        datetime(2025, 1, 10, tzinfo=UTC),
        datetime(2025, 1, 13, tzinfo=UTC),
    ]


def test_next_runs_read_the_cron_in_the_start_time_zone_across_a_dst_change():
    berlin = ZoneInfo("Europe/Berlin")
    runs = next_runs("0 3 * * *", datetime(2025, 3, 29, 12, tzinfo=berlin))
    assert [run.utcoffset() for run in runs] == [timedelta(hours=2)] * 3  # CEST from March 30th
    assert runs[0] == datetime(2025, 3, 30, 1, tzinfo=UTC)


def test_a_time_skipped_by_dst_runs_when_the_clock_jumps():
    """02:30 does not exist in Berlin on 2025-03-30; it runs at 03:00 (as cron does)."""
    runs = next_runs("30 2 * * *", datetime(2025, 3, 29, 12, tzinfo=ZoneInfo("Europe/Berlin")))
    assert runs[0] == datetime(2025, 3, 30, 1, tzinfo=UTC)


def test_a_cron_that_never_fires_is_refused():
    with pytest.raises(CronError, match="never fires"):
        next_runs("0 0 31 2 *", JAN_1_2025)


def test_next_runs_needs_a_time_zone():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_runs("0 3 * * 1", datetime(2025, 1, 1))


# --- Kubeflow -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "kfp"),
    [
        ("0 3 * * 1", "0 0 3 * * 1"),
        ("@daily", "0 0 0 * * *"),
        ("*/15 9-17 * * mon-fri", "0 */15 9-17 * * mon-fri"),
    ],
)
def test_kfp_cron_has_seconds_first(cron, kfp):
    assert to_kfp_cron(cron).expression == kfp


def test_kfp_conversion_says_what_cannot_be_updated():
    limits = " ".join(to_kfp_cron("0 3 * * 1").cannot_update)
    assert "neither update_schedule nor delete_schedule" in limits
    assert "no update for a recurring run's cron" in limits
    assert "max_concurrency=1" in limits


def test_a_kfp_cron_reads_back_as_five_fields():
    assert from_kfp_cron("0 0 3 * * 1") == "0 3 * * 1"


def test_a_kfp_cron_with_seconds_is_not_read_back():
    with pytest.raises(CronError, match="seconds 0 first"):
        from_kfp_cron("30 0 3 * * 1")


def test_kfp_conversion_refuses_a_bad_cron():
    with pytest.raises(CronError, match="hour field"):
        to_kfp_cron("0 24 * * *")


# --- systemd calendar ----------------------------------------------------------------------------


def _systemd_next(value: str, base: datetime, count: int) -> list[datetime]:
    out = subprocess.run(
        [
            "systemd-analyze",
            "calendar",
            f"--iterations={count}",
            f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC",
            f"{value} UTC",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Next elapse:" in line or "Iter. #" in line]
    return [datetime.strptime(t, "%a %Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC) for t in times]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    "cron",
    ["0 3 * * 1", "*/20 9-11 * * mon-fri", "0 0 13 * 5", "15 4 1,15 jan,jul *", "@hourly", "0 8-18/4 */10 * *"],
)
def test_on_calendar_fires_when_the_cron_does(cron):
    """systemd's own calendar parser, against croniter: the same next five times."""
    expected = next_runs(cron, JAN_1_2025, count=5)
    found = sorted({t for value in on_calendar(cron) for t in _systemd_next(value, JAN_1_2025, 5)})[:5]
    assert found == expected


# --- the local stack: crontab line and systemd units ---------------------------------------------


def _job(tmp_path: Path, **changes) -> ScheduledJob:
    fields = {
        "name": "weekly",
        "cron": "0 3 * * 1",
        "project_root": PROJECT_ROOT,
        "cxr": CXR,
        "workdir": tmp_path / "work dir",  # a space: everything is quoted
        "config": QUICKSTART,
        "if_data_changed": True,
        "overrides": ["training.epochs=2"],
    }
    return ScheduledJob(**{**fields, **changes})


def _train_tokens(line: str) -> list[str]:
    """The `cxr ... train ...` words of a crontab line's command (between the lock file and `>>`)."""
    words = shlex.split(line.split(" ", 5)[5].replace("\\%", "%"))
    start = words.index(str(CXR))
    return words[start : words.index(">>")]


def test_the_crontab_line_runs_cxr_train_with_absolute_paths(tmp_path):
    from cxr.cli import build_parser

    job = _job(tmp_path)
    line = crontab_line(job)
    assert line.startswith("0 3 * * 1 cd ")
    args = build_parser().parse_args(_train_tokens(line)[1:])
    assert args.command == "train"
    assert args.workdir == str(tmp_path / "work dir")
    assert args.config == str(QUICKSTART)
    assert args.if_data_changed is True
    assert args.set == ["training.epochs=2"]


def test_the_crontab_command_parses_in_sh(tmp_path):
    command = crontab_line(_job(tmp_path)).split(" ", 5)[5].replace("\\%", "%")
    assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0


def test_the_crontab_cxr_command_runs(tmp_path):
    """The command part, with --help: the executable and its options exist."""
    tokens = _train_tokens(crontab_line(_job(tmp_path)))
    done = subprocess.run([*tokens, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--if-data-changed" in done.stdout


def test_a_percent_sign_is_escaped_for_crontab(tmp_path):
    line = crontab_line(_job(tmp_path, overrides=["name=100%"]))
    assert "name=100\\%" in line


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock is not installed")
def test_a_run_that_starts_while_the_previous_one_holds_the_lock_is_skipped_with_a_reason(tmp_path):
    job = _job(tmp_path)
    job.workdir.mkdir()
    with open(job.lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the previous run
        done = subprocess.run(["sh", "-c", shell_command(job)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    log = job.log.read_text()
    assert "weekly: skipped, the previous training run still holds" in log
    assert str(job.lock) in log


def test_the_skip_exit_status_is_not_one_cxr_uses():
    assert LOCK_SKIPPED_EXIT not in (0, 1, 2, 130)


def test_the_systemd_timer_fires_on_the_cron(tmp_path):
    units = systemd_units(_job(tmp_path, cron="0 0 13 * 5"))
    assert units.timer.splitlines()[4:6] == ["OnCalendar=*-*-13 00:00:00", "OnCalendar=Fri *-*-* 00:00:00"]


def test_the_systemd_service_runs_the_crontab_command(tmp_path):
    job = _job(tmp_path)
    service = systemd_units(job).service
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    # systemd's quoting undone: "$$" -> "$", "%%" -> "%", C escapes in double quotes.
    word = exec_start.removeprefix("ExecStart=/bin/sh -c ")
    unquoted = bytes(word[1:-1], "utf-8").decode("unicode_escape").replace("$$", "$").replace("%%", "%")
    assert unquoted == shell_command(job)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path):
    units = systemd_units(_job(tmp_path, overrides=["name=100%"]))
    folder = tmp_path / "units"
    folder.mkdir()
    (folder / units.service_name).write_text(units.service)
    (folder / units.timer_name).write_text(units.timer)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(folder / units.timer_name), str(folder / units.service_name)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_schedule_name_defaults_to_the_config_stem():
    assert schedule_name(None, "configs/quickstart.yaml") == "train-quickstart"


def test_a_bad_schedule_name_is_refused():
    with pytest.raises(ConfigError, match="schedule name 'a b'"):
        schedule_name("a b", "configs/quickstart.yaml")


# --- the CLI on the local stack (real ZenML) ------------------------------------------------------


def test_the_local_stack_refuses_schedules_and_prints_the_crontab_line(local_stack, capsys):
    status = main(
        [
            "--workdir",
            str(local_stack.workdir),
            "schedule",
            "create",
            "--config",
            str(QUICKSTART),
            "--cron",
            "0 3 * * 1",
            "--if-data-changed",
            "--name",
            "weekly",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "ZenML refuses schedules on stack 'cxr_local': its orchestrator 'default' (local)" in out
    assert "Next runs (local time" in out
    line = next(line for line in out.splitlines() if line.startswith("0 3 * * 1 cd "))
    job = ScheduledJob(
        name="weekly",
        cron="0 3 * * 1",
        project_root=PROJECT_ROOT,
        cxr=CXR,
        workdir=local_stack.workdir,
        config=QUICKSTART,
        if_data_changed=True,
    )
    assert line == crontab_line(job)
    assert systemd_units(job).timer.rstrip() in out
    assert "systemctl --user enable --now cxr-weekly.timer" in out


def test_a_missing_zenml_overlay_is_refused_before_the_stack(local_stack, capsys):
    status = main(
        [
            "--workdir",
            str(local_stack.workdir),
            "schedule",
            "create",
            "--config",
            str(QUICKSTART),
            "--cron",
            "@daily",
            "--zenml-config",
            "missing.yaml",
        ]
    )
    assert status == 2
    assert "missing.yaml" in capsys.readouterr().err


@pytest.fixture
def local_schedule(local_stack):
    """A schedule record on the local orchestrator, as ZenML's pipeline submission would store it (ZenML
    refuses to submit one there, so the record is made through its store API); deleted afterwards."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.models import ScheduleRequest

    client = Client()
    orchestrator = client.active_stack_model.components[StackComponentType.ORCHESTRATOR][0]
    schedule = client.zen_store.create_schedule(
        ScheduleRequest(
            project=client.active_project.id,
            name="nightly-test",
            active=True,
            cron_expression="0 3 * * 1",
            orchestrator_id=orchestrator.id,
            pipeline_id=None,
        )
    )
    yield schedule
    if client.list_schedules(name="nightly-test").total:
        client.zen_store.delete_schedule(schedule.id, soft=False)


def _cli(local_stack, *words: str) -> int:
    return main(["--workdir", str(local_stack.workdir), "schedule", *words])


def test_list_shows_state_cron_orchestrator_and_next_run(local_stack, local_schedule, capsys):
    assert _cli(local_stack, "list") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("nightly-test"))
    assert row.split()[:7] == ["nightly-test", "active", "0", "3", "*", "*", "1"]
    assert "default (local)" in row


def test_pause_is_refused_where_zenml_cannot_pause(local_stack, local_schedule, capsys):
    assert _cli(local_stack, "pause", "nightly-test") == 1
    assert capsys.readouterr().err == (
        "error: schedule nightly-test: ZenML cannot pause schedules on the local orchestrator 'default'\n"
    )


def test_resume_of_an_active_schedule_says_so(local_stack, local_schedule, capsys):
    assert _cli(local_stack, "resume", "nightly-test") == 0
    assert capsys.readouterr().out == "schedule nightly-test is already active\n"


def test_delete_archives_the_schedule(local_stack, local_schedule, capsys):
    from zenml.client import Client

    assert _cli(local_stack, "delete", "nightly-test") == 0
    assert "deleted from ZenML" in capsys.readouterr().out
    assert Client().list_schedules(name="nightly-test").total == 0


def test_an_unknown_schedule_is_one_error_line(local_stack, capsys):
    assert _cli(local_stack, "pause", "no-such-schedule") == 1
    assert capsys.readouterr().err.startswith("error: no schedule named 'no-such-schedule'")


def test_the_table_shows_a_paused_schedule_without_next_run():
    from components.schedules import ScheduleRecord

    text = format_schedules(
        [ScheduleRecord(name="n", active=False, cron="0 0 3 * * 1", orchestrator="kfp", flavor="kubeflow")]
    )
    assert text.splitlines()[1].split() == ["n", "paused", "0", "0", "3", "*", "*", "1", "kfp", "(kubeflow)", "-", "-"]


# --- Kubernetes -------------------------------------------------------------------------------------


def _scheduled_kubernetes_settings(tmp_path: Path):
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    from cxr.schedule import schedule_run_config

    overlay = tmp_path / "allow.yaml"  # a user's overlay that allows concurrent runs: Forbid still wins
    overlay.write_text(yaml.safe_dump({"settings": {"orchestrator.kubernetes": {"concurrency_policy": "Allow"}}}))
    merged = schedule_run_config(
        "kubernetes",
        PROJECT_ROOT,
        [str(PROJECT_ROOT / "infra" / "zenml_kubernetes.yaml"), str(overlay)],
        tmp_path,
        ["train_MobileNet"],
    )
    settings = yaml.safe_load(merged.read_text())["settings"]["orchestrator.kubernetes"]
    return KubernetesOrchestratorSettings(**settings)


def test_a_kubernetes_schedule_forbids_concurrent_runs(tmp_path):
    assert _scheduled_kubernetes_settings(tmp_path).concurrency_policy == "Forbid"


def test_the_cronjob_zenml_would_create_forbids_concurrent_runs(tmp_path):
    """ZenML's own manifest builders, as KubernetesOrchestrator.submit_pipeline calls them for a schedule."""
    pytest.importorskip("kubernetes", reason="the kubernetes package is not installed")
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes import manifest_utils

    settings = _scheduled_kubernetes_settings(tmp_path)
    pod = manifest_utils.build_pod_manifest(
        pod_name=None,
        image_name="registry.example.org/cxr:latest",
        command=["python", "-m", "zenml.entrypoints.entrypoint"],
        args=[],
        privileged=False,
        pod_settings=settings.orchestrator_pod_settings,
    )
    job = manifest_utils.build_job_manifest(
        job_name="cxr-training",
        pod_template=manifest_utils.pod_template_manifest_from_pod(pod),
        backoff_limit=settings.orchestrator_job_backoff_limit,
    )
    cron_job = manifest_utils.build_cron_job_manifest(
        job_template=manifest_utils.job_template_manifest_from_job(job),
        cron_expression=validate_cron("0 3 * * 1"),
        successful_jobs_history_limit=settings.successful_jobs_history_limit,
        failed_jobs_history_limit=settings.failed_jobs_history_limit,
        concurrency_policy=settings.concurrency_policy,
        starting_deadline_seconds=settings.starting_deadline_seconds,
    )
    manifest = ApiClient().sanitize_for_serialization(cron_job)
    assert manifest["kind"] == "CronJob"
    assert manifest["spec"]["concurrencyPolicy"] == "Forbid"
    assert manifest["spec"]["schedule"] == "0 3 * * 1"
    # ... and the API of Kubernetes 1.29-1.33 would take it (kubernetes-validate --strict, offline).
    from components.kube_checks import validate_documents

    manifest["metadata"] = {"name": "cxr-training", "namespace": "cxr"}
    assert validate_documents([manifest]) == []


# --- cxr train --stack (what the retraining CronJob runs: infra/k8s/retraining) --------------------


def test_train_runs_on_a_named_stack_and_back_on_the_work_folders_own(local_stack):
    from zenml.client import Client
    from zenml.enums import StackComponentType

    from cxr.runner import use_stack
    from cxr.stack import STACK_NAME

    client = Client()
    local = client.get_stack(STACK_NAME)
    components = {kind: models[0].id for kind, models in local.components.items()}
    if not client.list_stacks(name="other-stack").total:
        client.create_stack("other-stack", components=components)
    assert use_stack(local_stack, PROJECT_ROOT, "other-stack") == "other-stack"
    assert client.active_stack_model.name == "other-stack"
    assert client.active_stack_model.components[StackComponentType.ORCHESTRATOR][0].name == "default"
    assert use_stack(local_stack, PROJECT_ROOT, None) == STACK_NAME
    assert Client().active_stack_model.name == STACK_NAME


def test_train_on_an_unknown_stack_is_one_error_line_naming_the_stacks(local_stack, capsys):
    status = main(["--workdir", str(local_stack.workdir), "train", "--config", str(QUICKSTART), "--stack", "nope"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: --stack nope: no such ZenML stack (stacks: ")
    assert "cxr_local" in err
    assert len(err.splitlines()) == 1


def test_a_prebuilt_step_image_from_the_environment_becomes_zenml_docker_settings(local_stack, monkeypatch):
    from zenml.config import DockerSettings

    from cxr.runner import STEP_IMAGE_VARIABLE, step_image_overlay

    monkeypatch.delenv(STEP_IMAGE_VARIABLE, raising=False)
    assert step_image_overlay(local_stack) == []
    monkeypatch.setenv(STEP_IMAGE_VARIABLE, "ghcr.io/my-org/cxr-pipelines:0.1.0")
    (path,) = step_image_overlay(local_stack)
    docker = DockerSettings.model_validate(yaml.safe_load(path.read_text())["settings"]["docker"])
    assert docker.parent_image == "ghcr.io/my-org/cxr-pipelines:0.1.0"
    assert docker.skip_build


def test_if_data_changed_on_a_kubernetes_schedule_points_at_the_retraining_cronjob(local_stack, capsys):
    """A ZenML schedule on Kubernetes runs the pipeline, which cannot skip unchanged data: refused, naming the
    CronJob that runs `cxr train --if-data-changed` instead (the stack is registered as the script does; no
    cluster is reached before the refusal)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    from cxr.stack import STACK_NAME

    client = Client()
    if not client.list_stacks(name="k8s-test-stack").total:
        client.create_stack_component(
            "k8s-test",
            "kubernetes",
            StackComponentType.ORCHESTRATOR,
            {"kubernetes_context": "team-cluster", "skip_local_validations": True},
        )
        components = {kind: models[0].id for kind, models in client.get_stack(STACK_NAME).components.items()}
        components[StackComponentType.ORCHESTRATOR] = client.get_stack_component(
            StackComponentType.ORCHESTRATOR, "k8s-test"
        ).id
        client.create_stack("k8s-test-stack", components=components)
    try:
        status = _cli(
            local_stack, "create", "--config", str(QUICKSTART), "--cron", "@daily", "--if-data-changed",
            "--stack", "k8s-test-stack",
        )  # fmt: skip
    finally:
        client.activate_stack(STACK_NAME)
    err = capsys.readouterr().err
    assert status == 1
    assert "infra/k8s/retraining" in err
    assert "--stack cxr_k8s_incluster" in err
