"""Pure-PyTorch twins of every op (docs/design.md §2-§3): the test oracle and the fallback backend.

These functions materialize every augmented point and the full distance matrix between them, the
"plain implementation" a user would write by hand. They are deliberately simple: each line follows a
definition of docs/design.md. Memory is ``O((P*T)^2)``; use the fused ops (``ee_cuda.expand`` and
friends) for real batches. The argument checks and ``positive_pairs`` are the library's own (there is
no second implementation of either to compare against).

Dtypes: points and distances are computed in the input dtype (float16/bfloat16 included), exactly as a
plain implementation would; ``torch.cdist`` is used for distances.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import (check_embedding_aug_args, check_embeddings, check_labels, check_n_inner, check_pairs,
                           check_reference_set)
from ..pairs import positive_pairs

EPS = 1e-12  # torch.nn.functional.normalize's default, docs/design.md §1

__all__ = ["expand", "hard_negative_pairs", "hard_negative_points", "positive_pairs", "embedding_aug",
           "augmented_points", "build_info"]


def augmented_points(X: torch.Tensor, pairs: torch.Tensor, n_inner: int, normalize: bool = True) -> torch.Tensor:
    """All ``T = n_inner + 2`` augmented points ``a(p, t)`` of every pair, shape ``(P, T, D)`` (docs/design.md §2)."""
    pairs = pairs.long()
    xi, xj = X[pairs[:, 0]], X[pairs[:, 1]]
    n = n_inner
    t = torch.arange(1, n + 1, device=X.device, dtype=X.dtype).view(1, n, 1)
    u = ((n + 1 - t) * xi[:, None, :] + t * xj[:, None, :]) / (n + 1)
    if normalize:
        u = F.normalize(u, dim=-1, eps=EPS)
    return torch.cat([xi[:, None, :], u, xj[:, None, :]], dim=1)


def expand(X: torch.Tensor, pairs: torch.Tensor, n_inner: int, normalize: bool = True) -> torch.Tensor:
    """Synthetic points only, ``(P, n, D)``: ``out[p, t-1] = a(p, t)`` for ``t = 1..n``."""
    check_embeddings(X)
    n_inner = check_n_inner(n_inner)
    check_pairs(pairs, X.shape[0], X.device)
    return _expand(X, pairs, n_inner, normalize)


def _expand(X, pairs, n_inner, normalize):
    return augmented_points(X, pairs, n_inner, normalize)[:, 1:n_inner + 1]


def _pair_labels(labels: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return labels[pairs[:, 0].long()]


def _augmented_distances(X, pairs, n_inner, normalize, ref=None):
    """Distance between every augmented point of ``(X, pairs)`` and every one of the reference set
    ``ref = (ref_X, ref_pairs)`` (default: the same set), viewed as ``(P, T, Q, T)``."""
    P, T = pairs.shape[0], n_inner + 2
    A = augmented_points(X, pairs, n_inner, normalize).reshape(P * T, -1)
    if ref is None:
        return torch.cdist(A, A).view(P, T, P, T)
    Q = ref[1].shape[0]
    A_ref = augmented_points(ref[0], ref[1], n_inner, normalize).reshape(Q * T, -1)
    return torch.cdist(A, A_ref).view(P, T, Q, T)


def _check_search(X, pairs, labels, n_inner, ref_X, ref_pairs, ref_labels):
    check_embeddings(X)
    n_inner = check_n_inner(n_inner)
    check_labels(labels, X.shape[0], X.device)
    check_pairs(pairs, X.shape[0], X.device, labels)
    return n_inner, check_reference_set(X, ref_X, ref_pairs, ref_labels)


def hard_negative_pairs(X, pairs, labels, n_inner: int, normalize: bool = True, *, ref_X=None, ref_pairs=None,
                        ref_labels=None):
    """``dist[p, q] = min_{t, r} ||a(p,t) - a(q,r)||`` over pairs of different labels, and its ``(t, r)``.

    Same-label entries are ``+inf`` and ``(-1, -1)``. Ties go to the smallest ``t*T + r`` (the first
    minimum in row-major order, as ``torch.min`` returns it). With a reference set (``ref_X``,
    ``ref_pairs``, ``ref_labels``, all or none) the ``q`` are its pairs and ``a(q, r)`` its augmented
    points: ``dist`` is ``(P, Q)``, and not symmetric.
    """
    n_inner, has_ref = _check_search(X, pairs, labels, n_inner, ref_X, ref_pairs, ref_labels)
    return _hard_negative_pairs(X, pairs, labels, n_inner, normalize,
                                (ref_X, ref_pairs, ref_labels) if has_ref else None)


def _negatives_and_distances(X, pairs, labels, n_inner, normalize, ref):
    """Which reference pairs have another label than each pair ``(P, Q)``, and the distances between the
    two sets' augmented points ``(P, T, Q, T)``; the reference is the batch itself when ``ref`` is None."""
    ref_pairs, ref_labels = (pairs, labels) if ref is None else ref[1:]
    negative = _pair_labels(labels, pairs)[:, None] != _pair_labels(ref_labels, ref_pairs)[None, :]
    return negative, _augmented_distances(X, pairs, n_inner, normalize, None if ref is None else ref[:2])


