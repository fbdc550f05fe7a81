"""ee_cuda: Embedding Expansion (Ko & Gu, CVPR 2020) as fused PyTorch ops.

Public API (docs/design.md §3): ``expand``, ``hard_negative_pairs``, ``hard_negative_points``, ``positive_pairs``,
``embedding_aug``, ``build_info``; ``use_backend`` to force the fused kernels or the pure-PyTorch
``ee_cuda.reference``.
"""
from __future__ import annotations

import torch

from . import reference
from ._backend import _C, compiled_info, use_backend
from .ops import embedding_aug, expand, hard_negative_pairs, hard_negative_points, positive_pairs

if _C is not None:
    from . import _registration  # noqa: F401  (fake kernels and autograd of torch.ops.ee_cuda.*)

from . import distributed, losses, metrics  # noqa: E402  (built on the ops above)
from .losses import (HPHNTripletLoss, LiftedStructureLoss, MultiSimilarityLoss, NPairLoss,  # noqa: E402
                     TripletLoss)

__version__ = "0.1.0"
__all__ = ["expand", "hard_negative_pairs", "hard_negative_points", "positive_pairs", "embedding_aug",
           "build_info", "use_backend", "reference", "losses", "distributed", "metrics",
           "HPHNTripletLoss", "TripletLoss", "LiftedStructureLoss", "NPairLoss", "MultiSimilarityLoss"]


def build_info() -> dict:
    """Which fused kernels this install has: ``{"cpu", "openmp", "cpu_vector_isa", "cuda", "cuda_arch_list", "torch",
    "backend"}`` (``cpu_vector_isa``: ``"avx2"`` or ``"baseline"``, the copy of the CPU's vectorized loops that runs:
    AVX2 where the CPU has it, unless ``ATEN_CPU_CAPABILITY=default``)."""
    info = compiled_info()
    info["torch"] = torch.__version__
    info["backend"] = "fused" if _C is not None else "reference"
    return info
