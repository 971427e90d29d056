"""Placeholder replaced by the Redis fixture plugin."""
