"""ee_cuda.losses against the materialized twins of ee_cuda.reference.losses (docs/design.md §9).

Every test draws fresh random inputs (the seed is in the failure message). float64 comparisons use small
batches; gradcheck runs on tiny inputs only.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import ee_cuda
from ee_cuda import losses as L
from ee_cuda.reference import losses as R
from conftest import fresh_seed, gradcheck_off_switches

LOSSES = ["hphn", "triplet", "lifted", "npair", "ms"]
# classes x per class, from 2x2 to 64x4
LAYOUTS = [(2, 2), (3, 4), (8, 2), (16, 4), (64, 4)]
N_L2 = [(0, True), (2, True), (2, False), (8, True), (8, False)]  # l2_norm is moot at n=0


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(classes, per_class, D=8, dtype=torch.float64, shuffle=False, normalize=False):
    """Adjacent layout (rows 2k, 2k+1 share a label) unless ``shuffle``."""
    labels = torch.randperm(10 * classes)[:classes].repeat_interleave(per_class)
    X = torch.randn(classes * per_class, D, dtype=dtype)
    if normalize:
        X = F.normalize(X, dim=1)
    if shuffle:
        perm = torch.randperm(labels.shape[0])
        labels, X = labels[perm], X[perm]
    return X.requires_grad_(True), labels


def make_losses(name, n, l2, reduction="mean", pair_mode="all", **kw):
    """The fused loss module and its twin as a function of (X, labels)."""
    if name == "hphn":
        mod = L.HPHNTripletLoss(n_inner_pts=n, l2_norm=l2, reduction=reduction, **kw)
        return mod, lambda X, y: R.hphn_triplet(X, y, n_inner_pts=n, l2_norm=l2, reduction=reduction, **kw)
    cls, fn = {"triplet": (L.TripletLoss, R.triplet), "lifted": (L.LiftedStructureLoss, R.lifted_structure),
               "npair": (L.NPairLoss, R.npair), "ms": (L.MultiSimilarityLoss, R.multi_similarity)}[name]
    mod = cls(n_inner_pts=n, l2_norm=l2, reduction=reduction, pairs=pair_mode, **kw)
    return mod, lambda X, y: fn(X, y, n_inner_pts=n, l2_norm=l2, reduction=reduction, pair_mode=pair_mode, **kw)


def assert_value_and_grad(mod, twin, X, y, seed, rtol=1e-9, atol=1e-10):
    a = mod(X, y)
    b = twin(X, y)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"seed={seed}: value: {m}")
    w = torch.randn_like(a) if a.dim() else None
    ga, = torch.autograd.grad(a if w is None else (a * w).sum(), X)
    gb, = torch.autograd.grad(b if w is None else (b * w).sum(), X)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol, msg=lambda m: f"seed={seed}: grad: {m}")
    assert torch.isfinite(a).all() and torch.isfinite(ga).all()
    return a, ga


def _twin_cases():
    """Every loss x layout x pair mode x (n, l2_norm), less two groups:
    HPHN with n > 0 needs the adjacent layout (its ValueError is tested below), and at 64x4 only
    l2_norm=True and, for all pairs, n <= 2 (the twins materialize (P*T)^2 matrices: 64x4 all pairs at
    n=8 is 3840^2, ~6 s per loss on a CI CPU)."""
    cases = []
    for name in LOSSES:
        for classes, per_class in LAYOUTS:
            for mode in ("adjacent", "all"):
                for n, l2 in N_L2:
                    if name == "hphn" and mode == "all" and n > 0:
                        continue
                    if classes * per_class >= 256 and (not l2 or (mode == "all" and n == 8)):
                        continue
                    cases.append(pytest.param(name, (classes, per_class), mode, n, l2,
                                              id=f"{name}-{classes}x{per_class}-{mode}-n{n}-{'l2' if l2 else 'raw'}"))
    return cases


@pytest.mark.parametrize("name,layout,mode,n,l2", _twin_cases())
def test_loss_matches_twin(name, layout, mode, n, l2):
    classes, per_class = layout
    seed = fresh_seed()
    # "all": shuffled rows (any layout); "adjacent": the official sampler's layout
    X, y = make_batch(classes, per_class, shuffle=(mode == "all"))
    mod, twin = make_losses(name, n, l2, pair_mode=mode)
    a, _ = assert_value_and_grad(mod, twin, X, y, seed)
    assert a.item() >= 0


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("name", LOSSES)
def test_reductions(name, reduction):
    seed = fresh_seed()
    X, y = make_batch(4, 4)
    mod, twin = make_losses(name, 2, True, reduction=reduction)
    a, _ = assert_value_and_grad(mod, twin, X, y, seed)
    per = make_losses(name, 2, True, reduction="none")[0](X, y)
    expect_len = X.shape[0] if name == "hphn" else ee_cuda.positive_pairs(y, "all").shape[0]
    assert per.shape == (expect_len,)
    if reduction == "sum":
        torch.testing.assert_close(a, per.sum())
    elif reduction == "mean":
        torch.testing.assert_close(a, per.mean())


@pytest.mark.parametrize("name", ["triplet", "lifted", "npair", "ms"])
def test_explicit_pairs_argument(name):
    seed = fresh_seed()
    X, y = make_batch(5, 4, shuffle=True)
    pairs = ee_cuda.positive_pairs(y, "all")
    pairs = pairs[torch.randperm(pairs.shape[0])[: max(2, pairs.shape[0] // 2)]]
    mod, _ = make_losses(name, 2, True)
    fn = {"triplet": R.triplet, "lifted": R.lifted_structure, "npair": R.npair, "ms": R.multi_similarity}[name]
    assert_value_and_grad(lambda X_, y_: mod(X_, y_, pairs=pairs),
                          lambda X_, y_: fn(X_, y_, n_inner_pts=2, pairs=pairs), X, y, seed)


@pytest.mark.parametrize("name", LOSSES)
def test_hyperparameters_reach_the_loss(name):
    """Non-default hyperparameters change the value and still match the twin."""
    seed = fresh_seed()
    X, y = make_batch(4, 4)
    kw = {"hphn": dict(margin=0.7), "triplet": dict(margin=1.3), "lifted": dict(margin=0.3),
          "npair": {}, "ms": dict(alpha=3.0, beta=20.0, base=0.2)}[name]
    mod, twin = make_losses(name, 2, True, **kw)
    a, _ = assert_value_and_grad(mod, twin, X, y, seed)
    if kw:
        assert not torch.allclose(a, make_losses(name, 2, True)[0](X, y)), f"seed={seed}"


# ------------------------------------------------------------------------------------------------
# HPHN: the official numbers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("n,l2", N_L2)
@pytest.mark.parametrize("layout", [(2, 2), (4, 2), (8, 4), (32, 4)], ids=lambda c: f"{c[0]}x{c[1]}")
def test_hphn_per_anchor_equals_official(layout, n, l2, soft_margin):
    """Same per-anchor values as the official hphn_triplet.py with get_embedding_aug (line-by-line port)."""
    seed = fresh_seed()
    X, y = make_batch(*layout, D=16, normalize=True)  # the official model L2-normalizes its embeddings
    mod = L.HPHNTripletLoss(margin=0.2, soft_margin=soft_margin, n_inner_pts=n, l2_norm=l2, reduction="none")
    a = mod(X, y)
    b = R.hphn_triplet_official(X, y, margin=0.2, soft_margin=soft_margin, n_inner_pts=n, l2_norm=l2)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"seed={seed}: {m}")
    ga, = torch.autograd.grad(a.sum(), X)
    gb, = torch.autograd.grad(b.sum(), X)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10, msg=lambda m: f"seed={seed}: {m}")


def test_hphn_official_float32():
    """float32, as the official code runs: per-anchor values agree to float32 rounding."""
    seed = fresh_seed()
    X, y = make_batch(16, 4, D=64, dtype=torch.float32, normalize=True)
    a = L.HPHNTripletLoss(n_inner_pts=2, reduction="none")(X, y)
    b = R.hphn_triplet_official(X, y, n_inner_pts=2)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("n,l2", [(1, True), (2, True), (5, False)])
def test_hphn_negatives_via_hard_negative_points(n, l2):
    """The reasoning behind the fused HPHN: with pairs (i, i^1) for all i, min_{t<=n} of
    hard_negative_points equals the official d_an over the (n+1)B augmented rows; so does the B/2-pair form
    the loss runs."""
    seed = fresh_seed()
    X, y = make_batch(6, 4)
    B = X.shape[0]
    rows = torch.arange(B)
    hn, idx = ee_cuda.hard_negative_points(X, torch.stack([rows, rows ^ 1], 1), y, n, l2)
    d_an = hn[:, : n + 1].min(dim=1).values
    aug, aug_y = ee_cuda.reference.embedding_aug(X, y, 2, n, l2)
    D = torch.cdist(aug, aug)
    D = torch.where(aug_y[:, None] == aug_y[None, :], torch.full_like(D, float("inf")), D)
    official = D.min(dim=1).values.view(n + 1, B).min(dim=0).values
    torch.testing.assert_close(d_an, official, rtol=1e-9, atol=1e-10, msg=lambda m: f"seed={seed}: {m}")
    # and the chosen negatives are never of the anchor's label
    q = idx[:, : n + 1, 0]
    assert (y[q] != y[:, None]).all()
    # What the loss runs: the B/2 adjacent pairs hold every augmented row once (G_t[2k+1] = a(k, n+1-t)),
    # anchor 2k takes t <= n and anchor 2k+1 takes t >= 1.
    hk, _ = ee_cuda.hard_negative_points(X, ee_cuda.positive_pairs(y, "adjacent"), y, n, l2)
    d_adj = torch.stack([hk[:, : n + 1].min(dim=1).values, hk[:, 1:].min(dim=1).values], dim=1).reshape(B)
    torch.testing.assert_close(d_adj, official, rtol=1e-9, atol=1e-10, msg=lambda m: f"seed={seed}: {m}")


def test_hphn_soft_margin_exact_for_large_gaps():
    """soft_margin is upstream's log(1 + exp(d_ap - d_an)) also where the gap exceeds 20, where F.softplus
    would return the gap itself (an error of e^-gap, ~1e-10 here)."""
    fresh_seed()
    u = F.normalize(torch.ones(8, 16, dtype=torch.float64) + 0.01 * torch.randn(8, 16, dtype=torch.float64), dim=1)
    X = torch.stack([11 * u, -11 * u], dim=1).reshape(16, 16).requires_grad_(True)   # d_ap = 22, d_an small
    y = torch.arange(8).repeat_interleave(2)
    a = L.HPHNTripletLoss(soft_margin=True, reduction="none")(X, y)
    b = R.hphn_triplet_official(X, y, soft_margin=True)
    assert (a > 20).all()
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_ms_positive_term_exact_beyond_softplus_threshold():
    """The positive term log(1 + exp(-alpha (s_p - base))) stays exact for arguments just above 20, where
    F.softplus would return the argument itself (an error of ~e^-21 that float64 resolves)."""
    fresh_seed()
    u = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=1)
    X = torch.stack([4 * u, -2.5 * u], dim=1).reshape(12, 8).requires_grad_(True)   # s_p = -10: argument 21
    y = torch.arange(6).repeat_interleave(2)
    mod, twin = make_losses("ms", 2, True, reduction="none")
    torch.testing.assert_close(mod(X, y), twin(X, y), rtol=1e-14, atol=0)


def test_hphn_single_class_deviation_from_official():
    """Package rule (docs/design.md §9): an anchor without a negative contributes 0; upstream's fallback to the row
    maximum gives relu(d_ap - max_row + margin) > 0 instead."""
    fresh_seed()
    X = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(8, dtype=torch.long)
    for n in (0, 2):
        ours = L.HPHNTripletLoss(n_inner_pts=n, reduction="none")(X, y)
        assert torch.equal(ours, torch.zeros_like(ours))
        upstream = R.hphn_triplet_official(X, y, n_inner_pts=n)
        assert (upstream > 0).any()
        g, = torch.autograd.grad(L.HPHNTripletLoss(n_inner_pts=n)(X, y), X)
        assert torch.equal(g, torch.zeros_like(g))


def test_hphn_layout_errors():
    X, y = make_batch(3, 4, shuffle=False)
    y_bad = y.clone()
    y_bad[[1, 4]] = y_bad[[4, 1]]  # rows 0 and 1 now differ
    with pytest.raises(ValueError, match="adjacent"):
        L.HPHNTripletLoss(n_inner_pts=2)(X, y_bad)
    L.HPHNTripletLoss(n_inner_pts=0)(X, y_bad)  # the plain loss takes any layout
    with pytest.raises(ValueError, match="even"):
        L.HPHNTripletLoss(n_inner_pts=2)(X[:11], y[:11])
    with pytest.raises(ValueError, match="pairs"):
        L.HPHNTripletLoss()(X, y, pairs=ee_cuda.positive_pairs(y))


# ------------------------------------------------------------------------------------------------
# No NaN / inf for any valid batch
# ------------------------------------------------------------------------------------------------

def _all_modules(n, reduction="mean"):
    return [make_losses(name, n, l2, reduction=reduction)[0] for name in LOSSES for l2 in (True, False)]


def _finite_loss_and_grad(mod, X, y):
    X = X.detach().requires_grad_(True)
    out = mod(X, y)
    g, = torch.autograd.grad(out, X, allow_unused=False)
    assert torch.isfinite(out).all(), f"{mod}: loss {out}"
    assert torch.isfinite(g).all(), f"{mod}: grad {g}"
    return out, g


@pytest.mark.parametrize("n", [0, 2, 3])
def test_single_class_batch_is_zero(n):
    fresh_seed()
    X = torch.randn(8, 6, dtype=torch.float64)
    y = torch.full((8,), 3, dtype=torch.long)
    for mod in _all_modules(n):
        out, g = _finite_loss_and_grad(mod, X, y)
        assert out.item() == 0.0 and torch.equal(g, torch.zeros_like(g)), mod


@pytest.mark.parametrize("n", [0, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_duplicates_are_finite(n, dtype):
    """Duplicate rows: within a class, across classes, a whole class collapsed to one point."""
    fresh_seed()
    X, y = make_batch(4, 4, dtype=dtype)
    X = X.detach().clone()
    X[1] = X[0]              # positive duplicate (d_p = 0)
    X[4] = X[0]              # a negative identical to an anchor (d̂ = 0)
    X[8:12] = X[8]           # a whole class on one point
    X[13] = -X[12]           # antipodal pair: its midpoint (n odd) is the origin
    for mod in _all_modules(n):
        _finite_loss_and_grad(mod, X, y)


def test_no_pairs_and_empty_batch():
    fresh_seed()
    X = torch.randn(6, 4, dtype=torch.float64)
    distinct = torch.arange(6)
    for name in ["triplet", "lifted", "npair", "ms"]:
        for reduction in ["mean", "sum"]:
            mod = make_losses(name, 2, True, reduction=reduction)[0]
            out, g = _finite_loss_and_grad(mod, X, distinct)
            assert out.item() == 0.0
        assert make_losses(name, 2, True, reduction="none")[0](X, distinct).shape == (0,)
    # one class with a pair, all others singletons: pairs exist but have no negative pair
    y = torch.tensor([0, 0, 1, 2, 3, 4])
    for name in ["triplet", "lifted", "npair", "ms"]:
        out, _ = _finite_loss_and_grad(make_losses(name, 2, True)[0], X, y)
        assert out.item() == 0.0
    # empty batch
    E = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    e_y = torch.zeros(0, dtype=torch.long)
    for mod in _all_modules(0):
        assert mod(E, e_y).item() == 0.0


def test_negatives_always_present_or_absent_together():
    """The basis of the 'mean' choice: a pair has a negative iff some pair of another label exists, so in
    a batch either all pairs have negatives or none."""
    fresh_seed()
    for _ in range(20):
        y = torch.randint(0, 4, (int(torch.randint(2, 12, ())),))
        pairs = ee_cuda.positive_pairs(y, "all")
        if pairs.shape[0] == 0:
            continue
        lab = y[pairs[:, 0]]
        has = (lab[:, None] != lab[None, :]).any(1)
        assert has.all() or not has.any()


def test_argument_errors():
    X, y = make_batch(2, 2)
    with pytest.raises(ValueError, match="reduction"):
        L.TripletLoss(reduction="avg")
    with pytest.raises(ValueError, match="pairs"):
        L.TripletLoss(pairs="some")
    with pytest.raises(ValueError, match="n_inner_pts"):
        L.NPairLoss(n_inner_pts=-1)
    with pytest.raises(ValueError, match="alpha"):
        L.MultiSimilarityLoss(alpha=0.0)
    with pytest.raises(TypeError, match="embeddings"):
        L.TripletLoss()(y.view(2, 2), y[:2])
    with pytest.raises(ValueError, match="embeddings"):
        L.HPHNTripletLoss()(X[0], y)
    with pytest.raises(ValueError, match="labels"):
        L.TripletLoss()(X, y[:3])


# ------------------------------------------------------------------------------------------------
# gradcheck, dtypes, autocast, torch.compile, training
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_tiny(name):
    seed = fresh_seed()
    X, y = make_batch(2, 2, D=3)
    # keep away from kinks: margins large enough that relu is active, inputs where no hard negative switches
    kw = {"hphn": dict(margin=5.0), "triplet": dict(margin=5.0)}.get(name, {})
    for n in (0, 2):
        mod = make_losses(name, n, True, **kw)[0]
        gradcheck_off_switches(lambda Z: mod(Z, y), lambda: (torch.randn_like(X).requires_grad_(True),),
                               f"seed={seed} n={n}", eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    seed = fresh_seed()
    X, y = make_batch(4, 4, dtype=torch.float32, normalize=True)
    Xh = X.detach().to(dtype).requires_grad_(True)
    for mod in _all_modules(2):
        out = mod(Xh, y)
        assert out.dtype == torch.float32
        ref = mod(Xh.detach().float(), y)
        torch.testing.assert_close(out, ref, msg=lambda m: f"seed={seed}: {mod}: {m}")
        g, = torch.autograd.grad(out, Xh)
        assert g.dtype == dtype and torch.isfinite(g.float()).all()


def test_autocast_bfloat16_cpu():
    seed = fresh_seed()
    X, y = make_batch(4, 4, D=16, dtype=torch.float32)
    lin = torch.nn.Linear(16, 8)
    for name in LOSSES:
        mod = make_losses(name, 2, True)[0]
        lin.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = lin(X.detach())
            assert emb.dtype == torch.bfloat16
            out = mod(emb, y)
        out.backward()
        assert out.dtype == torch.float32 and torch.isfinite(out)
        assert torch.isfinite(lin.weight.grad).all()
        # the loss saw the bf16 embeddings, upcast: same value as the float32 loss of those embeddings
        torch.testing.assert_close(out, mod(emb.detach().float(), y), msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("pairs_from", ["labels", "argument"])
@pytest.mark.parametrize("name", LOSSES)
def test_torch_compile(name, pairs_from):
    """fullgraph=True, with the pairs passed in or built from the labels inside the loss
    (positive_pairs("all"): a data-dependent size, on which the losses never branch), on a batch with
    pairs and negatives and, with the same compiled loss, on one without (a loss of 0)."""
    seed = fresh_seed()
    torch._dynamo.reset()
    mod = make_losses(name, 2, True)[0]
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    # the second batch: no positive pair (pair losses), no negative (HPHN, whose n > 0 needs pairs of rows)
    empty = make_batch(1, 16, dtype=torch.float32) if name == "hphn" else make_batch(16, 1, dtype=torch.float32)
    for X, y in (make_batch(4, 4, dtype=torch.float32), empty):
        args = () if name == "hphn" or pairs_from == "labels" else (ee_cuda.positive_pairs(y, "all"),)
        a = compiled(X, y, *args)
        ga, = torch.autograd.grad(a, X)
        b = mod(X, y, *args)
        gb, = torch.autograd.grad(b, X)
        torch.testing.assert_close(a, b, msg=lambda m: f"seed={seed}: {m}")
        torch.testing.assert_close(ga, gb, msg=lambda m: f"seed={seed}: {m}")


def test_torch_compile_inductor_pairs_from_labels():
    """The default backend (inductor) on a pair loss that builds its pairs from the labels."""
    seed = fresh_seed()
    torch._dynamo.reset()
    X, y = make_batch(4, 4, dtype=torch.float32)
    mod = L.MultiSimilarityLoss(n_inner_pts=2)
    a = torch.compile(mod, fullgraph=True)(X, y)
    ga, = torch.autograd.grad(a, X)
    b = mod(X, y)
    gb, = torch.autograd.grad(b, X)
    torch.testing.assert_close(a, b, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(ga, gb, msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("name", LOSSES)
def test_training_step_lowers_the_loss(name):
    """A few SGD steps of a linear embedding on a fixed batch lower each loss (n=2)."""
    seed = fresh_seed()
    classes, per_class, d_in = 4, 4, 16
    centers = torch.randn(classes, d_in) * 0.5  # overlapping classes: every loss starts above 0
    y = torch.arange(classes).repeat_interleave(per_class)
    inputs = centers[y] + torch.randn(classes * per_class, d_in)
    model = torch.nn.Linear(d_in, 8)
    mod = make_losses(name, 2, True)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step():
        emb = F.normalize(model(inputs), dim=1)
        return mod(emb, y)

    with torch.no_grad():
        before = step().item()
    assert before > 0, f"seed={seed}: {name}: the batch is already solved, nothing to lower"
    for _ in range(30):
        opt.zero_grad()
        loss = step()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = step().item()
    assert after < before, f"seed={seed}: {name}: {before} -> {after}"


@pytest.mark.parametrize("name", LOSSES)
def test_default_backend_equals_reference_backend(name):
    """The losses through the default backend (the fused kernels once compiled) equal the losses run on
    the reference ops (ee_cuda.use_backend("reference"))."""
    seed = fresh_seed()
    X, y = make_batch(6, 4, D=16, shuffle=(name != "hphn"))
    mod = make_losses(name, 3, True)[0]
    a = mod(X, y)
    ga, = torch.autograd.grad(a, X)
    with ee_cuda.use_backend("reference"):
        b = mod(X, y)
        gb, = torch.autograd.grad(b, X)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10, msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", LOSSES)
def test_cuda_matches_cpu_and_autocast_float16(name):
    seed = fresh_seed()
    X, y = make_batch(8, 4, D=32, dtype=torch.float32, normalize=True, shuffle=(name != "hphn"))
    mod = make_losses(name, 2, True)[0]
    a = mod(X, y)
    ga, = torch.autograd.grad(a, X)
    Xc = X.detach().cuda().requires_grad_(True)
    b = mod(Xc, y.cuda())
    gb, = torch.autograd.grad(b, Xc)
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(gb.cpu(), ga, rtol=1e-3, atol=1e-5, msg=lambda m: f"seed={seed}: {m}")
    lin = torch.nn.Linear(32, 32).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        emb = lin(Xc.detach())
        assert emb.dtype == torch.float16
        out = mod(emb, y.cuda())
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out) and torch.isfinite(lin.weight.grad).all()
