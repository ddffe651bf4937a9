"""Real servers on loopback for the storage tests: an S3 API (moto's server) and a counting HTTP server."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "kubetune-test",
    "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No instance-metadata lookups (they wait for a timeout) when a test removes the keys.
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (moto's, the same code path as AWS for s3fs/botocore) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """An s3fs client with a fresh bucket, and the pod-like env (credentials, AWS_ENDPOINT_URL) set."""
    import s3fs

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    bucket = "kt-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    fs.mkdir(bucket)
    fs.bucket = bucket  # type: ignore[attr-defined]
    return fs


class CountingServer:
    """A static file server that counts requests per (method, path) and can slow its GETs down."""

    def __init__(self, root: Path) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.get_delay = 0.0
        self.forbidden = "/nothing-is-forbidden/"  # requests under this path prefix get 403
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.counts["GET", self.path] += 1
                time.sleep(server.get_delay)
                if not self._refused():
                    super().do_GET()

            def do_HEAD(self) -> None:  # noqa: N802
                server.counts["HEAD", self.path] += 1
                if not self._refused():
                    super().do_HEAD()

            def _refused(self) -> bool:
                if self.path.startswith(server.forbidden):
                    self.send_error(403, "Forbidden")
                    return True
                return False

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[CountingServer]:
    """A counting HTTP server over tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    server = CountingServer(root)
    server.root = root  # type: ignore[attr-defined]
    yield server
    server.close()
