"""Tests of registry/ (a real MLflow store under tmp_path)."""
