"""Runtime package shared by training and serving: features, artifacts, retrieval, ranking, caching."""
