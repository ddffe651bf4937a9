"""The `kubetune` command line as a user meets it: one-line errors with file, line:column and fix, exit 2."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from kubetune_operator import cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart-cpu.yaml"
# An unquoted ': ' in a value (line 7, column 16 is the second colon).
COLON_IN_VALUE = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: broken
spec:
  model:
    name: Model: 2
"""


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("verb", ["validate", "render", "run"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_column_and_fix(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text(COLON_IN_VALUE)
    assert cli.main([verb, str(bad)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{bad}:7:16: YAML syntax error: mapping values are not allowed here; quote the value" in line


def test_a_tab_indent_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("spec:\n\tmodel: x\n")
    assert cli.main(["render", str(bad)]) == 2
    assert f"{bad}:2:1:" in (line := _one_line(capsys.readouterr().err))
    assert "indent with spaces" in line


@pytest.mark.parametrize("verb", ["validate", "render", "run"])
def test_a_missing_file_is_one_line(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main([verb, str(missing)]) == 2
    assert f"{missing}: no such file; check the path" in _one_line(capsys.readouterr().err)


def test_a_folder_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", str(tmp_path)]) == 2
    assert "is a folder; name a YAML file" in _one_line(capsys.readouterr().err)


def test_render_prints_nothing_when_a_later_file_is_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", str(QUICKSTART), str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().out == ""


def test_validate_reads_standard_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(QUICKSTART.read_text()))
    assert cli.main(["validate", "-"]) == 0
    assert capsys.readouterr().out.strip() == "ok      -: quickstart"


def test_a_syntax_error_on_standard_input_names_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(COLON_IN_VALUE))
    assert cli.main(["validate", "-"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("INVALID <stdin>:7:16: YAML syntax error")


def test_a_misspelled_field_suggests_the_right_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = QUICKSTART.read_text().replace("learningRate:", "learningRat:").replace("  evaluation:", "  evalution:")
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert cli.main(["validate", "-"]) == 1
    err = capsys.readouterr().err
    assert "spec.training.learningRat: unknown field; did you mean spec.training.learningRate?" in err
    assert "spec.evalution: unknown field; did you mean spec.evaluation?" in err


def test_a_field_nothing_resembles_lists_the_fields_there() -> None:
    message = cli.suggest_fields("spec.method.lora.zzz: unknown field; check the spelling")
    assert message.startswith("spec.method.lora.zzz: unknown field; spec.method.lora has: r, alpha, dropout")


def test_suggestions_walk_lists_of_models() -> None:
    # evaluation.prompts is a list of strings; model-typed lists are walked through their item model.
    assert cli._model_at(["spec", "method", "lora"]).__name__ == "LoraSpec"
    assert cli.suggest_fields("spec.x.y: unknown field") == "spec.x.y: unknown field"  # no such parent: unchanged


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"kubetune \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_a_json_syntax_error_names_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "job.json"
    bad.write_text('{\n  "kind": "FineTuneJob",\n  "spec": {,}\n}\n')
    assert cli.main(["validate", str(bad)]) == 2
    assert f"{bad}:3:12: JSON syntax error: Expecting property name" in _one_line(capsys.readouterr().err)
