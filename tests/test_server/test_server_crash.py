"""A real server process killed with SIGKILL loses no acknowledged write and shows no half batch.

One directory, one server restarted after each kill, three kills:

1. during a stream of writes (3 clients, batches of 3 documents);
2. during snapshots (``POST /snapshot`` in a loop, plus background snapshots
   every 40 documents): the kill is sent while a ``/snapshot`` is in flight;
3. during compaction: deletes of more than 25% of the rows (each past that
   point starts a background compaction in the index), with writes and
   snapshots still going.

After each kill the exact files left are copied and opened with
``Collection.open(...).check()`` (SQLite and the index agree row for row), and
the restarted server is checked against the ledger of acknowledged writes
(:func:`server_procs.verify`). Every write is ``fsync``ed: this is the real
durability path.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
from server_procs import Ledger, ServerProcess, crash_image, verify, writer

from binsearch import Collection


class Snapshotter:
    """``POST /snapshot`` in a loop; knows whether one is in flight."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        self.url, self.stop = url, stop
        self.in_flight = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                self.in_flight.set()
                try:
                    r = client.post("/snapshot")
                except httpx.TransportError:
                    return  # killed mid-snapshot
                self.in_flight.clear()
                assert r.status_code == 200, r.text
                self.done += 1
                time.sleep(0.02)


def deleter(url: str, ledger: Ledger, victims: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for doc_id in victims:
            if stop.is_set():
                return
            with ledger.lock:
                ledger.deleting.add(doc_id)
            try:
                r = client.delete(f"/documents/{doc_id}")
            except httpx.TransportError:
                return  # in flight at the kill: either outcome is allowed
            assert r.status_code == 200, r.text
            with ledger.lock:
                ledger.deleting.discard(doc_id)
                ledger.deleted.add(doc_id)


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the workload did not get there in time"
        time.sleep(0.005)


def test_sigkill_during_writes_snapshots_and_compaction(tmp_path):
    directory = tmp_path / "collection"
    Collection.create(directory, "residual", 2, model=None, dim=384).close()
    log = tmp_path / "server.log"
    server = ServerProcess(directory, log, env={"BINSEARCH_SNAPSHOT_EVERY": "40"})
    ledger = Ledger()
    checked = 0

    def round_(name: str, workload) -> None:
        nonlocal checked
        server.start().wait_ready()
        if ledger.issued:  # the restart after the previous kill
            checked += verify(server.url, ledger)
        stop = threading.Event()
        threads = [
            threading.Thread(target=writer, args=(server.url, f"{name}{n}", ledger, stop))
            for n in range(3)
        ]
        for t in threads:
            t.start()
        extra = workload(stop)
        server.kill()  # mid-stream: the clients are still sending
        stop.set()
        for t in threads + extra:
            t.join(30)
        # The files exactly as the kill left them: SQLite and the index agree.
        with Collection.open(crash_image(directory, tmp_path / f"image-{name}")) as c:
            assert c.check()["ok"]
            assert all(c.get(i) is not None for i in ledger.live_acked())

    def writes(stop: threading.Event) -> list[threading.Thread]:
        start = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) >= start + 30)
        return []

    def snapshots(stop: threading.Event) -> list[threading.Thread]:
        start = len(ledger.acked)
        snap = Snapshotter(server.url, stop)
        snap.thread.start()
        wait_until(lambda: snap.done >= 3 and len(ledger.acked) >= start + 20)
        wait_until(snap.in_flight.is_set)
        return [snap.thread]

    def compaction(stop: threading.Event) -> list[threading.Thread]:
        victims = ledger.live_acked()[::2]  # half the rows: past 25% dead, compactions start
        snap = Snapshotter(server.url, stop)
        dels = [
            threading.Thread(target=deleter, args=(server.url, ledger, victims[n::2], stop))
            for n in range(2)
        ]
        for t in [snap.thread, *dels]:
            t.start()
        wait_until(lambda: len(ledger.deleted) >= 0.4 * len(victims) * 2)
        return [snap.thread, *dels]

    try:
        round_("w", writes)
        round_("s", snapshots)
        round_("c", compaction)
        server.start().wait_ready()
        checked += verify(server.url, ledger)
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
        assert server.stop() in (0, -signal.SIGTERM)
    finally:
        server.kill()
    with Collection.open(directory) as c:  # the shutdown snapshot folded the journal in
        assert c.replayed == 0 and c.store.pending_changes() == 0
        assert c.check() == {"documents": len(c), "ok": True}
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    snapshots = [e for e in events if e.get("route") == "/snapshot" and e.get("status") == 200]
    assert len(snapshots) >= 6
    assert [e.get("event") for e in events if "event" in e][-1] == "stopped"
    assert len(ledger.deleted) >= 40 and checked >= 300, (len(ledger.deleted), checked)
    print(f"\nSIGKILL x3: {checked} acknowledged writes checked after restarts")
