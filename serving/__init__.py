"""The HTTP edge and BentoML glue of service.py: request and response schemas, validation and
limits, the one mapping of errors to HTTP, the batched model services and their adapters.

Unlike the runtime package (recsys/), this package imports bentoml, pydantic and starlette.
"""
