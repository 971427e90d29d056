"""Redis-backed state of the request path: the two-level result cache and users' event history."""
