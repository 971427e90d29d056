"""Tests of recsys/pipeline/ (the request path on real models, Redis and FAISS)."""
