"""The fused searches with a reference set (docs/design.md §3) against their pure-PyTorch twins: values and
argmins on both CPU routes (the vectorized row path and the CUDA kernels' tiles) and on CUDA, gradients to
``X`` and ``ref_X``, ``opcheck``, ``torch.compile``, and bad input for each ``ref_*`` argument."""
from __future__ import annotations

import re

import pytest
import torch

import ee_cuda
from ee_cuda import reference as R
from conftest import cpu_routes, fresh_seed, gradcheck_off_switches

FUSED = {"backend": "fused"}
OPS = ["hard_negative_points", "hard_negative_pairs"]
ROUTES = ["rows", "tiles"]


def labelled_set(rows: int, classes: int, D: int, *, layout: str, dtype, device, label_offset: int = 0):
    """``(X, pairs, labels)``: unit rows with labels in the adjacent layout (rows 2k, 2k+1 share a label,
    ``layout="adjacent"`` pairs them) or shuffled (``layout="all"``: every same-label pair)."""
    X = torch.nn.functional.normalize(torch.randn(rows, D, dtype=torch.float64), dim=1)
    if layout == "adjacent":
        labels = torch.randint(0, classes, (rows // 2,)).repeat_interleave(2)
    else:
        labels = torch.randint(0, classes, (rows,))
    labels = labels + label_offset
    pairs = ee_cuda.positive_pairs(labels, layout)
    return X.to(device, dtype), pairs.to(device), labels.to(device)


def reference_kwargs(ref):
    return dict(ref_X=ref[0], ref_pairs=ref[1], ref_labels=ref[2])


def selected_distance(op, query, ref, n, normalize, index):
    """The distance of the points that ``index`` names (float64, materialized): what ``dist`` must be."""
    A = R.augmented_points(query[0].double(), query[1], n, normalize)
    A_ref = R.augmented_points(ref[0].double(), ref[1], n, normalize)
    P, cols = index.shape[:2]
    found = (index >= 0).all(-1)
    idx = index.clamp_min(0)
    if op == "hard_negative_points":
        p, t = torch.arange(P).view(P, 1).expand(P, cols), torch.arange(cols).view(1, cols).expand(P, cols)
        q, r = idx[..., 0], idx[..., 1]
    else:
        p, q = torch.arange(P).view(P, 1).expand(P, cols), torch.arange(cols).view(1, cols).expand(P, cols)
        t, r = idx[..., 0], idx[..., 1]
    if A.shape[0] == 0 or A_ref.shape[0] == 0:
        return torch.full(index.shape[:2], float("inf"), dtype=torch.float64), found
    d = (A[p.cpu(), t.cpu()] - A_ref[q.cpu(), r.cpu()]).norm(dim=-1)
    return torch.where(found.cpu(), d, torch.full_like(d, float("inf"))), found


def check_against_twin(op, query, ref, n, normalize, dist, index, atol, msg):
    """dist equals the twin's, where there is no negative index is (-1, -1) as the twin's, and elsewhere
    index names points at that distance (an exact tie may legitimately pick another argmin)."""
    want_dist, want_index = getattr(R, op)(*query, n, normalize, **reference_kwargs(ref))
    assert dist.shape == want_dist.shape and index.shape == want_index.shape, msg
    torch.testing.assert_close(dist.double().cpu(), want_dist.double().cpu(), atol=atol, rtol=atol, msg=msg)
    none = (want_index == -1).all(-1).cpu()
    assert ((index.cpu() == -1).all(-1) == none).all(), msg
    chosen, _ = selected_distance(op, query, ref, n, normalize, index.cpu())
    torch.testing.assert_close(chosen[~none], want_dist.double().cpu()[~none], atol=atol, rtol=atol, msg=msg)


def tol(dtype):
    return {torch.float64: 1e-9, torch.float32: 2e-4}[dtype]


def route_cases(device):
    return [(device, route) for route in (ROUTES if device.type == "cpu" else ["tiles"])]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("labels_overlap", [True, False])
def test_reference_search_matches_twin(device, op, route, dtype, labels_overlap):
    seed = fresh_seed()
    for n in (0, 1, 2, 5):
        for normalize in (True, False):
            B, R_rows = 2 * int(torch.randint(2, 7, ())), 2 * int(torch.randint(3, 13, ()))
            query = labelled_set(B, 4, 6, layout="all", dtype=dtype, device=device)
            ref = labelled_set(R_rows, 5, 6, layout="all", dtype=dtype, device=device,
                               label_offset=0 if labels_overlap else 100)
            with cpu_routes(tiles=route == "tiles"):
                dist, index = getattr(ee_cuda, op)(*query, n, normalize, **reference_kwargs(ref), **FUSED)
            msg = f"seed {seed}, {op}, B={B}, R={R_rows}, n={n}, normalize={normalize}"
            check_against_twin(op, query, ref, n, normalize, dist, index, tol(dtype), msg)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["adjacent", "all"])
def test_reference_routes_agree_bit_for_bit(op, layout):
    """The CPU row path and the CUDA kernels' tiles promise the same bits, ties included: many reference
    pairs (several blocks of vector lanes, a partial last one) in both layouts, with duplicated rows."""
    seed = fresh_seed()
    for dtype in (torch.float32, torch.float64):
        query = labelled_set(24, 5, 16, layout="adjacent", dtype=dtype, device="cpu")
        ref = labelled_set(2 * 37, 9, 16, layout=layout, dtype=dtype, device="cpu")
        ref[0][5:9] = ref[0][1]  # exact ties between points of different pairs
        for n in (0, 2, 3):
            kw = reference_kwargs(ref)
            with cpu_routes(tiles=False):
                rows = getattr(ee_cuda, op)(*query, n, True, **kw, **FUSED)
            with cpu_routes(tiles=True):
                tiles = getattr(ee_cuda, op)(*query, n, True, **kw, **FUSED)
            msg = f"seed {seed}, {dtype}, n={n}"
            assert torch.equal(rows[0], tiles[0]) and torch.equal(rows[1], tiles[1]), msg
            check_against_twin(op, query, ref, n, True, *rows, tol(dtype), msg)


def test_reference_ties_take_the_smallest_key():
    """Duplicated reference rows are exact ties: the smallest q*T + r wins (points), the smallest t*T + r
    (pairs)."""
    X = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    ref_X = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    ref_labels = torch.tensor([1, 1, 1, 1])
    ref_pairs = torch.tensor([[0, 1], [2, 3]])
    pairs = torch.tensor([[0, 1]])
    for route in ROUTES:
        with cpu_routes(tiles=route == "tiles"):
            _, pi = ee_cuda.hard_negative_points(X, pairs, labels, 1, ref_X=ref_X, ref_pairs=ref_pairs,
                                                 ref_labels=ref_labels, **FUSED)
            _, qi = ee_cuda.hard_negative_pairs(X, pairs, labels, 1, ref_X=ref_X, ref_pairs=ref_pairs,
                                                ref_labels=ref_labels, **FUSED)
        assert (pi == torch.tensor([0, 0])).all(), route  # every candidate is the same point: (q, r) = (0, 0)
        assert (qi[0, :, 1] == 0).all(), route            # closest t is 2 (x_j = (0.8, 0.6)), r = 0 first
        assert (qi[0, :, 0] == 2).all(), route


@pytest.mark.parametrize("op", OPS)
def test_reference_without_negatives_empty_and_one_sided(device, op):
    query = labelled_set(8, 2, 5, layout="adjacent", dtype=torch.float64, device=device)
    own = query[2][query[1][:, 0]]
    ref_X = torch.randn(6, 5, dtype=torch.float64, device=device)
    ref_pairs = torch.tensor([[0, 1], [2, 3], [4, 5]], device=device)
    for ref_labels, ref_p in ((torch.full((6,), int(own[0]), device=device), ref_pairs),
                              (torch.full((6,), 7, device=device), ref_pairs[:0]),
                              (torch.zeros(0, dtype=torch.long, device=device), ref_pairs[:0])):
        ref = (ref_X[:len(ref_labels)], ref_p, ref_labels)
        for route in route_cases(device):
            with cpu_routes(tiles=route[1] == "tiles"):
                dist, index = getattr(ee_cuda, op)(*query, 2, **reference_kwargs(ref), **FUSED)
            check_against_twin(op, query, ref, 2, True, dist, index, 1e-9, f"{op}, {route}, Q={len(ref_p)}")
    empty_query = (query[0], query[1][:0], query[2])
    dist, index = getattr(ee_cuda, op)(*empty_query, 2, ref_X=ref_X, ref_pairs=ref_pairs,
                                       ref_labels=torch.arange(6, device=device) // 2, **FUSED)
    assert dist.shape[0] == 0 and index.shape[:1] == (0,)


@pytest.mark.parametrize("op", OPS)
def test_reference_is_the_batch(device, op):
    """With the batch itself as the reference set, the search equals the in-batch one."""
    seed = fresh_seed()
    query = labelled_set(20, 4, 8, layout="all", dtype=torch.float64, device=device)
    for route in route_cases(device):
        with cpu_routes(tiles=route[1] == "tiles"):
            own = getattr(ee_cuda, op)(*query, 2, **FUSED)
            with_ref = getattr(ee_cuda, op)(*query, 2, **reference_kwargs(query), **FUSED)
        torch.testing.assert_close(with_ref[0], own[0], atol=1e-12, rtol=1e-12, msg=f"seed {seed}, {route}")
        check_against_twin(op, query, query, 2, True, *with_ref, 1e-9, f"seed {seed}, {route}")


def twin_gradients(op, query, ref, n, normalize, weight, backend):
    X, ref_X = query[0].clone().requires_grad_(), ref[0].clone().requires_grad_()
    fn = getattr(ee_cuda, op) if backend == "fused" else getattr(R, op)
    kw = FUSED if backend == "fused" else {}
    dist, _ = fn(X, query[1], query[2], n, normalize, ref_X=ref_X, ref_pairs=ref[1], ref_labels=ref[2], **kw)
    (torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist)) * weight).sum().backward()
    return X.grad, ref_X.grad


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_gradients_match_twin(device, op, dtype):
    seed = fresh_seed()
    for n in (0, 1, 2, 5):
        for normalize in (True, False):
            for layout in ("adjacent", "all"):
                query = labelled_set(10, 3, 6, layout=layout, dtype=dtype, device=device)
                ref = labelled_set(14, 4, 6, layout=layout, dtype=dtype, device=device)
                cols = n + 2 if op == "hard_negative_points" else len(ref[1])
                weight = torch.randn(len(query[1]), cols, dtype=dtype, device=device)
                got = twin_gradients(op, query, ref, n, normalize, weight, "fused")
                want = twin_gradients(op, query, ref, n, normalize, weight, "reference")
                msg = f"seed {seed}, n={n}, normalize={normalize}, {layout}"
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, atol=tol(dtype), rtol=tol(dtype), msg=msg)


