"""Tests of recsys/models/."""
