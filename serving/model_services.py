"""The batched model services of the `services` topology: ranker and user tower, one API per alias."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import bentoml

with bentoml.importing():
    import numpy as np

    from recsys.app.heap import freeze_startup_heap
    from recsys.app.models_file import ModelTags
    from recsys.models.bundles import RankerBundle, UserTowerBundle
    from recsys.settings import ServingSettings
    from serving.tracing import service_tracing, warn_if_untraced


class ModelServices(NamedTuple):
    ranker: Any  # bentoml Service of RankerService
    tower: Any  # bentoml Service of UserTowerService


def declare_models(cls: type, tags: ModelTags, kinds: tuple[str, ...]) -> type:
    """Class attributes BentoModel(tag) so that `bentoml build` pins every model it serves."""
    for alias, by_kind in tags.items():
        for kind in kinds:
            setattr(cls, f"model_{alias}_{kind}", bentoml.models.BentoModel(by_kind[kind]))
    return cls


def model_path(service: object, alias: str, kind: str) -> Path:
    model = getattr(service, f"model_{alias}_{kind}")  # a service instance sees the stored model
    if isinstance(model, bentoml.models.BentoModel):
        model = model.resolve()
    return Path(model.path)


def split_packed(packed: np.ndarray, history_len: int, attributes: int) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """(history [B, H], attributes [B, A]) of RemoteUserTower's packed [B, H + A] rows;
    ValueError when the width is not this model's H + A (a caller packing another model's
    history length)."""
    if packed.ndim != 2 or packed.shape[1] != history_len + attributes:
        raise ValueError(f"packed user rows of shape {packed.shape}: this user tower reads "
                         f"{history_len} history items and {attributes} attributes")
    return packed[:, :history_len], packed[:, history_len:]


def define_model_services(settings: ServingSettings, tags: ModelTags) -> ModelServices:
    """Both services, with adaptive batching unless `settings.batching` is off."""
    batching: dict[str, Any] = {
        "batchable": True, "batch_dim": 0, "max_batch_size": settings.max_batch_size,
        "max_latency_ms": settings.max_latency_ms} if settings.batching else {}
    resources = {"gpu": settings.gpu} if settings.gpu else {"cpu": "1"}

    class _ModelService:
        """What both do at start-up (BentoML finds hooks on base classes too)."""

        @bentoml.on_startup
        def settle(self) -> None:
            warn_if_untraced(settings)
            freeze_startup_heap()

    class RankerService(_ModelService):
        """Batched ranker scoring (features [N, F] -> scores [N])."""

        def __init__(self) -> None:
            self.rankers = {a: RankerBundle.load(model_path(self, a, "ranker"),
                                                 threads=settings.onnx_threads,
                                                 int8=settings.ranker_int8,
                                                 prefer_gpu=bool(settings.gpu)) for a in tags}
            for ranker in self.rankers.values():
                ranker.check_parity()

        @bentoml.api(**batching)
        def score_champion(self, features: np.ndarray) -> np.ndarray:
            return self.rankers["champion"].score(features)

        @bentoml.api(**batching)
        def score_challenger(self, features: np.ndarray) -> np.ndarray:
            return self.rankers["challenger"].score(features)

    class UserTowerService(_ModelService):
        """Batched user tower ([B, H + A] int64: history then attributes -> [B, D]), each alias
        split by its own history length."""

        def __init__(self) -> None:
            self.towers = {a: UserTowerBundle.load(model_path(self, a, "embedding"),
                                                   prefer_gpu=bool(settings.gpu)) for a in tags}
            for tower in self.towers.values():
                tower.check_parity()

        def _encode(self, alias: str, packed: np.ndarray) -> np.ndarray:
            tower = self.towers[alias]
            return tower.encode_users(*split_packed(packed, tower.history_len, tower.attributes))

        @bentoml.api(**batching)
        def encode_champion(self, packed: np.ndarray) -> np.ndarray:
            return self._encode("champion", packed)

        @bentoml.api(**batching)
        def encode_challenger(self, packed: np.ndarray) -> np.ndarray:
            return self._encode("challenger", packed)

    service = bentoml.service(resources=resources, workers=1,
                              tracing=service_tracing(settings))
    return ModelServices(service(declare_models(RankerService, tags, ("ranker",))),
                         service(declare_models(UserTowerService, tags, ("embedding",))))
