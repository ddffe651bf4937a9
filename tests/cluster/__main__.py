"""Run the test cluster for people: `python -m tests.cluster [--root DIR] [--chart]` (see scripts/cluster.sh).

Starts the control plane and the test kubelet, optionally installs the chart,
prints the admin kubeconfig's path, and keeps everything running until SIGTERM
or Ctrl-C, then stops it all.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.cluster.controlplane import ComponentFailed, ControlPlane
from tests.cluster.fixtures import CHART, NODE_ENV, RELEASE, RELEASE_NAMESPACE, helm
from tests.cluster.kubelet import Kubelet
from tests.cluster.rest import RestClient


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, wait for a stop signal, stop it; exit 1 with the failing component's log tail."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("build/cluster/run"), help="state and logs (default %(default)s)")
    parser.add_argument("--chart", action="store_true", help="also `helm install` charts/kubetune")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    plane = ControlPlane(args.root.resolve())
    try:
        plane.start()
    except (ComponentFailed, FileNotFoundError) as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    kubelet = Kubelet(RestClient(plane.server, plane.token, str(plane.ca_file)), plane.root / "nodes",
                      node_env=NODE_ENV).start()
    try:
        if args.chart:
            helm(plane, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace")
        print(f"cluster up in {plane.start_seconds:.1f} s: export KUBECONFIG={plane.kubeconfig}", flush=True)
        print(f"logs: {plane.root}/*.log; stop with Ctrl-C or scripts/cluster.sh down", flush=True)
        while not stop.wait(1):
            plane.check_alive()
    except ComponentFailed as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    finally:
        kubelet.stop()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
