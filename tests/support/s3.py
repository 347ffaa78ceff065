"""S3 for tests: moto's server mode on 127.0.0.1 (real HTTP, driven only through boto3) and a fault proxy.

Fixtures:
- `moto_endpoint` (session): the moto server's URL; the bucket `BUCKET` exists.
- `s3_env` (function): sets the AWS environment (fake credentials, region, AWS_ENDPOINT_URL) for the test
  and for the subprocesses it starts; returns the variables set.
- `s3_root` (function): a fresh, empty `s3://BUCKET/<unique-prefix>` root (with `s3_env` applied).
- `s3_faults` (function): a FaultProxy in front of moto; AWS_ENDPOINT_URL points at it for the test and
  its subprocesses, so every request of the test can be failed on demand. Use it with `s3_root`.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import logging
import random
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

BUCKET = "tunewright-test"
ACCESS_KEY = "AKIATUNEWRIGHTTEST01"
SECRET_KEY = "tunewright-test-secret-never-logged-0123"
REGION = "us-east-1"


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }


_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = aws_env(moto_endpoint)
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_root(s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3_faults(moto_endpoint: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    s3_env["AWS_ENDPOINT_URL"] = proxy.endpoint
    yield proxy
    proxy.close()


# -- the fault proxy ---------------------------------------------------------------------------------------

# Kinds of fault: an S3 error response, a dropped connection ("reset": RST after reading the request),
# "truncate" (forward, then cut the response body in half and reset), "stall" (hold the request until the
# proxy is healed or closed, then forward), "bad-etag" (forward, but report a wrong ETag), "lost" (forward,
# so the server acts on the request, then reset instead of answering: the client cannot tell it happened).
ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
KINDS = (*ERRORS, "reset", "truncate", "stall", "bad-etag", "lost")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "te", "trailer", "upgrade",
               "proxy-connection", "content-length"}


@dataclass
class _Rule:
    method: str | None
    path: str | None
    next_kind: Callable[[], str | None]  # None: this rule is used up

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or method == self.method) and (self.path is None or self.path in path)


class FaultProxy:
    """A threaded HTTP proxy in front of an S3 endpoint that fails chosen requests.

    Rules are consulted newest first; the first matching rule that is not used up decides ("ok" forwards
    the request untouched). `method` matches the HTTP method exactly, `path` is a substring
    of the request path (`/<bucket>/<key>?query`). Every decision is kept in `log` as (method, path, kind).
    """

    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.log: list[tuple[str, str, str]] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.stalled = threading.Event()  # set once a request is being held by a "stall" fault
        self.latency = 0.0  # seconds added to every request, as a slow or distant store would
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.proxy = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="s3-fault-proxy",
                                        daemon=True)
        self._thread.start()

    def fail_next(self, *kinds: str, method: str | None = None, path: str | None = None) -> None:
        """The next len(kinds) matching requests get these faults, in order."""
        self._add(iter(_checked(kinds)), method, path)

    def fail_fraction(self, fraction: float, kinds: tuple[str, ...] = ("500", "503", "reset"), *,
                      method: str | None = None, path: str | None = None, seed: int = 0) -> None:
        """Each matching request fails with probability `fraction`, with a kind drawn from `kinds`."""
        rng = random.Random(seed)
        _checked(kinds)
        self._add((rng.choice(kinds) if rng.random() < fraction else "ok" for _ in itertools.count()),
                  method, path)

    def fail_always(self, kind: str, *, method: str | None = None, path: str | None = None) -> None:
        self._add(itertools.repeat(_checked([kind])[0]), method, path)

    def fail_for(self, seconds: float, kind: str, *, method: str | None = None, path: str | None = None) -> None:
        """Every matching request fails with `kind` for the next `seconds`; then the rule is used up."""
        deadline = time.monotonic() + seconds
        self._add(itertools.takewhile(lambda _: time.monotonic() < deadline, itertools.repeat(_checked([kind])[0])),
                  method, path)

    def heal(self) -> None:
        """Drop every rule and let stalled requests through."""
        with self._lock:
            self._rules.clear()
        self._released.set()

    def injected(self, kind: str | None = None) -> list[tuple[str, str, str]]:
        """The requests that got a fault (of `kind`, if given)."""
        with self._lock:
            return [e for e in self.log if e[2] != "ok" and (kind is None or e[2] == kind)]

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def _add(self, kinds: Iterator[str], method: str | None, path: str | None) -> None:
        with self._lock:
            self._rules.append(_Rule(method, path, lambda: next(kinds, None)))

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            kind = "ok"
            for rule in reversed(self._rules):  # the newest rule first: it refines the older ones
                if rule.matches(method, path) and (chosen := rule.next_kind()) is not None:
                    kind = chosen
                    break
            self.log.append((method, path, kind))
            return kind

    def _hold(self) -> None:
        self.stalled.set()
        self._released.wait(60)

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
            if body or method in ("PUT", "POST"):
                sent.append(("Content-Length", str(len(body))))
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in sent:
                conn.putheader(key, value)
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()


def _checked(kinds: tuple[str, ...] | list[str]) -> list[str]:
    unknown = [k for k in kinds if k not in (*KINDS, "ok")]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known: {', '.join(KINDS)}, ok")
    return list(kinds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up; so do injected resets
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's Expect header
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        time.sleep(proxy.latency)
        kind = proxy._decide(self.command, self.path)
        if kind == "reset":
            self._reset()
            return
        if kind in ERRORS:
            self._error(*ERRORS[kind])
            return
        if kind == "stall":
            proxy._hold()
        status, headers, data = proxy._forward(self.command, self.path, list(self.headers.items()), body)
        if kind == "lost":
            self._reset()
            return
        self.send_response(status)
        for key, value in headers:
            if key.lower() == "etag" and kind == "bad-etag":
                value = '"00000000000000000000000000000000"'
            if key.lower() not in _HOP_BY_HOP or (key.lower() == "content-length" and self.command == "HEAD"):
                self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self._reset()
            return
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                f"</Message><RequestId>injected</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, as a crashed server or a load balancer would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
