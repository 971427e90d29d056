"""Tests of deploy/ (the Kubernetes manifests)."""
