"""The telemetry outbox and uploader against a real registry server on loopback: nothing lost while the
registry is down or across a restart, nothing duplicated after a lost acknowledgement, the bound drops the
oldest first and says how many."""

import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from inferline.bench.harness import free_port
from inferline.edge.outbox import Outbox, OutboxError, OutboxWriter, Uploader
from inferline.registry.dataset import Dataset
from inferline.registry.tuf_repo import TufRepository
from inferline.registry.tuf_serve import RepositoryServer, start_repository_server

DEVICE = "robot-7"


def _record(i: int, version: str = "1.0.0", kind: str = "usage") -> dict[str, Any]:
    return {"kind": kind, "model": "classifier", "model_version": version, "ts": 1_700_000_000.0 + i, "i": i}


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return TufRepository.create(
        tmp_path / "repo", tmp_path / "keys", num_root_keys=1, root_threshold=1
    ).repo_dir


@pytest.fixture
def dataset(tmp_path: Path) -> Iterator[Dataset]:
    with Dataset(f"sqlite:///{tmp_path / 'registry.db'}") as dataset:
        yield dataset


@pytest.fixture
def registry(repo_dir: Path, dataset: Dataset) -> Iterator[RepositoryServer]:
    server = start_repository_server(repo_dir, dataset=dataset)
    yield server
    server.close()


def _stored(dataset: Dataset) -> list[tuple[str, int, str]]:
    return [(r.device_id, r.payload["i"], r.model_version) for r in dataset.records()]


def test_records_queued_while_the_registry_is_down_survive_a_restart_and_all_arrive(
    tmp_path: Path, repo_dir: Path, dataset: Dataset
) -> None:
    port = free_port()
    outbox = Outbox(tmp_path / "outbox.db", max_records=1000)
    uploader = Uploader(outbox, f"http://127.0.0.1:{port}", DEVICE, batch_size=7, interval_s=0.05)
    for i in range(20):
        outbox.append(_record(i, version="1.0.0" if i < 10 else "1.1.0"))
    assert uploader.upload_once() == 0
    assert uploader.last_error is not None
    assert f"127.0.0.1:{port}" in uploader.last_error
    outbox.close()

    # The agent restarts (same file), queues more while still offline, then the registry comes back.
    outbox = Outbox(tmp_path / "outbox.db", max_records=1000)
    assert len(outbox) == 20
    outbox.append(_record(20, version="1.1.0", kind="flagged"))
    uploader = Uploader(outbox, f"http://127.0.0.1:{port}", DEVICE, batch_size=7, interval_s=0.05)
    server = start_repository_server(repo_dir, port=port, dataset=dataset)
    try:
        uploader.start()
        deadline = time.monotonic() + 10
        while len(outbox) and time.monotonic() < deadline:
            time.sleep(0.02)
        uploader.stop()
    finally:
        server.close()
    assert len(outbox) == 0
    assert uploader.last_error is None
    expected = [(DEVICE, i, "1.0.0" if i < 10 else "1.1.0") for i in range(21)]
    assert _stored(dataset) == expected
    assert [r.kind for r in dataset.records()][-1] == "flagged"
    outbox.close()


class _AckLosingProxy(BaseHTTPRequestHandler):
    """Forwards an upload to the registry, which stores it, then hangs up before answering."""

    upstream = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = urllib.request.Request(self.upstream + self.path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_batch_resent_after_a_lost_acknowledgement_is_stored_once(
    tmp_path: Path, registry: RepositoryServer, dataset: Dataset
) -> None:
    proxy_handler = type("Proxy", (_AckLosingProxy,), {"upstream": registry.url})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), proxy_handler)
    Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    outbox = Outbox(tmp_path / "outbox.db", max_records=100)
    for i in range(12):
        outbox.append(_record(i))
    try:
        lossy = Uploader(outbox, f"http://127.0.0.1:{proxy.server_address[1]}", DEVICE, batch_size=5)
        assert lossy.upload_once() == 0
    finally:
        proxy.shutdown()
        proxy.server_close()
    # The registry has the first batch, the device does not know it: all 12 stay queued.
    assert len(outbox) == 12
    assert len(_stored(dataset)) == 5

    assert Uploader(outbox, registry.url, DEVICE, batch_size=5).upload_once() == 12
    assert len(outbox) == 0
    assert _stored(dataset) == [(DEVICE, i, "1.0.0") for i in range(12)]
    outbox.close()


