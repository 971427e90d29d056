"""Process wiring: model slots and endpoints built from settings, Prometheus metrics, GC tuning."""
