"""Loading a pool of deployments: failures are reported at once, and readiness is strict unless the
server was told to serve the rest."""

from __future__ import annotations

import asyncio
import gc

from inferline.backends.base import ModelMetadata
from inferline.config import RemoteDeploymentConfig
from inferline.errors import ModelNotFoundError
from inferline.router.deployments import DeploymentPool


class Loading:
    """A backend whose load succeeds, or fails as a missing model does."""

    def __init__(self, name: str, fails: bool) -> None:
        self.metadata = ModelMetadata(name=name, kind="llm")
        self.fails = fails

    async def load(self) -> None:
        if self.fails:
            raise ModelNotFoundError(f"{self.metadata.name}: no such model")


def pool_of(**fails: bool) -> DeploymentPool:
    configs = [RemoteDeploymentConfig(name=name, base_url="http://127.0.0.1:9/v1") for name in fails]
    return DeploymentPool(configs, [Loading(name, f) for name, f in fails.items()])  # type: ignore[misc]


def test_a_failure_is_reported_at_once_and_listed_with_its_cause() -> None:
    pool = pool_of(good=False, bad=True)
    assert pool.loading
    assert not pool.is_ready(allow_failed=False)
    assert not pool.is_ready(allow_failed=True)  # still loading
    calls: list[str] = []
    asyncio.run(pool.load_all(on_failure=lambda: calls.append("failed")))
    assert calls == ["failed"]
    assert not pool.loading
    assert pool.failed == {"bad": "bad: no such model"}
    assert not pool.is_ready(allow_failed=False)  # strict: every deployment must serve
    assert pool.is_ready(allow_failed=True)  # serve_rest: the one that loaded takes traffic


def test_serving_the_rest_needs_something_to_serve() -> None:
    pool = pool_of(bad=True, worse=True)
    asyncio.run(pool.load_all())
    assert set(pool.failed) == {"bad", "worse"}
    assert not pool.is_ready(allow_failed=True)


def test_what_the_models_loaded_is_kept_out_of_later_collections() -> None:
    # Loaded models hold ~300k long-lived objects: a full collection over them paused every request in
    # flight for ~190 ms, and walking them made a server's exit take seconds.
    pool = pool_of(good=False)
    loaded = [{"piece": i} for i in range(10_000)]  # what a vocabulary leaves behind
    asyncio.run(pool.load_all())
    assert gc.get_freeze_count() >= len(loaded)


def test_collection_resumes_once_the_models_have_loaded() -> None:
    # `inferline serve` turns the collector off for its start (it walked ~300k objects five times over,
    # half a second, to free nothing); a server that never turned it on again would leak every cycle.
    gc.disable()
    try:
        asyncio.run(pool_of(good=False, bad=True).load_all())
        assert gc.isenabled()
    finally:
        gc.enable()
