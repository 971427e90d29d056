"""The request path: what a request needs, then retrieval, ranking and re-ranking on one model slot."""
