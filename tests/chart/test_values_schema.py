"""values.schema.json is generated from values.yaml's comments (scripts/gen-values-schema.py) and agrees with them.

The committed schema must equal what the generator makes of the committed values.yaml, and the
generator must refuse what would make a wrong schema, naming the values.yaml line. What the
schema then accepts and refuses under the real `helm` is tested in test_chart.py and
test_chart_options.py.
"""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.chart.conftest import CHART, REPO

SCRIPT = REPO / "scripts" / "gen-values-schema.py"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_values_schema", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def test_the_committed_schema_is_the_one_generated_from_values_yaml() -> None:
    committed = (CHART / "values.schema.json").read_text(encoding="utf-8")
    generated = generator.render(generator.generate((CHART / "values.yaml").read_text(encoding="utf-8")))
    diff = "".join(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                        "committed", "generated"))
    assert not diff, f"values.schema.json is stale: run scripts/gen-values-schema.py\n{diff[:4000]}"


def test_the_script_checks_and_writes(tmp_path: Path) -> None:
    fresh = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    stale = tmp_path / "values.schema.json"
    stale.write_text("{}\n", encoding="utf-8")
    checked = subprocess.run([sys.executable, str(SCRIPT), "--check", "--schema", str(stale)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 1 and "is stale" in checked.stderr and "+++ generated" in checked.stdout
    subprocess.run([sys.executable, str(SCRIPT), "--schema", str(stale)], check=True)
    assert stale.read_text(encoding="utf-8") == (CHART / "values.schema.json").read_text(encoding="utf-8")


def _schema(values: str) -> dict:
    return generator.generate(textwrap.dedent(values))


def test_a_value_gets_its_comment_its_default_s_type_and_its_annotation() -> None:
    schema = _schema("""
        # server is one section.
        server:
          # port the server listens on.
          # See https://example.com/ports
          # @schema {minimum: 1024, maximum: 65535}
          port: 8080

          # timeout of one request. A Prometheus duration.
          # For example:
          #   timeout: 1m30s
          # @schema {$ref: duration}
          timeout: 30s

          # labels of the pod (a map: its keys carry no comments).
          # @schema {additionalProperties: {type: string}}
          labels:
            team: ml

          # affinity of the pod, free-form.
          affinity: {}
        """)
    server = schema["properties"]["server"]
    assert (server["type"], server["additionalProperties"], server["description"]) == (
        "object", False, "server is one section.")
    assert server["properties"]["port"] == {
        "type": "integer", "description": "port the server listens on. See https://example.com/ports",
        "default": 8080, "minimum": 1024, "maximum": 65535}
    assert server["properties"]["timeout"] == {
        "$ref": "#/definitions/duration", "description": "timeout of one request. A Prometheus duration.",
        "default": "30s", "examples": ["1m30s"]}
    assert server["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert server["properties"]["affinity"] == {"type": "object", "description": "affinity of the pod, free-form.",
                                                "default": {}}


@pytest.mark.parametrize("values,error", [
    ("""
     # a is documented.
     a: 1
     b: 2
     """, r"values.yaml:4: b has no comment right above it"),
    ("""
     # a is a port.
     # @schema {minimun: 1}
     a: 1
     """, r"values.yaml:3: @schema keyword\(s\) \['minimun'\] are not JSON Schema draft-07 keywords"),
    ("""
     # a is a length of time.
     # @schema {$ref: durration}
     a: 1m
     """, r"values.yaml:3: \$ref '#/definitions/durration' names no definition"),
    ("""
     # a is a port.
     # @schema minimum
     a: 1
     """, r"values.yaml:3: @schema takes a YAML mapping"),
    ("""
     # a is a port.
     # @schema {minimum: 1024}
     a: 80
     """, r"the default of a fails its own schema: 80 is less than the minimum of 1024"),
    ("""
     # a is a duration.
     # For example:
     #   a: soon
     # @schema {$ref: duration}
     a: 1m
     """, r"the example of a fails its schema: 'soon' does not match"),
    ("""
     # a is nothing yet.
     a: ~
     """, r"values.yaml:3: a: the default None has no JSON Schema type"),
])
def test_the_generator_refuses_and_names_the_line(values: str, error: str) -> None:
    with pytest.raises(generator.ValuesError, match=error):
        _schema(values)
