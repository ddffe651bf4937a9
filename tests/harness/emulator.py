"""A Kubernetes API server for tests: kmock 0.8's emulator, fixed, over real HTTP.

kmock's `KubernetesEmulator` stores objects and serves the REST paths; the
`KubeEmulator` subclass below adds what an operator relies on and kmock 0.8
lacks (see /work/shared/reference/kmock-harness/README.md): server-filled
metadata (uid, resourceVersion, generation, creationTimestamp, generateName),
the status subresource, the three patch formats, PUT with optimistic
concurrency, watches that honour resourceVersion and selectors without losing
events, label/field selectors on lists, deletion with finalizers, graceful pod
deletion, propagation policies and garbage collection by ownerReferences,
the Eviction API, discovery that client-go understands (core `groupVersion`
"v1", not "/v1"), `/api/v1/namespaces`, and admission:

- the FineTuneJob resource is registered from `crds/finetunejob.yaml`; its
  writes are validated like the API server does (openAPIV3Schema with
  openapi-schema-validator OAS30, CEL rules incl. `oldSelf` transition rules,
  unknown fields pruned, or refused with `?fieldValidation=Strict`);
- builtins are validated against kubernetes-validate's strict schemas
  (unknown fields refused), loaded once per kind.

Every HTTP request to a resource is recorded as an `ApiCall` (verb, group,
resource, namespace) so an RBAC test can check that a Role covers them.

In-process controllers (the test kubelet) and the test client use the
`api_*` coroutines directly; those are not recorded and see the same store,
resourceVersions and watch events.

It uses kmock private internals (`_objects`, `_buses`, `_lock`, the request
parser): pin `kmock==0.8`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonschema
import kmock
import yaml
from kmock._internal import apps, rendering
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from tests.crd_validation import crd_errors
from tests.harness import patching, selectors

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "finetunejob.yaml"
K8S_SCHEMA_VERSION = "1.33"  # kubernetes-validate's schemas for the Kubernetes we target
WATCH_LOG_SIZE = 50_000  # events kept per resource for watches that resume from a resourceVersion

PODS = kmock.resource("", "v1", "pods")
JOBS = kmock.resource("batch", "v1", "jobs")
EVENTS = kmock.resource("", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")

T = TypeVar("T")


def now_iso() -> str:
    """The current UTC time as the API server writes timestamps."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime.datetime:
    """Parse an API timestamp (with or without fractions)."""
    return datetime.datetime.fromisoformat(value)  # 3.11 reads the trailing "Z"


def api_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """An error rendered as a Kubernetes `Status` object."""
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


@dataclass(frozen=True)
class ApiCall:
    """One HTTP request to a resource, in RBAC terms."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str  # "" for the core group
    resource: str  # plural, or plural/subresource
    namespace: str | None
    name: str | None
    user_agent: str


def required_permissions(calls: list[ApiCall], user_agent_prefix: str = "") -> set[tuple[str, str, str]]:
    """The (apiGroup, resource, verb) triples that a set of recorded calls needs from RBAC.

    Only calls whose User-Agent starts with `user_agent_prefix` count (e.g. "kopf" for the operator's
    watches and patches, or "" for all). A Role rule covers a triple when its apiGroups, resources and
    verbs each contain the value (or "*").
    """
    return {(c.group, c.resource, c.verb) for c in calls if c.user_agent.startswith(user_agent_prefix)}


@dataclass(frozen=True)
class CustomResource:
    """What the emulator knows of a registered CRD."""

    resource: kmock.resource
    kind: str
    schema: dict[str, Any]


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prune_unknown(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Drop fields the structural schema does not declare, as the API server does; return their paths."""
    pruned: list[str] = []
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in list(value):
            child = properties.get(key) if properties else None
            if child is None and isinstance(extra, dict):
                child = extra
            if child is None and properties is not None:
                pruned.append(f"{path}.{key}")
                del value[key]
            elif child is not None:
                pruned += prune_unknown(child, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            pruned += prune_unknown(schema["items"], item, f"{path}[{index}]")
    return pruned


@lru_cache(maxsize=64)
def _k8s_validator(kind: str, api_version: str) -> jsonschema.Validator | None:
    # kubernetes_validate.validate() re-reads its 2 MB definitions file on every call (~0.1 s per
    # Job); the same strict schemas, loaded once per kind, make admission cheap enough for 500 jobs.
    version = [v for v in kv_utils.all_versions()
               if kv_utils.major_minor(v) <= kv_utils.major_minor(K8S_SCHEMA_VERSION)][-1]
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = _k8s_definitions(schema_dir, version)
    registry = definitions @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=2)
