"""The notebooks, executed with papermill on tiny parameters."""
