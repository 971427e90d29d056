"""BentoML glue for service.py: the model services, their remote callables, HTTP error mapping.

Unlike the runtime package (recsys/), this package imports bentoml; it holds no request logic.
"""
