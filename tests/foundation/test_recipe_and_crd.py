"""The recipe model and the CRD generated from it: drift, structure, examples, and bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_operator import cli
from kubetune_operator.crd import render_crd_yaml
from kubetune_api.manifest import load_documents
from kubetune_api.recipe import RecipeError, parse_finetunejob
from tests.crd_validation import CRD_PATH, crd_errors, crd_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tiny"},
    "spec": {
        "model": {"name": "/workspace/models/tiny"},
        "dataset": {"path": "/workspace/data/train.jsonl", "format": "prompt-completion"},
    },
}


def with_changes(**changes: Any) -> dict[str, Any]:
    """MINIMAL with dotted-path changes applied; the value DELETE removes a key."""
    manifest = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = manifest
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return manifest


DELETE = object()

# (case id, manifest, a fragment both the model's and the CRD's messages must contain)
BAD_MANIFESTS = [
    ("batch size of the wrong type", with_changes(spec__training__batchSize="four"), "training.batchSize"),
    ("lora rank zero", with_changes(spec__method__lora__r=0), "lora.r"),
    ("lora rank too big", with_changes(spec__method__lora__r=4096), "lora.r"),
    ("validation split over 0.5", with_changes(spec__dataset__validationSplit=0.9), "dataset.validationSplit"),
    ("unknown dataset format", with_changes(spec__dataset__format="chatml"), "dataset.format"),
    ("misspelt field", with_changes(spec__training__learningrate=1e-4), "training.learningrate"),
    ("unknown spec field", with_changes(spec__gpus=2), "spec.gpus"),
    ("missing model", with_changes(spec__model=DELETE), "model"),
    ("missing model name", with_changes(spec__model={}), "model.name"),
    ("dataset name and path", with_changes(spec__dataset__name="org/data"), "dataset.name"),
    ("dataset without source", with_changes(spec__dataset__path=DELETE), "dataset.path"),
    ("distill without teacher", with_changes(spec__method__type="distill"), "method.distill"),
    ("dpo without preference data", with_changes(spec__method__type="dpo"), "dataset.format"),
    ("preference data without dpo", with_changes(spec__dataset__format="preference"), "method.type"),
    ("name over 50 characters", with_changes(metadata__name="a" * 51), "metadata.name"),
    ("name not a DNS-1035 label", with_changes(metadata__name="9-Tiny"), "metadata.name"),
    ("negative GPUs", with_changes(spec__resources__gpusPerWorker=-1), "resources.gpusPerWorker"),
    ("two workers on RWO storage", with_changes(spec__resources__workers=2), "resources.workers"),
    (
        "best model without validation",
        with_changes(spec__training__loadBestModelAtEnd=True, spec__dataset__validationSplit=0),
        "training.loadBestModelAtEnd",
    ),
    (
        "best model with saveSteps not a multiple of evalSteps",
        with_changes(spec__training__loadBestModelAtEnd=True, spec__training__saveSteps=300, spec__training__evalSteps=200),
        "training.saveSteps",
    ),
    (
        "8-bit optimizer with DeepSpeed offload",
        with_changes(spec__deepspeed={"zeroStage": 3, "offloadOptimizer": True}),
        "training.optimizer",
    ),
    (
        "warmup steps and ratio",
        with_changes(spec__training__warmupSteps=10, spec__training__warmupRatio=0.1),
        "training.warmupSteps",
    ),
    ("3-bit quantization", with_changes(spec__method__quantization__bits=3), "quantization.bits"),
    ("zero learning rate", with_changes(spec__training__learningRate=0), "training.learningRate"),
    ("dropout of one", with_changes(spec__method__lora__dropout=1.0), "lora.dropout"),
    ("template format without templates", with_changes(spec__dataset__format="template"), "dataset"),
    ("memory that is not a quantity", with_changes(spec__resources__memory="lots"), "resources.memory"),
    ("privileged metrics port", with_changes(spec__metricsPort=80), "metricsPort"),
    ("sequence length below 16", with_changes(spec__training__maxSeqLength=8), "training.maxSeqLength"),
    ("no LoRA target modules", with_changes(spec__method__lora__targetModules=[]), "lora.targetModules"),
    ("unknown tracker", with_changes(spec__training__reportTo=["comet"]), "training.reportTo"),
    ("bad pull policy", with_changes(spec__imagePullPolicy="Sometimes"), "imagePullPolicy"),
    (
        "dataset path and configMap",
        with_changes(spec__dataset__configMap={"name": "quiz-data", "key": "train.jsonl"}),
        "dataset.configMap",
    ),
    (
        "configMap key that is not a data file",
        with_changes(spec__dataset__path=DELETE, spec__dataset__configMap={"name": "quiz-data", "key": "train.txt"}),
        "configMap.key",
    ),
    ("model cache claim for a local model", with_changes(spec__model__cacheClaim="models"), "model.cacheClaim"),
    ("output uri of an unknown scheme", with_changes(spec__output__uri="ftp://host/result"), "output.uri"),
    ("output uri of a hub repo without owner", with_changes(spec__output__uri="hf://just-a-name"), "output.uri"),
    # Numbers: non-finite (YAML .inf/.nan), beyond int64, zero or negative where meaningless, absurdly large.
    ("infinite learning rate", with_changes(spec__training__learningRate=math.inf), "training.learningRate"),
    ("NaN LoRA alpha", with_changes(spec__method__lora__alpha=math.nan), "lora.alpha"),
    ("minus infinite weight decay", with_changes(spec__training__weightDecay=-math.inf), "training.weightDecay"),
    ("NaN eval temperature", with_changes(spec__evaluation__temperature=math.nan), "evaluation.temperature"),
    ("infinite epochs", with_changes(spec__training__epochs=math.inf), "training.epochs"),
    ("maxSteps beyond int64", with_changes(spec__training__maxSteps=2**64), "training.maxSteps"),
    ("seed beyond numpy's range", with_changes(spec__training__seed=2**32), "training.seed"),
    ("negative dataset seed", with_changes(spec__dataset__seed=-1), "dataset.seed"),
    ("learning rate above 1", with_changes(spec__training__learningRate=3.0), "training.learningRate"),
    ("saveSteps beyond int64", with_changes(spec__training__saveSteps=-(2**63) * 4), "training.saveSteps"),
    ("zero cpu", with_changes(spec__resources__cpu="0"), "resources.cpu"),
    ("zero millicpu", with_changes(spec__resources__cpu="0m"), "resources.cpu"),
    ("zero memory as a number", with_changes(spec__resources__memory=0), "resources.memory"),
    ("zero storage size", with_changes(spec__storage__size="0Gi"), "storage.size"),
    ("negative storage size", with_changes(spec__storage__size="-5Gi"), "storage.size"),
    ("ttl beyond int32", with_changes(spec__ttlSecondsAfterFinished=2**31), "ttlSecondsAfterFinished"),
    # Names and label syntax that the API server (or the Job it is rendered into) would refuse later.
    ("namespace with capitals", with_changes(metadata__namespace="ML_Team"), "metadata.namespace"),
    ("own label key with two slashes", with_changes(metadata__labels={"a/b/c": "x"}), "metadata.labels"),
    ("pod label key with a space", with_changes(spec__podTemplate__labels={"my team": "x"}), "podTemplate.labels"),
    ("pod label value too long", with_changes(spec__podTemplate__labels={"team": "x" * 64}), "podTemplate.labels"),
    (
        "pod label the operator owns",
        with_changes(spec__podTemplate__labels={"kubetune.io/attempt": "9"}),
        "podTemplate.labels",
    ),
    ("annotation key with a colon", with_changes(spec__podTemplate__annotations={"a:b": "x"}), "podTemplate.annotations"),
    ("node selector value with a slash", with_changes(spec__resources__nodeSelector={"gpu": "a/b"}), "nodeSelector"),
    ("secret name with capitals", with_changes(spec__model__tokenSecretRef={"name": "HF-Token"}), "tokenSecretRef.name"),
    ("pull secret with underscore", with_changes(spec__imagePullSecrets=[{"name": "reg_cred"}]), "imagePullSecrets"),
    ("service account with a space", with_changes(spec__serviceAccountName="my sa"), "serviceAccountName"),
    ("existing claim with capitals", with_changes(spec__storage__existingClaim="PVC"), "storage.existingClaim"),
    ("queue name with a slash", with_changes(spec__queueName="team/queue"), "queueName"),
    ("GPU resource without a domain", with_changes(spec__resources__gpuResourceName="gpu"), "gpuResourceName"),
    ("image with a space", with_changes(spec__image="registry/trainer :1"), "image"),
    # env: the operator's variables, secrets inline, entries Kubernetes would refuse when the Job is created.
    ("env entry without a name", with_changes(spec__env=[{"value": "1"}]), "env"),
    ("env name with a space", with_changes(spec__env=[{"name": "MY VAR", "value": "1"}]), "env"),
    ("env overriding the recipe path", with_changes(spec__env=[{"name": "KUBETUNE_RECIPE", "value": "/x"}]), "env"),
    ("env overriding the node rank", with_changes(spec__env=[{"name": "JOB_COMPLETION_INDEX", "value": "0"}]), "env"),
    (
        "env with value and valueFrom",
        with_changes(spec__env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]),
        "env",
    ),
    ("W&B key inline", with_changes(spec__env=[{"name": "WANDB_API_KEY", "value": "f00"}]), "valueFrom.secretKeyRef"),
    ("hub token inline", with_changes(spec__env=[{"name": "hf_token", "value": "hf_abc"}]), "valueFrom.secretKeyRef"),
    (
        "MLflow password inline",
        with_changes(spec__env=[{"name": "MLFLOW_TRACKING_PASSWORD", "value": "pw"}]),
        "valueFrom.secretKeyRef",
    ),
    # Settings the method, the format, the DeepSpeed stage or the hardware would ignore (or fail on later).
    ("distill settings with sft", with_changes(spec__method__distill={"teacher": {"name": "big"}}), "method.distill"),
    ("dpo settings with sft", with_changes(spec__method__dpo={"beta": 0.5}), "method.dpo"),
    (
        "fp4 on a 16-bit base",
        with_changes(spec__method__quantization={"bits": 16, "quantType": "fp4"}),
        "quantization.quantType",
    ),
    (
        "offloadParams below ZeRO-3",
        with_changes(spec__deepspeed={"zeroStage": 2, "offloadParams": True}, spec__training__optimizer="adamw_torch"),
        "deepspeed.offloadParams",
    ),
    (
        "offloadOptimizer at ZeRO-0",
        with_changes(spec__deepspeed={"zeroStage": 0, "offloadOptimizer": True}, spec__training__optimizer="adamw_torch"),
        "deepspeed.offloadOptimizer",
    ),
    ("DeepSpeed on the CPU", with_changes(spec__deepspeed={"zeroStage": 2}, spec__resources__gpusPerWorker=0), "deepspeed"),
    (
        "flash attention on the CPU",
        with_changes(spec__model__attnImplementation="flash_attention_2", spec__resources__gpusPerWorker=0),
        "model.attnImplementation",
    ),
    (
        "fused LoRA on the CPU",
        with_changes(spec__training__fusedLora=True, spec__resources__gpusPerWorker=0),
        "training.fusedLora",
    ),
    (
        "fp8 base matmuls with fusedLora off",
        with_changes(spec__training__fp8BaseMatmuls=True, spec__training__fusedLora=False),
        "training.fp8BaseMatmuls",
    ),
    (
        "fp8 base matmuls on an 8-bit base",
        with_changes(spec__training__fp8BaseMatmuls=True, spec__method__quantization={"bits": 8}),
        "training.fp8BaseMatmuls",
    ),
    (
        "fp8 base matmuls on the CPU",
        with_changes(spec__training__fp8BaseMatmuls=True, spec__resources__gpusPerWorker=0),
        "training.fp8BaseMatmuls",
    ),
    (
        "storage class of an existing claim",
        with_changes(spec__storage={"existingClaim": "shared", "storageClassName": "fast"}),
        "storage.existingClaim",
    ),
    (
        "templates without format template",
        with_changes(spec__dataset__template={"prompt": "Q: {{ q }}", "completion": "{{ a }}"}),
        "dataset.template",
    ),
    ("subset of a file", with_changes(spec__dataset__subset="en"), "dataset.subset"),
    ("split of a file", with_changes(spec__dataset__split="test"), "dataset.split"),
    ("thinkTags on raw text", with_changes(spec__dataset__format="text", spec__dataset__thinkTags=True), "dataset.thinkTags"),
    ("chosen column for SFT", with_changes(spec__dataset__columns={"chosen": "good"}), "dataset.columns"),
    (
        "warm-up with a constant schedule",
        with_changes(spec__training__lrScheduler="constant", spec__training__warmupSteps=10),
        "training.lrScheduler",
    ),
    (
        "evalSteps without validation data",
        with_changes(spec__training__evalSteps=10, spec__dataset__validationSplit=0),
        "training.evalSteps",
    ),
    (
        "exact match without validation data",
        with_changes(spec__evaluation__exactMatch=True, spec__dataset__validationSplit=0),
        "evaluation.exactMatch",
    ),
    (
        "packing with DPO",
        with_changes(spec__method__type="dpo", spec__dataset__format="preference", spec__training__packing=True),
        "training.packing",
    ),
    (
        "hub token from tokenSecretRef and env",
        with_changes(
            spec__model__tokenSecretRef={"name": "hf"},
            spec__env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf2", "key": "token"}}}],
        ),
        "model.tokenSecretRef",
    ),
    # Empty strings that would silently mean "the default" or fail deep in peft.
    ("empty column name", with_changes(spec__dataset__columns={"prompt": ""}), "dataset.columns.prompt"),
    ("empty target module", with_changes(spec__method__lora__targetModules=["q_proj", ""]), "lora.targetModules"),
    ("empty evaluation prompt", with_changes(spec__evaluation__prompts=[""]), "evaluation.prompts"),
    (
        "distillation whose KD term weighs 0",
        with_changes(spec__method={"type": "distill", "distill": {"teacher": {"name": "big"}, "alpha": 0}}),
        "distill.alpha",
    ),
    (
        "warm-up longer than the run",
        with_changes(spec__training__maxSteps=50, spec__training__warmupSteps=100),
        "training.warmupSteps",
    ),
    # Tolerations: the Job that carries them would be refused by the API server, at the operator, later.
    (
        "toleration operator in lower case",
        with_changes(spec__resources__tolerations=[{"key": "nvidia.com/gpu", "operator": "exists"}]),
        "tolerations",
    ),
    (
        "toleration Exists with a value",
        with_changes(spec__resources__tolerations=[{"key": "gpu", "operator": "Exists", "value": "a100"}]),
        "operator Exists",
    ),
    (
        "toleration seconds without NoExecute",
        with_changes(spec__resources__tolerations=[{"key": "gpu", "value": "x", "tolerationSeconds": 30}]),
        "tolerationSeconds",
    ),
    ("toleration with a typo", with_changes(spec__resources__tolerations=[{"key": "gpu", "efect": "NoSchedule"}]), "efect"),
    ("envFrom of nothing", with_changes(spec__envFrom=[{"prefix": "W_"}]), "envFrom"),
    (
        "envFrom of a ConfigMap and a Secret at once",
        with_changes(spec__envFrom=[{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
        "envFrom",
    ),
    ("envFrom with the operator's prefix", with_changes(spec__envFrom=[{"prefix": "KUBETUNE_", "secretRef": {"name": "b"}}]),
     "envFrom"),
    ("envFrom secret name with capitals", with_changes(spec__envFrom=[{"secretRef": {"name": "WandB"}}]), "envFrom"),
]


def test_committed_crd_is_what_the_model_generates() -> None:
    assert CRD_PATH.read_text(encoding="utf-8") == render_crd_yaml(), "run `kubetune crd -o crds/finetunejob.yaml`"


def test_crd_verb_reproduces_the_committed_file(tmp_path: Path) -> None:
    target = tmp_path / "crd.yaml"
    assert cli.main(["crd", "-o", str(target)]) == 0
    assert target.read_bytes() == CRD_PATH.read_bytes()
    assert cli.main(["crd", "--check", "-o", str(CRD_PATH)]) == 0


def _structural_problems(node: dict[str, Any], path: str) -> list[str]:
    problems = []
    typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if not typed:
        problems.append(f"{path}: no type")
    if "$ref" in node or "allOf" in node or "oneOf" in node:
        problems.append(f"{path}: $ref/allOf/oneOf")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: additionalProperties beside properties")
    if node.get("type") == "string" and "maxLength" not in node:
        problems.append(f"{path}: string without maxLength")
    if node.get("type") == "array" and "maxItems" not in node:
        problems.append(f"{path}: list without maxItems")
    for option in node.get("anyOf", []):
        if "type" in option and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: type inside anyOf")
    for name, child in node.get("properties", {}).items():
        problems += _structural_problems(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _structural_problems(node[key], f"{path}.{key}")
    return problems


def test_crd_schema_is_structural_and_bounded() -> None:
    schema = crd_schema()
    problems = []
    for name in ("spec", "status"):
        problems += _structural_problems(schema["properties"][name], name)
    assert problems == []


def _descriptions_not_starting_with_name(node: dict[str, Any], path: str) -> list[str]:
    misses = []
    for name, child in node.get("properties", {}).items():
        if not child.get("description", "").startswith(name):
            misses.append(f"{path}.{name}")
        misses += _descriptions_not_starting_with_name(child, f"{path}.{name}")
        if isinstance(child.get("items"), dict):
            misses += _descriptions_not_starting_with_name(child["items"], f"{path}.{name}[]")
    return misses


def test_every_spec_field_is_explained_by_a_sentence_starting_with_its_name() -> None:
    assert _descriptions_not_starting_with_name(crd_schema()["properties"]["spec"], "spec") == []


def test_crd_has_the_printer_columns_and_status_subresource() -> None:
    version = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Stage", "Progress", "Loss", "Restarts", "Age"]
    # Loss is text the operator formats with one precision (a number column prints 2 beside 1.7342195510864258).
    assert (columns["Loss"]["type"], columns["Loss"]["jsonPath"]) == ("string", ".status.progress.lossText")
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_by_the_crd_and_the_model(path: Path) -> None:
    documents = [doc for doc in load_documents(path) if doc.get("kind") == "FineTuneJob"]
    assert documents, f"{path.name} holds no FineTuneJob"
    for document in documents:
        assert crd_errors(document) == []
        parse_finetunejob(document)


def test_the_minimal_manifest_is_valid() -> None:
    assert crd_errors(MINIMAL) == []
    job = parse_finetunejob(MINIMAL)
    assert job.spec.training.learning_rate == 2e-4
    assert job.spec.method.quantization.bits == 4


@pytest.mark.parametrize(("manifest", "field"), [c[1:] for c in BAD_MANIFESTS], ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused_by_the_model_naming_the_field(manifest: dict[str, Any], field: str) -> None:
    with pytest.raises(RecipeError) as refused:
        parse_finetunejob(manifest)
    assert field in str(refused.value)


@pytest.mark.parametrize(("manifest", "field"), [c[1:] for c in BAD_MANIFESTS], ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused_by_the_crd_naming_the_field(manifest: dict[str, Any], field: str) -> None:
    errors = crd_errors(manifest)
    assert errors, "the CRD accepted it"
    assert any(field in error for error in errors), errors


def test_there_are_at_least_twenty_bad_manifests() -> None:
    assert len(BAD_MANIFESTS) >= 20


def test_changing_an_immutable_field_is_refused_by_the_crd() -> None:
    # The operator's side of this rule is reconcile's drift check (ImmutableFieldChanged, tests/operator).
    changed = with_changes(spec__model={"name": "/workspace/models/other"})
    assert any(error.startswith(".spec.model: spec.model is immutable") for error in crd_errors(changed, old=MINIMAL))


def test_suspend_may_change_after_creation() -> None:
    suspended = with_changes(spec__suspend=True)
    assert crd_errors(suspended, old=MINIMAL) == []


def test_validate_verb_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", *map(str, EXAMPLES)]) == 0
    assert capsys.readouterr().out.count("ok ") == len(EXAMPLES)


def test_validate_verb_prints_field_named_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_changes(spec__training__batchSize=0, spec__method__lora__alpha=-1)))
    assert cli.main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.training.batchSize: Input should be greater than or equal to 1" in err
    assert "spec.method.lora.alpha" in err
    assert "Traceback" not in err


def test_scientific_notation_without_a_dot_reads_as_a_number(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(MINIMAL) + "") 
    text = manifest.read_text().replace("format: prompt-completion", "format: prompt-completion\n  training:\n    learningRate: 2e-4")
    manifest.write_text(text)
    documents = list(load_documents(manifest))
    assert documents[0]["spec"]["training"]["learningRate"] == 2e-4


@pytest.mark.parametrize("quantity", [4, "500m", "0.5", "1.5Gi", "16Gi", "100M"])
def test_positive_quantities_are_accepted_by_crd_and_model(quantity: int | str) -> None:
    manifest = with_changes(spec__resources__cpu=quantity, spec__resources__memory=quantity, spec__storage__size=quantity)
    assert crd_errors(manifest) == []
    parse_finetunejob(manifest)


def test_env_entries_users_need_are_accepted_by_crd_and_model() -> None:
    manifest = with_changes(spec__env=[
        {"name": "WANDB_PROJECT", "value": "quiz"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "KUBETUNE_MASTER_PORT", "value": "29511"},
        {"name": "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS", "value": "1200"},
        {"name": "EMPTY_TOKEN", "value": ""},
    ])
    assert crd_errors(manifest) == []
    parse_finetunejob(manifest)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_what_the_operator_writes_back_passes_both_checks_again(path: Path) -> None:
    """to_api() spells out every default (the recipe ConfigMap): the ignored-setting rules must not see them as set."""
    for document in load_documents(path):
        if document.get("kind") == "FineTuneJob":
            written = parse_finetunejob(document).to_api()
            assert crd_errors(written) == []
            assert parse_finetunejob(written).to_api() == written


def test_defaults_spelled_out_with_an_existing_claim_and_a_16_bit_base_pass() -> None:
    written = parse_finetunejob(
        with_changes(spec__storage={"existingClaim": "shared"}, spec__method__quantization={"bits": 16})
    ).to_api()
    assert written["spec"]["storage"]["size"] == "50Gi" and written["spec"]["method"]["dpo"]["beta"] == 0.1
    assert crd_errors(written) == []
    parse_finetunejob(written)


@pytest.mark.parametrize(
    ("content", "code", "said"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff", 2, "is not UTF-8 text"),
        (b"spec: [unclosed\n", 2, "YAML syntax error"),
        (b"just a sentence, not a manifest\n", 1, "no FineTuneJob found"),
    ],
    ids=["binary", "broken YAML", "a YAML scalar"],
)
def test_validate_of_a_file_that_is_no_manifest_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, code: int, said: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    assert cli.main(["validate", str(path)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and said in err and "Traceback" not in err
