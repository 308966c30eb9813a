"""Errors a caller can act on. Each names what was wrong, the limit, and how to fix it."""


class InferlineError(Exception):
    """Base class of every error inferline raises on purpose."""


class InvalidRequestError(InferlineError, ValueError):
    """The request itself is wrong; `param` names the offending field (OpenAI's error shape)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class QueueFullError(InferlineError):
    """A queue is at its configured limit; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotFoundError(InferlineError, LookupError):
    """No model with that name or path is known to the model store."""


class ModelLoadError(InferlineError):
    """A model's files exist but cannot be turned into a runnable model."""