@pytest.mark.parametrize("op", OPS)
def test_detached_reference_skips_its_gradient(device, op):
    """A detached reference (XBM's memory): the backward skips dref_X (its op returns (0, D)) and dX is the
    one the reference with a gradient gets."""
    seed = fresh_seed()
    query = labelled_set(10, 3, 6, layout="adjacent", dtype=torch.float64, device=device)
    ref = labelled_set(14, 4, 6, layout="adjacent", dtype=torch.float64, device=device)
    cols = 4 if op == "hard_negative_points" else len(ref[1])
    weight = torch.randn(len(query[1]), cols, dtype=torch.float64, device=device)
    both = twin_gradients(op, query, ref, 2, True, weight, "fused")
    X = query[0].clone().requires_grad_()
    dist, index = getattr(ee_cuda, op)(X, *query[1:], 2, **reference_kwargs(ref), **FUSED)
    (torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist)) * weight).sum().backward()
    torch.testing.assert_close(X.grad, both[0], atol=1e-12, rtol=1e-12, msg=f"seed {seed}")
    backward = getattr(torch.ops.ee_cuda, op + "_ref_backward")
    g = torch.where(torch.isfinite(dist), weight, torch.zeros_like(weight))
    dX, dref = backward(g, query[0], query[1], ref[0], ref[1], dist, index, 2, True, False)
    assert dref.shape == (0, 6) and torch.allclose(dX, both[0], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_reference_gradcheck(device, normalize):
    seed = fresh_seed()
    query = labelled_set(6, 2, 3, layout="all", dtype=torch.float64, device=device)
    ref = labelled_set(8, 3, 3, layout="all", dtype=torch.float64, device=device)

    def search(x, y):
        kw = dict(ref_X=y, ref_pairs=ref[1], ref_labels=ref[2], **FUSED)
        d, _ = ee_cuda.hard_negative_pairs(x, query[1], query[2], 2, normalize, **kw)
        p, _ = ee_cuda.hard_negative_points(x, query[1], query[2], 2, normalize, **kw)
        return torch.where(torch.isfinite(d), d, 0), torch.where(torch.isfinite(p), p, 0)

    def draw():
        rows = (torch.nn.functional.normalize(torch.randn_like(x), dim=1) for x in (query[0], ref[0]))
        return tuple(x.requires_grad_() for x in rows)

    gradcheck_off_switches(search, draw, f"seed={seed}")


def test_reference_opcheck(device):
    query = labelled_set(12, 3, 5, layout="all", dtype=torch.float64, device=device)
    ref = labelled_set(10, 4, 5, layout="adjacent", dtype=torch.float64, device=device)
    X, ref_X = query[0].clone().requires_grad_(), ref[0].clone().requires_grad_()
    ops = torch.ops.ee_cuda
    for normalize in (True, False):
        args = (X, query[1], query[2], ref_X, ref[1], ref[2], 2, normalize)
        torch.library.opcheck(ops.hard_negative_pairs_ref.default, args)
        torch.library.opcheck(ops.hard_negative_points_ref.default, args)
    for name in ("hard_negative_pairs", "hard_negative_points"):
        d, i = getattr(ops, name + "_ref")(query[0], query[1], query[2], ref[0], ref[1], ref[2], 2, True)
        g = torch.where(torch.isfinite(d), torch.randn_like(d), 0)
        for ref_grad in (True, False):
            torch.library.opcheck(getattr(ops, name + "_ref_backward").default,
                                  (g, query[0], query[1], ref[0], ref[1], d, i, 2, True, ref_grad))


def test_reference_torch_compile_fullgraph(device):
    query = labelled_set(16, 4, 8, layout="all", dtype=torch.float32, device=device)
    ref = labelled_set(24, 6, 8, layout="adjacent", dtype=torch.float32, device=device)

    def loss_fn(x, y):
        kw = dict(ref_X=y, ref_pairs=ref[1], ref_labels=ref[2])
        d, _ = ee_cuda.hard_negative_pairs(x, query[1], query[2], 2, **kw)
        p, _ = ee_cuda.hard_negative_points(x, query[1], query[2], 2, **kw)
        return torch.where(torch.isfinite(d), d, 0).sum() + torch.where(torch.isfinite(p), p, 0).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    (Xa, Ya), (Xb, Yb) = [(query[0].clone().requires_grad_(), ref[0].clone().requires_grad_()) for _ in range(2)]
    la, lb = compiled(Xa, Ya), loss_fn(Xb, Yb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(Xa.grad, Xb.grad)
    torch.testing.assert_close(Ya.grad, Yb.grad)


def test_reference_nan_in_nan_out(device):
    """NaN in a reference row (the CPU takes the tiles then): through the Gram identity every point of its pair
    is NaN (0 * NaN), and a NaN minimum has the index of the first NaN candidate in the tie order: (q, 0) with
    q the first negative pair holding a NaN row (points), (0, 0) (pairs)."""
    seed = fresh_seed()
    query = labelled_set(8, 2, 4, layout="adjacent", dtype=torch.float64, device=device)
    ref = labelled_set(12, 3, 4, layout="adjacent", dtype=torch.float64, device=device)
    ref[0][3, 1] = float("nan")
    ref[0][8, 0] = float("nan")
    has_nan = torch.isnan(ref[0][ref[1]]).any(dim=(1, 2))
    negative = query[2][query[1][:, 0]][:, None] != ref[2][ref[1][:, 0]][None, :]
    msg = f"seed {seed}"
    for n, normalize in ((0, True), (2, True), (3, False)):
        d, i = ee_cuda.hard_negative_points(*query, n, normalize, **reference_kwargs(ref), **FUSED)
        expect_nan = (negative & has_nan[None, :]).any(dim=1)
        first_q = (negative & has_nan[None, :]).int().argmax(dim=1)
        assert torch.equal(torch.isnan(d).all(dim=1), expect_nan) and not torch.isnan(d[~expect_nan]).any(), msg
        assert torch.equal(i[expect_nan][..., 0], first_q[expect_nan, None].expand(-1, n + 2)), msg
        assert (i[expect_nan][..., 1] == 0).all(), msg
        d, i = ee_cuda.hard_negative_pairs(*query, n, normalize, **reference_kwargs(ref), **FUSED)
        expect_nan = negative & has_nan[None, :]
        assert torch.equal(torch.isnan(d), expect_nan) and (i[expect_nan] == 0).all(), msg
        finite = negative & ~has_nan[None, :]
        want, _ = R.hard_negative_pairs(*query, n, normalize, **reference_kwargs(ref))
        torch.testing.assert_close(d[finite], want[finite], msg=msg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_half_inputs_run_in_float32(device, dtype):
    query = labelled_set(12, 3, 8, layout="adjacent", dtype=dtype, device=device)
    ref = labelled_set(16, 4, 8, layout="adjacent", dtype=dtype, device=device)
    for op in OPS:
        dist, index = getattr(ee_cuda, op)(*query, 2, **reference_kwargs(ref), **FUSED)
        up = lambda s: (s[0].float(), s[1], s[2])  # noqa: E731
        want, _ = getattr(ee_cuda, op)(*up(query), 2, **reference_kwargs(up(ref)), **FUSED)
        assert dist.dtype == dtype
        torch.testing.assert_close(dist.float(), want, atol=1e-2, rtol=1e-2)


def test_reference_bad_input_names_the_argument(device):
    query = labelled_set(6, 2, 4, layout="adjacent", dtype=torch.float64, device=device)
    ref_X = torch.randn(8, 4, dtype=torch.float64, device=device)
    ref_labels = torch.arange(4, device=device).repeat_interleave(2)  # rows 1 and 2 differ
    ref_pairs = ee_cuda.positive_pairs(ref_labels, "adjacent")
    ref = (ref_X, ref_pairs, ref_labels)
    X, pairs, labels = query
    good = reference_kwargs(ref)
    cases = [
        (dict(ref_X=ref_X), ValueError, "all or none"),
        (dict(good, ref_pairs=None), ValueError, "without ref_pairs"),
        (dict(good, ref_X=ref_X[:, :3]), ValueError, "ref_X has D=3"),
        (dict(good, ref_X=ref_X.float()), TypeError, "ref_X is torch.float32"),
        (dict(good, ref_labels=ref_labels[:-1]), ValueError, "ref_labels must have length 8"),
        (dict(good, ref_pairs=torch.tensor([[0, 8]], device=device)), ValueError, "ref_pairs holds indices outside"),
        (dict(good, ref_pairs=torch.tensor([[2, 2]], device=device)), ValueError, "ref_pairs row 0 pairs a sample"),
        (dict(good, ref_pairs=torch.tensor([[1, 2]], device=device)), ValueError, "ref_pairs row 0"),
    ]
    for op in OPS:
        for kw, exc, words in cases:
            if device.type == "cuda" and ("ref_pairs row" in words or "outside" in words):
                continue  # on CUDA the values are device-side assertions (no host read)
            with pytest.raises(exc, match=re.escape(words)):
                getattr(ee_cuda, op)(X, pairs, labels, 1, **kw, **FUSED)
    if device.type != "cpu":
        return
    # The registered ops check their arguments themselves, by name, before any kernel runs.
    ops = torch.ops.ee_cuda
    direct = [
        ((X, pairs, labels, ref_X[0], ref_pairs, ref_labels), ValueError, "ref_X must have shape"),
        ((X, pairs, labels, ref_X[:, :2], ref_pairs, ref_labels), ValueError, "ref_X has D=2"),
        ((X, pairs, labels, ref_X.float(), ref_pairs, ref_labels), TypeError, "ref_X is Float"),
        ((X, pairs, labels, ref_X, ref_pairs.int(), ref_labels), TypeError, "ref_pairs must be an int64"),
        ((X, pairs, labels, ref_X, ref_pairs[:, :1], ref_labels), ValueError, "ref_pairs must have shape"),
        ((X, pairs, labels, ref_X, ref_pairs, ref_labels[:-1]), ValueError, "ref_labels must have shape"),
        ((X, pairs, labels, ref_X, ref_pairs, ref_labels.int()), TypeError, "ref_labels must be an int64"),
        ((X, pairs, labels, ref_X, ref_pairs + 1, ref_labels), ValueError, "ref_pairs holds indices outside"),
        ((X, pairs, labels, ref_X, torch.tensor([[1, 2]]), ref_labels), ValueError,
         "ref_pairs row 0 = (1, 2) is not a positive pair: ref_labels[1]"),
    ]
    for name in ("hard_negative_pairs_ref", "hard_negative_points_ref"):
        for args, exc, words in direct:
            with pytest.raises(exc, match=re.escape(words)):
                getattr(ops, name)(*args, 1, True)
