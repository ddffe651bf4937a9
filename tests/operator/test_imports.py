"""The operator stands on the API package alone: importing it loads no torch and none of the trainer.

A fresh interpreter imports every operator module (the CLI included: it imports the trainer
lazily, inside `kubetune run` and `kubetune generate`) and reports which modules got loaded.
The operator image installs no torch, so an import of it at module level would crash there.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import kubetune_operator

PROBE = """
import importlib, json, pkgutil, sys
import kubetune_operator
for module in pkgutil.iter_modules(kubetune_operator.__path__):
    importlib.import_module(f"kubetune_operator.{module.name}")
print(json.dumps(sorted(sys.modules)))
"""


def test_operator_modules_import_neither_torch_nor_the_trainer() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                            env=os.environ, check=False)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    operator_modules = {f"kubetune_operator.{m.name}" for m in pkgutil.iter_modules(kubetune_operator.__path__)}
    assert operator_modules <= loaded, "the probe did not import every operator module"
    assert "kubetune_api.recipe" in loaded
    heavy = sorted(name for name in loaded if name.split(".")[0] in ("torch", "transformers", "kubetune_trainer"))
    assert not heavy, f"the operator imports {heavy[:5]}: import them lazily where `kubetune run` needs them"
