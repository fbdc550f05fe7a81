"""The install: which kernels it has, and that a forced CUDA build (CI) really compiled the CUDA sources."""
from __future__ import annotations

import os
import sys

import pytest
import torch

import ee_cuda


def test_build_info_keys():
    info = ee_cuda.build_info()
    assert {"cpu", "openmp", "cpu_vector_isa", "cuda", "cuda_arch_list", "torch", "backend"} == set(info)
    assert info["cpu_vector_isa"] in ("avx2", "baseline")
    assert set(ee_cuda.reference.build_info()) == set(info)
    assert info["torch"] == torch.__version__
    assert info["cpu"] is True, "the fused CPU kernels are missing: build with `pip install -e .`"
    assert ee_cuda.reference.build_info()["cpu"] is False
    if sys.platform.startswith("linux"):  # the CPU kernels' at::parallel_for must start threads
        assert info["openmp"] is True


@pytest.mark.skipif(os.environ.get("FORCE_CUDA") != "1" or os.environ.get("FORCE_ONLY_CPU") == "1",
                    reason="only a build forced with FORCE_CUDA=1 (as .ci/run does) must have the CUDA kernels")
def test_ci_compiled_cuda_kernels():
    info = ee_cuda.build_info()
    assert info["cuda"] is True, "FORCE_CUDA=1 but the CUDA kernels are missing: rerun scripts/setup.sh with it"
    arch_list = info["cuda_arch_list"]
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        assert arch_list == os.environ["TORCH_CUDA_ARCH_LIST"]
    elif torch.cuda.is_available():  # the GPU's architecture
        assert "{}.{}".format(*torch.cuda.get_device_capability()) in arch_list.split(";")
    else:  # setup.py's default without a GPU
        assert {"8.0", "9.0"} <= set(arch_list.split(";"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_ops_registered_for_cuda():
    assert ee_cuda.build_info()["cuda"]
    X = torch.randn(4, 3, device="cuda")
    labels = torch.tensor([0, 0, 1, 1], device="cuda")
    d, _ = ee_cuda.hard_negative_pairs(X, ee_cuda.positive_pairs(labels), labels, 1, backend="fused")
    assert d.is_cuda


@pytest.mark.parametrize("cuda_home", [None, "/opt/cuda"])
def test_setup_explains_torch_warning_without_gpu(monkeypatch, cuda_home):
    """Without a GPU, torch logs "No CUDA runtime is found" when it found a CUDA_HOME; the build's configuration
    says that this only means no GPU, and says nothing of it when torch logged nothing."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import setup
    finally:
        sys.path.pop(0)
    for name in ("FORCE_CUDA", "FORCE_ONLY_CPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(setup.cpp_extension, "CUDA_HOME", cuda_home)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = setup.configuration()
    assert config["cuda"] is False
    assert ("'No CUDA runtime is found'" in config["why"]) == (cuda_home is not None)
    assert "FORCE_CUDA=1 builds them anyway" in config["why"]
