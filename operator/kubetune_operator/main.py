"""`kubetune-operator`: run the operator, watching all namespaces or a list.

    kubetune-operator                                  # settings from KUBETUNE_* env (settings.py)
    KUBETUNE_WATCH_NAMESPACES=ml,research kubetune-operator
    KUBETUNE_LEADER_ELECTION_NAMESPACE=kubetune-system kubetune-operator   # one of several replicas

With a leader-election namespace, the process first waits for the Lease
(leader.py), answering its liveness probe meanwhile, and exits if it ever
loses it; the chart runs every replica so.

In-process (tests, embedding):

    run_operator(Settings(namespaces=("ns1",), metrics_port=0, health_port=0), stop_flag=..., ready_flag=...)
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import sys
import threading
from typing import Any

import kopf

from kubetune_operator.settings import Settings, SettingsError


def _operator_kwargs(settings: Settings, stop_flag: Any, ready_flag: Any) -> dict[str, Any]:
    import kubetune_operator.handlers as handlers  # registers the handlers in kopf's default registry

    # kopf's settings are tuned once, by the startup handler (tuning.py), before any watch starts.
    return dict(
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=list(settings.namespaces),
        memo=kopf.Memo({handlers.MEMO_SETTINGS: settings}),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


async def operate(settings: Settings | None = None, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """The operator as a coroutine (`kopf.operator`), for a caller that owns the event loop or thread.

    Run it in a loop of its own: on exit kopf cancels every task of its loop.
    """
    await kopf.operator(**_operator_kwargs(settings or Settings.from_env(), stop_flag, ready_flag))


def run_operator(settings: Settings | None = None, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator in this thread until `stop_flag` is set (a threading/asyncio Event or Future).

    `ready_flag` is set once kopf is watching. Handlers come from `kubetune_operator.handlers`;
    settings travel to them through kopf's memo, so operators with different settings can run one
    after another in one process.
    """
    kopf.run(**_operator_kwargs(settings or Settings.from_env(), stop_flag, ready_flag))


def main() -> int:
    """Entry point of the `kubetune-operator` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every handler success and aiohttp every liveness probe at INFO: one line per pod event.
    # Errors still show; the operator's own INFO lines (children created, Jobs deleted) stay.
    for chatty in ("kopf.objects", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"kubetune-operator: {error}", file=sys.stderr)
        return 2
    if settings.leader_election_namespace:
        lead(settings)
    run_operator(settings)
    return 0


def lead(settings: Settings) -> None:
    """Wait until this replica holds the Lease, then renew it in the background; exit when it is lost."""
    from kubernetes import client, config

    from kubetune_operator.kube import KubeApi
    from kubetune_operator.leader import LeaderElector

    config.load_config()  # in a pod: its ServiceAccount; elsewhere: KUBECONFIG
    kube = KubeApi(settings.request_timeout_seconds, client.ApiClient())
    identity = settings.pod_name or socket.gethostname()
    elector = LeaderElector(kube, str(settings.leader_election_namespace), identity,
                            settings.leader_election_lease_seconds)
    with standby_health(settings.health_port):
        elector.acquire()
    # Losing the Lease means another replica may already reconcile: stop at once, as client-go's callers do.
    elector.keep(on_lost=lambda: os._exit(1))


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"standing by")

    def log_message(self, *_: Any) -> None:
        pass


class standby_health:  # noqa: N801 - used as a context manager, like a function
    """A liveness endpoint while the replica waits for the Lease (kopf serves it once it runs)."""

    def __init__(self, port: int) -> None:
        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Healthy) if port else None

    def __enter__(self) -> standby_health:
        if self.server is not None:
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


if __name__ == "__main__":
    sys.exit(main())
