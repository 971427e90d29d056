"""ONNX Runtime sessions: provider choice and session options; load errors as ArtifactError."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from recsys.errors import ArtifactError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# What ORT raises when a file is not a loadable model (garbage, empty, unknown op, bad graph).
_LOAD_ERRORS = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph,
                ort_errors.InvalidArgument, ort_errors.NoSuchFile, ort_errors.NotImplemented,
                ort_errors.RuntimeException)

def providers(prefer_gpu: bool | None = None) -> list[str]:
    """CUDA first when this onnxruntime build has it and prefer_gpu is not False, then CPU.

    A CUDA provider that fails to start at session creation falls back to CPU inside ORT;
    `active_provider` tells which one a session got.
    """
    if prefer_gpu is not False and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


@functools.cache
def _load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (`onnxruntime-gpu[cuda,cudnn]`, the `gpu`
    extra) before the first CUDA session: they are not on the dynamic loader's path, and
    without them the CUDA provider fails to start and ORT runs on the CPU. Libraries already
    loaded (a system CUDA, or torch's) are kept; a failure is printed by ORT, not raised."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        preload()


def create_session(path: str | os.PathLike[str], *, intra_op_threads: int = 1,
                   prefer_gpu: bool | None = None) -> ort.InferenceSession:
    """Load an ONNX model; ArtifactError naming `path` when it is missing or not a valid model.

    intra_op_threads: threads one run may use (0: ORT's default, one per core). Serving keeps
    1: small batches do not gain from more, and the caller's own threads use the other cores.
    Inter-op parallelism is off (sequential execution): these graphs are chains.
    """
    if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) \
            or intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be an int >= 0, got {intra_op_threads!r}")
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX model file {path} does not exist")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    chosen = providers(prefer_gpu)
    if chosen[0] == CUDA:
        _load_cuda_libraries()
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except _LOAD_ERRORS as exc:
        raise ArtifactError(f"ONNX model file {path} is not a valid model: {exc}") from exc


def active_provider(session: ort.InferenceSession) -> str:
    """The execution provider that runs the session's nodes first (CUDA... or CPU...)."""
    return str(session.get_providers()[0])
