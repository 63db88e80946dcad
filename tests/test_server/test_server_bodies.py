"""Issue 23, fault 7: request bodies that lie about their length, or are far too long.

On a real ``binsearch serve`` process (raw sockets and a streaming client):
a ``Content-Length`` larger than the body sent used to hang until the client
gave up (no server-side read timeout); a huge chunked body got a connection
reset instead of the 413 the limit promises.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from server_procs import ServerProcess

from binsearch import Collection


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bodies")
    Collection.create(root / "index", "residual", 2, model=None, dim=384).close()
    env = {"BINSEARCH_BODY_TIMEOUT_S": "1"}
    proc = ServerProcess(root / "index", root / "server.log", env).start()
    proc.wait_ready()
    yield proc
    proc.stop()


def test_a_body_shorter_than_its_content_length_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"k": 1'
        )
        started = time.monotonic()
        answer = sock.recv(4096)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert waited < 15  # the server's timeout (1 s here), not the client's
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.parametrize("megabytes", [30])
def test_a_huge_chunked_body_gets_413_not_a_reset(server, megabytes):
    def chunks():
        block = b"x" * (1 << 20)
        for _ in range(megabytes):
            yield block

    response = httpx.post(
        f"{server.url}/documents",
        content=chunks(),  # a generator: sent chunked, with no Content-Length
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert "larger than" in response.text


def test_a_huge_declared_body_gets_413_not_a_reset(server):
    body = b"x" * (30 << 20)
    response = httpx.post(
        f"{server.url}/documents",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413, response.text


def send_chunked(port: int, megabytes: int) -> bytes:
    """POST ``megabytes`` MiB as a chunked body over a raw socket, then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            b"POST /documents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        block = b"x" * (1 << 20)
        chunk = b"%x\r\n" % len(block) + block + b"\r\n"
        for _ in range(megabytes):
            sock.sendall(chunk)  # a reset here is the fault: the client never hears why
        sock.sendall(b"0\r\n\r\n")
        return sock.recv(4096)


def test_a_100_mb_chunked_body_over_a_raw_socket_gets_413(server):
    answer = send_chunked(server.port, 100)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
