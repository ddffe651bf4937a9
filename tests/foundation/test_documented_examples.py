"""Every example the README and the docs tell people to apply finds its inputs when applied as written:
data from a hub dataset, a URI, or a ConfigMap that a command of the same document creates from a file of
this repository; a token Secret that the same document creates. (The commands themselves run against the
real API server in tests/e2e_cluster/test_documented_examples.py.)"""

from __future__ import annotations

import yaml

from tests.foundation.documented import DOCS, ROOT, applied_examples, input_problems


def test_every_applied_example_gets_its_inputs_from_a_documented_step() -> None:
    applied = [a for doc in DOCS for a in applied_examples(doc)]
    assert applied, "no document tells people to apply an example"
    problems = [problem for a in applied for problem in input_problems(a)]
    assert problems == [], "\n".join(problems)


def test_every_gpu_example_is_applied_by_a_document() -> None:
    """The recipes' examples are for clusters: each is in a document with the commands that feed it."""
    applied = {a.example.name for doc in DOCS for a in applied_examples(doc)}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        gpus = (yaml.safe_load(path.read_text(encoding="utf-8"))["spec"].get("resources") or {}).get("gpusPerWorker", 1)
        if gpus:
            assert path.name in applied, f"{path.name} runs on GPUs, but no document says how to apply it"


def test_an_example_on_the_pvc_is_caught(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The check itself: the old quiz example (data on a PVC that nothing fills) is refused, naming it."""
    from tests.foundation.documented import Applied

    manifest = yaml.safe_load((ROOT / "examples/quiz-generator-llama.yaml").read_text(encoding="utf-8"))
    manifest["spec"]["dataset"] = {"path": "/workspace/data/opentdb.jsonl", "format": "template"}
    problems = input_problems(Applied(ROOT / "README.md", ROOT / "examples/quiz-generator-llama.yaml", manifest))
    assert problems and "dataset.path /workspace/data/opentdb.jsonl is on the job's PVC" in problems[0]
