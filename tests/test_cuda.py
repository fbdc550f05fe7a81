"""CUDA-only checks (skipped without a GPU): a W3-sized case (docs/design.md §12) against the reference in chunks,
inputs on a non-default device, and the launch count of one op call."""
from __future__ import annotations

import pytest
import torch

import ee_cuda
from ee_cuda import reference as R
from conftest import make_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def test_large_case_against_reference_in_chunks():
    """B = 4096, n = 16 (W3 shape, adjacent pairs), float64: every row checked, 64 pairs at a time."""
    torch.manual_seed(0)
    X, labels = make_batch(1024, 4, 64, device="cuda", dtype=torch.float64)
    pairs = ee_cuda.positive_pairs(labels, "adjacent")
    n, T, P = 16, 18, pairs.shape[0]
    dist, index = ee_cuda.hard_negative_pairs(X, pairs, labels, n, backend="fused")
    pdist, _ = ee_cuda.hard_negative_points(X, pairs, labels, n, backend="fused")
    A = R.augmented_points(X, pairs, n, True)
    flat = A.reshape(P * T, -1)
    plabel = labels[pairs[:, 0]]
    for start in range(0, P, 64):
        rows = slice(start, min(P, start + 64))
        block = torch.cdist(A[rows].reshape(-1, A.shape[-1]), flat).view(-1, T, P, T)
        negative = plabel[rows, None] != plabel[None, :]
        ref = block.permute(0, 2, 1, 3).reshape(block.shape[0], P, T * T).min(-1).values
        ref = torch.where(negative, ref, torch.full_like(ref, float("inf")))
        torch.testing.assert_close(dist[rows], ref, atol=1e-9, rtol=1e-9)
        ref_pts = block.masked_fill(~negative[:, None, :, None], float("inf")).reshape(block.shape[0], T, -1).min(-1).values
        torch.testing.assert_close(pdist[rows], ref_pts, atol=1e-9, rtol=1e-9)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_non_default_device():
    X, labels = make_batch(4, 4, 8, device="cuda:1", shuffle=True)
    pairs = ee_cuda.positive_pairs(labels)
    d, i = ee_cuda.hard_negative_pairs(X, pairs, labels, 2, backend="fused")
    assert d.device == X.device
    d_ref, _ = R.hard_negative_pairs(X, pairs, labels, 2)
    torch.testing.assert_close(d, d_ref)


def test_at_most_three_launches_per_op_call_on_w1():
    X, labels = make_batch(4, 32, 512, device="cuda", dtype=torch.float32)
    for mode in ("adjacent", "all"):
        pairs = ee_cuda.positive_pairs(labels, mode)
        for op in (torch.ops.ee_cuda.hard_negative_pairs, torch.ops.ee_cuda.hard_negative_points):
            op(X, pairs, labels, 2, True)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                op(X, pairs, labels, 2, True)
                torch.cuda.synchronize()
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            assert len(kernels) <= 3, [e.name for e in kernels]


@pytest.mark.parametrize("op", ["expand", "hard_negative_pairs", "hard_negative_points"])
def test_deterministic_mode_alerts_on_cuda_backward(op):
    """The CUDA backwards add with atomicAdd: under torch.use_deterministic_algorithms they raise (or warn
    with warn_only) instead of running silently; the forward, deterministic, runs."""
    X, labels = make_batch(4, 4, 8, device="cuda")
    pairs = ee_cuda.positive_pairs(labels)
    X.requires_grad_(True)
    args = (X, pairs, 2) if op == "expand" else (X, pairs, labels, 2)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        out = getattr(ee_cuda, op)(*args, backend="fused")
        out = out if op == "expand" else out[0]
        loss = torch.where(torch.isfinite(out), out, torch.zeros_like(out)).sum()
        with pytest.raises(RuntimeError, match=f"ee_cuda::{op}_backward"):
            torch.autograd.grad(loss, X, retain_graph=True)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match=f"ee_cuda::{op}_backward"):
            torch.autograd.grad(loss, X)
    finally:
        torch.use_deterministic_algorithms(previous)


def _hphn_step(X, labels, loss_fn):
    X.grad = None
    loss = loss_fn(X, labels)
    loss.backward()
    return loss


def test_hphn_step_makes_no_host_sync():
    """An HPHN training step with EE in the adjacent layout (checks included) reads nothing back to the host:
    no synchronization, so steps queue on the stream."""
    X, labels = make_batch(32, 4, 64, device="cuda", dtype=torch.float32)
    X.requires_grad_(True)
    loss_fn = ee_cuda.HPHNTripletLoss(n_inner_pts=2)
    _hphn_step(X, labels, loss_fn)  # warm-up: first-call allocations and lazy initialization
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _hphn_step(X, labels, loss_fn)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_hphn_step_captures_in_a_cuda_graph():
    """The same step captured in a CUDA graph and replayed gives the eager loss and gradient."""
    X, labels = make_batch(32, 4, 64, device="cuda", dtype=torch.float32)
    X.requires_grad_(True)
    loss_fn = ee_cuda.HPHNTripletLoss(n_inner_pts=2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            _hphn_step(X, labels, loss_fn)
    torch.cuda.current_stream().wait_stream(stream)
    expect_loss = _hphn_step(X, labels, loss_fn).detach()
    expect_grad = X.grad.clone()
    graph = torch.cuda.CUDAGraph()
    X.grad = None
    with torch.cuda.graph(graph):
        captured = loss_fn(X, labels)
        captured.backward()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expect_loss)
    torch.testing.assert_close(X.grad, expect_grad)


def test_bad_pairs_fail_on_the_device():
    """On CUDA a bad pair is a device-side assertion (no host read), not a ValueError; in a subprocess, as a
    failed device assertion leaves the CUDA context unusable."""
    import subprocess
    import sys
    code = ("import torch, ee_cuda\n"
            "X = torch.randn(8, 4, device='cuda')\n"
            "labels = torch.arange(4, device='cuda').repeat_interleave(2)\n"
            "pairs = torch.tensor([[0, 9]], device='cuda')\n"
            "ee_cuda.hard_negative_pairs(X, pairs, labels, 2)\n"
            "torch.cuda.synchronize()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "ValueError" not in res.stderr
