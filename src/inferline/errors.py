"""Errors a caller can act on. Each names what was wrong, the limit, and how to fix it."""

from collections.abc import Iterator
from contextlib import contextmanager


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


class NotFoundError(InferlineError, LookupError):
    """A file or batch that does not exist, or that belongs to another tenant (the two look the same)."""


class ModelLoadError(InferlineError):
    """A model's files exist but cannot be turned into a runnable model."""


class BackendUnavailableError(InferlineError):
    """A deployment cannot serve right now (unreachable, timed out, upstream 429/5xx, stopped); another
    deployment may. The router falls back on these, and counts them against the circuit breaker."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStoppedError(InferlineError):
    """The engine is shutting down and takes no new requests; another deployment may."""


class LimitExceededError(InferlineError):
    """A quota or budget is used up. `scope` is who it belongs to ("tenant:alpha", "team:ml", "key:ci"),
    `limit` which one ("requests_per_minute", "tokens_per_minute", "max_concurrent", "budget")."""

    def __init__(self, message: str, scope: str, limit: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit
        self.retry_after_s = retry_after_s


class ModelNotReadyError(InferlineError):
    """The model exists but is still loading, failed to load, or every deployment behind it is down."""

    def __init__(self, message: str, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTooLongError(InvalidRequestError):
    """The prompt alone does not fit in the model's context (HTTP 413)."""


class MissingExtraError(InferlineError):
    """A feature needs a package that only one of inferline's extras installs."""


@contextmanager
def needs_extra(extra: str, package: str, feature: str) -> Iterator[None]:
    """Turn the import error of `package` (installed by the `extra` extra) inside the block into one that
    says what needs it and how to install it; any other missing module is a bug and stays as it is."""
    try:
        yield
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != package:
            raise
        raise MissingExtraError(
            f"{feature} needs the {package!r} package, which inferline's {extra!r} extra installs: "
            f"pip install 'inferline[{extra}]' (in a checkout: .venv/bin/pip install -e '.[{extra}]')"
        ) from None
