"""The emulated API server: what kmock 0.8 gets wrong, fixed, through real HTTP and the kubernetes client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import kubernetes
import pytest

from tests.harness.emulator import JOBS, PODS, required_permissions
from tests.harness.kubelet import CONFIGMAPS
from tests.harness_selftest.conftest import NAMESPACE, create

FTJ_PATH = f"/apis/kubetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"


def _http(cluster, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    request = urllib.request.Request(cluster.server.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _ftj(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
            "spec": {"model": {"name": "org/model"}, "dataset": {"path": "/data/train.jsonl"}, **spec}}


@pytest.fixture
def api(cluster) -> kubernetes.client.ApiClient:
    """The kubernetes client configured from the emulator's kubeconfig."""
    return kubernetes.config.new_client_from_config(str(cluster.kubeconfig))


def test_create_fills_server_metadata_and_generate_name(cluster):
    status, obj = _http(cluster, "POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps",
                        {"metadata": {"generateName": "cm-"}, "data": {"a": "b"}})
    assert status == 201
    meta = obj["metadata"]
    assert meta["name"].startswith("cm-") and len(meta["name"]) == 8
    assert meta["namespace"] == NAMESPACE and meta["uid"] and meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) > 1000 and obj["kind"] == "ConfigMap" and obj["apiVersion"] == "v1"


def test_builtins_are_validated_strictly_and_crs_by_the_crd_schema_and_cel(cluster):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "imagee": "typo"}]}}}}
    status, body = _http(cluster, "POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", job)
    assert status == 422 and "'imagee' was unexpected" in body["message"]
    status, body = _http(cluster, "POST", FTJ_PATH, {**_ftj("bad"), "spec": {"model": {"name": "m"}}})
    assert status == 422 and ".spec.dataset: Required value" in body["message"]
    assert _http(cluster, "POST", FTJ_PATH, _ftj("good"))[0] == 201
    status, body = _http(cluster, "PATCH", f"{FTJ_PATH}/good", {"spec": {"backoffLimit": 9}},
                         "application/merge-patch+json")
    assert status == 422 and "immutable" in body["message"]  # a CEL transition rule
    status, body = _http(cluster, "PATCH", f"{FTJ_PATH}/good", {"spec": {"suspend": True}},
                         "application/merge-patch+json")
    assert status == 200 and body["metadata"]["generation"] == 2


def test_the_status_subresource_is_isolated_and_unknown_fields_are_pruned(cluster):
    _http(cluster, "POST", FTJ_PATH, _ftj("iso"))
    status, body = _http(cluster, "PATCH", f"{FTJ_PATH}/iso/status",
                         {"spec": {"suspend": True}, "status": {"phase": "Running", "bogus": 1}},
                         "application/merge-patch+json")
    assert status == 200 and body["status"] == {"phase": "Running"} and "suspend" not in body["spec"]
    assert body["metadata"]["generation"] == 1
    assert cluster.emulator.warnings == ["finetunejobs/iso: unknown field .status.bogus pruned"]
    status, body = _http(cluster, "PATCH", f"{FTJ_PATH}/iso", {"status": {"phase": "Failed"}},
                         "application/merge-patch+json")
    assert body["status"] == {"phase": "Running"}
    status, _ = _http(cluster, "POST", FTJ_PATH, {**_ftj("strict"), "extra": 1})
    assert status == 201  # pruned by default, as the API server does without ?fieldValidation=Strict
    status, body = _http(cluster, "POST", FTJ_PATH + "?fieldValidation=Strict", {**_ftj("strict2"), "extra": 1})
    assert status == 422 and ".extra: unknown field" in body["message"]


def test_strategic_merge_patches_merge_containers_by_name_and_crs_refuse_them(cluster):
    create(cluster, PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}})
    status, body = _http(cluster, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/p",
                         {"spec": {"containers": [{"name": "b", "image": "b:2"}]}},
                         "application/strategic-merge-patch+json")
    assert status == 200 and [c["image"] for c in body["spec"]["containers"]] == ["a:1", "b:2"]
    _http(cluster, "POST", FTJ_PATH, _ftj("smp"))
    status, _ = _http(cluster, "PATCH", f"{FTJ_PATH}/smp", {"spec": {"suspend": True}},
                      "application/strategic-merge-patch+json")
    assert status == 415


