"""ee_cuda.integrations.pml (pytorch-metric-learning) and the n_inner_pts=0 equivalences with PML losses.

Which established loss each EE loss reduces to at ``n_inner_pts=0``:

* ``HPHNTripletLoss``  == PML ``TripletMarginLoss`` + ``BatchHardMiner`` (batch-hard triplet, Hermans et
  al. 2017), mean over anchors; ``soft_margin=True`` == ``smooth_loss=True`` with ``margin=0``.
* ``TripletLoss``      per pair (i, j) == the larger of PML ``TripletMarginLoss``'s two triplet losses
  (i, j, n_i*) and (j, i, n_j*) mined by ``BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard")``.
* ``LiftedStructureLoss``, ``NPairLoss``, ``MultiSimilarityLoss``: no established equivalent (they take
  one term per negative *pair*, its closest point pair; see their docstrings). Tested here: they differ
  from PML's losses of the same name.
"""
from __future__ import annotations

import os
import tempfile
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, losses as pml_losses, miners, reducers  # noqa: E402
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper  # noqa: E402

from ee_cuda import losses as L  # noqa: E402
from ee_cuda.integrations.pml import EEPMLLoss  # noqa: E402
from conftest import fresh_seed  # noqa: E402

ALL = ["hphn", "triplet", "lifted", "npair", "ms"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(classes=4, per_class=4, D=8, shuffle=False):
    y = torch.randperm(40)[:classes].repeat_interleave(per_class)
    X = torch.randn(classes * per_class, D, dtype=torch.float64)
    if shuffle:
        perm = torch.randperm(y.shape[0])
        X, y = X[perm], y[perm]
    return X.requires_grad_(True), y


def _make(name, n=2, **kw):
    return {"hphn": L.HPHNTripletLoss, "triplet": L.TripletLoss, "lifted": L.LiftedStructureLoss,
            "npair": L.NPairLoss, "ms": L.MultiSimilarityLoss}[name](n_inner_pts=n, **kw)


def _value_grad(fn, X, y):
    X = X.detach().requires_grad_(True)
    out = fn(X, y)
    g, = torch.autograd.grad(out, X)
    return out.detach(), g


# ------------------------------------------------------------------------------------------------
# the adapter
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("normalize", [True, False])
def test_adapter_is_a_pml_loss_and_mean_reducer_matches(name, normalize):
    """With PML's default distance (LpDistance, normalize_embeddings=True) the loss sees L2-normalized
    embeddings, as every PML loss does; with normalize_embeddings=False it sees them as given."""
    seed = fresh_seed()
    X, y = _batch()
    ee = _make(name)
    wrapped = EEPMLLoss(ee) if normalize else EEPMLLoss(ee, distance=_lp())
    assert isinstance(wrapped, pml_losses.BaseMetricLossFunction)
    a, ga = _value_grad(wrapped, X, y)
    b, gb = _value_grad((lambda Z, t: ee(torch.nn.functional.normalize(Z, dim=1), t)) if normalize else ee, X, y)
    torch.testing.assert_close(a, b, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(ga, gb, msg=lambda m: f"seed={seed}: {m}")
    if normalize:  # the batch is far from the unit sphere: normalizing changes the loss
        c, _ = _value_grad(ee, X, y)
        assert not torch.allclose(a, c), f"seed={seed}"


@pytest.mark.parametrize("name", ALL)
def test_adapter_reducers(name):
    """PML reducers see the per-item losses: AvgNonZero, Sum, DoNothing (loss dict with indices)."""
    seed = fresh_seed()
    X, y = _batch()
    ee = _make(name, margin=0.05) if name in ("hphn", "triplet") else _make(name)
    per, items = ee.per_item(X, y)
    per = per.detach()
    nz = per[per > 0]
    avg = EEPMLLoss(ee, reducer=reducers.AvgNonZeroReducer(), distance=_lp())(X, y)
    torch.testing.assert_close(avg.detach(), nz.mean() if nz.numel() else per.sum(), msg=lambda m: f"seed={seed}: {m}")
    s = EEPMLLoss(ee, reducer=reducers.SumReducer(), distance=_lp())(X, y)
    torch.testing.assert_close(s.detach(), per.sum())
    d = EEPMLLoss(ee, reducer=reducers.DoNothingReducer(), distance=_lp())(X, y)["loss"]
    torch.testing.assert_close(d["losses"].detach(), per)
    if name == "hphn":
        assert d["reduction_type"] == "element" and torch.equal(d["indices"], torch.arange(X.shape[0]))
    else:
        assert d["reduction_type"] == "pos_pair"
        assert torch.equal(torch.stack(d["indices"], 1), items)
        assert (y[d["indices"][0]] == y[d["indices"][1]]).all()


def test_adapter_rejects_miners_and_handles_no_pairs():
    X, y = _batch()
    wrapped = EEPMLLoss(_make("triplet"))
    with pytest.raises(ValueError, match="indices_tuple"):
        wrapped(X, y, indices_tuple=miners.BatchHardMiner()(X, y))
    with pytest.raises(ValueError, match="got ref_emb without ref_labels"):
        wrapped(X, y, ref_emb=X.detach())
    with pytest.raises(TypeError):
        EEPMLLoss(pml_losses.TripletMarginLoss())
    out, g = _value_grad(wrapped, X, torch.arange(X.shape[0]))  # no positive pairs
    assert out.item() == 0.0 and torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("normalize", [True, False])
def test_adapter_ref_emb_is_the_reference_set(name, normalize):
    """ref_emb/ref_labels: the EE loss with that reference set (both normalized by PML's default distance),
    gradients to the embeddings and to ref_emb; ref_emb=embeddings (what PML passes without one) is the
    in-batch loss."""
    seed = fresh_seed()
    X, y = _batch(4, 4)
    ref, ref_y = _batch(5, 2)
    ee = _make(name)
    wrapped = EEPMLLoss(ee) if normalize else EEPMLLoss(ee, distance=_lp())
    prep = (lambda Z: torch.nn.functional.normalize(Z, dim=1)) if normalize else (lambda Z: Z)
    a = wrapped(X, y, ref_emb=ref, ref_labels=ref_y)
    b = ee(prep(X), y, ref_emb=prep(ref), ref_labels=ref_y)
    torch.testing.assert_close(a, b, msg=lambda m: f"seed={seed}: {m}")
    for ga, gb in zip(torch.autograd.grad(a, (X, ref)), torch.autograd.grad(b, (X, ref))):
        torch.testing.assert_close(ga, gb, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(wrapped(X, y, ref_emb=X, ref_labels=y), wrapped(X, y))
    assert not torch.allclose(a, wrapped(X, y)), f"seed={seed}: the reference set made no difference"


def test_pml_cross_batch_memory_refuses_the_adapter():
    """What the module docstring says: PML's CrossBatchMemory checks the loss's class name against a list."""
    assert "EEPMLLoss" not in pml_losses.CrossBatchMemory.supported_losses()
    with pytest.raises(Exception, match="CrossBatchMemory not supported for EEPMLLoss"):
        pml_losses.CrossBatchMemory(EEPMLLoss(_make("hphn")), embedding_size=8, memory_size=32)


def _indented_block(doc: str, marker: str) -> str:
    """The literal block (indented lines) that follows ``marker`` in a docstring, dedented."""
    lines = doc[doc.index(marker) + len(marker):].split("\n")[1:]
    while not lines[0].strip():
        lines.pop(0)
    block = []
    for line in lines:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def test_memory_bank_example_in_the_module_docstring():
    """The module docstring's example runs as printed: EEPMLLoss inside ee_cuda's CrossBatchMemory, batches
    from MPerClassSampler, the memory wrapping around (8 batches of 64 into 256 slots)."""
    import ee_cuda.integrations.pml as module
    fresh_seed()
    scope = {}
    exec(compile(_indented_block(module.__doc__, "(example, run by the tests)::"), module.__file__, "exec"), scope)
    loss_fn, loss = scope["loss_fn"], scope["loss"]
    assert torch.isfinite(loss) and loss.requires_grad
    assert (loss_fn.num_filled, loss_fn.queue_idx) == (256, 0)
    assert loss_fn.embedding_memory.abs().sum() > 0


@pytest.mark.parametrize("distance", [
    distances.CosineSimilarity(), distances.DotProductSimilarity(), distances.LpDistance(p=1),
    distances.LpDistance(power=2), distances.SNRDistance()], ids=lambda d: repr(d))
def test_adapter_rejects_non_euclidean_distances(distance):
    with pytest.raises(ValueError, match="Euclidean"):
        EEPMLLoss(_make("triplet"), distance=distance)
    wrapped = EEPMLLoss(_make("triplet"))
    wrapped.distance = distance  # set after construction: checked again when called
    X, y = _batch()
    with pytest.raises(ValueError, match="LpDistance\\(p=2, power=1\\)"):
        wrapped(X, y)


# ------------------------------------------------------------------------------------------------
# n_inner_pts = 0: which established loss each one is
# ------------------------------------------------------------------------------------------------

def _lp():
    return distances.LpDistance(normalize_embeddings=False, p=2, power=1)


@pytest.mark.parametrize("layout", [(2, 2), (4, 4), (16, 2), (8, 4)], ids=lambda c: f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("soft", [False, True])
def test_hphn_n0_is_batch_hard_triplet(layout, soft):
    seed = fresh_seed()
    X, y = _batch(*layout, shuffle=True)
    margin = 0.0 if soft else 0.3
    ours = L.HPHNTripletLoss(margin=margin, soft_margin=soft, n_inner_pts=0)
    pml_loss = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=soft, distance=_lp(),
                                            reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=_lp())
    a, ga = _value_grad(ours, X, y)
    b, gb = _value_grad(lambda Z, t: pml_loss(Z, t, miner(Z, t)), X, y)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("layout", [(2, 2), (4, 4), (16, 2), (5, 3)], ids=lambda c: f"{c[0]}x{c[1]}")
def test_triplet_n0_is_pairwise_max_of_hardest_negative_triplets(layout):
    seed = fresh_seed()
    X, y = _batch(*layout, shuffle=True)
    ours, pairs = L.TripletLoss(margin=0.3, n_inner_pts=0, reduction="none").per_item(X, y)
    pml_loss = pml_losses.TripletMarginLoss(margin=0.3, distance=_lp(), reducer=reducers.DoNothingReducer())
    miner = miners.BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard", distance=_lp())
    d = pml_loss(X, y, miner(X, y))["loss"]
    a_idx, p_idx, _ = d["indices"]
    per_triplet = {(int(a), int(p)): v for a, p, v in zip(a_idx, p_idx, d["losses"])}
    assert len(per_triplet) == 2 * pairs.shape[0]
    expect = torch.stack([torch.maximum(per_triplet[(i, j)], per_triplet[(j, i)]) for i, j in pairs.tolist()])
    torch.testing.assert_close(ours, expect, rtol=1e-9, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")
    ga, = torch.autograd.grad(ours.sum(), X)
    gb, = torch.autograd.grad(expect.sum(), X)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")


def test_other_losses_have_no_pml_equivalent_at_n0():
    """Documented non-equivalences: lifted, N-pair and MS at n=0 differ from PML's losses of that name
    (negatives per pair through the closest point pair, vs per sample)."""
    seed = fresh_seed()
    X, y = _batch(8, 2)
    Xn = torch.nn.functional.normalize(X.detach(), dim=1)
    lp = distances.LpDistance(normalize_embeddings=False)
    cos = distances.DotProductSimilarity(normalize_embeddings=False)
    checks = [
        (L.LiftedStructureLoss(margin=1.0), pml_losses.LiftedStructureLoss(neg_margin=1.0, distance=lp)),
        (L.NPairLoss(), pml_losses.NPairsLoss(distance=cos)),
        (L.MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5, distance=cos)),
    ]
    for ours, theirs in checks:
        a, b = ours(Xn, y), theirs(Xn, y)
        assert torch.isfinite(a) and torch.isfinite(b)
        assert not torch.allclose(a, b.to(a.dtype)), f"seed={seed}: {ours} == {theirs}?"


# ------------------------------------------------------------------------------------------------
# PML's DistributedLossWrapper, gloo, 2 CPU processes
# ------------------------------------------------------------------------------------------------

WORLD = 2
CASES = [("hphn", 2), ("triplet", 2), ("ms", 0), ("npair", 8)]


def _worker(rank, init_file, X, y, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        half = X.shape[0] // WORLD
        sl = slice(rank * half, (rank + 1) * half)
        res = {}
        for name, n in CASES:
            xl = X[sl].clone().requires_grad_(True)
            out = DistributedLossWrapper(EEPMLLoss(_make(name, n), distance=_lp()))(xl, y[sl])
            g, = torch.autograd.grad(out, xl)
            res[name] = (out.detach(), g)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_loss_wrapper():
    """DistributedLossWrapper gathers [local; others] and returns world_size x loss; the local rows get
    world_size x the single-process gradient, so DDP's averaging gives the single-process gradients."""
    seed = fresh_seed()
    X, y = _batch(4, 4)
    X = X.detach()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), X, y, tmp), nprocs=WORLD, join=True)
        res = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    half = X.shape[0] // WORLD
    for name, n in CASES:
        single, g_single = _value_grad(_make(name, n), X, y)
        for r in range(WORLD):
            out, g = res[r][name]
            msg = lambda m: f"seed={seed} rank={r} {name}: {m}"  # noqa: E731
            torch.testing.assert_close(out, WORLD * single, rtol=1e-9, atol=1e-12, msg=msg)
            torch.testing.assert_close(g, WORLD * g_single[r * half:(r + 1) * half], rtol=1e-9, atol=1e-12, msg=msg)


# ------------------------------------------------------------------------------------------------
# the README's PML training loop
# ------------------------------------------------------------------------------------------------

def _readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def test_readme_pml_training_loop():
    """The README's PML example runs as printed: MPerClassSampler batches (even m: the adjacent layout HPHN
    with EE needs), EEPMLLoss with a PML reducer, an optimizer step per batch."""
    fresh_seed()
    scope = {}
    exec(compile(_readme_block("### With pytorch-metric-learning"), "README.md", "exec"), scope)
    model, first, loss = scope["model"], scope["first_weight"], scope["loss"]
    assert torch.isfinite(loss)
    assert not torch.equal(model.weight.detach(), first), "the loop never stepped the model"
