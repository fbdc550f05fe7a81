"""A small CUDA case for compute-sanitizer: every fused op and loss, forward and backward, on CUDA (the
searches also against a reference set, and a memory bank's loss).

    compute-sanitizer --tool memcheck python bench/sanitize_case.py
    compute-sanitizer --tool racecheck python bench/sanitize_case.py
    python bench/sanitize_case.py --device cpu      # the same calls on the CPU kernels (gpu_check --dry-run)

Shapes are odd (D=37, pairs of two layouts, n in {0, 1, 3}) so that tails and partial tiles are exercised;
float32, float64, float16 and bfloat16 inputs; both normalize settings. Then the cases a small batch never
reaches: more pairs than one tile holds (a block reuses its shared memory after a barrier), and an n whose
tiles need more than 48 KiB of shared memory (the opt-in path), in float32 and float64. Exits non-zero on any
Python error; the sanitizer reports the memory errors and races itself.
"""
from __future__ import annotations

import argparse
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

from ee_cuda import losses


def backward_finite(out):
    d = out[0] if isinstance(out, tuple) else out
    g = torch.where(torch.isfinite(d), torch.ones_like(d), torch.zeros_like(d))
    torch.autograd.backward(d, g)


def ops_with_backward(X0, labels, layouts, ns, normalizes=(True, False)):
    """Every op on (X0, labels), forward and backward, for each layout, n and normalize; the call count."""
    calls = 0
    for layout in layouts:
        pairs = ee_cuda.positive_pairs(labels, layout)
        for n in ns:
            for normalize in normalizes:
                X = X0.clone().requires_grad_(True)
                if n > 0:
                    e = ee_cuda.expand(X, pairs, n, normalize, backend="fused")
                    e.float().sum().backward()
                backward_finite(ee_cuda.hard_negative_pairs(X, pairs, labels, n, normalize, backend="fused"))
                backward_finite(ee_cuda.hard_negative_points(X, pairs, labels, n, normalize, backend="fused"))
                calls += 3
    return calls


def reference_ops_with_backward(X0, labels, Y0, ref_labels, layouts, ns, normalizes=(True, False)):
    """Both searches of (X0, labels) against the reference set (Y0, ref_labels), forward and backward (to
    both sets), for each layout of the reference, n and normalize; the call count."""
    calls = 0
    pairs = ee_cuda.positive_pairs(labels, "adjacent")
    for layout in layouts:
        ref_pairs = ee_cuda.positive_pairs(ref_labels, layout)
        for n in ns:
            for normalize in normalizes:
                X, Y = X0.clone().requires_grad_(True), Y0.clone().requires_grad_(True)
                kw = dict(ref_X=Y, ref_pairs=ref_pairs, ref_labels=ref_labels, backend="fused")
                backward_finite(ee_cuda.hard_negative_pairs(X, pairs, labels, n, normalize, **kw))
                backward_finite(ee_cuda.hard_negative_points(X, pairs, labels, n, normalize, **kw))
                calls += 2
    return calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check this script without a GPU)")
    dev = torch.device(ap.parse_args(argv).device)
    info = ee_cuda.build_info()
    if dev.type == "cuda":
        assert torch.cuda.is_available(), "needs a GPU"
        assert info["cuda"], f"ee_cuda was built without CUDA kernels: {info}"
    g = torch.Generator().manual_seed(0)

    def rows(B, D=37, dtype=torch.float32):
        return F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1).to(dev, dtype)

    labels = torch.arange(5).repeat_interleave(4).to(dev)          # B = 20, adjacent layout
    calls = 0
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        X0 = rows(20, dtype=dtype)
        calls += ops_with_backward(X0, labels, ("adjacent", "all"), (0, 1, 3))
        X = X0.clone().requires_grad_(True)
        aug, _ = ee_cuda.embedding_aug(X, labels, 4, 2, backend="fused")
        aug.float().sum().backward()
    # against a reference set (a memory bank): 26 rows in both layouts (partial tiles), then 70 reference pairs
    # (several tiles of the rectangular pair grid, several shared-memory rounds of the points kernel)
    ref_labels = torch.arange(3, 16).repeat_interleave(2).to(dev)   # R = 26, labels overlap the batch's
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        calls += reference_ops_with_backward(rows(20, dtype=dtype), labels, rows(26, dtype=dtype), ref_labels,
                                             ("adjacent", "all"), (0, 1, 3))
    memory_labels = torch.arange(70).repeat_interleave(2).to(dev)
    calls += reference_ops_with_backward(rows(20), labels, rows(140), memory_labels, ("adjacent",), (2,), (True,))
    memory = losses.CrossBatchMemory(losses.HPHNTripletLoss(n_inner_pts=2), 37, 64).to(dev)
    for _ in range(5):                                               # wraps around a memory of 64 rows
        X = rows(20).requires_grad_(True)
        memory(X, labels).backward()
        calls += 1
    # more pairs than a tile holds: 48 adjacent pairs, 72 "all" pairs (each tile's shared memory reused)
    many = torch.arange(24).repeat_interleave(4).to(dev)
    calls += ops_with_backward(rows(96), many, ("adjacent", "all"), (2,), (True,))
    # tiles above 48 KiB of shared memory: 32 pairs of T = n + 2 points, 16 (float) or 32 (double) bytes each
    few = torch.arange(20).repeat_interleave(2).to(dev)             # 20 pairs
    calls += ops_with_backward(rows(40), few, ("adjacent",), (120,), (True,))
    calls += ops_with_backward(rows(40, dtype=torch.float64), few, ("adjacent",), (60,), (True,))
    X0 = rows(20)
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
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_case: {calls} fused calls with backward on {dev.type}, all returned")


if __name__ == "__main__":
    main()
