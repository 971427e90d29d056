"""Batch scoring on Ray: every user's /recommend list, precomputed with the serving code."""
