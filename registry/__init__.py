"""Model registry: log bundles to MLflow, register and promote model sets, export to BentoML.

Imports mlflow and bentoml (never torch); the runtime package `recsys` imports neither.
"""
from recsys.models.registry_client import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
)
from registry.bento_export import bento_models_for_alias, bentoml_home, export_to_bentoml
from registry.model_registry import AlreadyChampion, Registry, VersionInfo
from registry.pyfunc import EmbeddingModel, FallbackRankerModel, RankerModel
from registry.registration import (
    EMBEDDING_MODEL,
    FALLBACK_MODEL,
    RANKER_MODEL,
    ModelNames,
    ModelSet,
    RegistryError,
    configure_tracking,
    default_tracking_uri,
    log_bundle,
    register_model_set,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EMBEDDING_MODEL",
    "FALLBACK_MODEL",
    "PREVIOUS_CHAMPION",
    "RANKER_MODEL",
    "AlreadyChampion",
    "EmbeddingModel",
    "FallbackRankerModel",
    "ModelNames",
    "ModelSet",
    "RankerModel",
    "Registry",
    "RegistryError",
    "VersionInfo",
    "bento_models_for_alias",
    "bentoml_home",
    "configure_tracking",
    "default_tracking_uri",
    "export_to_bentoml",
    "log_bundle",
    "register_model_set",
]
