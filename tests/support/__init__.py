"""Shared test support: fixtures (Redis server, trained models, vectors), bundle factory, HTTP helpers."""
