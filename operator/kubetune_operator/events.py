"""Kubernetes Events on a FineTuneJob, one per transition the reconcile reports (`reconcile.Event`).

Posted by the controller itself (core v1 Events, what `kubectl describe ftj` shows), not through kopf's
poster: kopf's poster only works inside kopf's per-object tasks, and the resync loop runs outside them.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from kubetune_operator import classify, names
from kubetune_operator.reconcile import Event

COMPONENT = names.MANAGER
MESSAGE_LIMIT = 1024  # the API server keeps at most 1 KiB of an Event's message


def build_event(body: Mapping[str, Any], event: Event, now: dt.datetime) -> dict[str, Any]:
    """A core v1 Event about the FineTuneJob `body`."""
    meta = body["metadata"]
    stamp = classify.format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # <object>.<unique suffix>, as kubectl and client-go name theirs.
            "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": body.get("apiVersion", names.API_VERSION),
            "kind": body.get("kind", "FineTuneJob"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": classify.shorten(event.message, MESSAGE_LIMIT),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
