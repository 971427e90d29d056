"""Tests of serving/ (the HTTP edge and response encoding)."""
