"""The install: which kernels it has, and that CI really compiled the CUDA sources."""
from __future__ import annotations

import os

import pytest
import torch

import ee_cuda


def test_build_info_keys():
    info = ee_cuda.build_info()
    assert {"cpu", "cuda", "cuda_arch_list", "torch"} <= set(info)
    assert info["torch"] == torch.__version__
    assert info["cpu"] is True, "the fused CPU kernels are missing: build with `pip install -e .`"
    assert ee_cuda.reference.build_info()["cpu"] is False


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI must have compiled the CUDA kernels")
def test_ci_compiled_cuda_kernels():
    info = ee_cuda.build_info()
    assert info["cuda"] is True, "CI must build with FORCE_CUDA=1"
    assert "8.0" in info["cuda_arch_list"] and "9.0" in info["cuda_arch_list"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_ops_registered_for_cuda():
    assert ee_cuda.build_info()["cuda"]
    X = torch.randn(4, 3, device="cuda")
    labels = torch.tensor([0, 0, 1, 1], device="cuda")
    d, _ = ee_cuda.hard_negative_pairs(X, ee_cuda.positive_pairs(labels), labels, 1, backend="fused")
    assert d.is_cuda
