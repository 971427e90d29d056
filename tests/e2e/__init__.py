"""End-to-end tests against real `bentoml serve` processes (and the Bento build round trip)."""
