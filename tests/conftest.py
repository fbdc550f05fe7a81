"""Shared fixtures: the devices to run on, and a factory of fresh random op inputs (extension-cpp style)."""
from __future__ import annotations

import contextlib
import random

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fresh_seed() -> int:
    """Seed torch from the OS and return the seed, so that a failure message can name it."""
    seed = random.SystemRandom().randrange(2 ** 31)
    torch.manual_seed(seed)
    return seed


def gradient_jump(fn, inputs, radius: float = 2e-6, probes: int = 8) -> float:
    """The largest change of fn's gradient (of a fixed random weighting of its outputs) from ``inputs`` to random
    points about ``radius`` away, relative to 1 + its largest entry. Where the gradient is continuous it reads
    about 1e-5 or less; where a hard-negative selection (a minimum over candidates) or a relu switches that
    close, 1e-2 and more, and gradcheck's finite differences there straddle two gradients
    (tests/test_gradcheck_inputs.py)."""
    weights = None

    def grad_at(xs):
        nonlocal weights
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        out = fn(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        if weights is None:
            weights = [torch.randn_like(o) for o in outs]
        total = sum((o * w).sum() for o, w in zip(outs, weights))
        return torch.cat([g.flatten() for g in torch.autograd.grad(total, xs)])

    g0 = grad_at(inputs)
    jumps = [(grad_at([x + radius * torch.randn_like(x) for x in inputs]) - g0).abs().max() for _ in range(probes)]
    return (max(jumps) / (1 + g0.abs().max())).item()


def gradcheck_off_switches(fn, draw, msg: str, max_draws: int = 20, **kwargs):
    """torch.autograd.gradcheck(fn, inputs, **kwargs) at the first inputs ``draw()`` gives (tensors requiring
    grad) whose gradient_jump() is under 1e-3: finite differences are a test of the backward only where the
    function is differentiable. A failure names ``msg`` (the seed)."""
    for _ in range(max_draws):
        inputs = tuple(draw())
        if gradient_jump(fn, inputs) < 1e-3:
            break
    else:
        pytest.fail(f"{msg}: none of {max_draws} draws is away from a switch of the gradient")
    try:
        torch.autograd.gradcheck(fn, inputs, **kwargs)
    except torch.autograd.gradcheck.GradcheckError as e:
        raise AssertionError(f"{msg}: {e}") from None


@pytest.fixture(autouse=True)
def fresh_seed_per_test():
    """Every test starts from a fresh OS seed, printed: a failure's captured output names it for replay."""
    print(f"torch.manual_seed({fresh_seed()})")


@pytest.fixture(scope="module")
def one_thread():
    """Small float64 batches: one intra-op thread is faster, and far faster on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_threads():
    """A setter of torch's intra-op threads for the test; the count before it is restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def make_batch(classes: int, per_class: int, D: int, *, device="cpu", dtype=torch.float64, normalize_rows=True,
               generator=None, shuffle=False):
    """Embeddings (classes*per_class, D) and labels in the adjacent layout (rows 2k, 2k+1 share a label
    when per_class is even); rows L2-normalized by default, as in docs/design.md §12."""
    B = classes * per_class
    X = torch.randn(B, D, dtype=torch.float64, generator=generator)
    if normalize_rows:
        X = torch.nn.functional.normalize(X, dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    if shuffle:
        perm = torch.randperm(B, generator=generator)
        X, labels = X[perm], labels[perm]
    return X.to(device=device, dtype=dtype), labels.to(device)


@contextlib.contextmanager
def cpu_routes(tiles: bool = False, scatter: bool = False, avx2: bool | None = None,
               key_limit: int | None = None):
    """The CPU kernels' routes inside the block (a switch for the tests only, docs/design.md §4-§5): every
    search on the CUDA kernels' tiles (``tiles``); the searches' backward as the CUDA kernels' per-output
    scatter, run serially (``scatter``); the ISA of the vectorized loops (``avx2``: True, False for the
    baseline copies, None for the default); the row path's largest key (``key_limit``: searches whose keys
    exceed it take the tiles; None for the int32 maximum)."""
    from ee_cuda import _backend
    _backend._C._set_cpu_routes(tiles, scatter, avx2, key_limit)
    try:
        yield
    finally:
        _backend._C._set_cpu_routes(False, False)


def tiles_search(X, pairs, labels, n, normalize, points):
    """A search on the CPU's tile path: the CUDA kernels' tile functions, driven block by block."""
    import ee_cuda
    op = ee_cuda.hard_negative_points if points else ee_cuda.hard_negative_pairs
    with cpu_routes(tiles=True):
        return op(X, pairs, labels, n, normalize, backend="fused")


def scatter_backward(grad, X, pairs, dist, index, n, normalize, points):
    """A search's backward through the CUDA kernels' per-output scatter, run serially on the CPU."""
    ops = torch.ops.ee_cuda
    op = ops.hard_negative_points_backward if points else ops.hard_negative_pairs_backward
    with cpu_routes(scatter=True):
        return op(grad, X, pairs, dist, index, n, normalize)


def sample_inputs(device, dtype=torch.float64, *, n_values=(0, 1, 2, 8), D=8):
    """Fresh random (X, pairs, labels, n, normalize) over layouts, pair modes, n and normalize."""
    from ee_cuda import positive_pairs
    cases = []
    for classes, per_class in [(2, 2), (3, 4), (5, 2)]:
        X, labels = make_batch(classes, per_class, D, device=device, dtype=dtype)
        for mode in ("all", "adjacent"):
            pairs = positive_pairs(labels, mode)
            for n in n_values:
                for normalize in (True, False):
                    cases.append((X, pairs, labels, n, normalize))
    return cases
