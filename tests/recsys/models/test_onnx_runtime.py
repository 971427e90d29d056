"""Tests for recsys.models.onnx_runtime on a tiny MatMul + Add model built with onnx.helper."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from recsys.errors import ArtifactError
from recsys.models.onnx_runtime import CPU, CUDA, active_provider, create_session, providers

IN, OUT = 6, 3
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((IN, OUT)).astype(np.float32)
BIAS = RNG.standard_normal(OUT).astype(np.float32)
needs_cuda = pytest.mark.skipif(CUDA not in ort.get_available_providers(),
                                reason="onnxruntime has no CUDA provider here")


def write_linear_model(path: Path) -> Path:
    """y = x @ WEIGHT + BIAS, x: [batch, IN] float32; second input `ids` [batch] int64 (unused)."""
    graph = helper.make_graph(
        nodes=[helper.make_node("MatMul", ["x", "weight"], ["xw"]),
               helper.make_node("Add", ["xw", "bias"], ["y"]),
               helper.make_node("Shape", ["ids"], ["ids_shape"])],
        name="linear",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN]),
                helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT]),
                 helper.make_tensor_value_info("ids_shape", TensorProto.INT64, [1])],
        initializer=[numpy_helper.from_array(WEIGHT, "weight"),
                     numpy_helper.from_array(BIAS, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return write_linear_model(tmp_path / "linear.onnx")


def feeds(batch: int = 4) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, IN)).astype(np.float32),
            "ids": np.arange(batch, dtype=np.int64)}


def run(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return session.run(["y"], inputs)[0]


def test_session_matches_numpy(model_path: Path) -> None:
    session = create_session(model_path)
    for batch in (1, 32, 500):
        inputs = feeds(batch)
        out = run(session, inputs)
        assert out.shape == (batch, OUT) and out.dtype == np.float32
        np.testing.assert_allclose(out, inputs["x"] @ WEIGHT + BIAS, rtol=1e-5, atol=1e-5)


def test_session_options_follow_arguments(model_path: Path) -> None:
    session = create_session(model_path, intra_op_threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_bad_thread_count_raises_value_error(model_path: Path) -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        create_session(model_path, intra_op_threads=-1)


def test_missing_file_raises_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="absent.onnx"):
        create_session(tmp_path / "absent.onnx")


@pytest.mark.parametrize("content", [b"", b"\x08\x01garbage, not protobuf" * 10])
def test_invalid_file_raises_artifact_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match="broken.onnx"):
        create_session(path)


def test_providers_lists_cpu_last_and_honours_prefer_gpu() -> None:
    assert providers()[-1] == CPU
    assert providers(prefer_gpu=False) == [CPU]
    if CUDA in ort.get_available_providers():
        assert providers()[0] == CUDA
    else:
        assert providers(prefer_gpu=True) == [CPU]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="checks the CPU-only build")
def test_cpu_provider_is_active_without_cuda(model_path: Path) -> None:
    assert active_provider(create_session(model_path)) == CPU


@pytest.mark.gpu
@needs_cuda
def test_cuda_provider_is_active_and_matches_numpy(model_path: Path) -> None:
    session = create_session(model_path, prefer_gpu=True)
    assert active_provider(session) == CUDA
    inputs = feeds(64)
    np.testing.assert_allclose(run(session, inputs), inputs["x"] @ WEIGHT + BIAS,
                               rtol=1e-4, atol=1e-4)
    assert active_provider(create_session(model_path, prefer_gpu=False)) == CPU
