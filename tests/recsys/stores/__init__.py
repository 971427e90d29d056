"""Tests of recsys/stores/."""
