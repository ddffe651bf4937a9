"""Run a check of a test module in a fresh Python under Triton's interpreter (`TRITON_INTERPRET=1`): Triton kernels on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def run_interpreted(module: str, check: str, *args: Any) -> None:
    """Run `module.check(*args)` in a fresh Python with `TRITON_INTERPRET=1` set from the start; fail with its stderr.

    Triton decides at decoration time whether a kernel is interpreted; a process of its own keeps
    the rest of the suite's Triton (and this check) independent of test order.
    """
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = f"import {module} as t; t.{check}(*{args!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
