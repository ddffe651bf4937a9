"""The trainer's assembly: one path rule, the teacher loaded like the student, no import circles.

The path rule (`contract.local_path`) decides for `kubetune run`, the model loader and the
data loader alike whether a recipe's name is a file or a hub id. The teacher of distillation
goes through the student's `ModelLoader`, so it comes from the same cache: the shared
`model.cacheClaim` mount when the operator set one (`KUBETUNE_MODEL_CACHE`).
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import kubetune_trainer
import pytest
from kubetune_api.contract import Env, local_path

from tests.trainer.method_runs import run_in_process, write_job
from tests.trainer.sft_runs import run_launcher, termination_message

PACKAGE = Path(kubetune_trainer.__file__).parent  # the trainer's package (contract.py moved to kubetune_api)

# ---------------------------------------------------------------- the path rule, once

PATH_CASES = {
    # name, whether it may be a hub id, where it exists under the base -> what it means (None: a hub id)
    "an absolute path is itself": ("/models/llama", True, None, "/models/llama"),
    "a dotted relative path is a path": ("./models/llama", True, None, "BASE/models/llama"),
    "a relative name that exists under the base is a path": ("models/llama", True, "models/llama", "BASE/models/llama"),
    "a relative name that does not exist is a hub id": ("meta-llama/Llama-3.2-1B", True, None, None),
    "a dataset path is always a path": ("data/train.jsonl", False, None, "BASE/data/train.jsonl"),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_one_rule_tells_a_path_from_a_hub_id(case: str, tmp_path: Path) -> None:
    name, or_hub_id, existing, expected = PATH_CASES[case]
    if existing is not None:
        (tmp_path / existing).mkdir(parents=True)
    found = local_path(name, tmp_path, or_hub_id=or_hub_id)
    assert found == (None if expected is None else Path(expected.replace("BASE", str(tmp_path))))


def test_without_a_base_a_relative_path_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "llama").mkdir(parents=True)
    assert local_path("data.jsonl", None, or_hub_id=False) == tmp_path / "data.jsonl"
    assert local_path("./models/llama", None, or_hub_id=True) == tmp_path / "models" / "llama"
    # Without a base the rule does not look into the working directory: a hub id stays one.
    assert local_path("models/llama", None, or_hub_id=True) is None


# ---------------------------------------------------------------- the teacher, loaded like the student


def test_a_missing_teacher_folder_is_invalid_input_naming_the_teachers_field(tmp_path: Path) -> None:
    recipe = write_job(tmp_path, "distill")
    shutil.rmtree(tmp_path / "teacher")

    outcome = run_in_process(recipe, tmp_path / "ws")

    assert (outcome.status, int(outcome.exit_code)) == ("invalid", 2)
    assert outcome.message.startswith(f"method.distill.teacher.name {tmp_path / 'teacher'}: "), outcome.message
    assert "does not exist" in outcome.message


def _hub_cache_entry(cache: Path, repo: str, folder: Path) -> None:
    """`folder`'s files as the Hugging Face cache keeps a download of `repo` at `main`."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(folder, entry / "snapshots" / revision)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision, encoding="utf-8")


@pytest.mark.slow
def test_a_hub_teacher_comes_from_the_shared_model_cache(tmp_path: Path) -> None:
    # The teacher is a hub id found only in the model.cacheClaim mount; HF_HOME (where the teacher
    # was looked up before it shared the student's loader) holds nothing, and the hub is offline.
    recipe = write_job(tmp_path, "distill", {"training": {"maxSteps": 2, "saveSteps": 100}})
    shared = tmp_path / "model-cache"
    _hub_cache_entry(shared, "kubetune-test/teacher", tmp_path / "teacher")
    job = json.loads(recipe.read_text(encoding="utf-8"))
    job["spec"]["method"]["distill"]["teacher"]["name"] = "kubetune-test/teacher"
    recipe.write_text(json.dumps(job), encoding="utf-8")
    workspace = tmp_path / "ws"

    result = run_launcher(recipe, workspace, **{Env.MODEL_CACHE: str(shared), "HF_HOME": str(tmp_path / "hf-home")})

    message = termination_message(workspace)
    assert result.returncode == 0, message
    assert message["step"] == 2


# ---------------------------------------------------------------- no import circles


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, at module level or inside functions; TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE.name:
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{PACKAGE.name}."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(f"{PACKAGE.name}."))
    return found & modules - {path.stem}


def test_the_trainer_package_has_no_import_circles() -> None:
    """A lazy import back up (distill importing train's exception) is a circle too: layers import downwards."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {name: _imports(PACKAGE / f"{name}.py", modules) for name in modules}

    def circle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def walk(node: str) -> list[str] | None:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    if found := walk(nxt):
                        return found
                    path.pop()
            return None

        return walk(start)

    circles = [" -> ".join(found) for name in sorted(modules) if (found := circle_from(name))]
    assert not circles, circles
