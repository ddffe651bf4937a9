"""kopf handlers: small, one per cause, each ends in the one reconcile (controller.py → reconcile.py).

Load with `kopf run -m kubetune_operator.handlers` (settings from env) or run
in-process with `kubetune_operator.main.run_operator(settings)`.

- FineTuneJob created / resumed at operator start / spec updated → reconcile it
  (the reconcile creates attempt 0's children, idempotently).
- FineTuneJob events → keep the set of known FineTuneJobs for the resync loop;
  forget deleted ones.
- Job and pod events, watched only for objects labelled
  `kubetune.io/finetunejob` (a server-side label selector, set at startup, so
  the operator never streams every pod of the cluster) → reconcile the parent.
- The resync loop (started at startup): every `resync_seconds`, poll rank 0's
  metrics of running attempts and reconcile every unfinished FineTuneJob;
  backoffs, pending and active deadlines and TTLs are decided there.

There is no `on.delete` handler and no kopf timer, so kopf puts no finalizer on
FineTuneJobs (kopf's timers and daemons always add one, which would block
deleting a namespace once the operator is uninstalled); children go by owner
references. Handlers return nothing, so kopf stores nothing in status; its own
bookkeeping goes to annotations under `kubetune.io/` (see tuning.py).

RBAC: every API verb and resource the operator uses (the Helm chart's
ClusterRole, or a Role per watched namespace):

    kubetune.io           finetunejobs                get, list, watch, patch, delete
    kubetune.io           finetunejobs/status         patch
    kubetune.io           finetunejobs/finalizers     update        (checked, never called: blockOwnerDeletion under OwnerReferencesPermissionEnforcement)
    batch                 jobs                        get, list, watch, create, delete
    ""                    pods                        list, watch
    ""                    pods                        delete   (grace 0: a pod stuck Terminating on a lost node)
    ""                    nodes                       get      (the node of a Terminating pod: cluster-wide only)
    ""                    configmaps                  get, create
    ""                    persistentvolumeclaims      get, create
    ""                    services                    get, create
    ""                    events                      create, list
    coordination.k8s.io   leases                      get, create, update   (leader election: the release namespace only)
    apiextensions.k8s.io  customresourcedefinitions   list, watch   (kopf's scanning: only when watching all namespaces)
    ""                    namespaces                  list, watch   (kopf's scanning: only when watching all namespaces)

`patch` on finetunejobs is kopf's bookkeeping annotations; `delete` on
finetunejobs is `ttlSecondsAfterFinished`. A child left by a deleted
FineTuneJob of the same name is never adopted: the operator waits for the
garbage collector (controller.py). Events are core v1
Events (events.py). The operator never reads secrets: pods get `HF_TOKEN`
through a secretKeyRef.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubetune_operator import names, tuning
from kubetune_operator.controller import EVENT_POSTERS, Children, Controller, Key
from kubetune_operator.kube import KubeApi, slim
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.progress import ProgressPoller
from kubetune_operator.reconcile import Decision
from kubetune_operator.settings import Settings
from kubetune_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

MEMO_SETTINGS = "kubetune_settings"  # run_operator passes Settings in the memo under this key
MEMO_RUNTIME = "kubetune"
MEMO_METRICS = "kubetune_metrics"  # optional: an OperatorMetrics to use (a test reads it)
FINETUNEJOBS = (names.GROUP, names.VERSION, names.PLURAL)
OWNED = {names.LABEL_FINETUNEJOB: kopf.PRESENT}


class Runtime:
    """What the handlers share for the operator's lifetime (kept in kopf's memo)."""

    def __init__(self, settings: Settings, metrics: OperatorMetrics | None = None) -> None:
        self.settings = settings
        # Watched namespaces get their counters at 0 before the first FineTuneJob (increase() sees it).
        self.metrics = metrics or OperatorMetrics(namespaces=settings.namespaces)
        # One connection per reconcile thread and Event poster, so none waits for a free connection.
        kube = KubeApi(settings.request_timeout_seconds, pool_size=settings.reconcile_concurrency + EVENT_POSTERS)
        self.controller = Controller(settings, kube, self.metrics)
        # The turns' own threads: asyncio.to_thread's default pool has min(32, CPUs + 4) threads, 6 on a
        # 2-core node, which would cap the reconcile workers below `reconcile_concurrency`.
        self.threads = concurrent.futures.ThreadPoolExecutor(settings.reconcile_concurrency, "kubetune-reconcile")
        self.poller = ProgressPoller(settings.progress_timeout_seconds, settings.progress_concurrency)
        self.queue: WorkQueue[Key] = WorkQueue()
        self.generations: dict[Key, int | None] = {}  # the spec generation last queued per FineTuneJob
        self.polled_at: dict[Key, float] = {}
        self.jobs: kopf.Index[Key, dict[str, Any]] | None = None  # kopf's indexes, from the first handler call
        self.pods: kopf.Index[Key, dict[str, Any]] | None = None
        self.bodies: dict[Key, dict[str, Any]] = {}  # each FineTuneJob as its watch last delivered it
        self.seen: dict[str, str] = {}  # Job/pod uid -> digest of what the reconcile reads of it
        self.workers: list[asyncio.Task[None]] = []

    def attach(self, attempt_jobs: kopf.Index[Key, dict[str, Any]], trainer_pods: kopf.Index[Key, dict[str, Any]]
               ) -> None:
        """Keep kopf's live indexes (kopf hands them only to handlers; the workers read them too)."""
        self.jobs, self.pods = attempt_jobs, trainer_pods

    def children(self, key: Key) -> Children | None:
        """A snapshot of a FineTuneJob's Jobs and pods from the indexes (taken in the event loop's thread)."""
        if self.jobs is None or self.pods is None:
            return None
        return list(self.jobs.get(key, [])), list(self.pods.get(key, []))

    def changed(self, event_type: str | None, body: kopf.Body, digest: Callable[[Mapping[str, Any]], str]) -> bool:
        """Whether a Job or pod event changes anything the reconcile reads (its `digest`), remembering it.

        Most events of a child change nothing the reconcile looks at (a finalizer removed, the Job's ready
        count, managedFields): those wake no turn. The indexes are updated by kopf either way.
        """
        uid = str(body.metadata.get("uid"))
        if event_type == "DELETED":
            self.seen.pop(uid, None)
            return True
        value = digest(body)
        if self.seen.get(uid) == value:
            return False
        self.seen[uid] = value
        return True

    def forget(self, key: Key) -> None:
        """The FineTuneJob is gone."""
        self.queue.forget(key)
        self.bodies.pop(key, None)
        self.generations.pop(key, None)
        self.polled_at.pop(key, None)
        self.controller.forget(*key)


class UnbuiltDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the last-handled essence of an object) for an operator with no on.create, update
    or field handler: never built.

    kopf builds it for every event of every watched object (a deep copy of the whole body, managedFields
    and status included, trimmed afterwards) although only change-detecting handlers read it; with event
    handlers and indexes alone it was the event loop's largest cost in a py-spy profile of 500 jobs.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """An empty essence: nothing compares it."""
        return kopf.BodyEssence()


def _runtime(memo: Any) -> Runtime:
    return memo[MEMO_RUNTIME]


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf, build the shared runtime, serve metrics, start the reconcile workers."""
    config = memo.get(MEMO_SETTINGS) or Settings.from_env()
    tuning.tune_kopf(settings, config)  # the one place kopf is tuned, for main.py and `kopf run` alike
    settings.persistence.diffbase_storage = UnbuiltDiffBase(prefix=tuning.KOPF_PREFIX,
                                                            key="last-handled-configuration")
    runtime = Runtime(config, memo.get(MEMO_METRICS))
    runtime.metrics.serve(config.metrics_port)
    runtime.workers = [asyncio.create_task(runtime.queue.work(lambda key: reconcile_turn(runtime, key)),
                                           name=f"kubetune-reconcile-{n}")
                       for n in range(config.reconcile_concurrency)]
    memo[MEMO_RUNTIME] = runtime
    logger.info("kubetune operator started: %s", config)


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the reconcile workers."""
    runtime = memo.get(MEMO_RUNTIME)
    for worker in runtime.workers if runtime is not None else []:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    if runtime is not None:
        runtime.threads.shutdown(wait=False)


