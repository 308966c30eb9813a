"""One real `inferline serve` for the bench tests: the default model with a 64 MiB KV cache."""

from collections.abc import Iterator

import pytest

from tests.server.conftest import ServerProcess, llm_deployment, start_server


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        {"deployments": [llm_deployment(kv_cache_bytes=64 << 20)]}, tmp_path_factory.mktemp("srv")
    )
    yield server
    server.stop()
