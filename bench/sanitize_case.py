"""A tiny CUDA case for compute-sanitizer: every fused op and loss, forward and backward, on CUDA.

    compute-sanitizer --tool memcheck python bench/sanitize_case.py
    compute-sanitizer --tool racecheck python bench/sanitize_case.py

Shapes are small and odd (D=37, pairs of two layouts, n in {0, 1, 3}) so that tails and partial tiles are
exercised; float32, float64 and float16 inputs; both normalize settings. Exits non-zero on any Python
error; the sanitizer reports the memory errors and races itself.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import ee_cuda
except ImportError:
    sys.path.insert(0, ROOT)
    import ee_cuda

import torch
import torch.nn.functional as F


def backward_finite(out):
    d = out[0] if isinstance(out, tuple) else out
    g = torch.where(torch.isfinite(d), torch.ones_like(d), torch.zeros_like(d))
    torch.autograd.backward(d, g)


def main():
    assert torch.cuda.is_available(), "needs a GPU"
    info = ee_cuda.build_info()
    assert info["cuda"], f"ee_cuda was built without CUDA kernels: {info}"
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(4).to(dev)          # B = 20, adjacent layout
    calls = 0
    for dtype in (torch.float32, torch.float64, torch.float16):
        X0 = F.normalize(torch.randn(20, 37, generator=g, dtype=torch.float64), dim=1).to(dev, dtype)
        for layout in ("adjacent", "all"):
            pairs = ee_cuda.positive_pairs(labels, layout)
            for n in (0, 1, 3):
                for normalize in (True, False):
                    X = X0.clone().requires_grad_(True)
                    if n > 0:
                        e = ee_cuda.expand(X, pairs, n, normalize, backend="fused")
                        e.float().sum().backward()
                    out = ee_cuda.hard_negative_pairs(X, pairs, labels, n, normalize, backend="fused")
                    backward_finite(out)
                    out = ee_cuda.hard_negative_points(X, pairs, labels, n, normalize, backend="fused")
                    backward_finite(out)
                    calls += 3
        X = X0.clone().requires_grad_(True)
        aug, _ = ee_cuda.embedding_aug(X, labels, 4, 2, backend="fused")
        aug.float().sum().backward()
    try:
        from ee_cuda import losses
    except ImportError:
        losses = None
    if losses is not None:
        X0 = F.normalize(torch.randn(20, 37, generator=g), dim=1).to(dev)
        with ee_cuda.use_backend("fused"):
            for name in ("HPHNTripletLoss", "TripletLoss", "LiftedStructureLoss", "NPairLoss", "MultiSimilarityLoss"):
                for n in (0, 2):
                    X = X0.clone().requires_grad_(True)
                    getattr(losses, name)(n_inner_pts=n)(X, labels).backward()
                    calls += 1
    # no pairs of another label (one class) and an empty batch
    X = X0[:4].clone().requires_grad_(True)
    one = torch.zeros(4, dtype=torch.long, device=dev)
    p = ee_cuda.positive_pairs(one, "all")
    backward_finite(ee_cuda.hard_negative_pairs(X, p, one, 2, backend="fused"))
    backward_finite(ee_cuda.hard_negative_points(X, p, one, 2, backend="fused"))
    torch.cuda.synchronize()
    print(f"sanitize_case: {calls} fused calls with backward, all returned")


if __name__ == "__main__":
    main()
