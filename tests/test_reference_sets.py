"""The pure-PyTorch twins of the searches with a reference set (docs/design.md §3): against a brute force
written from the definitions, against the in-batch search when the reference is the batch, gradients to
both sets, and bad input for each ``ref_*`` argument."""
import itertools

import pytest
import torch

from conftest import fresh_seed, gradcheck_off_switches
from ee_cuda import reference as R


def point(X, pair, t, n, normalize):
    """``a(p, t)`` from its definition: the endpoints at ``t = 0`` and ``n + 1``, between them the
    interpolation ``((n+1-t) x_i + t x_j) / (n+1)``, normalized when asked."""
    xi, xj = X[pair[0]], X[pair[1]]
    if t == 0:
        return xi
    if t == n + 1:
        return xj
    u = ((n + 1 - t) * xi + t * xj) / (n + 1)
    return u / u.norm().clamp_min(1e-12) if normalize else u


def brute_force(X, pairs, labels, ref_X, ref_pairs, ref_labels, n, normalize):
    """``(points_dist, points_index, pairs_dist, pairs_index)`` by loops over every (p, t, q, r).

    A reference row shared by two pairs is the same point twice: an exact tie here, which ``torch.cdist``
    (matrix-product form) may break by a rounding either way; ``assert_indices`` allows for it."""
    P, Q, T = len(pairs), len(ref_pairs), n + 2
    pd = torch.full((P, T), float("inf"), dtype=X.dtype)
    pi = torch.full((P, T, 2), -1, dtype=torch.long)
    qd = torch.full((P, Q), float("inf"), dtype=X.dtype)
    qi = torch.full((P, Q, 2), -1, dtype=torch.long)
    for p, q in itertools.product(range(P), range(Q)):
        if labels[pairs[p][0]] == ref_labels[ref_pairs[q][0]]:
            continue
        for t, r in itertools.product(range(T), range(T)):  # row-major: the first minimum wins ties
            d = (point(X, pairs[p], t, n, normalize) - point(ref_X, ref_pairs[q], r, n, normalize)).norm()
            if d < qd[p, q]:
                qd[p, q], qi[p, q] = d, torch.tensor([t, r])
    for p, t in itertools.product(range(P), range(T)):
        for q, r in itertools.product(range(Q), range(T)):
            if labels[pairs[p][0]] == ref_labels[ref_pairs[q][0]]:
                continue
            d = (point(X, pairs[p], t, n, normalize) - point(ref_X, ref_pairs[q], r, n, normalize)).norm()
            if d < pd[p, t]:
                pd[p, t], pi[p, t] = d, torch.tensor([q, r])
    return pd, pi, qd, qi


def random_set(B, classes, D, dtype, label_offset=0):
    X = torch.randn(B, D, dtype=dtype)
    labels = torch.randint(0, classes, (B,)) + label_offset
    pairs = [(i, j) for i in range(B) for j in range(B) if i < j and labels[i] == labels[j]]
    pairs = torch.tensor(pairs, dtype=torch.long).view(-1, 2)
    return X, pairs, labels


@pytest.mark.parametrize("n", [0, 1, 2, 5])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("labels_overlap", [True, False])
def test_reference_set_matches_brute_force(n, normalize, labels_overlap):
    seed = fresh_seed()
    B, R_rows, D = int(torch.randint(4, 9, ())), int(torch.randint(3, 11, ())), int(torch.randint(2, 6, ()))
    X, pairs, labels = random_set(B, 3, D, torch.float64)
    ref_X, ref_pairs, ref_labels = random_set(R_rows, 3, D, torch.float64, 0 if labels_overlap else 10)
    want = brute_force(X, pairs, labels, ref_X, ref_pairs, ref_labels, n, normalize)
    kw = dict(ref_X=ref_X, ref_pairs=ref_pairs, ref_labels=ref_labels)
    pd, pi = R.hard_negative_points(X, pairs, labels, n, normalize, **kw)
    qd, qi = R.hard_negative_pairs(X, pairs, labels, n, normalize, **kw)
    msg = f"seed {seed}, B={B}, R={R_rows}, n={n}, normalize={normalize}"
    assert pd.shape == (len(pairs), n + 2) and qd.shape == (len(pairs), len(ref_pairs)), msg
    torch.testing.assert_close(pd, want[0], msg=msg)
    torch.testing.assert_close(qd, want[2], msg=msg)
    assert_indices(pi, want[1], lambda p, t, q, r: (point(X, pairs[p], t, n, normalize)
                                                    - point(ref_X, ref_pairs[q], r, n, normalize)).norm(), msg)
    assert_indices(qi, want[3], lambda p, q, t, r: (point(X, pairs[p], t, n, normalize)
                                                    - point(ref_X, ref_pairs[q], r, n, normalize)).norm(), msg)


