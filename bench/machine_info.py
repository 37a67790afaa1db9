"""Machine facts shared by the benchmark scripts (imported as `machine_info`: bench/ is the scripts' folder)."""

from pathlib import Path


def cpu_model(default: str) -> str:
    """The CPU's model name from /proc/cpuinfo, or `default` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
