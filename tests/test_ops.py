"""Fused ops vs the pure-PyTorch reference (docs/design.md §2-§5): values, argmins, gradients, edge cases."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ee_cuda
from ee_cuda import reference as R
from conftest import (cpu_routes, fresh_seed, gradcheck_off_switches, make_batch, sample_inputs, scatter_backward,
                      tiles_search)

FUSED = {"backend": "fused"}
HAS_AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def tol(dtype):
    return {torch.float64: 1e-9, torch.float32: 2e-4}[dtype]


def point_dist(A, p, t, q, r):
    """||a(p,t) - a(q,r)|| from materialized points A (P, T, D), elementwise over index tensors."""
    return (A[p, t] - A[q, r]).double().norm(dim=-1)


def check_pairs_output(X, pairs, labels, n, normalize, dist, index, atol):
    """dist agrees with the reference, and index attains it (ties may legitimately pick another argmin)."""
    ref_dist, ref_index = R.hard_negative_pairs(X.detach(), pairs, labels, n, normalize)
    torch.testing.assert_close(dist.double(), ref_dist.double(), atol=atol, rtol=atol)
    negative = torch.isfinite(ref_dist)
    assert torch.equal(index[~negative], ref_index[~negative])
    A = R.augmented_points(X.detach().double(), pairs, n, normalize)
    P = pairs.shape[0]
    p, q = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    p, q, idx = p[negative.cpu()], q[negative.cpu()], index[negative].cpu()
    attained = point_dist(A.cpu(), p, idx[:, 0], q, idx[:, 1])
    torch.testing.assert_close(attained, ref_dist[negative].double().cpu(), atol=atol, rtol=atol)


def check_points_output(X, pairs, labels, n, normalize, dist, index, atol):
    ref_dist, ref_index = R.hard_negative_points(X.detach(), pairs, labels, n, normalize)
    torch.testing.assert_close(dist.double(), ref_dist.double(), atol=atol, rtol=atol)
    found = torch.isfinite(ref_dist)
    assert torch.equal(index[~found], ref_index[~found])
    A = R.augmented_points(X.detach().double(), pairs, n, normalize).cpu()
    P, T = dist.shape
    p, t = torch.meshgrid(torch.arange(P), torch.arange(T), indexing="ij")
    f = found.cpu()
    idx = index.cpu()[f]
    attained = point_dist(A, p[f], t[f], idx[:, 0], idx[:, 1])
    torch.testing.assert_close(attained, ref_dist.cpu()[f].double(), atol=atol, rtol=atol)


def grads(fn, X, *args, weight=None):
    Xg = X.detach().clone().requires_grad_()
    out = fn(Xg, *args)
    out = out[0] if isinstance(out, tuple) else out
    w = weight if weight is not None else torch.randn_like(out)
    masked = torch.where(torch.isfinite(out), out * w, torch.zeros_like(out))
    (g,) = torch.autograd.grad(masked.sum(), Xg, allow_unused=True)
    return out, (torch.zeros_like(Xg) if g is None else g), w


def reference_grad(op, X, pairs, labels, n, normalize, index, w):
    """The reference's gradient of sum(w * dist) for the fused op's selection `index`: the twin's autograd where
    it selects the same points, else the gradient through the selected pairs."""
    ref = R.hard_negative_pairs if op == "pairs" else R.hard_negative_points
    if torch.equal(index, ref(X, pairs, labels, n, normalize)[1]):
        return grads(lambda x: ref(x, pairs, labels, n, normalize), X, weight=w)[1]
    return selected_pair_grad(X, pairs, n, normalize, index, w, op)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_expand_matches_reference(device, dtype):
    for X, pairs, labels, n, normalize in sample_inputs(device, dtype, n_values=(0, 1, 2, 8, 16)):
        out, g, w = grads(lambda x: ee_cuda.expand(x, pairs, n, normalize, **FUSED), X)
        ref, g_ref, _ = grads(lambda x: R.expand(x, pairs, n, normalize), X, weight=w)
        assert out.shape == (pairs.shape[0], n, X.shape[1])
        torch.testing.assert_close(out, ref, atol=tol(dtype), rtol=tol(dtype))
        torch.testing.assert_close(g, g_ref, atol=10 * tol(dtype), rtol=10 * tol(dtype))


def selected_pair_grad(X, pairs, n, normalize, index, w, op):
    """d/dX of sum(w * ||a - b||) over the outputs' selected points (a, b) as `index` names them, through the
    reference's materialized points in float64: the gradient of a minimum is that of its selected pair
    (docs/design.md §3), whichever of (near-)tied minima the selection is."""
    Xd = X.detach().double().requires_grad_()
    A = R.augmented_points(Xd, pairs, n, normalize)
    P, T = A.shape[:2]
    if op == "pairs":
        p, q = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
        t, r = index[..., 0].clamp(min=0), index[..., 1].clamp(min=0)
    else:
        p, t = torch.meshgrid(torch.arange(P), torch.arange(T), indexing="ij")
        q, r = index[..., 0].clamp(min=0), index[..., 1].clamp(min=0)
    d = (A[p, t] - A[q, r]).norm(dim=-1)
    found = index[..., 0] >= 0
    (g,) = torch.autograd.grad(torch.where(found, d * w.double(), torch.zeros_like(d)).sum(), Xd)
    return g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", ["pairs", "points"])
def test_search_matches_reference(device, dtype, op):
    """Values and argmins against the reference; gradients against the reference's where the argmins
    agree, else (a near-tie within rounding, e.g. float32 distances 3.6e-8 apart in relative terms, resolved
    differently by the two computations) against the gradient through the selected pairs."""
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    ref = R.hard_negative_pairs if op == "pairs" else R.hard_negative_points
    check = check_pairs_output if op == "pairs" else check_points_output
    seed = fresh_seed()
    for X, pairs, labels, n, normalize in sample_inputs(device, dtype, n_values=(0, 1, 2, 8, 16)):
        (dist, index) = fused(X, pairs, labels, n, normalize, **FUSED)
        check(X, pairs, labels, n, normalize, dist, index, tol(dtype))
        _, g, w = grads(lambda x: fused(x, pairs, labels, n, normalize, **FUSED), X)
        _, ref_index = ref(X, pairs, labels, n, normalize)
        if torch.equal(index, ref_index):
            _, g_ref, _ = grads(lambda x: ref(x, pairs, labels, n, normalize), X, weight=w)
        else:
            g_ref = selected_pair_grad(X.cpu(), pairs.cpu(), n, normalize, index.cpu(), w.cpu(), op).to(g)
        torch.testing.assert_close(g, g_ref, atol=20 * tol(dtype), rtol=20 * tol(dtype),
                                   msg=lambda m: f"{m}\nseed {seed}, n={n}, normalize={normalize}")


@pytest.mark.parametrize("tiles", [False, True], ids=["rows", "tiles"])
@pytest.mark.parametrize("scatter", [False, True], ids=["kernel", "scatter"])
@pytest.mark.parametrize("op", ["pairs", "points"])
def test_cpu_route_matrix(tiles, scatter, op):
    """Every CPU route, forced (the tests' switch, docs/design.md §4-§5): each forward route (rows, tiles) and
    each backward route (the CPU kernel; the CUDA backward's scatter run serially) equals the reference on both
    pair layouts, and the two forward routes are bit-identical."""
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    check = check_pairs_output if op == "pairs" else check_points_output
    seed = fresh_seed()
    for X, pairs, labels, n, normalize in sample_inputs("cpu", n_values=(0, 2)):
        with cpu_routes(tiles, scatter):
            dist, index = fused(X, pairs, labels, n, normalize, **FUSED)
            _, g, w = grads(lambda x: fused(x, pairs, labels, n, normalize, **FUSED), X)
        other = tiles_search(X, pairs, labels, n, normalize, op == "points")
        assert torch.equal(dist, other[0]) and torch.equal(index, other[1]), f"seed {seed}"
        check(X, pairs, labels, n, normalize, dist, index, 1e-9)
        g_ref = reference_grad(op, X, pairs, labels, n, normalize, index, w)
        torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=1e-9, msg=lambda m: f"{m}\nseed {seed}, n={n}")


@pytest.mark.parametrize("D", [1, 2, 33, 1024])
@pytest.mark.parametrize("op", ["pairs", "points"])
def test_search_dimensions(device, D, op):
    X, labels = make_batch(4, 4, D, device=device, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels, "all")
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    ref = R.hard_negative_pairs if op == "pairs" else R.hard_negative_points
    check = check_pairs_output if op == "pairs" else check_points_output
    for n in (0, 2):
        dist, index = fused(X, pairs, labels, n, True, **FUSED)
        check(X, pairs, labels, n, True, dist, index, 1e-9)
        _, g, w = grads(lambda x: fused(x, pairs, labels, n, True, **FUSED), X)
        _, g_ref, _ = grads(lambda x: ref(x, pairs, labels, n, True), X, weight=w)
        # In low D random points nearly tie more often; a near-tie picks between minima whose gradients
        # differ by ~1e-8, so the bound is looser than rounding alone.
        torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("P_classes", [17, 40])
def test_search_tile_boundaries(device, P_classes):
    """More pairs than one tile (16 x 16 for pairs, 128 outputs / 32 streamed pairs for points), and
    counts that are not multiples of the tile sizes."""
    X, labels = make_batch(P_classes, 2, 6, device=device, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels, "all")
    for n in (1, 3):
        d, i = ee_cuda.hard_negative_pairs(X, pairs, labels, n, **FUSED)
        check_pairs_output(X, pairs, labels, n, True, d, i, 1e-9)
        d, i = ee_cuda.hard_negative_points(X, pairs, labels, n, **FUSED)
        check_points_output(X, pairs, labels, n, True, d, i, 1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_tiles_emulated_on_cpu(dtype):
    """The CUDA search kernels' tile functions (shared-memory load, per-thread (min, argmin)), driven block
    by block on the CPU: pair counts below, at and above one tile, against the reference."""
    for classes in (1, 3, 8, 17, 40):
        X, labels = make_batch(classes, 2 + classes % 3, 6, dtype=dtype, shuffle=True)
        pairs = ee_cuda.positive_pairs(labels, "all")
        for n, normalize in [(0, True), (2, True), (3, False), (8, True)]:
            for points, check in [(False, check_pairs_output), (True, check_points_output)]:
                d, i = tiles_search(X, pairs, labels, n, normalize, points)
                check(X, pairs, labels, n, normalize, d, i, tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_fast_path_equals_tile_path_with_ties(dtype):
    """The CPU's row path and the GPU's tile path compute the same d2 and break ties the same way (docs/design.md §3:
    smallest t*T + r, resp. q*T + r; (q, p) in its own terms): exact equality on inputs full of exact
    ties (duplicated rows across classes, coinciding endpoints, shared endpoints in "all" mode)."""
    X, labels = make_batch(6, 4, 5, dtype=dtype)
    X[labels == 1] = X[labels == 0][0]            # a class of identical points
    X[labels == 2] = X[labels == 3]               # two classes on the same points
    for mode in ("all", "adjacent"):
        pairs = ee_cuda.positive_pairs(labels, mode)
        for n in (0, 1, 4):
            for points, op in [(False, ee_cuda.hard_negative_pairs), (True, ee_cuda.hard_negative_points)]:
                d, i = op(X, pairs, labels, n, **FUSED)
                d_t, i_t = tiles_search(X, pairs, labels, n, True, points)
                assert torch.equal(d, d_t)
                assert torch.equal(i, i_t)


@pytest.mark.parametrize("n", [4094, 4095])
def test_cpu_fast_path_key_split_at_float_limit(n):
    """The row path splits its float lanes' keys t*T + r through a float reciprocal while T*T <= 2^24
    (n = 4094: T*T = 2^24, keys up to 2^24 - 1), and element by element above (n = 4095): argmins equal the
    tile path's on both sides of the limit, pairs (one lane block) and points."""
    X, labels = make_batch(3, 2, 3, dtype=torch.float32)
    pairs = ee_cuda.positive_pairs(labels, "adjacent")
    for points, op in [(False, ee_cuda.hard_negative_pairs), (True, ee_cuda.hard_negative_points)]:
        d, i = op(X, pairs, labels, n, **FUSED)
        d_t, i_t = tiles_search(X, pairs, labels, n, True, points)
        assert torch.equal(d, d_t)
        assert torch.equal(i, i_t)
        found = torch.isfinite(d)  # every pair has negatives; only a pair against itself has none
        assert found.sum() == (d.numel() - len(pairs) if not points else d.numel()) and (i[found] >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_fast_path_equals_tile_path_many_pairs(dtype):
    """Random inputs with more pairs than one lane block and one L1 chunk of the row path (8 or 4 lanes,
    64 pairs), pair counts that are not multiples of them: the row path's d2 are bit-identical to the tile
    path's, so distances and argmins are equal."""
    for classes, per_class, mode in [(40, 4, "all"), (67, 2, "adjacent"), (23, 3, "all")]:
        X, labels = make_batch(classes, per_class, 9, dtype=dtype, shuffle=mode == "all")
        pairs = ee_cuda.positive_pairs(labels, mode)
        for n in (0, 3):
            for points, op in [(False, ee_cuda.hard_negative_pairs), (True, ee_cuda.hard_negative_points)]:
                d, i = op(X, pairs, labels, n, **FUSED)
                d_t, i_t = tiles_search(X, pairs, labels, n, True, points)
                assert torch.equal(d, d_t)
                assert torch.equal(i, i_t)


@pytest.mark.parametrize("op", ["pairs", "points"])
@pytest.mark.parametrize("mode, shuffle, classes", [("adjacent", False, 257), ("adjacent", False, 264), ("all", True, 257)])
def test_large_batch_blocked_gram(op, mode, shuffle, classes):
    """B >= 512: the CPU multiplies only the upper block triangle of X Xᵀ (64-row panels; B = 514 leaves
    an uneven one) and mirrors the rest, except for the pair search over ascending pairs (the sorted
    adjacent layout), which reads the upper triangle only; shuffled pairs take the mirror. The adjacent
    layout reads full lane blocks (P = 264) with vector loads, a partial last block (P = 257) element by
    element. Values, argmins and gradients against the reference, and the row path bit-identical to the
    tile path in float32 and float64."""
    X, labels = make_batch(classes, 2, 16, shuffle=shuffle)
    pairs = ee_cuda.positive_pairs(labels, mode)
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    ref = R.hard_negative_pairs if op == "pairs" else R.hard_negative_points
    check = check_pairs_output if op == "pairs" else check_points_output
    dist, index = fused(X, pairs, labels, 1, True, **FUSED)
    check(X, pairs, labels, 1, True, dist, index, 1e-9)
    for dtype in (torch.float64, torch.float32):
        Xd = X.to(dtype)
        d, i = fused(Xd, pairs, labels, 3, True, **FUSED)
        d_t, i_t = tiles_search(Xd, pairs, labels, 3, True, op == "points")
        assert torch.equal(d, d_t)
        assert torch.equal(i, i_t)
    _, g, w = grads(lambda x: fused(x, pairs, labels, 1, True, **FUSED), X)
    _, g_ref, _ = grads(lambda x: ref(x, pairs, labels, 1, True), X, weight=w)
    torch.testing.assert_close(g, g_ref, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("normalize", [True, False])
def test_pairs_backward_with_unpaired_rows(normalize):
    """Pairs (2k, 2k+1) over the first rows only: rows no pair names get no gradient (their dG rows and
    columns stay 0), the others the reference's. Pair counts below, at and above one lane block."""
    for P, extra in [(7, 3), (17, 1), (16, 0)]:
        X, labels = make_batch(P, 2, 5)
        X = torch.cat([X, torch.nn.functional.normalize(torch.randn(extra, 5, dtype=X.dtype), dim=1)])
        labels = torch.cat([labels, torch.arange(P, P + extra)])
        pairs = torch.arange(2 * P).view(-1, 2)
        for n in (0, 3):
            _, g, w = grads(lambda x: ee_cuda.hard_negative_pairs(x, pairs, labels, n, normalize, **FUSED), X)
            _, g_ref, _ = grads(lambda x: R.hard_negative_pairs(x, pairs, labels, n, normalize), X, weight=w)
            torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=1e-9)
            assert torch.all(g[2 * P:] == 0)


def pairs_backward_cases(dtype):
    """Inputs for hard_negative_pairs' backward: adjacent pairs over several tiles of dG + dG^T with
    D off the vector width, unnormalized rows, and classes of 3 ("all" pairs share rows) among unpaired rows."""
    X, labels = make_batch(100, 4, 37, dtype=dtype)
    yield X, ee_cuda.positive_pairs(labels, "adjacent"), labels, 2, True
    X, labels = make_batch(24, 2, 70, dtype=dtype, normalize_rows=False)
    yield X, ee_cuda.positive_pairs(labels, "adjacent"), labels, 8, False
    X, labels = make_batch(10, 3, 9, dtype=dtype, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels, "all")
    extra = torch.nn.functional.normalize(torch.randn(16, 9, dtype=torch.float64), dim=1).to(dtype)
    yield torch.cat([X, extra]), pairs, torch.cat([labels, torch.arange(10, 26)]), 1, True


def mismatch_transposes(dist, index, T, fraction=0.3):
    """A caller's own (dist, index): a random part of the outputs select another point pair and have another
    distance, so that (q, p) no longer mirrors (p, q)."""
    dist, index = dist.clone(), index.clone()
    P = dist.shape[0]
    change = (torch.rand(P, P) < fraction) & torch.isfinite(dist)
    index[change] = torch.randint(0, T, (int(change.sum()), 2))
    dist[change] = dist[change] * (1 + torch.rand(int(change.sum()), dtype=dist.dtype))
    return dist, index


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mirrored", [True, False])
def test_pairs_backward_equals_the_scatter(dtype, mirrored):
    """hard_negative_pairs' CPU backward (through dG) equals the CUDA backward's per-output scatter, run serially,
    on the forward's outputs, whose (q, p) mirrors (p, q), and on a caller's outputs that do not."""
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}[dtype]
    for X, pairs, labels, n, normalize in pairs_backward_cases(dtype):
        dist, index = ee_cuda.hard_negative_pairs(X, pairs, labels, n, normalize, **FUSED)
        if not mirrored:
            dist, index = mismatch_transposes(dist, index, n + 2)
        w = torch.where(torch.isfinite(dist), torch.randn_like(dist), torch.zeros_like(dist))
        w[torch.rand_like(w) < 0.1] = 0
        g = torch.ops.ee_cuda.hard_negative_pairs_backward(w, X, pairs, dist, index, n, normalize)
        g_dG = scatter_backward(w, X, pairs, dist, index, n, normalize, False)
        scale = g_dG.abs().max()
        torch.testing.assert_close(g, g_dG, atol=tol * scale, rtol=tol)
        paired = torch.zeros(X.shape[0], dtype=torch.bool)
        paired[pairs.flatten()] = True
        assert torch.all(g[~paired] == 0) and g[paired].abs().sum() > 0


ISA_DEFAULT = """
import ee_cuda
print("isa", ee_cuda.build_info()["cpu_vector_isa"])
"""


def test_aten_override_selects_the_baseline_copies():
    """The vectorized loops run in AVX2 where the CPU has it; ATen's override ATEN_CPU_CAPABILITY=default
    selects their baseline copies, as it does for ATen's own kernels."""
    for env, expected in ((os.environ, "avx2" if HAS_AVX2 else "baseline"),
                          (dict(os.environ, ATEN_CPU_CAPABILITY="default"), "baseline")):
        run = subprocess.run([sys.executable, "-c", ISA_DEFAULT], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0 and f"isa {expected}" in run.stdout, run.stderr[-2000:]


@pytest.mark.skipif(not HAS_AVX2, reason="the CPU has no AVX2: only the baseline copies can run")
@pytest.mark.parametrize("tiles", [False, True], ids=["rows", "tiles"])
@pytest.mark.parametrize("op", ["pairs", "points"])
def test_isa_copies_bit_identical(op, tiles):
    """The AVX2 and the baseline copies of the vectorized loops (forced by the tests' switch) give bit-identical
    outputs and gradients on every route, float32 and float64: the same operations in the same order, no FMA."""
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    seed = fresh_seed()
    for dtype in (torch.float64, torch.float32):
        for X, pairs, labels, n, normalize in sample_inputs("cpu", dtype, n_values=(0, 2, 8), D=37):
            runs, w = [], None
            for avx2 in (True, False):
                with cpu_routes(tiles, avx2=avx2):
                    dist, index = fused(X, pairs, labels, n, normalize, **FUSED)
                    _, g, w = grads(lambda x: fused(x, pairs, labels, n, normalize, **FUSED), X, weight=w)
                runs.append((dist, index, g))
            for a, b in zip(*runs):
                assert torch.equal(a, b), f"seed {seed}, {dtype}, n={n}, normalize={normalize}"


@pytest.mark.parametrize("op", ["pairs", "points"])
def test_key_overflow_takes_the_tiles(op):
    """A search whose keys would overflow the row path's lanes takes the tile path: forced with a small key
    limit (the tests' switch), its outputs equal the row path's bit for bit and the gradient the reference's."""
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    seed = fresh_seed()
    for X, pairs, labels, n, normalize in sample_inputs("cpu", n_values=(0, 2)):
        with cpu_routes(key_limit=0):
            dist, index = fused(X, pairs, labels, n, normalize, **FUSED)
            _, g, w = grads(lambda x: fused(x, pairs, labels, n, normalize, **FUSED), X)
        rows = fused(X, pairs, labels, n, normalize, **FUSED)
        assert torch.equal(dist, rows[0]) and torch.equal(index, rows[1]), f"seed {seed}"
        g_ref = reference_grad(op, X, pairs, labels, n, normalize, index, w)
        torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=1e-9, msg=lambda m: f"{m}\nseed {seed}, n={n}")


@pytest.mark.parametrize("op", ["pairs", "points"])
def test_cuda_backward_scatter_emulated_on_cpu(op):
    """The CUDA backward adds every output's dG terms atomically; its per-output function, run serially on
    the CPU, must give the reference's gradient."""
    X, labels = make_batch(5, 4, 7, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels, "all")
    fused = ee_cuda.hard_negative_pairs if op == "pairs" else ee_cuda.hard_negative_points
    ref = R.hard_negative_pairs if op == "pairs" else R.hard_negative_points
    for n, normalize in [(0, True), (2, True), (3, False), (8, True)]:
        dist, index = fused(X, pairs, labels, n, normalize, **FUSED)
        _, g_ref, w = grads(lambda x: ref(x, pairs, labels, n, normalize), X)
        w = torch.where(torch.isfinite(dist), w, torch.zeros_like(w))
        g = scatter_backward(w, X, pairs, dist, index, n, normalize, op == "points")
        torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=1e-9)


def test_single_class_is_all_inf(device):
    X, labels = make_batch(1, 6, 5, device=device)
    pairs = ee_cuda.positive_pairs(labels)
    for fused in (ee_cuda.hard_negative_pairs, ee_cuda.hard_negative_points):
        dist, index = fused(X, pairs, labels, 2, **FUSED)
        assert torch.isinf(dist).all() and (index == -1).all()
        Xg = X.clone().requires_grad_()
        d, _ = fused(Xg, pairs, labels, 2, **FUSED)
        (g,) = torch.autograd.grad(torch.where(torch.isfinite(d), d, 0).sum(), Xg)
        assert torch.equal(g, torch.zeros_like(g))


def test_one_pair_and_empty_batch(device):
    X, labels = make_batch(1, 2, 3, device=device)
    pairs = ee_cuda.positive_pairs(labels)
    d, i = ee_cuda.hard_negative_pairs(X, pairs, labels, 3, **FUSED)
    assert d.shape == (1, 1) and torch.isinf(d).all() and (i == -1).all()
    assert ee_cuda.expand(X, pairs, 3, **FUSED).shape == (1, 3, 3)
    X0 = torch.empty(0, 4, dtype=torch.float64, device=device)
    l0 = torch.empty(0, dtype=torch.long, device=device)
    p0 = ee_cuda.positive_pairs(l0)
    assert p0.shape == (0, 2)
    assert ee_cuda.expand(X0, p0, 2, **FUSED).shape == (0, 2, 4)
    d, i = ee_cuda.hard_negative_pairs(X0, p0, l0, 2, **FUSED)
    assert d.shape == (0, 0) and i.shape == (0, 0, 2)
    d, i = ee_cuda.hard_negative_points(X0, p0, l0, 2, **FUSED)
    assert d.shape == (0, 4) and i.shape == (0, 4, 2)
    a, l = ee_cuda.embedding_aug(X0, l0, 2, 3, **FUSED)
    assert a.shape == (0, 4) and l.shape == (0,)


def test_non_contiguous_inputs(device):
    X, labels = make_batch(4, 4, 10, device=device, shuffle=True)
    Xt = X.t().contiguous().t()  # same values, column-major strides
    Xs = torch.cat([X, X], dim=1)[:, ::2]  # strided view
    pairs = ee_cuda.positive_pairs(labels).flip(1).t().contiguous().t()  # (j, i), column-major strides
    assert not Xt.is_contiguous() and not Xs.is_contiguous() and not pairs.is_contiguous()
    for Xn in (Xt, Xs):
        for fused in (ee_cuda.hard_negative_pairs, ee_cuda.hard_negative_points):
            d, i = fused(Xn, pairs, labels, 2, **FUSED)
            d2, i2 = fused(Xn.contiguous(), pairs.contiguous(), labels, 2, **FUSED)
            assert torch.equal(d, d2) and torch.equal(i, i2)
        torch.testing.assert_close(ee_cuda.expand(Xn, pairs, 2, **FUSED), R.expand(Xn, pairs, 2))


def test_duplicate_points(device):
    """Exact duplicates across classes: zero distances, ties; values still match and gradients stay finite."""
    X, labels = make_batch(3, 4, 5, device=device)
    X[4] = X[0]   # class 1 holds a copy of a class-0 point
    X[9] = X[1]
    X[3] = X[2]   # and a same-class duplicate: a pair whose synthetic points coincide
    pairs = ee_cuda.positive_pairs(labels)
    for n in (0, 2):
        d, i = ee_cuda.hard_negative_pairs(X, pairs, labels, n, **FUSED)
        check_pairs_output(X, pairs, labels, n, True, d, i, 1e-7)
        d, i = ee_cuda.hard_negative_points(X, pairs, labels, n, **FUSED)
        check_points_output(X, pairs, labels, n, True, d, i, 1e-7)
        for fused in (ee_cuda.hard_negative_pairs, ee_cuda.hard_negative_points):
            _, g, _ = grads(lambda x: fused(x, pairs, labels, n, True, **FUSED), X)
            assert torch.isfinite(g).all()


def test_near_duplicate_points_float32(device):
    """Cancellation in |a|^2 + |b|^2 - 2<a,b>: distances of 1e-3 between float32 points stay accurate to
    float32's own error, and never go negative or NaN."""
    X, labels = make_batch(2, 4, 64, device=device, dtype=torch.float64)
    X[4] = torch.nn.functional.normalize(X[0] + 1e-3 * torch.randn_like(X[0]), dim=0)
    X = X.float()
    pairs = ee_cuda.positive_pairs(labels)
    d, i = ee_cuda.hard_negative_points(X, pairs, labels, 2, **FUSED)
    d64, _ = R.hard_negative_points(X.double(), pairs, labels, 2)
    assert (d >= 0).all() and torch.isfinite(d).all()
    torch.testing.assert_close(d.double(), d64, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("n", [1, 3, 5, 9])
def test_antipodal_endpoints(device, n):
    """x_j = -x_i: for odd n the middle synthetic point is u = 0 exactly, which F.normalize maps to 0
    (n = 5, 9: weights that are not powers of two, where a fused multiply-add would leave rounding noise).
    The zero point is equidistant from every unit synthetic point, so the other class's originals get
    norms 0.5 and 0.7: then the zero point's nearest negative is unique and the gradients comparable
    (and x_i has norm 1.5, so that its normalized copies differ from the originals)."""
    X, labels = make_batch(2, 2, 4, device=device)
    X[0] *= 1.5
    X[1] = -X[0]
    X[2] *= 0.5
    X[3] *= 0.7
    pairs = ee_cuda.positive_pairs(labels, "adjacent")
    out = ee_cuda.expand(X, pairs, n, **FUSED)
    assert torch.equal(out[0, (n + 1) // 2 - 1], torch.zeros_like(out[0, 0]))
    torch.testing.assert_close(out, R.expand(X, pairs, n))
    for fused, ref, check in [(ee_cuda.hard_negative_pairs, R.hard_negative_pairs, check_pairs_output),
                              (ee_cuda.hard_negative_points, R.hard_negative_points, check_points_output)]:
        d, i = fused(X, pairs, labels, n, **FUSED)
        check(X, pairs, labels, n, True, d, i, 1e-9)
        if n > 3:  # points t < (n+1)/2 all equal x/|x| but split their gradient differently: true ties
            continue
        _, g, w = grads(lambda x: fused(x, pairs, labels, n, True, **FUSED), X)
        _, g_ref, _ = grads(lambda x: ref(x, pairs, labels, n, True), X, weight=w)
        torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-7 * float(g_ref.abs().max()))


def test_nan_in_nan_out(device):
    X, labels = make_batch(3, 2, 4, device=device)
    X[2, 1] = float("nan")
    pairs = ee_cuda.positive_pairs(labels)
    d, _ = ee_cuda.hard_negative_pairs(X, pairs, labels, 2, **FUSED)
    assert torch.isnan(d[0, 1]) and torch.isnan(d[1, 0]) and torch.isnan(d[1, 2])
    assert torch.isfinite(d[0, 2])
    d, _ = ee_cuda.hard_negative_points(X, pairs, labels, 2, **FUSED)
    assert torch.isnan(d).any(dim=1).all()  # every pair has pair 1 among its negatives



@pytest.mark.parametrize("points", [False, True], ids=["pairs", "points"])
def test_nan_argmin_is_the_first_nan(points):
    """A NaN minimum has the index of the first NaN candidate in the tie order, on the tile path (the GPU's
    code, emulated) and through the public op. Through the Gram identity a NaN coordinate makes every point
    of its pair NaN (0 * NaN), so: a NaN (p, q) has index (0, 0); a NaN (p, t) has (q, 0) with q the first
    negative pair holding a NaN row, or the first negative pair at all when p holds one."""
    seed = fresh_seed()
    X, labels = make_batch(4, 4, 6)
    X[3, 2] = float("nan")
    X[9, 0] = float("nan")
    op = ee_cuda.hard_negative_points if points else ee_cuda.hard_negative_pairs
    for mode in ("adjacent", "all"):
        pairs = ee_cuda.positive_pairs(labels, mode)
        has_nan = torch.isnan(X[pairs]).any(dim=(1, 2))
        plabel = labels[pairs[:, 0]]
        negative = plabel[:, None] != plabel[None, :]
        for n, normalize in ((0, True), (2, True), (3, False)):
            for d, i in (tiles_search(X, pairs, labels, n, normalize, points),
                         op(X, pairs, labels, n, normalize, **FUSED)):
                msg = f"seed={seed} mode={mode} n={n} normalize={normalize}"
                if points:
                    expect_nan = (negative & has_nan[None, :]).any(dim=1) | has_nan
                    first_q = torch.where(has_nan[:, None], negative, negative & has_nan[None, :]).int().argmax(dim=1)
                    assert torch.equal(torch.isnan(d).all(dim=1), expect_nan), msg
                    assert not torch.isnan(d[~expect_nan]).any(), msg
                    assert torch.equal(i[expect_nan][..., 0], first_q[expect_nan, None].expand(-1, n + 2)), msg
                    assert (i[expect_nan][..., 1] == 0).all(), msg
                else:
                    expect_nan = negative & (has_nan[:, None] | has_nan[None, :])
                    assert torch.equal(torch.isnan(d), expect_nan), msg
                    assert (i[expect_nan] == 0).all(), msg


@pytest.mark.parametrize("op", ["pairs", "points"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_run_in_float32(device, dtype, op):
    """Half inputs are computed in float32 and rounded once, at the output, forward and backward: dist, index
    and dX equal those of the same input in float32, rounded to the half dtype. (The registered op returns
    its dist in float32, which autograd saves for the backward; the public op rounds it.)"""
    seed = fresh_seed()
    X, labels = make_batch(6, 4, 16, device=device, dtype=dtype)
    pairs = ee_cuda.positive_pairs(labels, "all")
    fn = getattr(ee_cuda, f"hard_negative_{op}")
    grads, outs = [], []
    w = None
    for Xin in (X.clone(), X.float()):
        Xin.requires_grad_(True)
        d, i = fn(Xin, pairs, labels, 2, **FUSED)
        w = torch.randn(d.shape, device=device).to(dtype) if w is None else w  # representable in both dtypes
        loss = (torch.where(torch.isfinite(d), d, torch.zeros_like(d)) * w.to(d.dtype)).sum()
        grads.append(torch.autograd.grad(loss, Xin)[0])
        outs.append((d, i))
    (dh, ih), (df, i_f) = outs
    assert dh.dtype == dtype and grads[0].dtype == dtype
    assert torch.equal(dh, df.to(dtype)) and torch.equal(ih, i_f), f"seed={seed}"
    assert torch.equal(grads[0], grads[1].to(dtype)), f"seed={seed}"
    raw = getattr(torch.ops.ee_cuda, f"hard_negative_{op}")(X, pairs, labels, 2, True)[0]
    assert raw.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_reference_error(device, dtype):
    """Half inputs accumulate in float32; their error against float64 must be no worse than (a small
    multiple of) the plain reference's own error in that dtype."""
    X, labels = make_batch(4, 4, 32, device=device, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels)
    Xh = X.to(dtype)
    for fused, ref in [(ee_cuda.hard_negative_pairs, R.hard_negative_pairs),
                       (ee_cuda.hard_negative_points, R.hard_negative_points)]:
        exact, _ = ref(Xh.double(), pairs, labels, 2)
        plain, _ = ref(Xh, pairs, labels, 2)
        d, _ = fused(Xh, pairs, labels, 2, **FUSED)
        assert d.dtype == dtype
        m = torch.isfinite(exact)
        ref_err = (plain.double() - exact)[m].abs().max()
        err = (d.double() - exact)[m].abs().max()
        assert err <= 2 * ref_err + 1e-3, (err, ref_err)
    out = ee_cuda.expand(Xh, pairs, 2, **FUSED)
    exact = R.expand(Xh.double(), pairs, 2)
    assert out.dtype == dtype
    assert (out.double() - exact).abs().max() <= 2 * (R.expand(Xh, pairs, 2).double() - exact).abs().max() + 1e-3


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(device, normalize):
    seed = fresh_seed()
    X, labels = make_batch(3, 2, 3, device=device)
    X = X.requires_grad_()
    pairs = ee_cuda.positive_pairs(labels)
    n = 2

    def search(x):
        d, _ = ee_cuda.hard_negative_pairs(x, pairs, labels, n, normalize, **FUSED)
        p, _ = ee_cuda.hard_negative_points(x, pairs, labels, n, normalize, **FUSED)
        return d[torch.isfinite(d)], p

    gradcheck_off_switches(search, lambda: (make_batch(3, 2, 3, device=device)[0].requires_grad_(),),
                           f"seed={seed}")
    assert torch.autograd.gradcheck(lambda x: ee_cuda.expand(x, pairs, n, normalize, **FUSED), (X,))


def test_opcheck(device):
    X, labels = make_batch(3, 4, 5, device=device, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels)
    Xg = X.clone().requires_grad_()
    ops = torch.ops.ee_cuda
    for normalize in (True, False):
        torch.library.opcheck(ops.expand.default, (Xg, pairs, 2, normalize))
        torch.library.opcheck(ops.hard_negative_pairs.default, (Xg, pairs, labels, 2, normalize))
        torch.library.opcheck(ops.hard_negative_points.default, (Xg, pairs, labels, 2, normalize))
    d, i = ops.hard_negative_pairs(X, pairs, labels, 2, True)
    g = torch.where(torch.isfinite(d), torch.randn_like(d), 0)
    torch.library.opcheck(ops.hard_negative_pairs_backward.default, (g, X, pairs, d, i, 2, True))
    d, i = ops.hard_negative_points(X, pairs, labels, 2, True)
    torch.library.opcheck(ops.hard_negative_points_backward.default, (torch.randn_like(d), X, pairs, d, i, 2, True))
    torch.library.opcheck(ops.expand_backward.default, (torch.randn(pairs.shape[0], 2, 5, dtype=X.dtype, device=device),
                                                        X, pairs, 2, True))


def test_torch_compile_fullgraph(device):
    X, labels = make_batch(4, 4, 8, device=device, dtype=torch.float32, shuffle=True)
    pairs = ee_cuda.positive_pairs(labels)

    def loss_fn(x):
        d, _ = ee_cuda.hard_negative_pairs(x, pairs, labels, 2)
        p, _ = ee_cuda.hard_negative_points(x, pairs, labels, 2)
        e = ee_cuda.expand(x, pairs, 2)
        return torch.where(torch.isfinite(d), d, 0).sum() + p.sum() + e.square().sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    Xa, Xb = X.clone().requires_grad_(), X.clone().requires_grad_()
    la, lb = compiled(Xa), loss_fn(Xb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(Xa.grad, Xb.grad)


def test_embedding_aug_matches_official_layout(device):
    """Transcription of the official get_embedding_aug loop (clovaai/embedding-expansion), row by row."""
    X, labels = make_batch(3, 4, 6, device=device)
    n = 3
    B = X.shape[0]
    swap = [i + 1 if i % 2 == 0 else i - 1 for i in range(B)]
    rows, labs = [X], [labels]
    for n_idx in range(n):
        left = float(n_idx + 1)
        right = float(n + 1) - left
        inner = (X[swap] * left + X * right) / float(n + 1)
        rows.append(torch.nn.functional.normalize(inner, dim=1, eps=1e-12))
        labs.append(labels)
    official, official_labels = torch.cat(rows), torch.cat(labs)
    for backend in ("fused", "reference"):
        aug, aug_labels = ee_cuda.embedding_aug(X, labels, 4, n, backend=backend)
        torch.testing.assert_close(aug, official, atol=1e-12, rtol=0)
        assert torch.equal(aug_labels, official_labels)
    Xg = X.clone().requires_grad_()
    Xr = X.clone().requires_grad_()
    w = torch.randn(B * (n + 1), 6, dtype=X.dtype, device=device)
    (ee_cuda.embedding_aug(Xg, labels, 4, n, **FUSED)[0] * w).sum().backward()
    (R.embedding_aug(Xr, labels, 4, n)[0] * w).sum().backward()
    torch.testing.assert_close(Xg.grad, Xr.grad)


def test_positive_pairs():
    labels = torch.tensor([3, 1, 3, 3, 1, 7])
    assert ee_cuda.positive_pairs(labels).tolist() == [[0, 2], [0, 3], [1, 4], [2, 3]]
    labels = torch.randint(0, 5, (40,))
    pairs = ee_cuda.positive_pairs(labels)
    expected = [[i, j] for i in range(40) for j in range(i + 1, 40) if labels[i] == labels[j]]
    assert pairs.tolist() == expected and pairs.dtype == torch.long
    assert pairs.is_contiguous()  # else every op copies it, forward and backward
    adj = ee_cuda.positive_pairs(torch.tensor([5, 5, 2, 2]), "adjacent")
    assert adj.tolist() == [[0, 1], [2, 3]] and adj.is_contiguous()


def test_backend_selection_and_fallback_warning(monkeypatch):
    X, labels = make_batch(3, 2, 4)
    pairs = ee_cuda.positive_pairs(labels)
    with ee_cuda.use_backend("reference"):
        d_ref, _ = ee_cuda.hard_negative_pairs(X, pairs, labels, 1)
    d_fused, _ = ee_cuda.hard_negative_pairs(X, pairs, labels, 1, backend="fused")
    torch.testing.assert_close(d_ref, d_fused)
    with pytest.raises(ValueError, match="backend"):
        ee_cuda.expand(X, pairs, 1, backend="fast")
    from ee_cuda import _backend
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        ee_cuda.expand(X, pairs, 1)
    with pytest.raises(RuntimeError, match="backend='fused'"):
        ee_cuda.expand(X, pairs, 1, backend="fused")


@pytest.mark.parametrize("mode", ["adjacent", "all"])
def test_cpu_backward_under_deterministic_mode(mode):
    """The CPU kernels are deterministic: under torch.use_deterministic_algorithms(True) every op's forward
    and backward run (no alert) and repeat bit for bit, on both pair layouts."""
    seed = fresh_seed()
    X, labels = make_batch(8, 4, 16, dtype=torch.float32)
    pairs = ee_cuda.positive_pairs(labels, mode)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            Xg = X.clone().requires_grad_(True)
            total = ee_cuda.expand(Xg, pairs, 2, backend="fused").sum()
            for op in (ee_cuda.hard_negative_pairs, ee_cuda.hard_negative_points):
                dist, _ = op(Xg, pairs, labels, 2, backend="fused")
                total = total + torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist)).sum()
            grads.append(torch.autograd.grad(total, Xg)[0])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(grads[0], grads[1]), f"seed={seed}"


@pytest.mark.parametrize("mode", ["adjacent", "all"])
def test_cpu_kernels_on_several_threads(mode, torch_threads):
    """The CPU kernels' parallel regions (OpenMP through at::parallel_for): forward and backward of every op
    on 1, 2 and 3 threads agree to rounding (a race would not), and repeat bit for bit on a given count. The
    batch is large enough for every region to split (B = 512: the blocked Gram and its mirror)."""
    seed = fresh_seed()
    X, labels = make_batch(128, 4, 24, dtype=torch.float64)
    pairs = ee_cuda.positive_pairs(labels, mode)

    def run():
        Xg = X.clone().requires_grad_(True)
        outs = [ee_cuda.expand(Xg, pairs, 3, backend="fused")]
        outs += [op(Xg, pairs, labels, 3, backend="fused")[0]
                 for op in (ee_cuda.hard_negative_pairs, ee_cuda.hard_negative_points)]
        total = sum(torch.where(torch.isfinite(o), o, torch.zeros_like(o)).sum() for o in outs)
        return outs + [torch.autograd.grad(total, Xg)[0]]

    torch_threads(1)
    expect = run()
    for threads in (2, 3):
        torch_threads(threads)
        first, second = run(), run()
        for a, b, e in zip(first, second, expect):
            assert torch.equal(a, b), f"seed={seed} threads={threads}"
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=lambda m: f"seed={seed} {threads}: {m}")
