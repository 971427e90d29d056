"""The project's exceptions as HTTP answers: bad input 400/404, an unavailable store 503."""
from __future__ import annotations

from typing import Literal

import bentoml

with bentoml.importing():
    from recsys.errors import CacheError
    from recsys.request import InvalidRequestError
    from recsys.schemas import LimitError


class client_errors:
    """Raises BentoML's exception for the status each of the project's errors maps to."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> Literal[False]:
        if isinstance(error, InvalidRequestError):
            raise (bentoml.exceptions.NotFound if error.status == 404 else
                   bentoml.exceptions.InvalidArgument)(str(error)) from error
        if isinstance(error, LimitError):
            raise bentoml.exceptions.InvalidArgument(str(error)) from error
        if isinstance(error, CacheError):
            raise bentoml.exceptions.ServiceUnavailable(f"event store unavailable: {error}") from error
        return False
