"""What the numbers were measured on: CPU, memory, load, library versions, and whether a GPU is there."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

import psutil

PACKAGES = ("bentoml", "onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu", "numpy",
            "fastapi", "uvicorn", "uvloop", "httptools", "hiredis", "redis", "torch", "mlflow")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def gpu() -> dict[str, Any]:
    """Which GPU paths exist: nvidia-smi, ONNX Runtime's CUDA provider, faiss GPUs."""
    found: dict[str, Any] = {"nvidia_smi": None, "onnxruntime_cuda": False, "faiss_gpus": 0}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            found["nvidia_smi"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import onnxruntime

        found["onnxruntime_cuda"] = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        import faiss

        found["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        pass
    found["available"] = bool(found["nvidia_smi"]) and (found["onnxruntime_cuda"]
                                                         or found["faiss_gpus"] > 0)
    return found


def describe() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(memory.total / 2**30, 1),
        "memory_available_gb": round(memory.available / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "versions": versions(),
        "gpu": gpu(),
    }


def load_average() -> float:
    """One-minute load average."""
    return round(os.getloadavg()[0], 2)
