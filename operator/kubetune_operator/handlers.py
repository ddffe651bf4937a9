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
bookkeeping goes to annotations under `kubetune.io/` (see main.tune_kopf).

RBAC: every API verb and resource the operator uses (the Helm chart's
ClusterRole, or a Role per watched namespace):

    kubetune.io           finetunejobs                get, list, watch, patch, delete
    kubetune.io           finetunejobs/status         patch
    kubetune.io           finetunejobs/finalizers     update        (checked, never called: blockOwnerDeletion under OwnerReferencesPermissionEnforcement)
    batch                 jobs                        get, list, watch, create, delete
    ""                    pods                        list, watch
    ""                    configmaps                  get, create
    ""                    persistentvolumeclaims      get, create
    ""                    services                    get, create
    ""                    events                      create
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
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kubetune_operator import names
from kubetune_operator.controller import Controller, Key
from kubetune_operator.kube import KubeApi
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.progress import ProgressPoller
from kubetune_operator.settings import Settings

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
        self.metrics = metrics or OperatorMetrics()
        self.controller = Controller(settings, KubeApi(settings.request_timeout_seconds), self.metrics)
        self.poller = ProgressPoller(settings.progress_timeout_seconds, settings.progress_concurrency)
        self.known: set[Key] = set()
        self.resync_task: asyncio.Task[None] | None = None


def _runtime(memo: Any) -> Runtime:
    return memo[MEMO_RUNTIME]


def _reconcile(memo: Any, namespace: str | None, name: str | None) -> None:
    if namespace and name:
        runtime = _runtime(memo)
        runtime.known.add((namespace, name))
        runtime.controller.reconcile(namespace, name)


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf, build the shared runtime, serve metrics, start the resync loop."""
    from kubetune_operator.main import tune_kopf  # main imports this module: import at call time

    config = memo.get(MEMO_SETTINGS) or Settings.from_env()
    tune_kopf(settings, config)
    runtime = Runtime(config, memo.get(MEMO_METRICS))
    runtime.metrics.serve(config.metrics_port)
    runtime.resync_task = asyncio.create_task(resync_loop(runtime), name="kubetune-resync")
    memo[MEMO_RUNTIME] = runtime
    logger.info("kubetune operator started: %s", config)


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop."""
    runtime = memo.get(MEMO_RUNTIME)
    if runtime is not None and runtime.resync_task is not None:
        runtime.resync_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runtime.resync_task


@kopf.on.create(*FINETUNEJOBS)
def finetunejob_create(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """A new FineTuneJob: validate it and create attempt 0 (or fail it with InvalidRecipe)."""
    _reconcile(memo, namespace, name)


@kopf.on.resume(*FINETUNEJOBS)
def finetunejob_resume(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """The operator (re)started and found this FineTuneJob: adopt what exists, catch up."""
    _reconcile(memo, namespace, name)


@kopf.on.update(*FINETUNEJOBS, field="spec")
def finetunejob_update(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """spec changed: suspend/resume, or an immutable field that got past the CRD (reported, not acted on)."""
    _reconcile(memo, namespace, name)


@kopf.on.event(*FINETUNEJOBS)
def finetunejob_event(type: str | None, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """Keep the resync loop's set of FineTuneJobs; forget deleted ones."""
    runtime = _runtime(memo)
    if namespace is None:
        return
    if type == "DELETED":
        runtime.known.discard((namespace, name))
        runtime.controller.forget(namespace, name)
    else:
        runtime.known.add((namespace, name))


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
def job_event(labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any) -> None:
    """An attempt Job changed (admitted, completed, failed, deleted): reconcile its FineTuneJob."""
    _reconcile(memo, namespace, labels.get(names.LABEL_FINETUNEJOB))


@kopf.on.event("", "v1", "pods", labels=OWNED)
def pod_event(labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any) -> None:
    """A trainer pod changed (scheduled, running, stuck, terminated): reconcile its FineTuneJob."""
    _reconcile(memo, namespace, labels.get(names.LABEL_FINETUNEJOB))


async def resync_loop(runtime: Runtime) -> None:
    """Every resync_seconds: poll progress and reconcile every FineTuneJob that is not settled."""
    gate = asyncio.Semaphore(runtime.settings.reconcile_concurrency)
    while True:
        await asyncio.sleep(runtime.settings.resync_seconds)
        keys = [key for key in list(runtime.known) if key not in runtime.controller.settled]
        await asyncio.gather(*(resync_one(runtime, key, gate) for key in keys))


async def resync_one(runtime: Runtime, key: Key, gate: asyncio.Semaphore) -> None:
    """One FineTuneJob's periodic turn; an error is logged and counted, the loop goes on."""
    url = runtime.controller.metrics_urls.get(key)
    polled = await runtime.poller.poll(url) if url else None
    async with gate:
        try:
            await asyncio.to_thread(runtime.controller.reconcile, key[0], key[1], polled)
        except Exception:  # the next turn tries again; a crash here would stop every FineTuneJob's resync
            logger.exception("reconcile of FineTuneJob %s/%s failed", *key)
