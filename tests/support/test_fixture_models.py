"""The shared trained-models fixture produces servable, registered champion and challenger sets."""
from __future__ import annotations

import json

from recsys.models.bundles import EmbeddingBundle


def test_champion_and_challenger_are_exported(trained_models):
    tags = json.loads(trained_models.models_file.read_text())
    assert set(tags) == {"champion", "challenger"}
    assert tags["champion"]["embedding"] != tags["challenger"]["embedding"]
    bundle = EmbeddingBundle.load(trained_models.refs("challenger").paths["embedding"])
    assert bundle.users is not None and len(bundle.users.user_ids) == 150
