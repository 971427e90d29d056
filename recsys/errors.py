"""The project's exceptions, one hierarchy: what the client got wrong, what is unavailable, what
failed inside a stage (the pipeline degrades), and what is wrong with models or data.

The HTTP edge (serving/errors.py) maps the first two to 4xx and 503; a stage error never reaches
a client, because the pipeline catches it and falls back.
"""
from __future__ import annotations


class RecsysError(Exception):
    """Base class for every error this project raises on purpose."""


class RequestError(RecsysError):
    """Something the client sent cannot be served; `field` names it (HTTP 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownIdError(RequestError):
    """An item id or category in the request is not in the serving model's catalogue (400)."""


class NotFoundError(RequestError):
    """The item the request is about does not exist in the serving model's catalogue (404)."""


class UnavailableError(RecsysError):
    """A store the request needs is unavailable; worth retrying after `retry_after_s` (503)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreError(UnavailableError):
    """A Redis-backed store (result cache, event history) failed, timed out or is shut off by
    its circuit breaker."""


class StageError(RecsysError):
    """A stage of the request path failed; the pipeline falls back and marks the response."""


class UserTowerError(StageError):
    """The user tower failed (the pipeline then uses a mean-of-items vector)."""


class RetrievalError(StageError):
    """Every candidate source failed or timed out (the pipeline then serves popular items)."""


class RankingError(StageError):
    """A ranker failed, timed out or returned scores of the wrong shape."""


class VectorSearchError(StageError):
    """The search's vector retriever failed (the search then answers in BM25 order)."""


class ArtifactError(RecsysError):
    """A model bundle is missing a file, has a wrong checksum or an unknown layout."""


class IncompatibleModelsError(RecsysError):
    """A ranker was trained against a different embedding model than the one it is paired with."""


class DataError(RecsysError):
    """Input data does not follow the documented schema."""
