"""Progress polling: the trainer's real exporter parsed by the operator, time limits, bounded concurrency."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server

from kubetune_operator.progress import ProgressPoller, metrics_url, parse_metrics, percent, shown_loss
from kubetune_api.metric_specs import TRAINER_METRICS
from tests.operator.objects import NOW, pod


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]]:
    """Start an aiohttp app with one /metrics handler; yields a function that returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> str:
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/metrics"

    yield start
    for runner in runners:
        await runner.cleanup()


def test_percent_is_floored_and_needs_a_total() -> None:
    assert [percent(0, 60), percent(27, 60), percent(59, 60), percent(60, 60)] == ["0%", "45%", "98%", "100%"]
    assert percent(None, 60) is None and percent(5, None) is None and percent(5, 0) is None


class SpecExporter:
    """The trainer's metrics as its exporter builds them: from metric_specs, labelled finetunejob/namespace.

    (kubetune_trainer.metrics does the same but imports transformers, ~20 s here; the end-to-end tests
    poll the real trainer.)
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        kinds = {"gauge": Gauge, "counter": Counter, "histogram": Histogram, "enum": Enum}
        self.metrics: dict[str, Any] = {}
        for spec in TRAINER_METRICS:
            extra = {"states": list(spec.states)} if spec.kind == "enum" else {}
            metric = kinds[spec.kind](spec.name, spec.help, list(spec.labels), registry=self.registry, **extra)
            self.metrics[spec.name] = metric.labels("demo", "ml")
        self.server: Any = None

    def set(self, name: str, value: float) -> None:
        self.metrics[name].set(value)

    def serve(self, port: int, host: str) -> bool:
        self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        return True

    def shutdown(self) -> None:
        self.server.shutdown()


async def test_the_trainers_metric_names_are_parsed_into_progress() -> None:
    exporter = SpecExporter()
    exporter.metrics["kubetune_trainer_phase"].state("training")
    exporter.metrics["kubetune_trainer_tokens"].inc(1000)
    values = {
        "kubetune_trainer_step": 45, "kubetune_trainer_total_steps": 100, "kubetune_trainer_epoch": 1.35,
        "kubetune_trainer_train_loss": 1.25, "kubetune_trainer_eval_loss": 1.5,
        "kubetune_trainer_learning_rate": 1.5e-4, "kubetune_trainer_tokens_per_second": 812.5,
        "kubetune_trainer_eta_seconds": 330, "kubetune_trainer_last_checkpoint_step": 40,
        "kubetune_trainer_last_checkpoint_timestamp_seconds": NOW.timestamp(),
    }
    for name, value in values.items():
        exporter.set(name, value)
    port = free_port()
    assert exporter.serve(port, "127.0.0.1")
    try:
        polled = await ProgressPoller(timeout_seconds=2, concurrency=2).poll(f"http://127.0.0.1:{port}/metrics", NOW)
    finally:
        exporter.shutdown()
    assert polled is not None
    progress, checkpoint = polled
    assert (progress.step, progress.total_steps, progress.percent) == (45, 100, "45%")
    assert (progress.loss, progress.eval_loss, progress.epoch) == (1.25, 1.5, 1.35)
    assert (progress.learning_rate, progress.tokens_per_second, progress.eta_seconds) == (1.5e-4, 812.5, 330)
    assert progress.updated_at == "2026-11-23T12:00:00Z"
    assert checkpoint is not None and checkpoint.step == 40
    assert checkpoint.path == "/workspace/output/checkpoints/checkpoint-40" and checkpoint.time == "2026-11-23T12:00:00Z"


def test_missing_metrics_leave_fields_empty() -> None:
    progress, checkpoint = parse_metrics("# nothing yet\nkubetune_trainer_step 3\n", NOW)
    assert progress.step == 3 and progress.total_steps is None and progress.percent is None
    assert checkpoint is None


async def test_a_slow_endpoint_is_given_up_after_the_timeout(serve) -> None:  # type: ignore[no-untyped-def]
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(text="kubetune_trainer_step 1\n")

    url = await serve(slow)
    started = time.monotonic()
    assert await ProgressPoller(timeout_seconds=0.2, concurrency=1).poll(url) is None
    assert time.monotonic() - started < 2


async def test_nonsense_and_errors_are_not_progress(serve) -> None:  # type: ignore[no-untyped-def]
    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="kubetune_trainer_step {{{ not prometheus\n")

    poller = ProgressPoller(timeout_seconds=1, concurrency=1)
    assert await poller.poll(await serve(broken)) is None
    assert await poller.poll(await serve(garbage)) is None
    assert await poller.poll(f"http://127.0.0.1:{free_port()}/metrics") is None  # nothing listens


async def test_polls_in_flight_are_bounded(serve) -> None:  # type: ignore[no-untyped-def]
    in_flight, most = 0, 0

    async def counting(_: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="kubetune_trainer_step 7\n")

    url = await serve(counting)
    poller = ProgressPoller(timeout_seconds=2, concurrency=3)
    results = await asyncio.gather(*(poller.poll(url) for _ in range(12)))
    assert all(result is not None and result[0].step == 7 for result in results)
    assert most == 3


def test_metrics_url_is_rank_0_of_running_pods() -> None:
    rank0, rank1 = pod(2, index=0), pod(2, index=1)
    rank0["status"]["podIP"], rank1["status"]["podIP"] = "10.1.2.3", "10.1.2.4"
    assert metrics_url([rank1, rank0], 9090) == "http://10.1.2.3:9090/metrics"
    rank0["status"]["podIP"] = "fd00::5"
    assert metrics_url([rank0], 9300) == "http://[fd00::5]:9300/metrics"
    assert metrics_url([rank1], 9090) is None
    assert metrics_url([pod(2, phase="Pending")], 9090) is None


def test_the_real_trainer_exporter_shows_loading_and_no_loss_until_the_first_logged_loss() -> None:
    from kubetune_trainer.metrics import TrainerMetrics
    from prometheus_client import generate_latest

    metrics = TrainerMetrics("demo", "ml")
    metrics.phase("loading")  # what the trainer exports while it loads the model and data
    progress, _ = parse_metrics(generate_latest(metrics.registry).decode(), NOW)
    assert (progress.stage, progress.loss, progress.loss_text, progress.percent) == ("loading", None, None, None)
    metrics.phase("training")
    metrics.set("kubetune_trainer_train_loss", 1.7342195510864258)
    progress, _ = parse_metrics(generate_latest(metrics.registry).decode(), NOW)
    assert (progress.stage, progress.loss_text) == ("training", "1.734")


def test_the_loss_column_has_one_precision() -> None:
    assert [shown_loss(v) for v in (2.0, 1.7342195510864258, 0.01234, None, float("nan"))] == [
        "2.000", "1.734", "0.012", None, None]