def assert_indices(got, want, dist, msg):
    """Equal indices, except where the two choices are points at the same distance (a tie up to rounding)."""
    for cell in (got != want).any(-1).nonzero().tolist():
        g, w = got[tuple(cell)].tolist(), want[tuple(cell)].tolist()
        assert -1 not in g + w, (msg, cell, g, w)
        torch.testing.assert_close(dist(*cell, *g), dist(*cell, *w), msg=lambda m: f"{msg}, {cell}: {g} vs {w}\n{m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_as_its_own_reference_is_the_in_batch_search(dtype):
    seed = fresh_seed()
    X, pairs, labels = random_set(12, 3, 8, dtype)
    n = int(torch.randint(0, 4, ()))
    for op in (R.hard_negative_points, R.hard_negative_pairs):
        own = op(X, pairs, labels, n)
        with_ref = op(X, pairs, labels, n, ref_X=X, ref_pairs=pairs, ref_labels=labels)
        assert torch.equal(own[0], with_ref[0]) and torch.equal(own[1], with_ref[1]), f"seed {seed}, {op.__name__}"


def test_reference_without_negatives_and_empty():
    X, pairs, labels = random_set(6, 2, 4, torch.float64)
    same = torch.zeros(4, dtype=torch.long) + labels[pairs[0, 0]]
    ref_X = torch.randn(4, 4, dtype=torch.float64)
    ref_pairs = torch.tensor([[0, 1], [2, 3]])
    for ref_labels, ref_p in ((same, ref_pairs), (same, ref_pairs[:0])):
        kw = dict(ref_X=ref_X, ref_pairs=ref_p, ref_labels=ref_labels)
        pd, pi = R.hard_negative_points(X, pairs, labels, 2, **kw)
        qd, qi = R.hard_negative_pairs(X, pairs, labels, 2, **kw)
        own_label = labels[pairs[:, 0]] == same[0]
        assert torch.isinf(pd[own_label]).all() and (pi[own_label] == -1).all()
        assert qd.shape == (len(pairs), len(ref_p))
        assert torch.isinf(qd[own_label]).all() and (qi[own_label] == -1).all()
    empty = R.hard_negative_points(X, pairs, labels, 1, ref_X=ref_X[:0], ref_pairs=ref_pairs[:0],
                                   ref_labels=same[:0])
    assert empty[0].shape == (len(pairs), 3) and torch.isinf(empty[0]).all() and (empty[1] == -1).all()


@pytest.mark.parametrize("op", [R.hard_negative_points, R.hard_negative_pairs])
@pytest.mark.parametrize("normalize", [True, False])
def test_reference_set_gradients(op, normalize):
    seed = fresh_seed()
    X, pairs, labels = random_set(6, 2, 3, torch.float64)
    ref_X, ref_pairs, ref_labels = random_set(5, 3, 3, torch.float64)

    def f(X, ref_X):
        d = op(X, pairs, labels, 2, normalize, ref_X=ref_X, ref_pairs=ref_pairs, ref_labels=ref_labels)[0]
        return torch.where(torch.isfinite(d), d, torch.zeros_like(d))

    gradcheck_off_switches(f, lambda: (torch.randn_like(X).requires_grad_(), torch.randn_like(ref_X).requires_grad_()),
                           f"seed={seed}")


def test_reference_set_bad_input():
    X, pairs, labels = random_set(6, 2, 4, torch.float64)
    ref_X, ref_pairs, ref_labels = random_set(5, 2, 4, torch.float64)
    good = dict(ref_X=ref_X, ref_pairs=ref_pairs, ref_labels=ref_labels)
    cases = [
        (dict(ref_X=ref_X), ValueError, "all or none"),
        (dict(good, ref_labels=None), ValueError, "without ref_labels"),
        (dict(good, ref_X=ref_X[:, :3]), ValueError, "ref_X has D=3"),
        (dict(good, ref_X=ref_X.float()), TypeError, "ref_X is torch.float32"),
        (dict(good, ref_X=ref_X[0]), ValueError, "ref_X must have shape"),
        (dict(good, ref_X=[[0.0]]), TypeError, "ref_X must be a torch.Tensor"),
        (dict(good, ref_labels=ref_labels[:-1]), ValueError, "ref_labels must have length 5"),
        (dict(good, ref_labels=ref_labels.float()), TypeError, "ref_labels must be an integer"),
        (dict(good, ref_pairs=torch.tensor([[0, 5]])), ValueError, "ref_pairs holds indices outside"),
        (dict(good, ref_pairs=torch.tensor([[1, 1]])), ValueError, "ref_pairs row 0 pairs a sample with itself"),
        (dict(good, ref_pairs=ref_pairs[:, :1]), ValueError, "ref_pairs must have shape (P, 2)"),
    ]
    if bool((ref_labels[0] != ref_labels).any()):
        j = int((ref_labels != ref_labels[0]).nonzero()[0, 0])
        cases.append((dict(good, ref_pairs=torch.tensor([[0, j]])), ValueError, "ref_pairs row 0"))
    for op in (R.hard_negative_points, R.hard_negative_pairs):
        for kw, exc, words in cases:
            with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
                op(X, pairs, labels, 1, **kw)
