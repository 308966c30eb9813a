"""Stub upstreams and a real `inferline serve` routing between them, shared by a module's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import server  # noqa: F401  (the shared real-model server, as an upstream)


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubProcess]]:
    names = ("fast", "slow", "flaky", "bad")
    started = {name: start_stub("--reply", f"answer from {name}", "--tokens", "8") for name in names}
    yield started
    for stub in started.values():
        stub.stop()
