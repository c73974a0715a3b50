"""Fixtures for the aws plugin tests: loopback-only guard, moto in-process and as a server.

The network guard is an audit hook (hooks cannot be removed, so it checks a flag that an
autouse fixture raises only while this plugin's tests run): any connect or name lookup for a
host other than the loopback fails the test instead of reaching AWS.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from novacron_sdk.testing.network import loopback_only

# Before moto builds its EC2 backend: skip loading thousands of public AMIs (seconds per
# process); the tests boot a fixed AMI id instead.
os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

AMI = "ami-12c6146b"
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test that tries to reach a non-loopback host, and isolate AWS settings."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    # The default chain must never fall through to the instance metadata service.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    with loopback_only():
        yield


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region in the environment (what moto expects)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server in a subprocess on 127.0.0.1; yields its URL."""
    port = free_port()
    env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the moto server did not start")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def moto_url(moto_server: str) -> str:
    """The moto server's URL, with every resource of earlier tests forgotten."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    return moto_server


@pytest.fixture
def aws_settings() -> dict[str, Any]:
    """Driver settings for moto: fixed AMI, no waiting between polls, no retry backoff."""
    return {"region": REGION, "default_image": AMI, "wait_interval": 0, "retry": {"base_delay": 0}}


# -- a fault-injecting proxy -------------------------------------------------------------------
# It answers with a real EC2 error document (the status and code a test chooses, e.g. 503
# RequestLimitExceeded) a set number of times, then forwards requests to moto unchanged.

EC2_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
)


class FaultProxy:
    """State shared with the handler: what to fail, and what was seen."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.failures_left = 0
        self.status = 503
        self.code = "RequestLimitExceeded"
        self.message = "Request limit exceeded."
        self.action: str | None = None
        self.rejected = 0
        self.forwarded = 0
        self.lock = threading.Lock()
        self.url = ""

    def fail_next(
        self,
        count: int,
        *,
        status: int = 503,
        code: str = "RequestLimitExceeded",
        message: str = "Request limit exceeded.",
        action: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (of EC2 ``action`` only, if given) with this error."""
        with self.lock:
            self.failures_left, self.status, self.code, self.message = count, status, code, message
            self.action = action

    def take_failure(self, body: bytes) -> bool:
        with self.lock:
            chosen = self.action is None or f"Action={self.action}&".encode() in body + b"&"
            if self.failures_left <= 0 or not chosen:
                self.forwarded += 1
                return False
            self.failures_left -= 1
            self.rejected += 1
            return True


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if proxy.take_failure(body):
                payload = EC2_ERROR_BODY.format(code=proxy.code, message=proxy.message).encode()
                self.send_response(proxy.status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(
                proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=30
            )
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_POST = _relay

    return Handler


@pytest.fixture
def fault_proxy(moto_url: str) -> Iterator[FaultProxy]:
    """A FaultProxy on 127.0.0.1 in front of a freshly reset moto server."""
    proxy = FaultProxy(moto_url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
