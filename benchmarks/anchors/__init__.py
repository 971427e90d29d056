"""Same-protocol anchors: kept libraries' models trained and scored on the project's own split."""
