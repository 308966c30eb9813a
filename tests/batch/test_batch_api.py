"""The Files and Batches API of a real server, through the official openai client."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import EMBEDDING_MODEL, chat_line, jsonl, output_lines, upload, wait_for


def test_chat_batch_completes_with_one_output_line_per_custom_id(alpha: openai.OpenAI) -> None:
    lines = [chat_line(f"q{i}", f"Count to {i}.") for i in range(6)]
    file_id = upload(alpha, jsonl(lines))
    batch = alpha.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "t1"},
    )
    assert batch.status == "validating"
    done = wait_for(alpha, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 6
    assert done.request_counts.completed == 6
    assert done.metadata == {"job": "t1"}
    for stamp in (done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at):
        assert stamp is not None
    out = output_lines(alpha, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"q{i}" for i in range(6)]
    reply = out[0]["response"]
    assert reply["status_code"] == 200
    assert reply["body"]["object"] == "chat.completion"
    assert 1 <= reply["body"]["usage"]["completion_tokens"] <= 4
    assert output_lines(alpha, done.error_file_id) == []


def test_embeddings_batch(alpha: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "url": "/v1/embeddings",
            "method": "POST",
            "body": {"model": EMBEDDING_MODEL, "input": f"sentence number {i}"},
        }
        for i in range(10)
    ]
    batch = alpha.batches.create(
        input_file_id=upload(alpha, jsonl(lines)), endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_for(alpha, batch.id)
    assert done.status == "completed"
    out = output_lines(alpha, done.output_file_id)
    assert len(out) == 10
    assert len(out[0]["response"]["body"]["data"][0]["embedding"]) == 384


def test_validation_errors_name_their_lines(alpha: openai.OpenAI) -> None:
    lines = [
        jsonl([chat_line("a", "Hi")]),
        b"{not json\n",
        jsonl([chat_line("a", "Hi again")]),  # duplicate custom_id
        jsonl([{**chat_line("m", "Hi"), "body": {**chat_line("m", "Hi")["body"], "model": "no-such-model"}}]),
        jsonl([chat_line("ctx", "word " * 9000)]),  # the prompt alone is over the 8192-token context
        jsonl([chat_line("max", "Hi", max_tokens=100_000)]),
    ]
    batch = alpha.batches.create(
        input_file_id=upload(alpha, b"".join(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_for(alpha, batch.id)
    assert failed.status == "failed"
    assert failed.failed_at is not None
    errors = {e.line: e for e in failed.errors.data}
    assert errors[2].code == "invalid_json_line"
    assert errors[3].code == "duplicate_custom_id"
    assert errors[4].code == "model_not_found"
    assert "no-such-model" in errors[4].message
    assert errors[5].code == "context_length_exceeded"
    assert errors[6].param == "max_tokens"
    assert 1 not in errors
    assert all(e.message.startswith(f"line {n}:") for n, e in errors.items())


def test_budget_is_checked_against_the_worst_case_before_the_batch_starts(gamma: openai.OpenAI) -> None:
    # 30 lines x 8 tokens x $10/M = $0.0024 at worst, over gamma's $0.001
    lines = [chat_line(f"b{i}", "Hi", max_tokens=8) for i in range(30)]
    batch = gamma.batches.create(
        input_file_id=upload(gamma, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_for(gamma, batch.id)
    assert failed.status == "failed"
    (error,) = failed.errors.data
    assert error.code == "budget_exceeded"
    assert "$0.0024" in error.message
    assert "tenant 'gamma'" in error.message
    assert failed.output_file_id is None


def test_a_line_over_the_tokens_per_minute_quota_fails_the_batch_up_front(gamma: openai.OpenAI) -> None:
    lines = [chat_line("small", "Hi", max_tokens=8), chat_line("huge", "Hi", max_tokens=2000)]
    batch = gamma.batches.create(
        input_file_id=upload(gamma, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_for(gamma, batch.id)
    assert failed.status == "failed"
    (error,) = failed.errors.data
    assert error.code == "quota_exceeded"
    assert error.line == 2
    assert "tokens_per_minute quota of 1000" in error.message
    assert failed.output_file_id is None


def test_tenant_isolation(alpha: openai.OpenAI, beta: openai.OpenAI) -> None:
    file_id = upload(alpha, jsonl([chat_line("x", "Hi")]))
    batch = alpha.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        beta.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        beta.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        beta.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        beta.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):  # nor can beta run a batch on alpha's file
        beta.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert file_id not in {f.id for f in beta.files.list()}
    assert batch.id not in {b.id for b in beta.batches.list()}
    assert file_id in {f.id for f in alpha.files.list()}
    wait_for(alpha, batch.id)


def test_files_api_round_trip_and_limits(alpha: openai.OpenAI) -> None:
    data = jsonl([chat_line("x", "Hi")]).rstrip(b"\n")  # a last line without its newline is kept whole
    file_id = upload(alpha, data)
    info = alpha.files.retrieve(file_id)
    assert (info.bytes, info.purpose, info.filename) == (len(data), "batch", "input.jsonl")
    assert alpha.files.content(file_id).content == data
    assert alpha.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        alpha.files.retrieve(file_id)
    with pytest.raises(openai.APIStatusError) as too_large:
        upload(alpha, b"x" * (65 << 10))
    assert too_large.value.status_code == 413
    assert "batch.max_file_bytes" in too_large.value.message


def test_cancel_keeps_finished_lines(alpha: openai.OpenAI) -> None:
    lines = [
        chat_line(f"c{i}", f"Tell a story number {i}.", max_tokens=8, ignore_eos=True) for i in range(200)
    ]
    batch = alpha.batches.create(
        input_file_id=upload(alpha, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    running = wait_for(alpha, batch.id, ("in_progress",))
    deadline = time.monotonic() + 60
    while not output_lines(alpha, running.output_file_id) and time.monotonic() < deadline:
        time.sleep(0.2)  # partial output is downloadable while the batch runs
    partial = output_lines(alpha, running.output_file_id)
    assert partial
    assert alpha.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    cancelled = wait_for(alpha, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelling_at is not None
    assert cancelled.cancelled_at is not None
    kept = output_lines(alpha, cancelled.output_file_id)
    assert len(partial) <= len(kept) < 200
    assert cancelled.request_counts.completed == len(kept)
    assert len({k["custom_id"] for k in kept}) == len(kept)


def test_expired_batch_keeps_what_it_finished(alpha: openai.OpenAI) -> None:
    lines = [chat_line(f"x{i}", f"Story {i}:", max_tokens=8, ignore_eos=True) for i in range(150)]
    batch = alpha.batches.create(
        input_file_id=upload(alpha, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="3s",  # type: ignore[arg-type]  # the client's type knows only 24h
    )
    expired = wait_for(alpha, batch.id)
    assert expired.status == "expired"
    assert expired.expired_at is not None
    kept = output_lines(alpha, expired.output_file_id)
    assert len(kept) == expired.request_counts.completed < 150


def test_carbon_aware_batch_waits_for_the_clean_window(alpha: openai.OpenAI) -> None:
    # the fixture's forecast: 500 g/kWh now, 100 g/kWh from +1 h to +2 h; 2 lines at 1 line/s
    lines = [chat_line(f"g{i}", "Hi") for i in range(2)]
    deadline = int(time.time()) + 3 * 3600
    batch = alpha.batches.create(
        input_file_id=upload(alpha, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"carbon_aware": "true", "deadline": str(deadline)},
    )
    waiting = wait_for(alpha, batch.id, ("in_progress", "failed", "completed"))
    carbon = waiting.model_extra["carbon"]
    assert waiting.status == "in_progress"
    assert waiting.in_progress_at is None  # not started: waiting for its window
    assert carbon["intensity_gco2e_per_kwh"] == 100
    assert carbon["at_once_intensity_gco2e_per_kwh"] == 500
    assert 3000 <= carbon["window_start"] - time.time() <= 3600
    assert carbon["estimated_gco2e"] == pytest.approx(carbon["at_once_gco2e"] / 5)
    assert alpha.batches.cancel(batch.id)
    assert wait_for(alpha, batch.id).status == "cancelled"


def test_carbon_aware_batch_with_a_near_deadline_runs_at_once(alpha: openai.OpenAI) -> None:
    batch = alpha.batches.create(
        input_file_id=upload(alpha, jsonl([chat_line("n", "Hi")])),
        endpoint="/v1/chat/completions",
        completion_window="30m",
        metadata={"carbon_aware": "true"},
    )
    done = wait_for(alpha, batch.id)
    assert done.status == "completed"
    carbon = done.model_extra["carbon"]
    assert "started at once" in carbon["note"]
    assert carbon["measured_cpu_s"] > 0
    assert carbon["measured_gco2e"] > 0


def test_unknown_endpoint_and_window_are_400(alpha: openai.OpenAI) -> None:
    file_id = upload(alpha, jsonl([chat_line("x", "Hi")]))
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        alpha.batches.create(input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        alpha.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="soon")  # type: ignore[arg-type]
