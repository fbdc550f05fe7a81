"""Losses with a reference set (``ref_emb``/``ref_labels``) and the memory bank ``CrossBatchMemory``.

The losses run on the default backend (the fused kernels where they exist) and, where marked by the
``backend`` parameter, also on the reference ops; either is compared with the materialized twins of
``ee_cuda.reference.losses``. Every test draws fresh random inputs (the seed is printed and named in the
failure messages).
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ee_cuda
from ee_cuda import losses as L
from ee_cuda.distributed import GlobalBatchLoss
from ee_cuda.losses import CrossBatchMemory
from ee_cuda.reference import losses as R
from conftest import fresh_seed, gradcheck_off_switches

pytestmark = pytest.mark.usefixtures("one_thread")

LOSSES = ["hphn", "triplet", "lifted", "npair", "ms"]
N_L2 = [(0, True), (1, True), (1, False), (2, True), (2, False)]  # l2_norm is moot at n=0
_KINDS = {"hphn": (L.HPHNTripletLoss, R.hphn_triplet), "triplet": (L.TripletLoss, R.triplet),
          "lifted": (L.LiftedStructureLoss, R.lifted_structure), "npair": (L.NPairLoss, R.npair),
          "ms": (L.MultiSimilarityLoss, R.multi_similarity)}


@pytest.fixture(params=["default", "reference"])
def backend(request):
    """The ops under the losses: the default backend (fused where compiled), or the reference ops."""
    with (contextlib.nullcontext() if request.param == "default" else ee_cuda.use_backend("reference")):
        yield request.param


def make_losses(name, n, l2=True, reduction="none", pair_mode="all", **kw):
    """The loss module and its twin as a function of ``(X, y, ref_emb=, ref_labels=)``."""
    cls, fn = _KINDS[name]
    if name == "hphn":
        return (cls(n_inner_pts=n, l2_norm=l2, reduction=reduction, **kw),
                functools.partial(fn, n_inner_pts=n, l2_norm=l2, reduction=reduction, **kw))
    return (cls(n_inner_pts=n, l2_norm=l2, reduction=reduction, pairs=pair_mode, **kw),
            functools.partial(fn, n_inner_pts=n, l2_norm=l2, reduction=reduction, pair_mode=pair_mode, **kw))


def adjacent_set(pair_labels, D, dtype=torch.float64):
    """Rows ``2k, 2k+1`` labelled ``pair_labels[k]`` (the adjacent layout), random normal, requiring grad."""
    labels = torch.as_tensor(pair_labels).repeat_interleave(2)
    return torch.randn(labels.shape[0], D, dtype=dtype).requires_grad_(True), labels


def random_labels(n_pairs, pool):
    return torch.as_tensor(pool)[torch.randint(len(pool), (n_pairs,))]


def grads(out, inputs):
    """Gradients of ``out`` (weighted by fixed random weights when a vector) to each input; zeros if unused."""
    total = (out * torch.randn_like(out)).sum() if out.dim() else out
    return [torch.zeros_like(x) if g is None else g
            for x, g in zip(inputs, torch.autograd.grad(total, inputs, allow_unused=True))]


def assert_same_loss(fn_a, fn_b, inputs, msg, rtol=1e-9, atol=1e-10):
    """Equal values and equal gradients to ``inputs`` (same random weights for both per-item vectors)."""
    a, b = fn_a(), fn_b()
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: value: {m}")
    state = torch.get_rng_state()
    ga = grads(a, inputs)
    torch.set_rng_state(state)
    gb = grads(b, inputs)
    for name, x, y in zip(("embeddings", "ref_emb"), ga, gb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: grad to {name}: {m}")
    assert torch.isfinite(a).all() and all(torch.isfinite(g).all() for g in ga), msg
    return a, ga


# ------------------------------------------------------------------------------------------------
# each loss with a reference set against its twin
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [True, False], ids=["labels-overlap", "labels-disjoint"])
@pytest.mark.parametrize("n,l2", N_L2, ids=[f"n{n}-{'l2' if l2 else 'raw'}" for n, l2 in N_L2])
@pytest.mark.parametrize("name", LOSSES)
def test_loss_with_reference_matches_twin(name, n, l2, overlap, backend):
    """B = 8 queries against R = 12 reference rows whose labels overlap the batch's or not; per-item
    values and the gradients to both sets."""
    seed = fresh_seed()
    X, y = adjacent_set(random_labels(4, [0, 1, 2]), D=5)
    ref, ref_y = adjacent_set(random_labels(6, [1, 2, 3] if overlap else [10, 11, 12]), D=5)
    mod, twin = make_losses(name, n, l2)
    kw = dict(ref_emb=ref, ref_labels=ref_y)
    per, _ = assert_same_loss(lambda: mod(X, y, **kw), lambda: twin(X, y, **kw), (X, ref),
                              f"seed={seed} {backend}")
    assert (per >= 0).all(), f"seed={seed}"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["triplet", "lifted", "npair", "ms"])
def test_pairs_adjacent_and_reductions_with_reference(name, reduction, backend):
    """pairs="adjacent": the reference's pairs are its rows (2k, 2k+1) too."""
    seed = fresh_seed()
    X, y = adjacent_set(random_labels(5, [0, 1, 2]), D=4)
    ref, ref_y = adjacent_set(random_labels(4, [0, 1, 2, 3]), D=4)
    mod, twin = make_losses(name, 2, reduction=reduction, pair_mode="adjacent")
    kw = dict(ref_emb=ref, ref_labels=ref_y)
    assert_same_loss(lambda: mod(X, y, **kw), lambda: twin(X, y, **kw), (X, ref), f"seed={seed} {backend}")


