"""Tests of recsys/experiments/."""