def _k8s_definitions(schema_dir: str, version: str) -> Resource:
    return Resource.from_contents(kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version))


def builtin_errors(obj: dict[str, Any]) -> list[str]:
    """Why the Kubernetes schemas (kubernetes-validate's strict set) refuse a builtin object; [] if valid."""
    validator = _k8s_validator(str(obj.get("kind")), str(obj.get("apiVersion")))
    if validator is None:
        return []  # no schema for this kind: accepted, as kubernetes-validate's SchemaNotFoundError
    errors = []
    for error in validator.iter_errors(obj):
        location = ".".join(str(p) for p in error.absolute_path)
        errors.append(f"{obj.get('kind')}.{location}: {error.message}")
    return errors


def _owner_uids(obj: dict[str, Any]) -> set[str]:
    return {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences") or []}


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API server behaviour operators rely on."""

    crd_path: Path = CRD_PATH
    keep_history: bool = True  # keep every version of every object (kmock's `objects[...].history`)
    # Validate writes as the API server does. The scale benchmark turns it off: cel-python takes ~25 ms per
    # FineTuneJob write (a Go API server far less), which would make the emulator the thing measured.
    admission: bool = True
    calls: list[ApiCall] = attrs.field(factory=list, init=False)
    warnings: list[str] = attrs.field(factory=list, init=False)
    custom: dict[kmock.resource, CustomResource] = attrs.field(factory=dict, init=False)
    _rv: itertools.count = attrs.field(factory=lambda: itertools.count(1001), init=False)
    _last_rv: int = attrs.field(default=1000, init=False)
    _index: dict[kmock.resource, dict[tuple[str | None, str], kmock.Object]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False)
    _watch_log: dict[kmock.resource, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=WATCH_LOG_SIZE)), init=False)
    _listeners: list[Callable[[kmock.resource, dict[str, Any]], None]] = attrs.field(factory=list, init=False)
    _extra_namespaces: set[str] = attrs.field(factory=lambda: {"default"}, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()  # builtin discovery: pods, jobs, events, leases, ...
        self.register_crd(load_crd(self.crd_path))

    # ------------------------------------------------------------ registration

    def register_crd(self, crd: dict[str, Any]) -> CustomResource:
        """Serve a CRD's resource (discovery, storage, admission) from its manifest."""
        names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
        res = kmock.resource(crd["spec"]["group"], version["name"], names["plural"])
        self.resources[res] = kmock.ResourceInfo(
            kind=names["kind"], singular=names.get("singular", names["kind"].lower()),
            shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])),
            namespaced=crd["spec"]["scope"] == "Namespaced", subresources=set(version.get("subresources", {})),
            verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})
        info = CustomResource(res, names["kind"], version["schema"]["openAPIV3Schema"])
        self.custom[res] = info
        return info

    def add_listener(self, listener: Callable[[kmock.resource, dict[str, Any]], None]) -> None:
        """Call `listener(resource, event)` on every write (in the emulator's loop; keep it quick)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------ reading

    def get_object(self, res: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The live object, or None (no copy: do not mutate it)."""
        obj = self._index[res].get((namespace, name))
        return None if obj is None or obj.deleted else obj.raw

    def list_objects(self, res: kmock.resource, namespace: str | None = None, label_selector: str | None = None,
                     field_selector: str | None = None) -> list[dict[str, Any]]:
        """Live objects of a resource, filtered like a LIST request (no copies)."""
        requirements = selectors.parse_label_selector(label_selector)
        return [
            obj.raw for (ns, _), obj in self._index[res].items()
            if not obj.deleted and (namespace is None or ns == namespace)
            and selectors.labels_match(requirements, obj.raw) and selectors.fields_match(field_selector, obj.raw)
        ]

    def namespaces(self) -> set[str]:
        """Namespaces that hold an object (they need not be created first, unlike on a cluster)."""
        found = {ns for objects in self._index.values() for (ns, _), obj in objects.items() if ns and not obj.deleted}
        return found | self._extra_namespaces

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion handed out."""
        return self._last_rv

    # ------------------------------------------------------------ writing (in process)

    async def api_create(self, res: kmock.resource, namespace: str | None, body: dict[str, Any], *,
                         validate: bool = True, strict: bool = True) -> dict[str, Any]:
        """POST: fill server metadata, admit, store; raises kmock.KubernetesError like the API server."""
        async with self._lock:
            obj = self._admit_create(res, namespace, copy.deepcopy(body), validate=validate, strict=strict)
            meta = obj["metadata"]
            existing = self._index[res].get((meta.get("namespace"), meta["name"]))
            if existing is not None and not existing.deleted:
                raise api_error(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists')
            await self._store(res, obj, "ADDED")
            return copy.deepcopy(obj)

    async def api_patch(self, res: kmock.resource, namespace: str | None, name: str, patch: Any, *,
                        content_type: str = patching.MERGE_PATCH, subresource: str | None = None,
                        validate: bool = True, strict: bool = False) -> dict[str, Any]:
        """PATCH in any of the API's patch formats; raises kmock.KubernetesError like the API server."""
        if res in self.custom and content_type.startswith(patching.STRATEGIC_MERGE_PATCH):
            raise api_error(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                            "accepted media types include: application/json-patch+json, "
                            "application/merge-patch+json, application/apply-patch+yaml")
        async with self._lock:
            current = self._live(res, namespace, name)
            try:
                new = patching.apply_patch(copy.deepcopy(current), patch, content_type)
            except jsonpatch.JsonPatchTestFailed as error:  # kmock 0.8 answers 500; kopf expects 422
                raise api_error(422, "Invalid", str(error)) from error
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError) as error:
                raise api_error(422, "Invalid", str(error)) from error
            return await self._update(res, current, new, subresource, validate=validate, strict=strict)

    async def api_replace(self, res: kmock.resource, namespace: str | None, name: str, body: dict[str, Any], *,
                          subresource: str | None = None, validate: bool = True,
                          strict: bool = False) -> dict[str, Any]:
        """PUT: a whole new object; a stale metadata.resourceVersion gets 409 Conflict."""
        async with self._lock:
            current = self._live(res, namespace, name)
            return await self._update(res, current, copy.deepcopy(body), subresource, validate=validate, strict=strict)

    async def api_delete(self, res: kmock.resource, namespace: str | None, name: str, *,
                         propagation: str | None = None, grace_seconds: int | None = None) -> dict[str, Any]:
        """DELETE with the API's semantics: finalizers, graceful pods, propagation, garbage collection."""
        async with self._lock:
            current = self._live(res, namespace, name)
            result = await self._delete(res, current, propagation, grace_seconds)
            await self._collect_garbage()
            return result

    async def api_evict(self, namespace: str, name: str, reason: str = "EvictionByEvictionAPI",
                        message: str = "Eviction API: evicting") -> None:
        """The Eviction API: mark the pod with a DisruptionTarget condition, then delete it gracefully."""
        async with self._lock:
            pod = copy.deepcopy(self._live(PODS, namespace, name))
            conditions = [c for c in pod.setdefault("status", {}).get("conditions", []) if c["type"] != "DisruptionTarget"]
            conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                               "lastTransitionTime": now_iso()})
            pod["status"]["conditions"] = conditions
            await self._store(PODS, pod, "MODIFIED")
            await self._delete(PODS, pod, None, None)

    # ------------------------------------------------------------ internals of writing

    def _live(self, res: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.get_object(res, namespace, name)
        if obj is None:
            raise api_error(404, "NotFound", f'{res.plural}{"." + res.group if res.group else ""} "{name}" not found')
        return obj

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _kind(self, res: kmock.resource) -> str | None:
        info = self.resources[res] if res in self.resources else None  # noqa: SIM401 - ResourcesArray has no .get()
        return info.kind if info is not None else None

    def _admit_create(self, res: kmock.resource, namespace: str | None, obj: dict[str, Any], *,
                      validate: bool, strict: bool) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            if meta.get("namespace") not in (None, namespace):
                raise api_error(400, "BadRequest", "the namespace of the provided object does not match the "
                                "namespace sent on the request")
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise api_error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        kind = self._kind(res)
        if kind:
            obj.setdefault("apiVersion", f"{res.group}/{res.version}" if res.group else res.version)
            obj.setdefault("kind", kind)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(key, None)
        if res == JOBS:
            self._default_job(obj)
        if res in self.custom and self.admission:
            self._admit_custom(res, obj, None, strict=strict)
        elif validate and self.admission:
            self._admit_builtin(obj)
        return obj

    @staticmethod
    def _default_job(job: dict[str, Any]) -> None:
        # The API server's defaults and generated selector: controllers and operators rely on them.
        spec = job.setdefault("spec", {})
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", spec["parallelism"])
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        generated = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                     "controller-uid": uid, "job-name": name}
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
            template_meta["labels"] = {**(template_meta.get("labels") or {}), **generated}

    def _admit_custom(self, res: kmock.resource, obj: dict[str, Any], old: dict[str, Any] | None, *,
                      strict: bool) -> None:
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        pruned = prune_unknown(self.custom[res].schema, body)
        if pruned and strict:
            raise api_error(422, "Invalid", "; ".join(f"{p}: unknown field" for p in pruned))
        for path in pruned:
            self.warnings.append(f"{res.plural}/{obj['metadata'].get('name')}: unknown field {path} pruned")
        obj.update(body)
        for key in set(obj) - set(body) - {"apiVersion", "kind", "metadata"}:
            del obj[key]
        # tests.crd_validation runs the schema and the CEL rules against the committed CRD.
        errors = crd_errors(obj, old)
        if errors:
            raise api_error(422, "Invalid", f"{self.custom[res].kind}.{res.group} "
                            f"\"{obj['metadata'].get('name')}\" is invalid: " + "; ".join(errors))

    @staticmethod
    def _admit_builtin(obj: dict[str, Any]) -> None:
        errors = builtin_errors(obj)
        if errors:
            raise api_error(422, "Invalid", "; ".join(errors))

    async def _update(self, res: kmock.resource, current: dict[str, Any], new: dict[str, Any],
                      subresource: str | None, *, validate: bool, strict: bool) -> dict[str, Any]:
        meta, old_meta = new.setdefault("metadata", {}), current["metadata"]
        if meta.get("resourceVersion") not in (None, old_meta["resourceVersion"]):
            raise api_error(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{old_meta["name"]}": '
                            "the object has been modified; please apply your changes to the latest version and try again")
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation", "resourceVersion"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        for key in ("apiVersion", "kind"):
            if key in current:
                new[key] = current[key]
        has_status = res in self.resources and "status" in self.resources[res].subresources
        if has_status and subresource == "status":
            new = {**copy.deepcopy(current), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif has_status:
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        if _spec_part(new) != _spec_part(current) and subresource != "status":
            meta["generation"] = old_meta.get("generation", 1) + 1
        if res in self.custom and self.admission:
            self._admit_custom(res, new, current, strict=strict)
        elif validate and self.admission:
            self._admit_builtin(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and (
                res != PODS or meta.get("deletionGracePeriodSeconds") == 0 or not new["spec"].get("nodeName")):
            await self._store(res, new, "DELETED")  # the last finalizer is gone: delete it now
            await self._collect_garbage()
        else:
            await self._store(res, new, "MODIFIED")
        return copy.deepcopy(new)

    async def _delete(self, res: kmock.resource, current: dict[str, Any], propagation: str | None,
                      grace_seconds: int | None) -> dict[str, Any]:
        obj = copy.deepcopy(current)
        meta = obj["metadata"]
        if res == PODS and grace_seconds != 0 and obj["spec"].get("nodeName"):
            # A scheduled pod terminates gracefully: the kubelet deletes it with grace 0 after SIGTERM/SIGKILL.
            if meta.get("deletionTimestamp") is None:
                grace = grace_seconds if grace_seconds is not None else obj["spec"].get("terminationGracePeriodSeconds", 30)
                meta["deletionTimestamp"] = now_iso()
                meta["deletionGracePeriodSeconds"] = grace
                await self._store(res, obj, "MODIFIED")
            return copy.deepcopy(obj)
        if res == PODS and meta.get("finalizers") and meta.get("deletionGracePeriodSeconds") != 0:
            meta["deletionTimestamp"] = meta.get("deletionTimestamp") or now_iso()
            meta["deletionGracePeriodSeconds"] = 0  # terminated: gone once its finalizers are
            await self._store(res, obj, "MODIFIED")
            return copy.deepcopy(obj)
        if propagation is None and res == JOBS:
            # batch/v1 Jobs orphan their pods unless told otherwise (the API server warns so).
            propagation = "Orphan"
            self.warnings.append(f"jobs/{meta['name']}: deleted without propagationPolicy: its pods were orphaned")
        if propagation == "Orphan":
            await self._orphan_dependents(meta["uid"])
        if propagation == "Foreground" and "foregroundDeletion" not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_iso()
                await self._store(res, obj, "MODIFIED")
            return copy.deepcopy(obj)
        await self._store(res, obj, "DELETED")
        return copy.deepcopy(obj)

    async def _orphan_dependents(self, owner_uid: str) -> None:
        for res, objects in list(self._index.items()):
            for obj in list(objects.values()):
                if not obj.deleted and owner_uid in _owner_uids(obj.raw):
                    dependent = copy.deepcopy(obj.raw)
                    refs = [r for r in dependent["metadata"]["ownerReferences"] if r.get("uid") != owner_uid]
                    dependent["metadata"]["ownerReferences"] = refs
                    await self._store(res, dependent, "MODIFIED")

    async def _collect_garbage(self) -> None:
        """The garbage collector: background-delete orphans of gone owners, finish foreground deletions."""
        changed = True
        while changed:
            changed = False
            alive = {obj.raw["metadata"]["uid"] for objects in self._index.values()
                     for obj in objects.values() if not obj.deleted}
            for res, objects in list(self._index.items()):
                for obj in list(objects.values()):
                    if obj.deleted:
                        continue
                    raw = obj.raw
                    meta = raw["metadata"]
                    owners = _owner_uids(raw)
                    if owners and not owners & alive and not meta.get("deletionTimestamp"):
                        await self._delete(res, raw, "Background", None)
                        changed = True
                    elif "foregroundDeletion" in (meta.get("finalizers") or []) and meta.get("deletionTimestamp"):
                        changed |= await self._progress_foreground(res, raw)

    async def _progress_foreground(self, res: kmock.resource, owner: dict[str, Any]) -> bool:
        uid = owner["metadata"]["uid"]
        dependents = [(r, o.raw) for r, objects in self._index.items() for o in objects.values()
                      if not o.deleted and uid in _owner_uids(o.raw)]
        if not dependents:
            released = copy.deepcopy(owner)
            released["metadata"]["finalizers"] = [f for f in owner["metadata"]["finalizers"] if f != "foregroundDeletion"]
            if released["metadata"]["finalizers"]:
                await self._store(res, released, "MODIFIED")
            else:
                await self._store(res, released, "DELETED")
            return True
        changed = False
        for dep_res, dependent in dependents:
            if not dependent["metadata"].get("deletionTimestamp"):
                await self._delete(dep_res, dependent, "Background", None)
                changed = True
        return changed

    async def _store(self, res: kmock.resource, obj: dict[str, Any], event_type: str) -> None:
        """Write one version (or the deletion) with a new resourceVersion and publish the watch event."""
        meta = obj["metadata"]
        meta["resourceVersion"] = self._next_rv()
        key = (res, meta.get("namespace"), meta["name"])
        stored = self._index[res].get(key[1:])
        if stored is None:
            self._objects[key] = obj
            stored = self._objects[key]
            self._index[res][key[1:]] = stored
        elif event_type == "DELETED":
            stored.history.append(obj)  # the final state, for assertions on history
            stored.delete()
        elif self.keep_history:
            stored.history.append(obj)
        else:
            stored.history[:] = [obj]
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        self._watch_log[res].append((self._last_rv, event))
        await self._buses[res].put(event)
        for listener in self._listeners:
            listener(res, event)

    # ------------------------------------------------------------ HTTP

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser crashes on /api/v1/namespaces (a cluster-scoped core resource).
        parts = raw_request.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return await self._serve_namespaces(raw_request, parts[3] if len(parts) == 4 else None)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest, name: str | None) -> aiohttp.web.StreamResponse:
        def namespace(ns: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "resourceVersion": "1"},
                    "status": {"phase": "Active"}}
        verb = "watch" if raw_request.query.get("watch") == "true" else "get" if name else "list"
        self.calls.append(ApiCall(verb, "", "namespaces", None, name, raw_request.headers.get("User-Agent", "")))
        if verb == "watch":  # namespaces never change here: hold the stream open until the client leaves
            response = aiohttp.web.StreamResponse()
            await response.prepare(raw_request)
            await asyncio.sleep(float(raw_request.query.get("timeoutSeconds", 3600)))
            return response
        if name:
            return aiohttp.web.json_response(namespace(name))
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                          "metadata": {"resourceVersion": str(self._last_rv)},
                                          "items": [namespace(ns) for ns in sorted(self.namespaces())]})

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        # client-go (Helm, kubectl) expects groupVersion "v1" for the core group; kmock says "/v1".
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        return payload

    def _record(self, request: rendering.Request) -> str:
        res = request.resource
        method = request.method.value.upper()
        if request.action == kmock.action.WATCH:
            verb = "watch"
        elif method == "GET":
            verb = "get" if request.name else "list"
        elif method == "POST":
            verb = "create"
        elif method == "PUT":
            verb = "update"
        elif method == "PATCH":
            verb = "patch"
        else:
            verb = "delete" if request.name else "deletecollection"
        plural = f"{res.plural}/{request.subresource}" if request.subresource else res.plural
        self.calls.append(ApiCall(verb, res.group or "", plural, request.namespace, request.name,
                                  request.headers.get("User-Agent", "")))
        return verb

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:  # discovery and other non-resource paths: kmock's own
            return await apps.RawHandler._handle(self, request)
        verb = self._record(request)
        if verb == "watch":
            return await apps.RawHandler._handle(self, request)  # streams through _serve_watch below
        if res not in self.resources:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({res})")
        payload, status = await self._serve(verb, request)
        return aiohttp.web.json_response(payload, status=status)

    async def _serve(self, verb: str, request: rendering.Request) -> tuple[dict[str, Any], int]:
        res, ns, name, sub = request.resource, request.namespace, request.name, request.subresource
        data = request.data if isinstance(request.data, (dict, list)) else {}
        strict = request.params.get("fieldValidation") == "Strict"
        if verb == "get":
            return self._live(res, ns, name), 200
        if verb == "list":
            return self._list_payload(request), 200
        if verb == "create" and res == PODS and sub == "eviction":
            await self.api_evict(ns, name)
            return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}, 201
        if verb == "create":
            return await self.api_create(res, ns, data, strict=strict), 201
        if verb == "update":
            return await self.api_replace(res, ns, name, data, subresource=sub, strict=strict), 200
        if verb == "patch":
            content_type = request.headers.get("Content-Type", patching.MERGE_PATCH)
            return await self.api_patch(res, ns, name, data, content_type=content_type, subresource=sub,
                                        strict=strict), 200
        if verb == "delete":
            options = {**data, **request.params}
            grace = options.get("gracePeriodSeconds")
            return await self.api_delete(res, ns, name, propagation=options.get("propagationPolicy"),
                                         grace_seconds=None if grace is None else int(grace)), 200
        for obj in self.list_objects(res, ns, request.params.get("labelSelector"), request.params.get("fieldSelector")):
            await self.api_delete(res, ns, obj["metadata"]["name"], propagation=data.get("propagationPolicy"))
        return {"apiVersion": "v1", "kind": "Status", "status": "Success"}, 200

    def _list_payload(self, request: rendering.Request) -> dict[str, Any]:
        res = request.resource
        kind = self._kind(res) or res.plural
        items = self.list_objects(res, request.namespace, request.params.get("labelSelector"),
                                  request.params.get("fieldSelector"))
        return {"apiVersion": f"{res.group}/{res.version}" if res.group else res.version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._last_rv)}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        # kmock 0.8 replays every object as ADDED ignoring ?resourceVersion, subscribes only after the
        # replay (losing events in between), and ignores selectors and timeouts. Here: resume from the
        # watch log after ?resourceVersion (410 Gone if it is too old), or list as ADDED without one;
        # the bus is marked under the same lock, so nothing is lost or doubled.
        yield b""  # send the headers now: the client waits for them before anything happens
        res, params = request.resource, request.params
        since = params.get("resourceVersion")
        async with self._lock:
            marker = await self._buses[res].mark()
            if since and since != "0":
                log = self._watch_log[res]
                if log and log[0][0] > int(since) + 1 and len(log) == log.maxlen:
                    yield {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                       "code": 410, "reason": "Expired", "message": "too old resource version"}}
                    await self._buses[res].unmark(marker)
                    return
                initial = [event for rv, event in log if rv > int(since)]
            else:
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self.list_objects(res)]
        timeout = params.get("timeoutSeconds")
        deadline = asyncio.get_running_loop().time() + float(timeout) if timeout else None
        stream = marker.__aiter__()
        try:
            for event in initial:
                if self._watch_wants(request, event):
                    yield event
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except TimeoutError:
                    return
                if self._watch_wants(request, event):
                    yield event
        finally:
            await self._buses[res].unmark(marker)

    @staticmethod
    def _watch_wants(request: rendering.Request, event: dict[str, Any]) -> bool:
        obj = event["object"]
        meta = obj.get("metadata", {})
        return ((request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and selectors.labels_match(request.params.get("labelSelector"), obj)
                and selectors.fields_match(request.params.get("fieldSelector"), obj))


class ApiServer:
    """A `KubeEmulator` served over HTTP from its own thread and event loop.

    The test body stays free to block (subprocesses, the kubernetes client,
    `time.sleep`) without freezing the API server, and the operator runs in
    yet another thread or process: three parties, as on a cluster.
    """

    def __init__(self, **emulator_options: Any) -> None:
        self._options = emulator_options
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.emulator: KubeEmulator | None = None
        self.url = ""
        self._error: BaseException | None = None

    def start(self) -> ApiServer:
        """Start serving; returns once the URL is known."""
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the emulated API server did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("the emulated API server failed to start") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # noqa: BLE001 - surfaced to start()
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with KubeEmulator(**self._options) as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine in the server's loop from another thread and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run a plain function in the server's loop (thread-safe)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(function, *args)

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig file pointing at this server (JSON is valid YAML)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulated"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": namespace}}],
        }
        path.write_text(json.dumps(config), encoding="utf-8")
        return path
