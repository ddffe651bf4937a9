"""A real Prometheus server on loopback for tests: Debian's `prometheus` binary, its HTTP API read with urllib.

    with PrometheusServer.start(tmp_path, targets={"trainer": ["127.0.0.1:9400"]}, rules=spec) as prom:
        prom.wait_for('up{job="trainer"} == 1')
        series = prom.query_range("kubetune_trainer_step", start, end)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.trainer.sft_runs import free_port

INSTALL = "apt-get install -y prometheus"  # Debian's package: the server and promtool
SCRAPE_INTERVAL_SECONDS = 0.25  # the tiny model trains 30 steps a second: scrape often enough to see them
INTERVAL = f"{round(SCRAPE_INTERVAL_SECONDS * 1000)}ms"


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and (unix time, value) samples."""

    labels: dict[str, str]
    samples: list[tuple[float, float]]

    @property
    def values(self) -> list[float]:
        """The sample values in time order."""
        return [value for _, value in self.samples]

    @property
    def last(self) -> float:
        """The newest value."""
        return self.samples[-1][1]


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails with the command that installs them."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {INSTALL}")
    return found


class PrometheusServer:
    """A running Prometheus and the parts of its HTTP API the tests use."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    @classmethod
    @contextmanager
    def start(cls, folder: Path, targets: Mapping[str, Sequence[str]], rules: Mapping[str, Any] | None = None,
              target_labels: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[PrometheusServer]:
        """Start Prometheus scraping each job's targets every INTERVAL (honoring their labels, as the chart's
        monitors do), evaluating `rules` (a rule file's content) as often; stop it on exit."""
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
            "scrape_configs": [
                {"job_name": job, "honor_labels": True,
                 "static_configs": [{"targets": list(addresses), "labels": dict((target_labels or {}).get(job, {}))}]}
                for job, addresses in targets.items()
            ],
        }
        if rules is not None:
            (folder / "rules.yaml").write_text(yaml.safe_dump(dict(rules)), encoding="utf-8")
            config["rule_files"] = [str(folder / "rules.yaml")]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        log = folder / "prometheus.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=handle, stderr=subprocess.STDOUT)
        server = cls(f"http://127.0.0.1:{port}", process, log)
        try:
            server._wait_ready()
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, or an AssertionError with Prometheus' error."""
        query = urllib.parse.urlencode({key: value for key, value in params.items() if value is not None})
        try:
            body = urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30).read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"prometheus refused {params.get('query', path)!r}: {error.read().decode()}") from None
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = SCRAPE_INTERVAL_SECONDS) -> list[Series]:
        """Every series of a range query, NaN samples included (a panel shows them as gaps)."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return [Series(item["metric"], [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """Every series of an instant query, each with its one sample."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] == "scalar":
            t, v = data["result"]
            return [Series({}, [(float(t), float(v))])]
        return [Series(item["metric"], [(float(item["value"][0]), float(item["value"][1]))]) for item in data["result"]]

    def wait_for(self, expr: str, timeout: float = 60) -> list[Series]:
        """Poll an instant query until it returns something."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.query(expr)
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} stayed empty for {timeout}s")
