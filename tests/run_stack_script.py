"""Run infra/register_kubernetes_stack.sh for real against the ZenML store of ZENML_CONFIG_PATH, then
print the stacks it registered as JSON (last line of stdout).

bash runs the script itself (its checks, branches and exit codes), with `zenml` on PATH recording each
command line; the recorded commands then run in this one process through ZenML's own click CLI, in
order (a process per command costs about 5 s of imports here). `zenml integration install` (pip) is
recorded but not run: the integrations are installed in this environment.

    python tests/run_stack_script.py SCRIPT   (the script's variables from the environment)

Exit status: the script's, when it fails; 1 when a zenml command fails (its output on stderr).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RECORDER = """#!/bin/sh
exec "{python}" -c 'import json, sys; open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")' "$ZENML_COMMANDS" "$@"
"""


def recorded_commands(script: str) -> tuple[int, list[list[str]], str]:
    """(bash's exit status, the zenml command lines the script ran, bash's stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        shim = Path(folder) / "zenml"
        shim.write_text(RECORDER.format(python=sys.executable))
        shim.chmod(0o755)
        log = Path(folder) / "commands.jsonl"
        env = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "ZENML_COMMANDS": str(log)}
        result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
        lines = log.read_text().splitlines() if log.exists() else []
        return result.returncode, [json.loads(line) for line in lines], result.stderr


def main() -> None:
    status, commands, stderr = recorded_commands(sys.argv[1])
    if status != 0:
        sys.stderr.write(stderr)
        sys.exit(status)
    from click.testing import CliRunner
    from zenml.cli.cli import cli
    from zenml.client import Client

    for argv in commands:
        if argv[:2] == ["integration", "install"]:
            continue
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
        if result.exit_code != 0:
            sys.exit(f"zenml {' '.join(argv)}: exit {result.exit_code}\n{result.output}")
    client = Client()
    stacks = {}
    for stack in client.list_stacks(size=100).items:
        stacks[stack.name] = {
            str(kind.value): {"name": c[0].name, "flavor": c[0].flavor_name, "configuration": c[0].configuration}
            for kind, c in stack.components.items()
        }
    secrets = {s.name: sorted(client.get_secret(s.id).secret_values) for s in client.list_secrets(size=100).items}
    print(
        json.dumps(
            {"commands": commands, "active": client.active_stack_model.name, "stacks": stacks, "secrets": secrets},
            default=str,
        )
    )


if __name__ == "__main__":
    main()
