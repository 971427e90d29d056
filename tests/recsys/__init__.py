"""Tests of the runtime package, laid out like it."""