def _digest(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def job_digest(job: Mapping[str, Any]) -> str:
    """What the reconcile reads of an attempt Job (classify.job_state, the refusals check): its conditions,
    counts, suspend and deletion; not its ready count or terminating and uncounted pods."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    kept = {key: value for key, value in status.items()
            if key not in ("ready", "terminating", "uncountedTerminatedPods")}
    return _digest(meta.get("deletionTimestamp"), meta.get("labels"), (job.get("spec") or {}).get("suspend"), kept)


def pod_digest(pod: Mapping[str, Any]) -> str:
    """What the reconcile reads of a trainer pod (classify, progress): phase, conditions, container states,
    IP, node, owner and deletion; not its finalizers, managedFields or timestamps of unchanged states."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return _digest(
        meta.get("deletionTimestamp"), meta.get("labels"), meta.get("annotations"),
        [reference.get("uid") for reference in meta.get("ownerReferences") or []],
        (pod.get("spec") or {}).get("nodeName"), status.get("phase"), status.get("reason"), status.get("podIP"),
        [(c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []],
        [(c.get("name"), c.get("state")) for c in status.get("containerStatuses") or []],
    )


# The indexers are coroutines although they never wait: kopf runs a plain function in its thread pool,
# one thread hop per event and index, which is most of an event's cost at a few hundred events a second.
@kopf.index("batch", "v1", "jobs", labels=OWNED)
async def attempt_jobs(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Key, Any]:
    """Attempt Jobs by their FineTuneJob's (namespace, name): the reconcile reads them here, not from the API."""
    return {(namespace or "", labels[names.LABEL_FINETUNEJOB]): slim(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
async def trainer_pods(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Key, Any]:
    """Trainer pods by their FineTuneJob's (namespace, name)."""
    return {(namespace or "", labels[names.LABEL_FINETUNEJOB]): slim(body)}


# Event handlers only (no kopf.on.create/update/resume): the reconcile is level-based, so an event
# is a reason to look again, nothing more, and kopf writes no bookkeeping annotations on them.

@kopf.on.event(*FINETUNEJOBS)
async def finetunejob_event(type: str | None, body: kopf.Body, namespace: str | None, name: str, memo: Any,
                            attempt_jobs: kopf.Index, trainer_pods: kopf.Index, **_: Any) -> None:
    """A FineTuneJob appeared, changed its spec, or went; its own status writes are skipped."""
    runtime = _runtime(memo)
    runtime.attach(attempt_jobs, trainer_pods)
    key = (namespace or "", name)
    if type == "DELETED":
        runtime.forget(key)
        return
    runtime.bodies[key] = slim(body)  # every event, the operator's own status writes included: turns read it
    generation = body.metadata.get("generation")
    if type == "MODIFIED" and runtime.generations.get(key) == generation:
        return  # status or metadata only: the operator's own write (the spec did not change)
    runtime.generations[key] = generation
    runtime.queue.add(key, urgent=True)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_event(type: str | None, body: kopf.Body, labels: Mapping[str, str], namespace: str | None, memo: Any,
                    **_: Any) -> None:
    """An attempt Job changed (admitted, completed, failed, deleted): look at its FineTuneJob again."""
    runtime = _runtime(memo)
    if runtime.changed(type, body, job_digest):
        runtime.queue.add((namespace or "", labels[names.LABEL_FINETUNEJOB]))


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_event(type: str | None, body: kopf.Body, labels: Mapping[str, str], namespace: str | None, memo: Any,
                    **_: Any) -> None:
    """A trainer pod changed (scheduled, running, stuck, terminated): look at its FineTuneJob again."""
    runtime = _runtime(memo)
    if runtime.changed(type, body, pod_digest):
        runtime.queue.add((namespace or "", labels[names.LABEL_FINETUNEJOB]))


async def reconcile_turn(runtime: Runtime, key: Key) -> None:
    """One FineTuneJob's turn: poll progress when due, reconcile, schedule its next turn.

    An error is logged and counted, and the key comes back after a resync period.
    """
    url = runtime.controller.metrics_urls.get(key)
    polled = None
    if url and time.monotonic() - runtime.polled_at.get(key, 0.0) >= runtime.settings.resync_seconds / 2:
        polled = await runtime.poller.poll(url)
        runtime.polled_at[key] = time.monotonic()
    children = runtime.children(key)
    try:
        decision = await asyncio.get_running_loop().run_in_executor(
            runtime.threads, runtime.controller.reconcile, key[0], key[1], polled, children, runtime.bodies.get(key))
    except Exception:  # the next turn tries again; raising here would stop this worker
        logger.exception("reconcile of FineTuneJob %s/%s failed", *key)
        runtime.queue.add(key, runtime.settings.resync_seconds)
        return
    schedule_next(runtime, key, decision)


def schedule_next(runtime: Runtime, key: Key, decision: Decision | None) -> None:
    """When this FineTuneJob needs another turn without an event: its action's delay, else the resync.

    A finished FineTuneJob with nothing left to do gets none (events still wake it).
    """
    if decision is None:
        runtime.forget(key)
        return
    if key in runtime.controller.settled:
        return
    delay = runtime.settings.resync_seconds
    if decision.action.delay_seconds and not decision.action.due:
        delay = min(delay, decision.action.delay_seconds)
    runtime.queue.add(key, delay)
