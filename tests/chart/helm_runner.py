"""Run the real Helm library (helm-sdkpy, Helm v4's Go code) on the chart, one action per process.

    HELM_DRIVER=memory python -m tests.chart.helm_runner lint charts/kubetune
    HELM_DRIVER=memory python -m tests.chart.helm_runner install charts/kubetune \
        --kubeconfig KUBECONFIG --release kt --namespace kubetune --values '{"crds": {"enabled": true}}'
    HELM_DRIVER=memory python -m tests.chart.helm_runner sequence charts/kubetune --kubeconfig KUBECONFIG \
        --steps '[{"action": "install", "values": {}}, {"action": "upgrade", "values": {...}}, {"action": "uninstall"}]'

Prints the action's result as one JSON document on stdout (`sequence`: a list, one result per
step); a Helm error is printed on stderr with exit status 1. A sequence runs in one process with
one configuration because the memory driver keeps the release record only there.

Why a process of its own: Helm's Go runtime reads `HELM_DRIVER` from the environment the
process started with, so setting it from a running pytest has no effect, and without it Helm
stores its release record as a protobuf-encoded Secret that the emulated API cannot decode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any


def _require_memory_driver() -> None:
    if os.environ.get("HELM_DRIVER") != "memory":
        sys.exit("helm_runner: start it with HELM_DRIVER=memory in the environment (see the module docstring)")


async def _lint(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    return await helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart)


async def _install(chart: str, kubeconfig: str, release: str, namespace: str, values: dict[str, Any]) -> dict[str, Any]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    return await helm_sdkpy.Install(config).run(release, chart, values=values, wait=False, timeout=30)


async def _sequence(chart: str, kubeconfig: str, release: str, namespace: str,
                    steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    results: list[dict[str, Any]] = []
    for step in steps:
        if step["action"] == "install":
            results.append(await helm_sdkpy.Install(config).run(release, chart, values=step.get("values"),
                                                                 wait=False, timeout=30))
        elif step["action"] == "upgrade":
            results.append(await helm_sdkpy.Upgrade(config).run(release, chart, values=step.get("values"),
                                                                wait=False, timeout=30))
        elif step["action"] == "uninstall":
            results.append(await helm_sdkpy.Uninstall(config).run(release, wait=False, timeout=30))
        else:
            raise SystemExit(f"helm_runner: unknown step action {step['action']!r} (install, upgrade, uninstall)")
    return results


def make_parser() -> argparse.ArgumentParser:
    """The runner's arguments: an action and the chart, plus the cluster for install."""
    parser = argparse.ArgumentParser(prog="helm_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["lint", "install", "sequence"])
    parser.add_argument("chart")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--release", default="kubetune")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--values", default="{}", help="values as a JSON object")
    parser.add_argument("--steps", default="[]", help="for sequence: a JSON list of {action, values}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one Helm action and print its result as JSON."""
    args = make_parser().parse_args(argv)
    _require_memory_driver()
    import helm_sdkpy

    try:
        if args.action == "lint":
            result: Any = asyncio.run(_lint(args.chart))
        elif args.action == "install":
            values = json.loads(args.values)
            result = asyncio.run(_install(args.chart, args.kubeconfig, args.release, args.namespace, values))
        else:
            steps = json.loads(args.steps)
            result = asyncio.run(_sequence(args.chart, args.kubeconfig, args.release, args.namespace, steps))
    except helm_sdkpy.HelmError as error:
        print(f"helm {args.action} failed: {error}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
