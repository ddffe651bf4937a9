"""Rendering: golden files for every example, Kubernetes schema validation, and field-by-field checks.

Golden files live in tests/operator/golden/<example>.yaml. After an intended
change to rendering or to an example, refresh them with

    KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_render.py

and review the diff like code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune_operator import names
from kubetune_operator.render import (
    TERMINATION_GRACE_SECONDS,
    build_job,
    render_children,
    render_yaml,
)
from kubetune_operator.settings import Settings
from kubetune_api import contract
from kubetune_api.manifest import load_finetunejob
from kubetune_api.recipe import FineTuneJob, parse_finetunejob

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
K8S_VERSION = kubernetes_validate.latest_version()
SETTINGS = Settings(trainer_image="registry.example/kubetune/trainer:test", trainer_service_account="kubetune-trainer")
OWNER = {"apiVersion": names.API_VERSION, "kind": "FineTuneJob", "metadata": {"name": "x", "uid": "1234-uid"}}


def make(spec: dict[str, Any] | None = None, name: str = "demo") -> FineTuneJob:
    """A FineTuneJob with a minimal valid spec, `spec` merged over it."""
    base = {"model": {"name": "meta-llama/Llama-3.2-1B"}, "dataset": {"path": "/workspace/data/train.jsonl"}}
    return parse_finetunejob(
        {"apiVersion": names.API_VERSION, "kind": "FineTuneJob", "metadata": {"name": name}, "spec": {**base, **(spec or {})}}
    )


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rendered children keyed by kind (one of each)."""
    return {obj["kind"]: obj for obj in objects}


def container(job_manifest: dict[str, Any]) -> dict[str, Any]:
    """The trainer container of an attempt Job."""
    return job_manifest["spec"]["template"]["spec"]["containers"][0]


