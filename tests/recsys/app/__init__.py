"""Tests of recsys/app/."""
