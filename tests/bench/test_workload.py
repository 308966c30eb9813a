"""Synthetic prompts (seeded, lengths in bounds) and JSONL datasets (bad lines named)."""

from pathlib import Path

import pytest

from inferline.bench.workload import (
    WORDS,
    BenchRequest,
    SyntheticSpec,
    check_endpoint,
    length_bounds,
    load_dataset,
    synthetic_requests,
    take,
)
from inferline.errors import InvalidRequestError

SPEC = SyntheticSpec(input_len=100, output_len=40, len_jitter=0.25, seed=7)


def test_same_seed_same_requests_other_seed_other_requests() -> None:
    assert synthetic_requests(SPEC, 20) == synthetic_requests(SPEC, 20)
    other = SyntheticSpec(100, 40, 0.25, seed=8)
    assert synthetic_requests(other, 20) != synthetic_requests(SPEC, 20)


def test_lengths_stay_within_the_jitter_bounds_and_spread_over_them() -> None:
    requests = synthetic_requests(SPEC, 500)
    input_lens = [len((r.prompt or "").split()) for r in requests]
    output_lens = [r.max_tokens for r in requests]
    assert length_bounds(100, 0.25) == (75, 125)
    assert min(input_lens) >= 75
    assert max(input_lens) <= 125
    assert min(input_lens) <= 78
    assert max(input_lens) >= 122
    assert all(o is not None and 30 <= o <= 50 for o in output_lens)
    assert all(r.messages is None for r in requests)


def test_no_jitter_gives_exact_lengths_from_the_word_list() -> None:
    requests = synthetic_requests(SyntheticSpec(16, 8, 0.0, seed=0), 5)
    for request in requests:
        words = (request.prompt or "").split()
        assert len(words) == 16
        assert set(words) <= set(WORDS)
        assert request.max_tokens == 8


def test_salt_changes_the_words_but_not_the_lengths() -> None:
    first, second = synthetic_requests(SPEC, 10, salt=1), synthetic_requests(SPEC, 10, salt=2)
    assert [r.max_tokens for r in first] == [r.max_tokens for r in second]
    assert [len((r.prompt or "").split()) for r in first] == [len((r.prompt or "").split()) for r in second]
    assert all(a.prompt != b.prompt for a, b in zip(first, second, strict=True))


def test_lengths_never_drop_below_one() -> None:
    assert length_bounds(1, 0.9) == (1, 2)


def test_chat_wraps_a_prompt_as_one_user_message() -> None:
    assert BenchRequest("hi", None, 4).chat_messages() == [{"role": "user", "content": "hi"}]


# ---- datasets ----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_dataset_reads_prompts_and_conversations(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"prompt": "Hello"}\n\n{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}\n',
    )
    requests = load_dataset(path, default_max_tokens=32)
    assert requests == [
        BenchRequest("Hello", None, 32),
        BenchRequest(None, [{"role": "user", "content": "Hi"}], 5),
    ]
    check_endpoint(requests, "chat")
    with pytest.raises(InvalidRequestError, match="--endpoint chat"):
        check_endpoint(requests, "completions")
    assert take(requests, 3) == [requests[0], requests[1], requests[0]]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": "cut', "data.jsonl:2: not valid JSON"),
        ('{"prompt": "ok"}\n["a list"]', "data.jsonl:2: expected an object"),
        ('{"text": "wrong key"}', "data.jsonl:1: expected an object"),
        ('{"prompt": "a", "messages": []}', "data.jsonl:1: expected an object"),
        ('{"prompt": ""}', 'data.jsonl:1: "prompt" must be a non-empty string'),
        ('\n\n{"messages": [{"role": "user"}]}', 'data.jsonl:3: "messages" must be'),
        ('{"prompt": "a", "max_tokens": 0}', 'data.jsonl:1: "max_tokens" must be a positive integer'),
        ('{"prompt": "a", "max_tokens": true}', 'data.jsonl:1: "max_tokens" must be a positive integer'),
        ("\n \n", "has no requests"),
    ],
)
def test_dataset_errors_name_the_line(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        load_dataset(write(tmp_path, lines), None)


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_dataset(tmp_path / "nope.jsonl", None)
