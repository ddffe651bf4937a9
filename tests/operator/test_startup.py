"""The operator package's import graph has no circles, and one operator start tunes kopf once.

`handlers.py` once imported `main.tune_kopf` at call time while `main.py` imported the handlers, and
kopf was tuned twice per start (by `main` before `kopf.run`, then again by the startup handler).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import kubetune_operator

from tests.cluster.fixtures import Release

PACKAGE = "kubetune_operator"
PACKAGE_DIR = Path(kubetune_operator.__file__).parent


def package_imports() -> dict[str, set[str]]:
    """Each module of the package → the package's modules it imports, at the top or inside a function."""
    modules = {path.stem for path in PACKAGE_DIR.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for module in modules:
        imported: set[str] = set()
        for node in ast.walk(ast.parse((PACKAGE_DIR / f"{module}.py").read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
                # `from kubetune_operator import names` imports the module `names`
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            imported |= {name.split(".")[1] for name in names
                         if name.startswith(f"{PACKAGE}.") and name.split(".")[1] in modules}
        graph[module] = imported - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (its modules, first repeated at the end), or None (depth-first search)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_operator_package_has_no_import_circle() -> None:
    graph = package_imports()
    assert {"handlers", "main", "tuning"} <= graph.keys() and "handlers" in graph["main"]  # the walk sees them
    assert find_cycle(graph) is None, f"import circle: {' → '.join(find_cycle(graph) or [])}"


# Runs the operator as `kubetune-operator` does (main.run_operator), counting tune_kopf's calls, and stops
# it once kopf is ready; prints the count and the label selectors of the settings kopf ran with.
_COUNT_TUNINGS = """
import json, sys, threading
from kubetune_operator import main, tuning
from kubetune_operator.settings import Settings

tuned = []
original = tuning.tune_kopf
def counting(kopf_settings, settings):
    tuned.append(kopf_settings)
    original(kopf_settings, settings)
tuning.tune_kopf = counting

ready, stop = threading.Event(), threading.Event()
threading.Thread(target=lambda: ready.wait(60) and stop.set(), daemon=True).start()
main.run_operator(Settings(namespaces=(sys.argv[1],), metrics_port=0, health_port=0), stop_flag=stop, ready_flag=ready)
print(json.dumps({"ready": ready.is_set(), "tunings": len(tuned),
                  "selectors": sorted(str(value) for kopf_settings in tuned
                                      for value in kopf_settings.watching.label_selectors.values())}))
"""


def test_one_operator_start_tunes_kopf_once(operator_kubeconfig: Path, kubetune_release: Release,
                                             namespace: str) -> None:
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig)}
    done = subprocess.run([sys.executable, "-c", _COUNT_TUNINGS, namespace], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ready"], done.stderr[-3000:]
    assert result["tunings"] == 1
    assert result["selectors"] == ["kubetune.io/finetunejob"] * 2  # the Job and pod watches' server-side filter
