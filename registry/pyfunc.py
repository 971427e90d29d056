"""MLflow pyfunc wrappers that serve a model bundle with an onnxruntime CPU session."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from recsys.errors import ArtifactError
from recsys.models import artifacts
from recsys.models.registry_client import BUNDLE_ARTIFACT


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _column(frame: pd.DataFrame, name: str, dtype: type) -> np.ndarray:
    """A DataFrame column of per-row arrays (or scalars) as one [N, ...] array."""
    values = frame[name].to_numpy()
    if len(values) and isinstance(values[0], (list, tuple, np.ndarray)):
        return np.stack([np.asarray(v, dtype=dtype) for v in values])
    return values.astype(dtype)


class _BundleModel(PythonModel):
    """Loads one bundle (manifest verified) and runs its ONNX graph."""

    kind: ClassVar[str]
    graph_file: ClassVar[str]
    # The logged signature (tensor dict from the input example) validates inputs; MLflow's
    # type-hint validation has no hint for "dict of arrays or DataFrame", so it is turned off
    # and `model_input` stays unannotated (an unsupported hint fails at log time).
    _skip_type_hint_validation: ClassVar[bool] = True

    def load_context(self, context: PythonModelContext) -> None:
        self.load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def load_bundle(self, directory: Path) -> _BundleModel:
        self.manifest = artifacts.read_manifest(directory, expected_kind=self.kind, verify=True)
        self.session = _session(directory / self.graph_file)
        self.output_name = self.session.get_outputs()[0].name
        return self


class EmbeddingModel(_BundleModel):
    """history int64 [B, H] + attributes int64 [B, A] -> user vectors float32 [B, D]."""

    kind = "embedding"
    graph_file = artifacts.USER_TOWER

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        if isinstance(model_input, pd.DataFrame):
            feeds = {name: _column(model_input, name, np.int64) for name in ("history", "attributes")}
        elif isinstance(model_input, Mapping):
            feeds = {name: np.asarray(model_input[name], dtype=np.int64)
                     for name in ("history", "attributes")}
        else:
            raise TypeError(f"embedding model input must be a dict or DataFrame with 'history' "
                            f"and 'attributes', got {type(model_input).__name__}")
        return self.session.run([self.output_name], feeds)[0]


class RankerModel(_BundleModel):
    """features float32 [N, F] -> scores float32 [N] (a [N, 1] graph output is flattened)."""

    kind = "ranker"
    graph_file = artifacts.RANKER

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        if isinstance(model_input, Mapping):
            features = np.asarray(model_input["features"], dtype=np.float32)
        elif isinstance(model_input, pd.DataFrame):
            features = (_column(model_input, "features", np.float32)
                        if list(model_input.columns) == ["features"]
                        else model_input.to_numpy(dtype=np.float32))
        else:
            features = np.asarray(model_input, dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"ranker features must be [N, F], got shape {features.shape}")
        scores = self.session.run([self.output_name], {"features": features})[0]
        return scores.reshape(len(features)).astype(np.float32, copy=False)


class FallbackRankerModel(RankerModel):
    kind = "fallback_ranker"


MODEL_CLASSES: dict[str, type[_BundleModel]] = {
    "embedding": EmbeddingModel,
    "ranker": RankerModel,
    "fallback_ranker": FallbackRankerModel,
}


def model_class(kind: str) -> type[_BundleModel]:
    try:
        return MODEL_CLASSES[kind]
    except KeyError:
        raise ArtifactError(f"unknown bundle kind {kind!r}; expected one of "
                            f"{tuple(MODEL_CLASSES)}") from None