@pytest.mark.parametrize("name", LOSSES)
def test_reference_without_negatives(name, backend):
    """Items whose label is the only one in the reference contribute 0, the others their loss; a reference of
    the batch's only label, or an empty one, gives 0 with zero gradients."""
    seed = fresh_seed()
    X, y = adjacent_set([0, 1, 0, 2], D=4)
    ref, ref_y = adjacent_set([0, 0, 0], D=4)
    margin = {"hphn": dict(margin=5.0), "triplet": dict(margin=5.0), "lifted": dict(margin=5.0)}.get(name, {})
    mod, twin = make_losses(name, 2, **margin)  # margins that keep every item with a negative above 0
    kw = dict(ref_emb=ref, ref_labels=ref_y)
    per, _ = assert_same_loss(lambda: mod(X, y, **kw), lambda: twin(X, y, **kw), (X, ref), f"seed={seed}")
    _, items = mod.per_item(X, y, **kw)
    item_labels = y[items] if name == "hphn" else y[items[:, 0]]
    assert (per[item_labels == 0] == 0).all() and (per[item_labels != 0] > 0).any(), f"seed={seed}: {per}"
    one_class, one_y = adjacent_set([7, 7, 7], D=4)
    for rows, rows_y in ((ref, torch.full_like(ref_y, 7)), (ref[:0], ref_y[:0])):
        for reduction in ("mean", "sum"):
            loss = make_losses(name, 2, reduction=reduction)[0](one_class, one_y, ref_emb=rows, ref_labels=rows_y)
            g = grads(loss, (one_class, rows))
            assert loss.item() == 0.0 and all(torch.equal(t, torch.zeros_like(t)) for t in g), f"seed={seed}"


