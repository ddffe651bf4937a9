"""Training progress from rank 0's Prometheus endpoint: best effort, never used to decide the phase.

The trainer exports `kubetune_trainer_*` gauges (names in
`kubetune_api.metric_specs`); the operator polls rank 0 at
`http://<pod IP>:<metricsPort>/metrics` with a short timeout and a bounded
number of polls in flight, parses the text with prometheus-client's own
parser, and hands a `Progress` (percent, loss text and the trainer's stage for the printer columns)
and the newest checkpoint to the reconcile. A poll that fails returns None and
the last known progress stays in status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kubetune_operator import classify
from kubetune_api import contract
from kubetune_api.metric_specs import TRAINER_METRICS
from kubetune_api.recipe import CheckpointStatus, Progress

logger = logging.getLogger(__name__)

# Progress field ← trainer metric. Checked against metric_specs at import, so a renamed metric fails loudly.
PROGRESS_FIELDS: dict[str, str] = {
    "step": "kubetune_trainer_step",
    "total_steps": "kubetune_trainer_total_steps",
    "epoch": "kubetune_trainer_epoch",
    "loss": "kubetune_trainer_train_loss",
    "eval_loss": "kubetune_trainer_eval_loss",
    "learning_rate": "kubetune_trainer_learning_rate",
    "tokens_per_second": "kubetune_trainer_tokens_per_second",
    "eta_seconds": "kubetune_trainer_eta_seconds",
}
CHECKPOINT_STEP = "kubetune_trainer_last_checkpoint_step"
CHECKPOINT_TIME = "kubetune_trainer_last_checkpoint_timestamp_seconds"
STAGE = "kubetune_trainer_phase"  # an enum: one sample per state, 1 for the current one
INTEGER_FIELDS = frozenset({"step", "total_steps"})

_KNOWN = {spec.name for spec in TRAINER_METRICS}
_MISSING = (set(PROGRESS_FIELDS.values()) | {CHECKPOINT_STEP, CHECKPOINT_TIME, STAGE}) - _KNOWN
if _MISSING:  # pragma: no cover - a programming error caught by any import
    raise ImportError(f"progress.py reads metrics that metric_specs.TRAINER_METRICS lacks: {sorted(_MISSING)}")


def percent(step: int | None, total: int | None) -> str | None:
    """step/total as the printer column shows it, e.g. `45%` (floored: 100% only when done)."""
    if step is None or not total:
        return None
    return f"{min(math.floor(100 * step / total), 100)}%"


def shown_loss(loss: float | None) -> str | None:
    """A loss as the printer column shows it: 3 decimals, always (`2.000`, not `2` beside `1.7342195510864258`)."""
    return None if loss is None or not math.isfinite(loss) else f"{loss:.3f}"


def _values(text: str) -> tuple[dict[str, float], str | None]:
    """The first sample of every gauge in an exposition text (one FineTuneJob per endpoint), and the
    state the trainer's phase enum is in (None before the trainer sets one)."""
    values: dict[str, float] = {}
    stage = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == STAGE and sample.value == 1:
                stage = sample.labels.get(STAGE)
            elif sample.name in _KNOWN and sample.name not in values and math.isfinite(sample.value):
                values[sample.name] = sample.value
    return values, stage


def parse_metrics(text: str, now: dt.datetime) -> tuple[Progress, CheckpointStatus | None]:
    """Progress and the newest complete checkpoint from rank 0's metrics text; raises ValueError if unparsable."""
    values, stage = _values(text)
    fields: dict[str, Any] = {"stage": stage}
    for field, metric in PROGRESS_FIELDS.items():
        if metric in values:
            fields[field] = int(values[metric]) if field in INTEGER_FIELDS else values[metric]
    fields["percent"] = percent(fields.get("step"), fields.get("total_steps"))
    fields["loss_text"] = shown_loss(fields.get("loss"))
    progress = Progress(**fields, updated_at=classify.format_time(now))
    checkpoint = None
    if values.get(CHECKPOINT_STEP, 0) > 0:
        step = int(values[CHECKPOINT_STEP])
        written = values.get(CHECKPOINT_TIME)
        checkpoint = CheckpointStatus(
            step=step,
            path=f"{contract.checkpoints_dir(contract.WORKSPACE)}/{contract.CHECKPOINT_PREFIX}{step}",
            time=classify.format_time(dt.datetime.fromtimestamp(written, dt.timezone.utc)) if written else None,
        )
    return progress, checkpoint


def metrics_url(pods: Sequence[Mapping[str, Any]], port: int) -> str | None:
    """Where rank 0 of the running attempt serves metrics, or None when it is not running."""
    pod = classify.rank0_pod([p for p in pods if classify.pod_running(p)])
    ip = ((pod or {}).get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


class ProgressPoller:
    """Polls metrics endpoints with a time limit each and at most `concurrency` at once."""

    def __init__(self, timeout_seconds: float, concurrency: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.gate = asyncio.Semaphore(concurrency)

    async def poll(self, url: str, now: dt.datetime | None = None
                   ) -> tuple[Progress, CheckpointStatus | None] | None:
        """One poll; None when the endpoint does not answer in time or answers nonsense."""
        async with self.gate:
            try:
                async with aiohttp.ClientSession(timeout=self.timeout) as session:
                    async with session.get(url) as response:
                        response.raise_for_status()
                        text = await response.text()
                return parse_metrics(text, now or dt.datetime.now(dt.timezone.utc))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as error:
                logger.debug("progress poll of %s failed: %s", url, error)
                return None
