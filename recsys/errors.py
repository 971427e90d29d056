"""Project exception types: the pipeline catches these (and only these) to degrade."""
from __future__ import annotations


class RecsysError(Exception):
    """Base class for every error this project raises on purpose."""


class ArtifactError(RecsysError):
    """A model bundle is missing a file, has a wrong checksum or an unknown layout."""


class IncompatibleModelsError(RecsysError):
    """A ranker was trained against a different embedding model than the one it is paired with."""


class DataError(RecsysError):
    """Input data does not follow the documented schema."""


class RetrievalError(RecsysError):
    """A candidate source failed or timed out."""


class RankingError(RecsysError):
    """A ranker failed, timed out or returned scores of the wrong shape."""


class CacheError(RecsysError):
    """The shared cache (Redis) failed or timed out."""
