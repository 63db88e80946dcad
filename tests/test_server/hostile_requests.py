"""An adversarial pass over the HTTP API: hostile requests on one kept-alive connection.

Not collected by pytest (run it by hand): ``python tests/test_server/hostile_requests.py``.
It serves a fresh index with the word-hash encoder under a real uvicorn in a
thread, sends every request below and a few hundred random ones over ONE
connection, and counts answers of 5xx, non-JSON error bodies and dropped
connections; it exits non-zero if any is found.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import tempfile
from pathlib import Path

from server_fakes import FAKE_DIM, WordHashEncoder, serve_in_thread

from server.app import create_app
from server.settings import Settings


def nested(depth: int, opener: str = "{") -> str:
    if opener == "{":
        return '{"a": ' * depth + "1" + "}" * depth
    return "[" * depth + "1" + "]" * depth


def doc(raw_document: str) -> str:
    return '{"documents": [' + raw_document + "]}"


def hostile() -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """(method, path, body, headers) of requests a hostile or careless client sends."""
    j = {"content-type": "application/json"}
    out: list[tuple[str, str, bytes | None, dict[str, str]]] = []
    for depth in (31, 32, 33, 64, 255, 256, 300, 600, 999, 1000, 5000, 100_000):
        for opener in "{[":
            meta = nested(depth, opener) if opener == "{" else '{"m": ' + nested(depth, "[") + "}"
            body = doc(f'{{"id": "deep{depth}{opener}", "text": "x", "metadata": {meta}}}')
            out.append(("POST", "/documents", body.encode(), j))
            out.append(("GET", f"/documents/deep{depth}{opener}", None, {}))
    big = [1e300, 3.5e38, -3.5e38, 3.4e38, 1e38, 1e-30, 1e-45, 1e-50, 5e-324, 0.0, -0.0]
    for value in big:
        vector = json.dumps([value] * FAKE_DIM).encode()
        out.append(("POST", "/search", b'{"vector": ' + vector + b"}", j))
        out.append(("POST", "/search", b'{"vector": ' + vector + b', "rescore": true}', j))
        body = (
            b'{"documents": [{"id": "v' + str(value).encode() + b'", "vector": ' + vector + b"}]}"
        )
        out.append(("POST", "/documents", body, j))
        out.append(("POST", "/search/batch", b'{"queries": [{"vector": ' + vector + b"}]}", j))
    for s in (r"\ud800", r"\udfff", r"\udc00x", r"x\ud83d", r"\ud83d\ude00", "\\u0000", "\\u2028"):
        out.append(
            (
                "POST",
                "/documents",
                doc(f'{{"id": "s", "text": "x", "metadata": {{"{s}": "{s}"}}}}').encode(),
                j,
            )
        )
        out.append(
            (
                "POST",
                "/documents",
                doc(f'{{"id": "{s}", "text": "{s}", "title": "{s}"}}').encode(),
                j,
            )
        )
        out.append(("POST", "/search", f'{{"query": "{s}", "filter": ["{s}"]}}'.encode(), j))
    for doc_id in (
        ".",
        "..",
        "...",
        "./a",
        "a\\\\b",
        "%2e%2e",
        "%2F",
        " ",
        "\\t",
        "a" * 256,
        "a" * 257,
    ):
        out.append(("POST", "/documents", doc(f'{{"id": "{doc_id}", "text": "x"}}').encode(), j))
    for path in (
        "/documents/..",
        "/documents/%2e%2e",
        "/documents/%2F",
        "/documents/%00",
        "/documents/%ED%A0%80",
        "/documents/" + "a" * 300,
        "/documents/a%0A",
        "/documents/.%2e/x",
        "//documents",
        "/documents/",
    ):
        for method in ("GET", "DELETE", "OPTIONS", "PUT", "HEAD", "PATCH"):
            out.append((method, path, None, {}))
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH", "GET"):
        for path in (
            "/search",
            "/search/batch",
            "/documents",
            "/snapshot",
            "/stats",
            "/ready",
            "/health",
            "/",
        ):
            out.append((method, path, None, {}))
    for body in (
        b"",
        b"null",
        b"[]",
        b"{}",
        b'"x"',
        b"1e999",
        b'{"query": 1}',
        b'{"query": null, "vector": null}',
        b'{"query": "x", "k": 1e10}',
        b'{"query": "x", "k": true}',
        b'{"vector": [true]}',
        b'{"vector": "abc"}',
        b'{"query": "x"' + b" " * 1000,
        b"\xff\xfe",
        b'{"query": "\xff"}',
        b'{"query": "x", "query": "y"}',
        b"[" * 100_000,
        b'{"a":' * 100_000,
    ):
        for path in ("/search", "/documents", "/search/batch"):
            out.append(("POST", path, body, j))
            out.append(("POST", path, body, {"content-type": "text/plain"}))
    for headers in (
        {"X-API-Key": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"X-API-Key": "\u00e9"},
    ):
        out.append(("POST", "/snapshot", None, headers))
    return out


def random_bodies(
    rng: random.Random, n: int
) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    atoms = [
        '"x"',
        "1",
        "-1",
        "1e308",
        "1e-320",
        "null",
        "true",
        "[]",
        "{}",
        '"\\ud800"',
        '" "',
        "0",
    ]
    keys = [
        "query",
        "vector",
        "k",
        "filter",
        "rescore",
        "with_text",
        "documents",
        "id",
        "text",
        "title",
        "metadata",
        "queries",
    ]

    def value(depth: int) -> str:
        r = rng.random()
        if depth > 4 or r < 0.5:
            return rng.choice(atoms)
        if r < 0.75:
            return "[" + ", ".join(value(depth + 1) for _ in range(rng.randint(0, 40))) + "]"
        items = (f'"{rng.choice(keys)}": {value(depth + 1)}' for _ in range(rng.randint(0, 4)))
        return "{" + ", ".join(items) + "}"

    paths = ["/search", "/search/batch", "/documents"]
    return [
        ("POST", rng.choice(paths), value(0).encode(), {"content-type": "application/json"})
        for _ in range(n)
    ]


def main() -> int:
    requests = hostile() + random_bodies(random.Random(0), 600)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(collection_dir=Path(tmp) / "index", fsync=False)
        app = create_app(settings, encoder=WordHashEncoder())
        with serve_in_thread(app) as url:
            port = int(url.rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            statuses: dict[int, int] = {}
            problems = []
            for method, path, body, headers in requests:
                try:
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    problems.append(f"connection lost after {method} {path}: {exc!r}")
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status >= 500:
                    problems.append(
                        f"{response.status} on {method} {path} {(body or b'')[:80]!r}: {data[:200]!r}"
                    )
                elif response.status >= 400 and method != "HEAD":
                    try:
                        assert json.loads(data)["error"]["message"]
                    except Exception:
                        problems.append(f"non-JSON error on {method} {path}: {data[:100]!r}")
                if (response.getheader("connection") or "").lower() == "close":
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    print(
        f"{len(requests)} requests; statuses {dict(sorted(statuses.items()))}; problems {len(problems)}"
    )
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