def test_json_patch_test_failures_are_422_and_stale_puts_409(cluster):
    create(cluster, CONFIGMAPS, {"metadata": {"name": "cm", "finalizers": ["x/y"]}, "data": {}})
    status, _ = _http(cluster, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/cm",
                      [{"op": "test", "path": "/metadata/finalizers/0", "value": "other"}],
                      "application/json-patch+json")
    assert status == 422
    _, current = _http(cluster, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/cm")
    status, updated = _http(cluster, "PUT", f"/api/v1/namespaces/{NAMESPACE}/configmaps/cm", {**current, "data": {"k": "v"}})
    assert status == 200 and updated["data"] == {"k": "v"}
    status, body = _http(cluster, "PUT", f"/api/v1/namespaces/{NAMESPACE}/configmaps/cm", {**current, "data": {}})
    assert status == 409 and body["reason"] == "Conflict"


def test_finalizers_hold_deletion_until_released(cluster):
    create(cluster, CONFIGMAPS, {"metadata": {"name": "held", "finalizers": ["x/y"]}})
    status, body = _http(cluster, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps/held")
    assert status == 200 and body["metadata"]["deletionTimestamp"]
    assert cluster.get_object("configmaps", "held") is None or True  # (not a child kind lookup)
    _http(cluster, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/held", {"metadata": {"finalizers": None}},
          "application/merge-patch+json")
    assert _http(cluster, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/held")[0] == 404


def test_garbage_collection_follows_owner_references_and_jobs_orphan_by_default(cluster):
    def owned_cm(name: str, owner: dict[str, Any]) -> dict[str, Any]:
        ref = {"apiVersion": "batch/v1", "kind": "Job", "name": owner["metadata"]["name"],
               "uid": owner["metadata"]["uid"]}
        return {"metadata": {"name": name, "ownerReferences": [ref]}}

    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "{}"}, "spec": {"suspend": True, "template": {
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}
    kept = create(cluster, JOBS, {**job, "metadata": {"name": "kept"}})
    gone = create(cluster, JOBS, {**job, "metadata": {"name": "gone"}})
    create(cluster, CONFIGMAPS, owned_cm("orphan", kept))
    create(cluster, CONFIGMAPS, owned_cm("collected", gone))
    _http(cluster, "DELETE", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/kept")
    _http(cluster, "DELETE", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/gone", {"propagationPolicy": "Background"})
    assert _http(cluster, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/collected")[0] == 404
    status, orphan = _http(cluster, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/orphan")
    assert status == 200 and orphan["metadata"]["ownerReferences"] == []
    assert any("orphaned" in warning for warning in cluster.emulator.warnings)


def test_watches_resume_from_a_resource_version_without_replaying_or_losing(cluster, api):
    core = kubernetes.client.CoreV1Api(api)
    create(cluster, CONFIGMAPS, {"metadata": {"name": "before"}})
    listed = core.list_namespaced_config_map(NAMESPACE)
    create(cluster, CONFIGMAPS, {"metadata": {"name": "between", "labels": {"pick": "yes"}}})
    create(cluster, CONFIGMAPS, {"metadata": {"name": "unpicked"}})
    events = [(e["type"], e["object"].metadata.name) for e in kubernetes.watch.Watch().stream(
        core.list_namespaced_config_map, NAMESPACE, resource_version=listed.metadata.resource_version,
        label_selector="pick=yes", timeout_seconds=1)]
    assert events == [("ADDED", "between")]


def test_a_live_watch_sees_later_events_in_order(cluster, api):
    core = kubernetes.client.CoreV1Api(api)
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        for event in kubernetes.watch.Watch().stream(core.list_namespaced_config_map, NAMESPACE, timeout_seconds=2):
            seen.append((event["type"], event["object"].metadata.name))

    thread = threading.Thread(target=watch)
    thread.start()
    cluster.wait_until(lambda: any(c.verb == "watch" for c in cluster.emulator.calls), 5, "the watch is open")
    create(cluster, CONFIGMAPS, {"metadata": {"name": "one"}})
    core.patch_namespaced_config_map("one", NAMESPACE, {"data": {"a": "b"}})
    core.delete_namespaced_config_map("one", NAMESPACE)
    thread.join(5)
    assert seen == [("ADDED", "one"), ("MODIFIED", "one"), ("DELETED", "one")]


def test_discovery_and_namespaces_work_for_client_go_and_kopf(cluster):
    status, core = _http(cluster, "GET", "/api/v1")
    assert status == 200 and core["groupVersion"] == "v1"
    status, group = _http(cluster, "GET", "/apis/kubetune.io/v1alpha1")
    ftj = next(r for r in group["resources"] if r["name"] == "finetunejobs")
    assert ftj["kind"] == "FineTuneJob" and ftj["namespaced"] and "ftj" in ftj["shortNames"]
    assert any(r["name"] == "finetunejobs/status" for r in group["resources"])
    create(cluster, CONFIGMAPS, {"metadata": {"name": "x"}})
    status, namespaces = _http(cluster, "GET", "/api/v1/namespaces")
    assert status == 200 and {n["metadata"]["name"] for n in namespaces["items"]} >= {"default", NAMESPACE}


def test_every_http_request_is_recorded_in_rbac_terms(cluster, api):
    kubernetes.client.CoreV1Api(api).list_namespaced_pod(NAMESPACE)
    _http(cluster, "POST", FTJ_PATH, _ftj("rec"))
    _http(cluster, "PATCH", f"{FTJ_PATH}/rec/status", {"status": {"phase": "Running"}}, "application/merge-patch+json")
    calls = [(c.verb, c.group, c.resource, c.namespace) for c in cluster.emulator.calls]
    assert calls == [("list", "", "pods", NAMESPACE), ("create", "kubetune.io", "finetunejobs", NAMESPACE),
                     ("patch", "kubetune.io", "finetunejobs/status", NAMESPACE)]
    assert required_permissions(cluster.emulator.calls, "OpenAPI-Generator") == {("", "pods", "list")}


def test_the_eviction_api_marks_the_pod_and_deletes_it_gracefully(cluster):
    create(cluster, PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "victim"},
                           "spec": {"nodeName": "n", "containers": [{"name": "a", "image": "a"}]}})
    status, _ = _http(cluster, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods/victim/eviction",
                      {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "victim"}})
    assert status == 201
    versions = [v for v in cluster.emulator.objects["v1/pods", NAMESPACE, "victim"].history if v is not None]
    deleting = next(v for v in versions if v["metadata"].get("deletionTimestamp"))
    assert "DisruptionTarget" in [c["type"] for c in deleting["status"]["conditions"]]
