"""The imperative shell around the pure reconcile: observe, decide, write status once, act.

One `Controller.reconcile(namespace, name)` call is the whole cycle for one
FineTuneJob, serialized per object by a lock (kopf runs sync handlers in a
thread pool, and the resync loop runs beside them):

1. observe: the FineTuneJob, read fresh from the API (its status is what the
   decision counts from), its attempt Jobs and trainer pods (from the watch
   caches when the caller has them, else listed), the accepted recipe (read
   once per incarnation), and the last progress poll, if any;
2. decide: `reconcile.reconcile(observed)`;
3. write the status it returns, as one merge patch of the status subresource
   (skipped when nothing changed);
4. act: create the attempt's children idempotently, or delete a Job, or the
   FineTuneJob itself after its TTL; an action that fails is decided again on
   the next event or resync, because decisions depend only on observations.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator import classify, names, render
from kubetune_operator.events import build_event
from kubetune_operator.kube import KubeApi, api_error_message, slim
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.progress import metrics_url
from kubetune_operator.reconcile import ActionType, Decision, Event, Observed, previous_status, reconcile
from kubetune_operator.settings import Settings
from kubetune_api import contract
from kubetune_api.recipe import CheckpointStatus, FineTuneJob, Progress

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Polled = tuple[Progress, CheckpointStatus | None]
Children = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (Jobs, pods) with the FineTuneJob's label


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns `old` into `new` (None for a removed key; {} when equal)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


class ChildConflict(Exception):
    """A child's name is taken by an object that is not this FineTuneJob's."""


class ChildPending(Exception):
    """A child's name is still held by a deleted incarnation's object; creation waits for the collector."""


class StaleBody(Exception):
    """The FineTuneJob changed since the copy the cycle decided from (a 409 on the status write, or a newer
    resourceVersion before an action): the cycle is run again on a fresh read."""


EVENT_POSTERS = 2  # threads posting Events
# A podless attempt Job younger than this is not asked about refusals yet (its controller has hardly
# tried); short, because a refusal must show in status before a short pendingDeadlineSeconds fails it.
REFUSALS_AFTER_SECONDS = 2.0
# A podless Job's FailedCreate events are listed again at most this often: an Event LIST with a field
# selector filters every Event of the namespace in the API server (thousands at a few hundred jobs), and
# turns of a Job whose pods are merely slow to come (a busy Job controller) asked on every Job event.
REFUSALS_RELIST_SECONDS = 10.0
STALE_RETRIES = 3  # a cycle decided on a stale copy is redone from a fresh GET this many times at most


class Controller:
    """Observe → reconcile → write status → act, for one FineTuneJob at a time."""

    def __init__(
        self,
        settings: Settings,
        kube: KubeApi,
        metrics: OperatorMetrics,
        post_event: Callable[[Mapping[str, Any], Event], None] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.post_event = post_event or self._post_event_later
        # Events go out from their own threads: an Event is a report, not a step, so the Job a user waits
        # for is never created behind it (posting order across FineTuneJobs does not matter).
        self._event_posters = concurrent.futures.ThreadPoolExecutor(EVENT_POSTERS, "kubetune-events")
        self._events_pending: list[concurrent.futures.Future[None]] = []
        self.clock = clock
        self.metrics_urls: dict[Key, str] = {}  # rank 0's metrics endpoint of running attempts
        self.settled: set[Key] = set()  # finished with nothing left to do: no periodic turn
        self._accepted: dict[Key, tuple[str, Mapping[str, Any]]] = {}  # key -> (uid, its recipe ConfigMap's spec)
        self._job_uids: dict[Key, tuple[str, set[str]]] = {}  # key -> (uid, every attempt Job uid seen owned)
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()
        self._nodes_forbidden = False  # Nodes cannot be read (namespaced RBAC): warned once
        self._written: dict[Key, dict[str, Any]] = {}  # key -> the FineTuneJob as our last status write returned it
        # key -> (the podless attempt Job's uid, when its refusals were listed, what they said)
        self._refusals: dict[Key, tuple[str, dt.datetime, list[str]]] = {}

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """The FineTuneJob is gone: drop what is kept about it."""
        key = (namespace, name)
        self.metrics_urls.pop(key, None)
        self.settled.discard(key)
        self._accepted.pop(key, None)
        self._job_uids.pop(key, None)
        self._written.pop(key, None)
        self._refusals.pop(key, None)
        with self._guard:
            self._locks.pop(key, None)
        self.metrics.forget(namespace, name)

    # ------------------------------------------------------------ the cycle

    def reconcile(self, namespace: str, name: str, polled: Polled | None = None,
                  children: Children | None = None, body: Mapping[str, Any] | None = None) -> Decision | None:
        """One full cycle for a FineTuneJob; None when it does not exist (any more).

        `children`: its Jobs and pods as the caller's watch caches hold them; listed from the API if None.
        `body`: the FineTuneJob as the caller's watch last saw it; read from the API if None. A cycle on a
        watched copy writes its status with that copy's resourceVersion as a precondition and re-reads
        before any action without a status write, so a stale copy is never acted on (`StaleBody`).
        """
        started = time.monotonic()
        try:
            with self._lock((namespace, name)):
                for _ in range(STALE_RETRIES):
                    try:
                        return self._cycle(namespace, name, polled, children, self._newest(namespace, name, body))
                    except StaleBody:
                        body = None  # read it fresh
                return self._cycle(namespace, name, polled, children, None)
        except Exception:
            self.metrics["kubetune_operator_reconcile_errors"].inc()
            raise
        finally:
            self.metrics["kubetune_operator_reconcile_seconds"].observe(time.monotonic() - started)

    def _newest(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The newer of a watched copy and this controller's own last status write (the watch may not have
        delivered that write yet); None (read it) when they cannot be ordered."""
        written = self._written.get((namespace, name))
        if body is None or written is None:
            return body
        if written["metadata"].get("uid") != body["metadata"].get("uid"):
            return body
        try:
            ours, theirs = int(written["metadata"]["resourceVersion"]), int(body["metadata"]["resourceVersion"])
        except (KeyError, TypeError, ValueError):
            return None  # resourceVersions are opaque in general; etcd's are integers
        if ours > theirs:
            return written
        self._written.pop((namespace, name), None)  # the watch caught up: one copy of each job is enough
        return body

    def _cycle(self, namespace: str, name: str, polled: Polled | None, children: Children | None,
               body: Mapping[str, Any] | None) -> Decision | None:
        observed = self.observe(namespace, name, polled, children, body)
        if observed is None:
            return None
        observed, started = self._first_attempt(observed) if not observed.body.get("status") else (observed, False)
        decision, wrote = self._apply(observed)
        if decision.action.due and body is not None and not wrote:
            self._confirm(observed.body)  # no precondition checked this copy: make sure it is current
        creates = decision.action.type is ActionType.CREATE_ATTEMPT and decision.job is not None
        if decision.action.due and creates and not started:  # (a first turn created them already)
            rejected, _ = self._ensure_children(observed.body, decision.job, decision.action.attempt or 0)
            if rejected:
                again = dataclasses.replace(observed, rejected=rejected)
                decision, _ = self._apply(self._with_status(again, decision))
        elif decision.action.due and not creates:
            self._act(observed.body, decision)
        key = (namespace, name)
        finished = decision.status.phase is not None and decision.status.phase.value in ("Succeeded", "Failed")
        if finished and decision.action.type is ActionType.NONE:
            self.settled.add(key)
        else:
            self.settled.discard(key)
        return decision

    def _first_attempt(self, observed: Observed) -> tuple[Observed, bool]:
        """A FineTuneJob's very first turn (no status yet): create attempt 0's children before the first status
        write; the observation with the Job (or the refusal) in it, and whether children were created.

        The status write is then not one more request in a row before the Job a user waits for (measured:
        four requests in a row were most of create → Job at 500 jobs). Acting before the write is safe on
        this copy alone: the children's names are deterministic, their owner is this uid (a deleted
        FineTuneJob's are garbage collected), and the write still carries the copy's resourceVersion, so a
        stale copy's status is refused and the turn redone, adopting what was created.
        """
        decision = reconcile(observed)
        action = decision.action
        if not (action.due and action.type is ActionType.CREATE_ATTEMPT and decision.job is not None):
            return observed, False
        rejected, job = self._ensure_children(observed.body, decision.job, action.attempt or 0)
        if rejected or job is None:  # refused, or waiting for the garbage collector: said by the status
            return dataclasses.replace(observed, rejected=rejected), True
        jobs = [*observed.jobs, job]
        return dataclasses.replace(observed, jobs=jobs, accepted_spec=self._accepted_spec(observed.body, jobs)), True

    def _confirm(self, body: Mapping[str, Any]) -> None:
        """Raise StaleBody unless the FineTuneJob still has this copy's resourceVersion (one GET)."""
        meta = body["metadata"]
        fresh = self.kube.get("FineTuneJob", meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("resourceVersion") != meta.get("resourceVersion"):
            raise StaleBody(f"FineTuneJob {meta['namespace']}/{meta['name']} changed")

    def observe(self, namespace: str, name: str, polled: Polled | None = None,
                children: Children | None = None, body: Mapping[str, Any] | None = None) -> Observed | None:
        """Read everything the reconcile looks at: the FineTuneJob as given or read fresh, its children as
        given or listed."""
        if body is None:
            body = self.kube.get("FineTuneJob", namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        selector = {names.LABEL_FINETUNEJOB: name}
        uid = body["metadata"].get("uid")
        # Children by their controller's uid, never by label alone: a FineTuneJob deleted and re-created
        # under the same name leaves labelled Jobs and pods that the garbage collector removes later.
        if children is None:
            children = self.kube.list("Job", namespace, selector), self.kube.list("Pod", namespace, selector)
        labelled_jobs, labelled_pods = children
        jobs = [job for job in labelled_jobs if _controlled_by(job, {uid})]
        job_uids = {job["metadata"]["uid"] for job in jobs}
        # A pod whose Job is gone (deleted by hand) is still this incarnation's if its Job was seen owned
        # by it, or if it was created after this FineTuneJob: ours to wait for and classify, no leftover.
        known = self._job_uids.setdefault((namespace, name), (uid, set()))
        if known[0] != uid:
            known = self._job_uids[(namespace, name)] = (uid, set())
        known[1].update(job_uids)
        born = body["metadata"].get("creationTimestamp") or ""
        pods = [pod for pod in labelled_pods if _controlled_by(pod, known[1])
                or (pod["metadata"].get("creationTimestamp") or "") > born]
        leftovers = [f"Job {job['metadata']['name']}" for job in labelled_jobs if job["metadata"]["uid"] not in job_uids]
        leftovers += [f"Pod {pod['metadata']['name']}" for pod in labelled_pods
                      if pod not in pods and classify.pod_alive(pod)]
        progress, checkpoint = polled if polled is not None else (None, None)
        return Observed(
            body=body, now=self.clock(), jobs=jobs, pods=pods, leftovers=leftovers,
            refusals=self._pod_creation_refusals((namespace, name), jobs, pods),
            accepted_spec=self._accepted_spec(body, jobs), progress=progress, checkpoint=checkpoint,
            lost_nodes=self._lost_nodes(pods),
            lost_node_timeout_seconds=self.settings.lost_node_timeout_seconds,
        )

    def _lost_nodes(self, pods: list[dict[str, Any]]) -> dict[str, dt.datetime]:
        """The nodes of Terminating pods that will never confirm their end → since when: NotReady or Unknown
        (the node controller's verdict on a lease no longer renewed) since its Ready condition's last
        transition, or gone (the epoch).

        Looked up only for pods being deleted, so a healthy FineTuneJob costs no request. Reading Nodes
        needs the ClusterRole's `nodes get`; without it (namespaced install) only taint evictions are seen.
        """
        terminating = {(pod.get("spec") or {}).get("nodeName") for pod in pods
                       if classify.pod_alive(pod) and (pod.get("metadata") or {}).get("deletionTimestamp")}
        lost: dict[str, dt.datetime] = {}
        if self._nodes_forbidden:
            return lost  # refused once (namespaced RBAC): not asked again
        for node in sorted(name for name in terminating if name):
            try:
                body = self.kube.get("Node", "", node)
            except ApiException as error:
                if error.status != 403:
                    raise
                if not self._nodes_forbidden:
                    logger.warning("cannot read Nodes (%s): a pod stuck Terminating on a lost node is only forced "
                                   "after a taint eviction; grant nodes get", api_error_message(error))
                self._nodes_forbidden = True
                continue
            if body is None:
                lost[node] = dt.datetime.fromtimestamp(0, dt.timezone.utc)
                continue
            ready = classify.find_condition(body, "Ready")
            if ready is not None and ready.get("status") != "True":
                lost[node] = classify.parse_time(ready.get("lastTransitionTime")) or self.clock()
        return lost

    def _pod_creation_refusals(self, key: Key, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
                               ) -> list[str]:
        """Why the API server refused the pods of the newest attempt Job, when it is active without any.

        The Job's own status does not say (it just stays active); the Job controller's FailedCreate
        events do. Listed only in that state, so a healthy FineTuneJob costs no request, and at most every
        REFUSALS_RELIST_SECONDS per Job (turns in between reuse the last answer).
        """
        active = [job for job in jobs if classify.job_state(job) == "active"]
        if not active:
            return []
        newest = max(active, key=lambda job: names.attempt_of(job) or 0)
        if any(_controlled_by(pod, {newest["metadata"]["uid"]}) for pod in pods):
            return []
        # Pods the watch has not delivered yet (the Job counts them), or a Job so young that its controller
        # has not tried yet: nothing to look for. A refusal keeps the Job podless, and the next turn sees it.
        born = classify.parse_time(newest["metadata"].get("creationTimestamp"))
        if (newest.get("status") or {}).get("active") or (
                born is not None and (self.clock() - born).total_seconds() < REFUSALS_AFTER_SECONDS):
            return []
        uid, now = newest["metadata"]["uid"], self.clock()
        known = self._refusals.get(key)
        if known is not None and known[0] == uid and (now - known[1]).total_seconds() < REFUSALS_RELIST_SECONDS:
            return known[2]
        events = self.kube.list("Event", key[0], {}, fields={"involvedObject.uid": uid, "reason": "FailedCreate"})
        events.sort(key=lambda event: event.get("lastTimestamp") or event.get("eventTime") or "")
        self._refusals[key] = (uid, now, [str(event.get("message", "")) for event in events])
        return self._refusals[key][2]

    def _accepted_spec(self, body: Mapping[str, Any], jobs: list[dict[str, Any]]) -> Mapping[str, Any] | None:
        """The spec in this FineTuneJob's recipe ConfigMap (what its pods run), if it is this incarnation's.

        The ConfigMap never changes once this incarnation owns it, so it is read once per uid; and not at
        all for a FineTuneJob that was never reconciled (no status, no Job): its children are created
        only after the first status write, so it has no ConfigMap yet.
        """
        meta = body["metadata"]
        uid = meta.get("uid")
        cached = self._accepted.get((meta["namespace"], meta["name"]))
        if cached is not None and cached[0] == uid:
            return cached[1]
        if not body.get("status") and not jobs:
            return None
        configmap = self.kube.get("ConfigMap", meta["namespace"], names.recipe_configmap_name(meta["name"]))
        if configmap is None or not _owned_by(configmap, uid):
            return None
        return self._remember_accepted(body, configmap)

    def _remember_accepted(self, body: Mapping[str, Any], configmap: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The spec in a recipe ConfigMap of this incarnation, cached by its uid."""
        meta = body["metadata"]
        try:
            spec = json.loads((configmap.get("data") or {}).get(contract.RECIPE_FILE, "")).get("spec")
        except (ValueError, AttributeError):
            return None
        if isinstance(spec, Mapping) and meta.get("uid"):
            self._accepted[(meta["namespace"], meta["name"])] = (meta["uid"], spec)
        return spec

    def _with_status(self, observed: Observed, decision: Decision) -> Observed:
        """The observation again, with the decision's status (as written, resourceVersion included)."""
        meta = observed.body["metadata"]
        body = {**observed.body, "status": decision.status.to_api()}
        return dataclasses.replace(observed, body=self._newest(meta["namespace"], meta["name"], body) or body)

    def _apply(self, observed: Observed) -> tuple[Decision, bool]:
        """Decide, write the status if it changed, post the transition's events, count metrics; the
        decision and whether the status was written.

        The write is a merge patch of the status with the copy's resourceVersion as a precondition: a
        409 means the copy was stale (StaleBody), never that a newer status is overwritten.
        """
        decision = reconcile(observed)
        body = observed.body
        meta = body["metadata"]
        old = body.get("status") if isinstance(body.get("status"), Mapping) else {}
        patch: dict[str, Any] = {"status": merge_patch(old, decision.status.to_api())}
        key = (meta["namespace"], meta["name"])
        if patch["status"]:
            if meta.get("resourceVersion"):
                patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
            try:
                written = self.kube.patch("FineTuneJob", meta["namespace"], meta["name"], patch, subresource="status")
            except ApiException as error:
                if error.status == 409:
                    raise StaleBody(api_error_message(error)) from None
                raise
            if written is not None:
                self._written[key] = slim(written)
        for event in decision.events:
            self.post_event(body, event)
        self.metrics.record(body, previous_status(body), decision.status)
        url = metrics_url([p for p in observed.pods if names.attempt_of(p) == decision.status.attempt],
                          decision.job.spec.metrics_port) if decision.job else None
        if url and decision.status.phase is not None and decision.status.phase.value == "Running":
            self.metrics_urls[key] = url
        else:
            self.metrics_urls.pop(key, None)
        return decision, bool(patch["status"])

    def _post_event_later(self, body: Mapping[str, Any], event: Event) -> None:
        """Post an Event on the FineTuneJob from an Event thread (stamped now, sent soon)."""
        self._events_pending = [f for f in self._events_pending if not f.done()]
        self._events_pending.append(self._event_posters.submit(self._post_event, body, event, self.clock()))

    def events_sent(self, timeout: float = 30.0) -> None:
        """Wait until every Event handed to the Event threads so far was posted (or failed)."""
        concurrent.futures.wait(list(self._events_pending), timeout=timeout)

    def _post_event(self, body: Mapping[str, Any], event: Event, now: dt.datetime) -> None:
        """Post an Event on the FineTuneJob; a lost event never fails the reconcile."""
        try:
            self.kube.create(build_event(body, event, now))
        except ApiException as error:
            logger.warning("could not post event %s on %s: %s", event.reason, body["metadata"].get("name"),
                           api_error_message(error))

    # ------------------------------------------------------------ actions

    def _act(self, body: Mapping[str, Any], decision: Decision) -> None:
        meta = body["metadata"]
        action = decision.action
        if action.type is ActionType.DELETE_JOB and action.job_name:
            logger.info("deleting Job %s/%s", meta["namespace"], action.job_name)
            self.kube.delete("Job", meta["namespace"], action.job_name)
        elif action.type is ActionType.FORCE_DELETE_PODS:
            for pod in action.pods:
                logger.warning("force-deleting pod %s/%s: Terminating on a lost node", meta["namespace"], pod)
                self.kube.delete("Pod", meta["namespace"], pod, grace_seconds=0)
        elif action.type is ActionType.DELETE_FINETUNEJOB:
            logger.info("ttlSecondsAfterFinished passed: deleting FineTuneJob %s/%s", meta["namespace"], meta["name"])
            self.kube.delete("FineTuneJob", meta["namespace"], meta["name"])

    def _ensure_children(self, body: Mapping[str, Any], job: FineTuneJob, attempt: int
                         ) -> tuple[str | None, dict[str, Any] | None]:
        """Create every child of the attempt that does not exist yet: the API server's message if it refuses
        one, and the attempt Job as created or found (None when it was not reached).

        Deterministic names make this idempotent: 409 means the child exists, and it is read and adopted.
        In order, one at a time (ConfigMap, PVC, Service, then the Job whose pods mount them): creating the
        first three side by side measured no faster on the 2-core bench machine (docs/operator-scale.md).
        """
        namespace = body["metadata"]["namespace"]
        created = None
        for child in render.render_children(job, attempt, namespace, self.settings, owner=body):
            go_on, refusal, created = self._ensure_child(body, child, attempt)
            if not go_on:
                return refusal, None
        return None, created  # the Job comes last

    def _ensure_child(self, body: Mapping[str, Any], child: dict[str, Any], attempt: int
                      ) -> tuple[bool, str | None, dict[str, Any] | None]:
        """Create one child unless it exists: (whether to go on with the next ones, a refusal to report, the
        child as the API server has it)."""
        namespace = body["metadata"]["namespace"]
        try:
            created = self.kube.create(child)
        except ApiException as error:
            if error.status == 409:
                try:
                    existing = self._adopt(child, body)
                except ChildConflict as conflict:
                    return False, str(conflict), None
                except ChildPending as pending:
                    logger.info("%s: waiting for the garbage collector", pending)
                    return False, None, None
                return True, None, existing
            if error.status in (400, 422):
                return False, f"{child['kind']} {child['metadata']['name']}: {api_error_message(error)}", None
            raise
        # One INFO line per attempt (its Job): at 50 FineTuneJobs a second, a line per child kept the
        # reconcile threads queueing for the log handler's lock.
        logger.log(logging.INFO if child["kind"] == "Job" else logging.DEBUG, "created %s %s/%s",
                   child["kind"], namespace, child["metadata"]["name"])
        if child["kind"] == "ConfigMap":
            self._remember_accepted(body, child)
        if child["kind"] == "Job":
            self.post_event(body, Event("Normal", "AttemptCreated",
                                        f"created Job {child['metadata']['name']} (attempt {attempt})"))
        return True, None, created

    def _adopt(self, child: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any] | None:
        """A child already exists: keep it if this FineTuneJob owns it (an operator restart), else refuse.

        A child of another owner is either a stranger's object of the same name (a conflict the user
        must resolve) or a deleted incarnation's that the garbage collector has not removed yet: the
        reconcile waits for those (`Observed.leftovers`), so reaching here with one is a conflict.
        """
        meta = child["metadata"]
        existing = self.kube.get(child["kind"], meta["namespace"], meta["name"])
        if existing is None:
            return None  # deleted meanwhile: the next cycle creates it
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(names.LABEL_FINETUNEJOB) != owner["metadata"]["name"]:
            raise ChildConflict(
                f"{child['kind']} {meta['name']} already exists and does not belong to this FineTuneJob "
                f"(no {names.LABEL_FINETUNEJOB}={owner['metadata']['name']} label): delete or rename it"
            )
        if child["kind"] == "PersistentVolumeClaim" or _owned_by(existing, owner["metadata"].get("uid")):
            return existing  # ours, or the retained claim that outlives every incarnation by design
        raise ChildPending(f"{child['kind']} {meta['name']} still belongs to a deleted FineTuneJob of this name")


def _controlled_by(obj: Mapping[str, Any], uids: set[str | None]) -> bool:
    """Whether the object's controller ownerReference points at one of `uids`."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("controller") and reference.get("uid") in uids for reference in references)


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return uid is not None and any(reference.get("uid") == uid for reference in references)
