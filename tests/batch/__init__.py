"""Tests of the batch scoring job (batch/), laid out like it."""