@pytest.mark.parametrize("n", [0, 2])
@pytest.mark.parametrize("name", LOSSES)
def test_batch_as_its_own_reference_is_the_in_batch_loss(name, n, backend):
    seed = fresh_seed()
    X, y = adjacent_set(random_labels(5, [0, 1, 2]), D=6)
    mod, _ = make_losses(name, n, reduction="mean")
    assert_same_loss(lambda: mod(X, y), lambda: mod(X, y, ref_emb=X, ref_labels=y), (X,), f"seed={seed}")


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_with_reference(name, backend):
    """gradcheck to the embeddings and the reference, tiny float64 inputs, n in {0, 2}, where the gradient is
    continuous (no hard negative switching within the finite differences' step)."""
    seed = fresh_seed()
    y, ref_y = adjacent_set([0, 1], D=3)[1], adjacent_set([1, 2, 0], D=3)[1]
    kw = {"hphn": dict(margin=5.0), "triplet": dict(margin=5.0)}.get(name, {})  # relu active: away from kinks
    for n in (0, 2):
        mod = make_losses(name, n, reduction="mean", **kw)[0]
        gradcheck_off_switches(lambda Z, Rz: mod(Z, y, ref_emb=Rz, ref_labels=ref_y),
                               lambda: (adjacent_set([0, 1], D=3)[0], adjacent_set([1, 2, 0], D=3)[0]),
                               f"seed={seed} n={n}", eps=1e-6, atol=1e-6)


def test_half_reference_computes_in_float32():
    """float16 embeddings with a float32 reference (what the memory holds under autocast): one compute dtype."""
    seed = fresh_seed()
    X, y = adjacent_set(random_labels(4, [0, 1, 2]), D=8, dtype=torch.float32)
    ref, ref_y = adjacent_set(random_labels(4, [0, 1, 2]), D=8, dtype=torch.float32)
    with ee_cuda.use_backend("reference"):
        for name in LOSSES:
            mod = make_losses(name, 2, reduction="mean")[0]
            out = mod(X.detach().half(), y, ref_emb=ref.detach(), ref_labels=ref_y)
            expect = mod(X.detach().half().float(), y, ref_emb=ref.detach(), ref_labels=ref_y)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, expect, msg=lambda m: f"seed={seed} {name}: {m}")


def test_reference_bad_input():
    X, y = adjacent_set([0, 1, 2], D=4)
    ref, ref_y = adjacent_set([0, 1], D=4)
    cases = [
        (dict(ref_emb=ref), ValueError, "got ref_emb without ref_labels"),
        (dict(ref_labels=ref_y), ValueError, "got ref_labels without ref_emb"),
        (dict(ref_emb=ref[:, :3], ref_labels=ref_y), ValueError, "ref_emb has D=3 columns but embeddings have D=4"),
        (dict(ref_emb=ref.float(), ref_labels=ref_y), TypeError, "ref_emb is torch.float32 but embeddings are"),
        (dict(ref_emb=ref[0], ref_labels=ref_y), ValueError, "ref_emb must have shape"),
        (dict(ref_emb=ref.tolist(), ref_labels=ref_y), TypeError, "ref_emb must be a torch.Tensor"),
        (dict(ref_emb=ref.long(), ref_labels=ref_y), TypeError, "ref_emb must be a floating tensor"),
        (dict(ref_emb=ref.to("meta"), ref_labels=ref_y), ValueError, "ref_emb is on meta"),
        (dict(ref_emb=ref, ref_labels=ref_y[:-1]), ValueError, "ref_labels must have length 4"),
        (dict(ref_emb=ref, ref_labels=ref_y.float()), TypeError, "ref_labels must be an integer"),
        (dict(ref_emb=ref, ref_labels=ref_y.view(2, 2)), ValueError, r"ref_labels must have shape \(B,\)"),
    ]
    for name in LOSSES:
        mod = make_losses(name, 2)[0]
        for kw, exc, words in cases:
            with pytest.raises(exc, match=words):
                mod(X, y, **kw)
    # the layouts that read the reference as adjacent pairs
    for mod in (L.HPHNTripletLoss(n_inner_pts=2), L.TripletLoss(n_inner_pts=2, pairs="adjacent")):
        with pytest.raises(ValueError, match="adjacent layout"):
            mod(X, y, ref_emb=ref, ref_labels=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="R=3"):
        L.HPHNTripletLoss(n_inner_pts=2)(X, y, ref_emb=ref[:3], ref_labels=ref_y[:3])
    L.HPHNTripletLoss(n_inner_pts=0)(X, y, ref_emb=ref[:3], ref_labels=torch.tensor([0, 1, 0]))  # any layout