def _found(dist, flat, T, found):
    """``(dist, index)`` from a minimum and its flat argmin over ``(a, b)`` pairs of ``T`` positions:
    ``index = (flat // T, flat % T)``, and ``+inf`` / ``(-1, -1)`` where ``found`` is False."""
    index = torch.stack([flat // T, flat % T], dim=-1)
    return (torch.where(found, dist, torch.full_like(dist, float("inf"))),
            torch.where(found[..., None], index, torch.full_like(index, -1)))


def _hard_negative_pairs(X, pairs, labels, n_inner, normalize, ref=None):
    P, Q, T = pairs.shape[0], (pairs if ref is None else ref[1]).shape[0], n_inner + 2
    if P == 0 or Q == 0:
        return (X.new_full((P, Q), float("inf")), torch.full((P, Q, 2), -1, dtype=torch.long, device=X.device))
    negative, dist_all = _negatives_and_distances(X, pairs, labels, n_inner, normalize, ref)
    dist, flat = dist_all.permute(0, 2, 1, 3).reshape(P, Q, T * T).min(dim=-1)
    return _found(dist, flat, T, negative)


def hard_negative_points(X, pairs, labels, n_inner: int, normalize: bool = True, *, ref_X=None, ref_pairs=None,
                         ref_labels=None):
    """``dist[p, t] = min_{q of another label, r} ||a(p,t) - a(q,r)||`` and its ``(q, r)``.

    ``+inf`` and ``(-1, -1)`` where no pair of another label exists. Ties go to the smallest
    ``q*T + r``. With a reference set (``ref_X``, ``ref_pairs``, ``ref_labels``, all or none) the ``q``
    are its pairs and ``a(q, r)`` its augmented points.
    """
    n_inner, has_ref = _check_search(X, pairs, labels, n_inner, ref_X, ref_pairs, ref_labels)
    return _hard_negative_points(X, pairs, labels, n_inner, normalize,
                                 (ref_X, ref_pairs, ref_labels) if has_ref else None)


def _hard_negative_points(X, pairs, labels, n_inner, normalize, ref=None):
    P, Q, T = pairs.shape[0], (pairs if ref is None else ref[1]).shape[0], n_inner + 2
    if P == 0 or Q == 0:
        return (X.new_full((P, T), float("inf")), torch.full((P, T, 2), -1, dtype=torch.long, device=X.device))
    negative, dist_all = _negatives_and_distances(X, pairs, labels, n_inner, normalize, ref)
    dist_all = dist_all.masked_fill(~negative[:, None, :, None], float("inf")).reshape(P, T, Q * T)
    dist, flat = dist_all.min(dim=-1)
    return _found(dist, flat, T, negative.any(dim=1)[:, None].expand(P, T))


def embedding_aug(X, labels, num_instance: int, n_inner_pts: int, l2_norm: bool = True):
    """The official ``get_embedding_aug`` (clovaai/embedding-expansion), in PyTorch.

    Returns ``([X; G_1; ...; G_n], labels repeated n+1 times)`` with
    ``G_k[i] = normalize(((n+1-k) x_i + k x_{i^1}) / (n+1))`` and ``i^1`` the row ``i`` is paired with.
    Unlike upstream, rows ``i`` and ``i^1`` must share a label (``ValueError`` otherwise).
    """
    n = check_embedding_aug_args(X, labels, num_instance, n_inner_pts)
    B = X.shape[0]
    swap = torch.arange(B, device=X.device) ^ 1
    anchor, pos = X[swap], X
    blocks, total = [X], float(n + 1)
    for k in range(1, n + 1):
        inner = (anchor * k + pos * (total - k)) / total
        blocks.append(F.normalize(inner, dim=-1, eps=EPS) if l2_norm else inner)
    return torch.cat(blocks, dim=0), labels.repeat(n + 1)


def build_info() -> dict:
    """The reference compiles nothing: both kernel flags are False."""
    return {"cpu": False, "openmp": False, "cpu_vector_isa": None, "cuda": False, "cuda_arch_list": None, "torch": torch.__version__,
            "backend": "reference"}
