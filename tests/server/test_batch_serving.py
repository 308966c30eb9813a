"""How many batch lines the serving side keeps in flight when the config does not say."""

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter
from inferline.router.router import Router
from inferline.server.batch_serving import DEFAULT_WINDOW, ServingExecutor
from inferline.server.openai_serving import OpenAIServing


def executor_for(deployments: list[dict[str, object]]) -> ServingExecutor:
    config = ServerConfig.model_validate({"deployments": deployments})
    router = Router(config, DeploymentPool(config.deployments), Limiter.from_config(config))
    return ServingExecutor(OpenAIServing(router))


def test_a_batch_keeps_two_full_steps_of_its_largest_deployment_in_flight_within_its_queue() -> None:
    executor = executor_for(
        [
            {"name": "chat", "kind": "llm", "source": "default", "engine": {"max_num_seqs": 8}},
            {"name": "minilm", "kind": "embedding", "source": "all-minilm-l6-v2", "max_batch_size": 64},
            {
                "name": "short-queue",
                "kind": "llm",
                "source": "default",
                "engine": {"max_num_seqs": 48},
                "max_queued_requests": 50,
            },
            {"name": "upstream", "kind": "remote", "base_url": "http://127.0.0.1:9/v1"},
        ]
    )
    assert executor.window({"chat"}) == 16
    assert executor.window({"minilm"}) == 128
    assert executor.window({"chat", "minilm"}) == 128
    assert executor.window({"short-queue"}) == 50  # more would be refused with 429 and retried
    assert executor.window({"upstream"}) == DEFAULT_WINDOW
