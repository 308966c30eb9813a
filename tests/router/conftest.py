"""Stub upstreams shared by a module's tests (the real-model upstream is tests/conftest.py's `server`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inferline.testing.stub_upstream import StubProcess, start_stub


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubProcess]]:
    names = ("fast", "slow", "flaky", "bad")
    started = {name: start_stub("--reply", f"answer from {name}", "--tokens", "8") for name in names}
    yield started
    for stub in started.values():
        stub.stop()
