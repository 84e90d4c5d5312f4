"""A small error hierarchy, translated once at each edge (HTTP status, CLI exit code)."""


class NewsrankError(Exception):
    """Base class for every error newsrank raises on purpose."""


class InvalidInput(NewsrankError):
    """The caller sent something newsrank cannot use (bad event type, malformed row, bad setting)."""


class NotFound(NewsrankError):
    """A user, article, ranking or adapter that newsrank does not know."""


class EmptyStore(NewsrankError):
    """No articles to rank yet."""


class BackendError(NewsrankError):
    """The LLM backend failed or is not installed."""


class MissingDependency(BackendError):
    """An optional heavy dependency is not installed."""


def require(module: str, install_hint: str):
    """Import a heavy module lazily, failing with an install hint instead of a bare ImportError."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"{module} is not installed: {install_hint}") from exc


class Conflict(NewsrankError):
    """The request clashes with the current state (a training job is already running)."""


class StoreUnavailable(NewsrankError):
    """A store (the database, the Chroma server) did not answer; try again later."""


class RateLimited(NewsrankError):
    """Too many requests of one kind (a reader's events): try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def model_failure(exc: BaseException) -> bool:
    """The model failed (a backend error, or anything that is not newsrank's own answer to bad input, like a
    NotFound for an adapter the request named): what can go on without the model should."""
    return isinstance(exc, BackendError) or not isinstance(exc, NewsrankError)