def test_a_full_outbox_drops_the_oldest_and_reports_the_count(
    tmp_path: Path, registry: RepositoryServer, dataset: Dataset
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_records=5)
    for i in range(8):
        outbox.append(_record(i))
    outbox.close()
    outbox = Outbox(tmp_path / "outbox.db", max_records=5)
    assert (len(outbox), outbox.num_dropped) == (5, 3)

    assert Uploader(outbox, registry.url, DEVICE).upload_once() == 5
    assert [i for _, i, _ in _stored(dataset)] == [3, 4, 5, 6, 7]
    assert dataset.dropped_counts() == {DEVICE: 3}
    # The count is a running total: later drops add to it, and the registry keeps the latest.
    for i in range(8, 15):
        outbox.append(_record(i))
    assert Uploader(outbox, registry.url, DEVICE).upload_once() == 5
    assert dataset.dropped_counts() == {DEVICE: 5}
    outbox.close()


def test_sequence_numbers_are_not_reused_when_the_queue_file_is_recreated(
    tmp_path: Path, registry: RepositoryServer, dataset: Dataset
) -> None:
    path = tmp_path / "outbox.db"
    for i in range(2):
        outbox = Outbox(path, max_records=10)
        outbox.append(_record(i))
        assert Uploader(outbox, registry.url, DEVICE).upload_once() == 1
        outbox.close()
        for leftover in tmp_path.glob("outbox.db*"):
            leftover.unlink()
    assert [i for _, i, _ in _stored(dataset)] == [0, 1]


def test_a_record_the_registry_would_refuse_is_refused_when_queued(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_records=10)
    with pytest.raises(OutboxError, match=r"'kind'.*usage or flagged"):
        outbox.append({**_record(0), "kind": "metrics"})
    with pytest.raises(OutboxError, match="'model_version'"):
        outbox.append({k: v for k, v in _record(0).items() if k != "model_version"})
    with pytest.raises(OutboxError, match="not JSON-serialisable"):
        outbox.append({**_record(0), "blob": object()})
    assert len(outbox) == 0
    outbox.close()
    with pytest.raises(OutboxError, match="at least 1 record"):
        Outbox(tmp_path / "other.db", max_records=0)


def test_a_refused_upload_keeps_the_records_and_says_why(tmp_path: Path, repo_dir: Path) -> None:
    # A repository server started without a dataset takes no uploads.
    server = start_repository_server(repo_dir)
    outbox = Outbox(tmp_path / "outbox.db", max_records=10)
    outbox.append(_record(0))
    try:
        uploader = Uploader(outbox, server.url, DEVICE)
        assert uploader.upload_once() == 0
    finally:
        server.close()
    assert len(outbox) == 1
    assert uploader.last_error is not None
    assert "HTTP 404" in uploader.last_error
    assert json.loads(uploader.last_error.split("HTTP 404 ", 1)[1])["error"] == (
        "this repository server takes no telemetry uploads"
    )
    outbox.close()


def test_the_writer_hands_records_over_without_waiting_and_keeps_their_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_records=1000)
    writer = OutboxWriter(outbox)
    # Another connection holds the file's write lock, as a slow disk or a busy uploader would.
    blocker = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    started = time.perf_counter()
    futures = [writer.submit(_record(i)) for i in range(100)]
    refused = writer.submit({**_record(100), "kind": "metrics"})
    futures += [writer.submit(_record(i)) for i in range(101, 200)]
    assert time.perf_counter() - started < 1.0  # the caller (the event loop) never waited on the lock
    time.sleep(0.2)
    assert not futures[0].done()
    blocker.execute("COMMIT")
    blocker.close()
    writer.close()

    assert all(future.done() and future.exception() is None for future in futures)
    assert isinstance(refused.exception(), OutboxError)
    assert "telemetry record not queued: telemetry record field 'kind'" in caplog.text
    queued = outbox.peek(1000).records
    assert [record["i"] for record in queued] == [*range(100), *range(101, 200)]
    assert [record["seq"] for record in queued] == sorted(record["seq"] for record in queued)
    outbox.close()
