"""Bad input gets a clear 4xx in OpenAI's error shape: never a 500, never a hang."""

import httpx
import openai
import pytest

from .conftest import API_KEY, OTHER_KEY, ServerProcess

AUTH = {"authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
GOOD_MESSAGES = [{"role": "user", "content": "hi"}]


def post(
    server: ServerProcess, path: str, body: object = None, content: bytes | None = None, **headers: str
) -> httpx.Response:
    merged = {**AUTH, "content-type": "application/json", **headers}
    return httpx.post(f"{server.url}{path}", json=body, content=content, headers=merged, timeout=60)


def assert_error(response: httpx.Response, status: int, param: str | None = None, says: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    if param is not None:
        assert error["param"] == param
    assert says.lower() in error["message"].lower()


def test_missing_and_wrong_keys_are_401(server: ServerProcess) -> None:
    no_key = httpx.post(f"{server.url}{CHAT}", json={"model": "default", "messages": GOOD_MESSAGES})
    assert_error(no_key, 401, says="missing API key")
    wrong = post(
        server, CHAT, {"model": "default", "messages": GOOD_MESSAGES}, authorization="Bearer sk-nope"
    )
    assert_error(wrong, 401, says="invalid API key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-nope", max_retries=0).models.list()
    other_tenant = post(
        server,
        "/v1/completions",
        {"model": "default", "prompt": "Hi", "max_tokens": 1},
        authorization=f"Bearer {OTHER_KEY}",
    )
    assert other_tenant.status_code == 200


def test_unknown_model_is_404_listing_the_served_ones(server: ServerProcess) -> None:
    assert_error(
        post(server, CHAT, {"model": "gpt-9", "messages": GOOD_MESSAGES}),
        404,
        "model",
        "smollm2-135m-instruct",
    )


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (
            {"model": "default", "messages": GOOD_MESSAGES, "logit_bias": {"1": 5}},
            "logit_bias",
            "not supported",
        ),
        (
            {
                "model": "default",
                "messages": GOOD_MESSAGES,
                "tools": [{"type": "function", "function": {"name": "a b"}}],
            },
            "tools[0].function.name",
            "function name",
        ),
        ({"model": "default", "messages": GOOD_MESSAGES, "temperature": -0.5}, "temperature", "temperature"),
        ({"model": "default", "messages": GOOD_MESSAGES, "top_p": 0}, "top_p", "top_p"),
        ({"model": "default", "messages": GOOD_MESSAGES, "max_tokens": 0}, "max_tokens", ""),
        ({"model": "default", "messages": GOOD_MESSAGES, "max_tokens": 10**30}, "max_tokens", ""),
        ({"model": "default", "messages": GOOD_MESSAGES, "temperature": 1e308}, "temperature", ""),
        ({"model": "default", "messages": GOOD_MESSAGES, "n": "two"}, "n", ""),
        ({"model": "default", "messages": "hello"}, "messages", ""),
        ({"model": "default", "messages": []}, "messages", ""),
        ({"model": "default", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", ""),
        ({"messages": GOOD_MESSAGES}, "model", "required"),
        ({"model": "default", "messages": GOOD_MESSAGES, "seed": 2**70}, "seed", ""),
        ({"model": "default", "messages": GOOD_MESSAGES, "priority": "vip"}, "priority", ""),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    server: ServerProcess, body: dict, param: str, says: str
) -> None:
    assert_error(post(server, CHAT, body), 400, param, says)


def test_malformed_bodies_are_400(server: ServerProcess) -> None:
    assert_error(
        post(server, CHAT, content=b'{"model": "default", "messages": ['), 400, says="not valid JSON"
    )
    assert_error(post(server, CHAT, content=b'{"model": "\xff\xfe", "messages": []}'), 400, says="UTF-8")
    assert_error(post(server, CHAT, content=b"[1, 2, 3]"), 400)
    assert_error(post(server, CHAT, content=b"\xff\xfe"), 400, says="not valid JSON")
    assert_error(post(server, CHAT, content=b""), 400)


def test_oversized_body_is_413(server: ServerProcess) -> None:
    huge = b'{"model": "default", "prompt": "' + b"a" * (5 << 20) + b'"}'
    assert_error(post(server, "/v1/completions", content=huge), 413, says="max_body_bytes")


def test_prompt_longer_than_the_context_is_413(server: ServerProcess) -> None:
    long_prompt = "hello " * 9000
    assert_error(
        post(server, "/v1/completions", {"model": "default", "prompt": long_prompt}), 413, "prompt", "context"
    )


def test_embedding_model_cannot_chat_and_chat_model_cannot_embed(server: ServerProcess) -> None:
    assert_error(
        post(server, "/v1/embeddings", {"model": "default", "input": "hi"}), 400, "model", "not embeddings"
    )


def test_server_still_serves_after_all_that(server: ServerProcess) -> None:
    ok = post(server, "/v1/completions", {"model": "default", "prompt": "Hello", "max_tokens": 2})
    assert ok.status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="500"' not in metrics