def env_of(job_manifest: dict[str, Any]) -> dict[str, Any]:
    """name → value (or valueFrom) of the trainer container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job_manifest)["env"]}


# ---------------------------------------------------------------- examples


def test_examples_exist() -> None:
    assert EXAMPLES, "examples/*.yaml is empty"


RECIPE_PLACEHOLDER = "<the resolved recipe: see test_recipe_configmap_holds_the_resolved_recipe>"


def golden_text(job: FineTuneJob) -> str:
    """The rendering pinned by a golden file: every manifest, with the recipe JSON left out.

    The recipe JSON lists every default of the recipe model, so it changes whenever the model gains a
    field; the golden files pin what the operator decides, and the JSON is checked by round trip instead.
    """
    documents = render_children(job, 0, "default", SETTINGS)
    for document in documents:
        if document["kind"] == "ConfigMap":
            document["data"] = {contract.RECIPE_FILE: RECIPE_PLACEHOLDER}
    return yaml.safe_dump_all(documents, sort_keys=False, width=120, allow_unicode=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_renders_to_its_golden_file(path: Path) -> None:
    text = golden_text(load_finetunejob(path))
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden file for {path.name}: run KUBETUNE_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(encoding="utf-8"), (
        f"{path.name} renders differently from {golden}: if intended, refresh with KUBETUNE_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_rendered_object_is_valid_kubernetes(path: Path) -> None:
    job = load_finetunejob(path)
    for attempt in (0, 7):
        for obj in render_children(job, attempt, "team-a", SETTINGS, owner=OWNER):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_golden_files_have_no_orphans() -> None:
    stems = {p.stem for p in EXAMPLES}
    orphans = [g.name for g in GOLDEN.glob("*.yaml") if g.stem not in stems]
    assert not orphans, f"golden files without an example: {orphans}; delete them"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_yaml_of_every_example_is_what_the_operator_creates(path: Path) -> None:
    job = load_finetunejob(path)
    documents = [d for d in yaml.safe_load_all(render_yaml(job, attempt=2, namespace="ns", settings=SETTINGS)) if d]
    assert documents == render_children(job, 2, "ns", SETTINGS)


def test_render_yaml_parses_back_to_the_same_objects() -> None:
    job = make({"resources": {"workers": 2}, "storage": {"accessModes": ["ReadWriteMany"]}})
    documents = [d for d in yaml.safe_load_all(render_yaml(job, settings=SETTINGS)) if d]
    assert documents == render_children(job, 0, "default", SETTINGS)


def test_a_rich_spec_is_valid_kubernetes() -> None:
    job = make(
        {
            "resources": {
                "workers": 4, "gpusPerWorker": 8, "gpuResourceName": "amd.com/gpu", "cpu": 32, "memory": "256Gi",
                "nodeSelector": {"pool": "h100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
                "priorityClassName": "training",
            },
            "storage": {"existingClaim": "shared"},  # accessModes would describe a PVC not created: refused
            "model": {"name": "meta-llama/Llama-3.2-3B", "tokenSecretRef": {"name": "hf"}},
            "env": [{"name": "WANDB_PROJECT", "value": "quiz"}],
            "envFrom": [{"secretRef": {"name": "wandb"}}],
            "imagePullSecrets": [{"name": "regcred"}],
            "podTemplate": {"labels": {"team": "ml"}, "annotations": {"sidecar.istio.io/inject": "false"}},
            "queueName": "gpu-queue",
        },
        name="a" * 50,
    )
    for obj in render_children(job, 12345, "team-a", SETTINGS, owner=OWNER):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# ---------------------------------------------------------------- field by field


def test_children_and_their_names() -> None:
    kinds = [obj["kind"] for obj in render_children(make(), 0, "ns", SETTINGS)]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Job"]
    several = make({"resources": {"workers": 2}, "storage": {"accessModes": ["ReadWriteMany"]}})
    rendered = by_kind(render_children(several, 3, "ns", SETTINGS))
    assert [rendered[k]["metadata"]["name"] for k in ("ConfigMap", "PersistentVolumeClaim", "Service", "Job")] == [
        "demo-recipe", "demo-data", "demo", "demo-3",
    ]


def test_names_stay_within_63_characters_for_a_50_character_finetunejob() -> None:
    name = "a" * 50
    job = make({"resources": {"workers": 64}, "storage": {"accessModes": ["ReadWriteMany"]}}, name=name)
    for obj in render_children(job, 99999, "ns", SETTINGS):
        assert len(obj["metadata"]["name"]) <= 63
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())
    hostname = f"{names.job_name(name, 99999)}-63"  # Indexed Job pods are named <job>-<index>
    assert len(hostname) <= 63 and len(names.master_address(name, 99999).split(".")[0]) <= 63


def test_labels_on_every_child_and_attempt_on_jobs_and_pods() -> None:
    job = make({"resources": {"workers": 2}, "storage": {"accessModes": ["ReadWriteMany"]}})
    for obj in render_children(job, 2, "ns", SETTINGS):
        labels = obj["metadata"]["labels"]
        assert labels[names.LABEL_NAME] == "kubetune"
        assert labels[names.LABEL_MANAGED_BY] == "kubetune-operator"
        assert labels[names.LABEL_FINETUNEJOB] == "demo"
        assert labels[names.LABEL_COMPONENT]
    job_manifest = by_kind(render_children(job, 2, "ns", SETTINGS))["Job"]
    assert job_manifest["metadata"]["labels"][names.LABEL_ATTEMPT] == "2"
    assert job_manifest["spec"]["template"]["metadata"]["labels"][names.LABEL_ATTEMPT] == "2"


def test_user_pod_labels_cannot_detach_pods() -> None:
    job = make({"podTemplate": {"labels": {"team": "ml"}}})
    # The recipe model refuses the operator's own label keys; rendering must hold even past it.
    job.spec.pod_template.labels[names.LABEL_FINETUNEJOB] = "other"
    labels = build_job(job, 0, "ns", SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert labels[names.LABEL_FINETUNEJOB] == "demo" and labels["team"] == "ml"


def test_attempt_job_is_an_indexed_gang_that_fails_on_any_pod_failure() -> None:
    job = make({"resources": {"workers": 3}, "storage": {"accessModes": ["ReadWriteMany"]}})
    spec = build_job(job, 0, "ns", SETTINGS)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 3, 3, 0,
    )
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1] == {
        "action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]},
    }
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert "suspend" not in spec


def test_the_pod_runs_the_launcher_with_every_path_from_the_contract() -> None:
    manifest = build_job(make({"metricsPort": 9300}), 4, "ns", SETTINGS)
    trainer = container(manifest)
    assert trainer["command"] == ["kubetune-trainer"] and "args" not in trainer
    env = env_of(manifest)
    assert env[contract.Env.RECIPE] == contract.RECIPE_PATH
    assert env[contract.Env.WORKSPACE] == contract.WORKSPACE
    assert env[contract.Env.TERMINATION_LOG] == contract.TERMINATION_LOG == trainer["terminationMessagePath"]
    assert env[contract.Env.METRICS_HOST] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert (env[contract.Env.JOB_NAME], env[contract.Env.NAMESPACE], env[contract.Env.ATTEMPT]) == ("demo", "ns", "4")
    assert (env[contract.Env.NNODES], env[contract.Env.NPROC_PER_NODE]) == ("1", "1")
    assert contract.Env.MASTER_ADDR not in env and contract.Env.NODE_RANK not in env
    assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert trainer["ports"] == [{"name": "metrics", "containerPort": 9300, "protocol": "TCP"}]
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS >= 300


def test_mounts_recipe_read_only_workspace_and_memory_shm() -> None:
    pod = build_job(make(), 0, "ns", SETTINGS)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    recipe = mounts[contract.RECIPE_DIR]
    assert recipe["readOnly"] is True and volumes[recipe["name"]]["configMap"]["name"] == "demo-recipe"
    assert volumes[mounts[contract.WORKSPACE]["name"]]["persistentVolumeClaim"] == {"claimName": "demo-data"}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory"}


def test_existing_claim_is_mounted_and_no_pvc_is_rendered() -> None:
    job = make({"storage": {"existingClaim": "team-cache"}})
    rendered = by_kind(render_children(job, 0, "ns", SETTINGS))
    assert "PersistentVolumeClaim" not in rendered
    volumes = rendered["Job"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "team-cache"}} in volumes


def test_dataset_configmap_and_model_cache_are_mounted_with_their_env() -> None:
    job = make({
        "dataset": {"configMap": {"name": "quiz-data", "key": "train.jsonl"}},
        "model": {"name": "meta-llama/Llama-3.2-1B", "cacheClaim": "models"},
    })
    manifest = build_job(job, 0, "ns", SETTINGS)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    dataset = mounts[contract.DATASET_CONFIGMAP_DIR]
    assert dataset["readOnly"] is True
    assert volumes[dataset["name"]]["configMap"]["name"] == "quiz-data"
    assert volumes[dataset["name"]]["configMap"]["items"] == [{"key": "train.jsonl", "path": "train.jsonl"}]
    cache = mounts[contract.MODEL_CACHE]
    assert volumes[cache["name"]]["persistentVolumeClaim"] == {"claimName": "models"}
    env = env_of(manifest)
    assert env[contract.Env.DATASET_DIR] == contract.DATASET_CONFIGMAP_DIR
    assert env[contract.Env.MODEL_CACHE] == contract.MODEL_CACHE
    plain = env_of(build_job(make(), 0, "ns", SETTINGS))
    assert contract.Env.DATASET_DIR not in plain and contract.Env.MODEL_CACHE not in plain


def test_pvc_from_storage_spec() -> None:
    job = make({"storage": {"size": "200Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]}})
    pvc = by_kind(render_children(job, 0, "ns", SETTINGS))["PersistentVolumeClaim"]
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "200Gi"}}, "storageClassName": "fast",
    }


def test_resources_requests_equal_limits_and_gpus_under_their_resource_name() -> None:
    job = make({"resources": {"gpusPerWorker": 4, "gpuResourceName": "amd.com/gpu", "cpu": 8, "memory": "64Gi"}})
    manifest = build_job(job, 0, "ns", SETTINGS)
    assert container(manifest)["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"cpu": "8", "memory": "64Gi", "amd.com/gpu": "4"},
    }
    assert env_of(manifest)[contract.Env.NPROC_PER_NODE] == "4"
    cpu_only = build_job(make({"resources": {"gpusPerWorker": 0}}), 0, "ns", SETTINGS)
    assert "resources" not in container(cpu_only)


def test_restricted_security_context_as_the_trainer_uid() -> None:
    pod = build_job(make(), 0, "ns", SETTINGS)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == contract.TRAINER_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    own = pod["containers"][0]["securityContext"]
    assert own["allowPrivilegeEscalation"] is False and own["capabilities"] == {"drop": ["ALL"]}
    assert own["runAsNonRoot"] is True and own["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root; what the stack writes besides the PVC goes to emptyDirs at /tmp and HOME.
    assert own["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", contract.TRAINER_HOME, "/dev/shm"):
        assert "emptyDir" in volumes[mounts[path]], path


def test_scheduling_and_identity_pass_through() -> None:
    tolerations = [{"key": "gpu", "operator": "Exists"}]
    job = make({
        "resources": {"nodeSelector": {"pool": "a100"}, "tolerations": tolerations, "priorityClassName": "high",
                      "affinity": {"podAntiAffinity": {}}},
        "imagePullSecrets": [{"name": "regcred"}], "serviceAccountName": "wi", "image": "my/trainer:1",
        "imagePullPolicy": "Always", "podTemplate": {"annotations": {"a": "b"}},
    })
    manifest = build_job(job, 0, "ns", SETTINGS)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["tolerations"] == tolerations
    assert pod["priorityClassName"] == "high" and pod["affinity"] == {"podAntiAffinity": {}}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "wi"
    assert (container(manifest)["image"], container(manifest)["imagePullPolicy"]) == ("my/trainer:1", "Always")
    assert manifest["spec"]["template"]["metadata"]["annotations"]["a"] == "b"


def test_operator_defaults_fill_image_and_service_account() -> None:
    manifest = build_job(make(), 0, "ns", SETTINGS)
    assert container(manifest)["image"] == SETTINGS.trainer_image
    assert manifest["spec"]["template"]["spec"]["serviceAccountName"] == "kubetune-trainer"
    bare = build_job(make(), 0, "ns", Settings(trainer_service_account=None))
    assert "serviceAccountName" not in bare["spec"]["template"]["spec"]


def test_hf_token_from_secret_and_user_env() -> None:
    job = make({
        "model": {"name": "meta-llama/Llama-3.2-1B", "tokenSecretRef": {"name": "hf", "key": "tok"}},
        "env": [{"name": "WANDB_PROJECT", "value": "q"}, {"name": contract.Env.MASTER_PORT, "value": "29600"}],
        "envFrom": [{"secretRef": {"name": "wandb"}}],
        "resources": {"workers": 2}, "storage": {"accessModes": ["ReadWriteMany"]},
    })
    manifest = build_job(job, 0, "ns", SETTINGS)
    env = env_of(manifest)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    assert env["WANDB_PROJECT"] == "q" and env[contract.Env.MASTER_PORT] == "29600"
    names_in_order = [e["name"] for e in container(manifest)["env"]]
    assert len(names_in_order) == len(set(names_in_order)), "an env name appears twice"
    assert container(manifest)["envFrom"] == [{"secretRef": {"name": "wandb"}}]


def test_queue_name_creates_the_job_suspended_with_the_kueue_label() -> None:
    manifest = build_job(make({"queueName": "team-gpus"}), 0, "ns", SETTINGS)
    assert manifest["spec"]["suspend"] is True
    assert manifest["metadata"]["labels"][names.LABEL_KUEUE_QUEUE] == "team-gpus"
    # Kueue preempts by suspending: the checkpointed trainer's exit 75 must not fail the attempt.
    actions = [(rule["action"], rule.get("onExitCodes", {}).get("values")) for rule in
               manifest["spec"]["podFailurePolicy"]["rules"]]
    assert actions == [("FailJob", None), ("Ignore", [75]), ("FailJob", [0])]


def test_several_workers_get_a_headless_service_subdomain_and_rendezvous_env() -> None:
    job = make({"resources": {"workers": 4, "gpusPerWorker": 2}, "storage": {"accessModes": ["ReadWriteMany"]}})
    rendered = by_kind(render_children(job, 5, "ns", SETTINGS))
    service = rendered["Service"]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert service["selector"] == {names.LABEL_FINETUNEJOB: "demo", names.LABEL_COMPONENT: "trainer"}
    pod = rendered["Job"]["spec"]["template"]["spec"]
    assert pod["subdomain"] == rendered["Service"]["metadata"]["name"] == "demo"
    env = env_of(rendered["Job"])
    assert env[contract.Env.MASTER_ADDR] == "demo-5-0.demo"
    assert env[contract.Env.MASTER_PORT] == str(contract.MASTER_PORT)
    assert (env[contract.Env.NNODES], env[contract.Env.NPROC_PER_NODE]) == ("4", "2")
    assert contract.Env.NODE_RANK not in env  # Kubernetes sets JOB_COMPLETION_INDEX itself


def test_owner_references_on_every_child_but_a_retained_pvc() -> None:
    retained = render_children(make(), 0, "ns", SETTINGS, owner=OWNER)
    owned = {obj["kind"]: "ownerReferences" in obj["metadata"] for obj in retained}
    assert owned == {"ConfigMap": True, "PersistentVolumeClaim": False, "Job": True}
    reference = retained[0]["metadata"]["ownerReferences"][0]
    assert reference["uid"] == "1234-uid" and reference["controller"] is True
    dropped = render_children(make({"storage": {"retainOnDelete": False}}), 0, "ns", SETTINGS, owner=OWNER)
    assert all("ownerReferences" in obj["metadata"] for obj in dropped)


def test_recipe_configmap_holds_the_resolved_recipe() -> None:
    configmap = by_kind(render_children(make(), 0, "ns", SETTINGS))["ConfigMap"]
    recipe = parse_finetunejob(yaml.safe_load(configmap["data"][contract.RECIPE_FILE]))
    assert recipe.metadata.name == "demo" and recipe.metadata.namespace == "ns"
    assert recipe.spec == make().spec
    assert '"learningRate": 0.0002' in configmap["data"][contract.RECIPE_FILE]  # defaults resolved


def test_rendering_is_deterministic_and_does_not_alias_the_spec() -> None:
    job = make({"resources": {"tolerations": [{"key": "a", "operator": "Exists"}]}})
    first = render_children(job, 0, "ns", SETTINGS)
    first[-1]["spec"]["template"]["spec"]["tolerations"][0]["key"] = "mutated"
    assert job.spec.resources.tolerations[0]["key"] == "a"
    assert render_children(job, 0, "ns", SETTINGS) != first


def test_kubetune_render_of_all_examples_prints_one_valid_stream(capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune_operator.cli import main

    assert main(["render", *map(str, EXAMPLES), "--namespace", "team-a", "--attempt", "1"]) == 0
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert len(documents) >= 3 * len(EXAMPLES)
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        assert document["metadata"]["namespace"] == "team-a"


def test_the_operators_default_requests_keep_a_trainer_out_of_best_effort_and_the_spec_wins() -> None:
    settings = dataclasses.replace(SETTINGS, trainer_cpu_request="2", trainer_memory_request="8Gi")
    defaulted = build_job(make({}), 0, "ns", settings)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert defaulted["requests"] == {"cpu": "2", "memory": "8Gi"}  # requests only: Burstable
    assert {"cpu", "memory"}.isdisjoint(defaulted.get("limits", {}))
    own = make({"resources": {"cpu": "6", "gpusPerWorker": 1}})
    resources = build_job(own, 0, "ns", settings)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "6", "memory": "8Gi"}, "limits": {"cpu": "6", "nvidia.com/gpu": "1"}}
    plain = build_job(make({}), 0, "ns", SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert "requests" not in plain.get("resources", {})  # no defaults configured: nothing invented
