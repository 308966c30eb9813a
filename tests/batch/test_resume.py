"""`kill -9` of the server mid-batch, then a restart: the batch finishes with every custom_id once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import openai

from tests.server.conftest import API_KEY, start_server

from .conftest import batch_config, chat_line, jsonl, output_lines, upload, wait_for

NUM_LINES = 30


def test_batch_resumes_after_kill_with_each_custom_id_exactly_once(tmp_path: Path) -> None:
    config = batch_config(tmp_path, max_in_flight_lines=4)
    config["deployments"] = config["deployments"][:1]  # the chat model alone: two starts, no embeddings
    server = start_server(config, tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        lines = [chat_line(f"r{i}", f"Story {i}:", max_tokens=8, ignore_eos=True) for i in range(NUM_LINES)]
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        running = wait_for(client, batch.id, ("in_progress",))
        deadline = time.monotonic() + 60
        while len(output_lines(client, running.output_file_id)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        server.process.kill()  # SIGKILL: no drain, no shutdown hooks
        server.process.wait()
        output_path = tmp_path / "data" / "files" / str(running.output_file_id)
        num_done_before = len(output_path.read_bytes().splitlines())
        assert 4 <= num_done_before < NUM_LINES  # killed mid-run
    finally:
        server.stop()
    restarted = start_server(config, tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{restarted.url}/v1", api_key=API_KEY, max_retries=0)
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        custom_ids = [line["custom_id"] for line in output_lines(client, done.output_file_id)]
        assert sorted(custom_ids) == sorted(f"r{i}" for i in range(NUM_LINES))
        assert done.request_counts.completed == NUM_LINES
    finally:
        restarted.stop()
    # lines are metered as batch requests of their tenant: every one run after the restart (the usage
    # writer's last second before a kill -9 is lost with the process, as for online requests)
    with sqlite3.connect(tmp_path / "inferline.db") as db:
        rows = db.execute(
            "SELECT COUNT(DISTINCT request_id), MIN(tenant), MAX(tenant) FROM usage_records "
            "WHERE batch_id = ?",
            (batch.id,),
        ).fetchone()
    assert rows[0] >= NUM_LINES - num_done_before
    assert rows[1:] == ("alpha", "alpha")
