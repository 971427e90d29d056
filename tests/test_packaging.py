"""The CPU and GPU packagings agree: bentofiles, pyproject extras and bootstrap."""
from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from devtools.processes import REPO_ROOT

SWAPS = {"onnxruntime": "onnxruntime-gpu", "faiss-cpu": "faiss-gpu"}  # CPU build -> CUDA build


def _bentofile(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / name).read_text())


def _pins(bentofile: dict) -> dict[str, Requirement]:
    return {Requirement(p).name: Requirement(p) for p in bentofile["python"]["packages"]}


def _extra(name: str) -> dict[str, Requirement]:
    """The installed project's requirements that only extra `name` brings."""
    requirements = [Requirement(r) for r in metadata.requires("recsys-serving") or []]
    chosen = [r for r in requirements if r.marker is not None
              and r.marker.evaluate({"extra": name}) and not r.marker.evaluate({"extra": ""})]
    return {r.name: r for r in chosen}


def test_the_gpu_bentofile_differs_only_in_the_accelerated_packages_and_two_settings() -> None:
    cpu, gpu = _bentofile("bentofile.yaml"), _bentofile("bentofile.gpu.yaml")
    cpu_pins, gpu_pins = _pins(cpu), _pins(gpu)
    assert {SWAPS.get(name, name) for name in cpu_pins} == set(gpu_pins)
    for name, pin in cpu_pins.items():
        if name not in SWAPS:
            assert gpu_pins[name] == pin
    assert gpu_pins["onnxruntime-gpu"].extras == {"cuda", "cudnn"}  # CUDA and cuDNN from PyPI
    envs = {e["name"]: e["value"] for e in gpu["envs"]}
    assert envs == {**{e["name"]: e["value"] for e in cpu["envs"]},
                    "RECSYS_TOPOLOGY": "services", "RECSYS_GPU": "1"}
    for key in set(cpu) | set(gpu):
        if key not in ("python", "envs"):
            assert gpu.get(key) == cpu.get(key), key
    assert "cuda_version" not in gpu["docker"]  # BentoML's newest CUDA base (12.8) predates 13


def test_the_bentofiles_pin_versions_their_extras_allow() -> None:
    for bentofile, extra in (("bentofile.yaml", "cpu"), ("bentofile.gpu.yaml", "gpu")):
        pins, allowed = _pins(_bentofile(bentofile)), _extra(extra)
        assert set(allowed) == ({"onnxruntime", "faiss-cpu"} if extra == "cpu"
                                else {"onnxruntime-gpu", "faiss-gpu"}), allowed
        for name, requirement in allowed.items():
            version = next(iter(pins[name].specifier)).version
            assert requirement.specifier.contains(version), (bentofile, name, version)
            assert pins[name].extras == requirement.extras, (bentofile, name)


def test_bootstrap_refuses_an_unknown_accelerator(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "bootstrap.sh")], check=False,
                          env={"PATH": "/usr/bin:/bin", "RECSYS_ACCELERATOR": "tpu"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "RECSYS_ACCELERATOR must be cpu or gpu, got 'tpu'" in done.stderr
