"""Tests of devtools/."""