@pytest.mark.parametrize("name,n,mode", [("hphn", 0, "all"), ("hphn", 2, "all"), ("ms", 2, "all"),
                                         ("triplet", 1, "adjacent")])
def test_torch_compile_with_reference(name, n, mode):
    """fullgraph=True on the default backend, with the reference's pairs built inside the loss (for "all" a
    data-dependent count), values and gradients to both sets against eager."""
    seed = fresh_seed()
    torch._dynamo.reset()
    mod = make_losses(name, n, reduction="mean", pair_mode=mode)[0]
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    X, y = adjacent_set(random_labels(4, [0, 1, 2]), D=8, dtype=torch.float32)
    ref, ref_y = adjacent_set(random_labels(5, [0, 1, 2, 3]), D=8, dtype=torch.float32)
    kw = dict(ref_emb=ref, ref_labels=ref_y)
    assert_same_loss(lambda: compiled(X, y, **kw), lambda: mod(X, y, **kw), (X, ref), f"seed={seed}",
                     rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# the memory bank: its queue
# ------------------------------------------------------------------------------------------------

def _memory(loss=None, D=3, size=10, dtype=torch.float64):
    return CrossBatchMemory(loss if loss is not None else L.HPHNTripletLoss(n_inner_pts=2), D, size, dtype=dtype)


def test_memory_fill_and_wrap_around_by_hand():
    """memory_size 10, three batches of 4: the third writes slots 8, 9 and wraps to 0, 1."""
    fresh_seed()
    memory = _memory()
    batches = [adjacent_set([3 * b, 3 * b + 1], D=3) for b in range(3)]
    memory.enqueue(*batches[0])
    E, y = memory.contents()
    assert (memory.queue_idx, memory.num_filled) == (4, 4)
    assert torch.equal(E, batches[0][0].detach()) and torch.equal(y, batches[0][1])
    memory.enqueue(*batches[1])
    assert (memory.queue_idx, memory.num_filled) == (8, 8)
    memory.enqueue(*batches[2])
    assert (memory.queue_idx, memory.num_filled) == (2, 10)
    E, y = memory.contents()
    (x0, y0), (x1, y1), (x2, y2) = [(b[0].detach(), b[1]) for b in batches]
    assert torch.equal(E, torch.cat([x2[2:], x0[2:], x1, x2[:2]]))
    assert torch.equal(y, torch.cat([y2[2:], y0[2:], y1, y2[:2]]))
    assert not E.requires_grad


@pytest.mark.parametrize("size", [10, 12, 16])
def test_memory_ring_matches_a_model_and_keeps_parity(size):
    """Random even batch sizes: slot s holds the last row written there (row number mod size), the pointer
    and fill count follow, and rows (2k, 2k+1) of the memory are always one of the batches' pairs."""
    seed = fresh_seed()
    memory = _memory(size=size)
    slots_X, slots_y = torch.zeros(size, 3, dtype=torch.float64), torch.zeros(size, dtype=torch.long)
    written = 0
    for step in range(12):
        B = 2 * int(torch.randint(1, size // 2 + 1, ()))
        X, y = adjacent_set(torch.arange(written // 2, (written + B) // 2), D=3)  # one label per pair
        memory.enqueue(X, y)
        for i in range(B):
            slots_X[(written + i) % size], slots_y[(written + i) % size] = X[i].detach(), y[i]
        written += B
        msg = f"seed={seed} step={step} B={B}"
        assert (memory.queue_idx, memory.num_filled) == (written % size, min(written, size)), msg
        E, labels = memory.contents()
        assert torch.equal(E, slots_X[:memory.num_filled]) and torch.equal(labels, slots_y[:memory.num_filled]), msg
        assert memory.queue_idx % 2 == 0 and torch.equal(labels[0::2], labels[1::2]), msg


def test_memory_forward_enqueues_then_uses_the_memory():
    fresh_seed()
    memory = _memory(L.TripletLoss(n_inner_pts=1, reduction="none"), D=4, size=12)
    X, y = adjacent_set([0, 1, 2], D=4)
    per = memory(X, y)
    assert memory.num_filled == 6 and torch.equal(memory.contents()[0], X.detach())
    torch.testing.assert_close(per, memory.loss(X, y, ref_emb=X.detach(), ref_labels=y))


def test_memory_bad_input_and_layout():
    fresh_seed()
    with pytest.raises(ValueError, match="memory_size must be even"):
        _memory(L.HPHNTripletLoss(n_inner_pts=2), size=9)
    with pytest.raises(ValueError, match="memory_size must be even"):
        _memory(L.NPairLoss(pairs="adjacent"), size=9)
    with pytest.raises(TypeError, match="ee_cuda.losses loss"):
        CrossBatchMemory(torch.nn.MSELoss(), 3, 8)
    with pytest.raises(ValueError, match="embedding_size"):
        CrossBatchMemory(L.TripletLoss(), 0, 8)
    with pytest.raises(TypeError, match="dtype"):
        CrossBatchMemory(L.TripletLoss(), 3, 8, dtype=torch.float16)
    memory = _memory(size=8)
    X, y = adjacent_set([0, 1, 2], D=3)
    bad = [((X[:5], y[:5]), ValueError, "even batches"),
           ((X[:4], torch.tensor([0, 1, 0, 1])), ValueError, "different labels"),
           ((torch.cat([X, X[:4]]), torch.cat([y, y[:4]])), ValueError, "does not fit"),
           ((X[:, :2], y), ValueError, "embedding_size=3"),
           ((X.float(), y), TypeError, "memory holds torch.float64"),
           ((X, y[:4]), ValueError, "labels must have length 6")]
    for (emb, labels), exc, words in bad:
        with pytest.raises(exc, match=words):
            memory(emb, labels)
        assert memory.num_filled == 0 and memory.queue_idx == 0  # refused before anything was written
    with pytest.raises(ValueError, match="memory is on meta"):
        _memory().to("meta").enqueue(X, y)
    # a loss that reads no pairs of the memory takes odd sizes
    odd = _memory(L.TripletLoss(n_inner_pts=2), size=7)
    odd(X[:5], y[:5])
    odd(X[:3], y[:3])
    assert (odd.queue_idx, odd.num_filled) == (1, 7)


def test_memory_dtype_follows_the_loss_compute_dtype():
    """float16/bfloat16 batches are stored in float32 (the loss's compute dtype); .double() takes float64."""
    fresh_seed()
    memory = _memory(L.TripletLoss(), D=4, dtype=torch.float32)
    X, y = adjacent_set([0, 1], D=4, dtype=torch.float32)
    memory(X.detach().bfloat16(), y)
    assert torch.equal(memory.contents()[0], X.detach().bfloat16().float())
    memory.double()
    assert memory.embedding_memory.dtype == torch.float64 and memory.label_memory.dtype == torch.long
    memory(X.detach().double(), y)
    assert memory.num_filled == 8


def test_memory_state_dict_round_trip_and_reset():
    seed = fresh_seed()
    memory = _memory(L.MultiSimilarityLoss(n_inner_pts=2), D=3, size=10)
    for b in range(3):
        memory(*adjacent_set(random_labels(2, [0, 1, 2]), D=3))
    state = memory.state_dict()
    assert set(state) == {"embedding_memory", "label_memory", "_extra_state"}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = _memory(L.MultiSimilarityLoss(n_inner_pts=2), D=3, size=10)
    restored.load_state_dict(torch.load(buffer))
    assert (restored.queue_idx, restored.num_filled) == (memory.queue_idx, memory.num_filled) == (2, 10)
    X, y = adjacent_set(random_labels(2, [0, 1, 2]), D=3)
    torch.testing.assert_close(restored(X, y), memory(X, y), rtol=0, atol=0, msg=lambda m: f"seed={seed}: {m}")
    assert all(torch.equal(a, b) for a, b in zip(restored.contents(), memory.contents()))
    with pytest.raises(ValueError, match="does not fit"):
        restored.load_state_dict(dict(state, _extra_state={"queue_idx": 10, "num_filled": 10}))
    memory.reset()
    assert (memory.queue_idx, memory.num_filled) == (0, 0) and memory.contents()[0].shape == (0, 3)
    assert not memory.embedding_memory.any()
    memory(X, y)
    assert torch.equal(memory.contents()[0], X.detach())


def test_memory_two_forwards_before_one_backward():
    """The loss holds a snapshot of the memory: a later enqueue (in place) does not break an earlier graph."""
    seed = fresh_seed()
    memory = _memory(L.NPairLoss(n_inner_pts=2), D=4, size=8)
    X1, y1 = adjacent_set([0, 1], D=4)
    X2, y2 = adjacent_set([1, 2], D=4)
    total = memory(X1, y1) + memory(X2, y2)
    g1, g2 = torch.autograd.grad(total, (X1, X2))
    memory.reset()
    e1, = torch.autograd.grad(memory(X1, y1), X1)
    e2, = torch.autograd.grad(memory(X2, y2), X2)
    torch.testing.assert_close(g1, e1, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(g2, e2, msg=lambda m: f"seed={seed}: {m}")


# ------------------------------------------------------------------------------------------------
# the memory bank: its loss
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,n,mode", [("hphn", 0, "all"), ("hphn", 2, "all"), ("triplet", 2, "all"),
                                         ("lifted", 1, "adjacent"), ("npair", 2, "all"), ("ms", 0, "all")])
def test_memory_loss_equals_twin_with_the_memory_by_hand(name, n, mode, backend):
    """Batches of 6, 4, 8, 6 rows into 14 slots (partial fill, then a wrap mid-batch): each step's loss and
    gradient equal the twin's with the last rows written, concatenated by hand, as the reference."""
    seed = fresh_seed()
    mod, twin = make_losses(name, n, reduction="mean", pair_mode=mode)
    memory = CrossBatchMemory(mod, 5, memory_size=14, dtype=torch.float64)
    seen_X, seen_y = [], []
    for step, B in enumerate([6, 4, 8, 6]):
        X, y = adjacent_set(random_labels(B // 2, [0, 1, 2, 3]), D=5)
        seen_X.append(X.detach())
        seen_y.append(y)
        ref, ref_y = torch.cat(seen_X)[-14:], torch.cat(seen_y)[-14:]
        assert_same_loss(lambda: memory(X, y), lambda: twin(X, y, ref_emb=ref, ref_labels=ref_y), (X,),
                         f"seed={seed} step={step} {backend}")


def test_memory_with_pml_adapter():
    """CrossBatchMemory(EEPMLLoss(loss)): the adapter normalizes the batch and the memory alike."""
    pytest.importorskip("pytorch_metric_learning")
    from ee_cuda.integrations.pml import EEPMLLoss
    seed = fresh_seed()
    ee = L.HPHNTripletLoss(n_inner_pts=2)
    memory = CrossBatchMemory(EEPMLLoss(ee), 5, 12, dtype=torch.float64)
    X0, y0 = adjacent_set([0, 1], D=5)
    memory(X0, y0)
    X, y = adjacent_set([1, 2, 3], D=5)
    ref, ref_y = torch.cat([X0, X]).detach(), torch.cat([y0, y])
    normalize = functools.partial(torch.nn.functional.normalize, dim=1)
    assert_same_loss(lambda: memory(X, y), lambda: ee(normalize(X), y, ref_emb=normalize(ref), ref_labels=ref_y),
                     (X,), f"seed={seed}")


# ------------------------------------------------------------------------------------------------
# GlobalBatchLoss(CrossBatchMemory(...)): gloo, 2 CPU processes
# ------------------------------------------------------------------------------------------------

WORLD = 2
STEPS = [(4, 6), (6, 2), (4, 4)]  # local batch sizes per step (even: adjacent pairs never straddle ranks)


def _memory_loss():
    return CrossBatchMemory(L.HPHNTripletLoss(n_inner_pts=2), 4, memory_size=20, dtype=torch.float64)


def _distributed_worker(rank, init_file, batches, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        loss = GlobalBatchLoss(_memory_loss(), grad_scale=1)
        res = []
        for X, y, sizes in batches:
            start = sum(sizes[:rank])
            local = X[start:start + sizes[rank]].clone().requires_grad_(True)
            out = loss(local, y[start:start + sizes[rank]])
            g, = torch.autograd.grad(out, local)
            res.append((out.detach(), g, *(t.clone() for t in loss.loss.contents())))
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_global_batch_memory_equals_single_process():
    """Every rank's memory holds the global batches, and its loss and local gradients equal those of one
    process feeding the concatenated batches to one memory."""
    seed = fresh_seed()
    batches = []
    for sizes in STEPS:
        X, y = adjacent_set(random_labels(sum(sizes) // 2, [0, 1, 2, 3]), D=4)
        batches.append((X.detach(), y, sizes))
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_distributed_worker, args=(os.path.join(tmp, "init"), batches, tmp), nprocs=WORLD, join=True)
        res = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    single = _memory_loss()
    for step, (X, y, sizes) in enumerate(batches):
        Xs = X.clone().requires_grad_(True)
        out = single(Xs, y)
        g_single, = torch.autograd.grad(out, Xs)
        for r in range(WORLD):
            out_r, g_r, mem_r, mem_y_r = res[r][step]
            start = sum(sizes[:r])
            msg = lambda m: f"seed={seed} step={step} rank={r}: {m}"  # noqa: E731
            torch.testing.assert_close(out_r, out.detach(), rtol=1e-10, atol=1e-12, msg=msg)
            torch.testing.assert_close(g_r, g_single[start:start + sizes[r]], rtol=1e-10, atol=1e-12, msg=msg)
            assert torch.equal(mem_r, single.contents()[0]) and torch.equal(mem_y_r, single.contents()[1])


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_enqueues_without_synchronization_and_matches_cpu():
    seed = fresh_seed()
    loss = L.HPHNTripletLoss(n_inner_pts=2)
    cpu, gpu = (CrossBatchMemory(loss, 8, 16) for _ in range(2))
    gpu.cuda()
    for _ in range(3):
        X, y = adjacent_set(random_labels(3, [0, 1, 2]), D=8, dtype=torch.float32)
        torch.cuda.set_sync_debug_mode("error")
        try:
            gpu.enqueue(X.detach().cuda(), y.cuda())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        cpu.enqueue(X.detach(), y)
        a = cpu.loss(X, y, ref_emb=cpu.contents()[0], ref_labels=cpu.contents()[1])
        b = gpu.loss(X.detach().cuda(), y.cuda(), ref_emb=gpu.contents()[0], ref_labels=gpu.contents()[1])
        torch.testing.assert_close(b.cpu(), a.detach(), rtol=1e-4, atol=1e-5, msg=lambda m: f"seed={seed}: {m}")


def test_twins_with_an_empty_reference():
    """An empty reference set gives every item no negative: 0 from each twin, as from the fused loss."""
    X = torch.randn(8, 5, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(2)
    empty = dict(ref_emb=torch.randn(0, 5, dtype=torch.float64), ref_labels=torch.zeros(0, dtype=torch.long))
    twins = [(R.hphn_triplet, L.HPHNTripletLoss), (R.triplet, L.TripletLoss),
             (R.lifted_structure, L.LiftedStructureLoss), (R.npair, L.NPairLoss),
             (R.multi_similarity, L.MultiSimilarityLoss)]
    for twin, fused in twins:
        for n in (0, 2):
            got = twin(X, labels, n_inner_pts=n, **empty)
            assert torch.equal(got, torch.zeros_like(got)), twin.__name__
            torch.testing.assert_close(got, fused(n_inner_pts=n)(X, labels, **empty))
