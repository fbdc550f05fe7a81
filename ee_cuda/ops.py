"""The public ops (docs/design.md §3): validated, then run by the fused kernels or by the reference.

Each op takes ``backend=None | "auto" | "fused" | "reference"`` (see ``ee_cuda._backend``).
The fused ops are registered as ``torch.ops.ee_cuda.*`` with fake (meta) kernels and autograd in
``ee_cuda._registration``; they work under ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import torch

from .reference import ops as reference
from ._backend import use_fused
from ._validation import (check_embedding_aug_args, check_embeddings, check_labels, check_n_inner, check_pairs,
                          check_reference_set)
from .pairs import positive_pairs

__all__ = ["expand", "hard_negative_pairs", "hard_negative_points", "positive_pairs", "embedding_aug"]


def _checked_by_kernel(fused: bool, X: torch.Tensor) -> bool:
    """The fused CPU kernels check the pairs' values themselves (one pass in C++, same messages, before any
    computation), which costs a fraction of the separate tensor ops that check them in Python."""
    return fused and X.device.type == "cpu"


def _in_dtype_of(X: torch.Tensor, found):
    """The fused searches return dist in the accumulation type (float32 for half inputs), which autograd saves
    for their backward: the gradients never see a distance rounded to half. The public dist is X's dtype."""
    dist, index = found
    return dist.to(X.dtype), index


def expand(X: torch.Tensor, pairs: torch.Tensor, n_inner: int, normalize: bool = True, *,
           backend: str | None = None) -> torch.Tensor:
    """Synthetic points of every positive pair (docs/design.md §2): ``(P, n_inner, D)``.

    ``out[p, t-1] = u / max(||u||, 1e-12)`` (or ``u`` when ``normalize=False``) with
    ``u = ((n+1-t) X[i] + t X[j]) / (n+1)`` for pair ``p = (i, j)``, ``t = 1..n``. Differentiable in ``X``.
    Half inputs are computed with float32 accumulation and returned in their dtype.
    """
    check_embeddings(X)
    n_inner = check_n_inner(n_inner)
    fused = use_fused("expand", X.device, backend)
    check_pairs(pairs, X.shape[0], X.device, values=not _checked_by_kernel(fused, X))
    if fused:
        return torch.ops.ee_cuda.expand(X, pairs.long(), n_inner, normalize)
    return reference._expand(X, pairs, n_inner, normalize)


def _search(name: str, X, pairs, labels, n_inner, normalize, ref_X, ref_pairs, ref_labels, backend):
    """The shared body of both searches: checks, then the fused kernel or the reference, with or without a
    reference set."""
    check_embeddings(X)
    n_inner = check_n_inner(n_inner)
    check_labels(labels, X.shape[0], X.device)
    fused = use_fused(name, X.device, backend)
    by_kernel = _checked_by_kernel(fused, X)
    check_pairs(pairs, X.shape[0], X.device, labels, values=not by_kernel)
    has_ref = check_reference_set(X, ref_X, ref_pairs, ref_labels, values=not by_kernel)
    if not fused:
        twin = getattr(reference, "_" + name)
        return twin(X, pairs, labels, n_inner, normalize, (ref_X, ref_pairs, ref_labels) if has_ref else None)
    if has_ref:
        op = getattr(torch.ops.ee_cuda, name + "_ref")
        found = op(X, pairs.long(), labels.long(), ref_X, ref_pairs.long(), ref_labels.long(), n_inner, normalize)
    else:
        found = getattr(torch.ops.ee_cuda, name)(X, pairs.long(), labels.long(), n_inner, normalize)
    return _in_dtype_of(X, found)


def hard_negative_pairs(X: torch.Tensor, pairs: torch.Tensor, labels: torch.Tensor, n_inner: int,
                        normalize: bool = True, *, ref_X: torch.Tensor | None = None,
                        ref_pairs: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                        backend: str | None = None):
    """Hardest negative pair between the augmented sets of every two positive pairs (docs/design.md §3).

    Returns ``dist (P, P)`` in ``X``'s dtype and ``index (P, P, 2)`` int64:
    ``dist[p, q] = min_{t, r} ||a(p,t) - a(q,r)||`` for pairs of different labels with ``index[p, q]``
    its ``(t, r)`` (ties: smallest ``t*T + r``); ``+inf`` / ``(-1, -1)`` for same-label pairs.
    The fused kernel never materializes the augmented points: one ``X Xᵀ`` product, then a scan of the
    pair grid over Gram entries (docs/design.md §4). Gradients flow to ``X`` through the selected points.

    With a reference set (``ref_X (R, D)``, ``ref_pairs (Q, 2)``, ``ref_labels (R,)``: all or none) the
    ``q`` are the reference's pairs and ``a(q, r)`` its augmented points: ``dist`` and ``index`` are
    ``(P, Q)`` and ``(P, Q, 2)``, not symmetric; the kernel forms the cross-Gram ``X ref_Xᵀ`` only, and
    gradients flow to ``X`` and ``ref_X``.
    """
    return _search("hard_negative_pairs", X, pairs, labels, n_inner, normalize, ref_X, ref_pairs, ref_labels,
                   backend)


def hard_negative_points(X: torch.Tensor, pairs: torch.Tensor, labels: torch.Tensor, n_inner: int,
                         normalize: bool = True, *, ref_X: torch.Tensor | None = None,
                         ref_pairs: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                         backend: str | None = None):
    """Hardest negative of every augmented point (docs/design.md §3).

    Returns ``dist (P, T)`` and ``index (P, T, 2)`` int64 with ``T = n_inner + 2``:
    ``dist[p, t] = min_{q of another label, r} ||a(p,t) - a(q,r)||`` and ``index[p, t] = (q, r)``
    (ties: smallest ``q*T + r``); ``+inf`` / ``(-1, -1)`` where no pair of another label exists.

    With a reference set (``ref_X``, ``ref_pairs``, ``ref_labels``: all or none) the candidates ``a(q, r)``
    are the augmented points of the reference's pairs (a memory bank, PML's ``ref_emb``); gradients flow
    to ``X`` and ``ref_X``.
    """
    return _search("hard_negative_points", X, pairs, labels, n_inner, normalize, ref_X, ref_pairs, ref_labels,
                   backend)


def embedding_aug(X: torch.Tensor, labels: torch.Tensor, num_instance: int, n_inner_pts: int,
                  l2_norm: bool = True, *, backend: str | None = None):
    """Drop-in for the official ``get_embedding_aug``: ``([X; G_1; ...; G_n], labels.repeat(n+1))``.

    ``G_k[i] = normalize(((n+1-k) x_i + k x_{i^1}) / (n+1))`` where ``i^1`` is ``i``'s neighbour in the
    adjacent layout. Computed as one ``expand`` over the ``B`` pairs ``(i, i^1)``. ``num_instance`` must be
    even (as upstream asserts); unlike upstream, rows ``i`` and ``i^1`` must share a label.
    """
    n = check_embedding_aug_args(X, labels, num_instance, n_inner_pts)
    B, D = X.shape
    rows = torch.arange(B, device=X.device)
    synthetic = expand(X, torch.stack([rows, rows ^ 1], dim=1), n, l2_norm, backend=backend)
    return torch.cat([X, synthetic.transpose(0, 1).reshape(n * B, D)], dim=0), labels.repeat(n + 1)
