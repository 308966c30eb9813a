"""inferline: a self-hosted AI inference platform."""

from inferline.types import Priority, SamplingParams

__all__ = ["LLM", "AsyncEngine", "Priority", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The engine pulls in torch; importing it lazily keeps `import inferline` and the CLI's --help fast.
    if name == "LLM":
        from inferline.engine.llm import LLM

        return LLM
    if name == "AsyncEngine":
        from inferline.engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(f"module 'inferline' has no attribute {name!r}")
