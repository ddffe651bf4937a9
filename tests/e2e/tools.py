"""What the kind suite needs on the machine, and a runner for its command-line tools."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

TOOLS = ("docker", "kind", "kubectl", "helm")


class CommandFailed(RuntimeError):
    """A tool exited non-zero; the message holds the command and its stderr."""


def docker_answers() -> bool:
    """Whether a Docker daemon answers (the CLI alone is not enough to build and run kind)."""
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing_tools() -> list[str]:
    """The tools the kind suite lacks here, each with a word on why; [] when it can run."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if "docker" not in missing and not docker_answers():
        missing[:0] = ["docker (no daemon answers `docker info`)"]
    return missing


def run(args: Sequence[str], *, input: str | None = None, timeout: float = 300, check: bool = True) -> str:
    """Run a command and return its stdout; CommandFailed names the command and its stderr."""
    result = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CommandFailed(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout
