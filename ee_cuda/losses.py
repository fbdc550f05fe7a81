"""Metric-learning losses with Embedding Expansion (docs/design.md §9), built on the public fused ops.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels)`` (optionally ``pairs=``) that returns
a scalar, or the per-item vector with ``reduction="none"``. ``n_inner_pts`` is the number ``n`` of synthetic
points per positive pair (``0`` = the plain loss, no EE) and ``l2_norm`` projects the synthetic points onto
the unit sphere (docs/design.md §2; the paper's "L2 normalization", ``False`` is its ablation). The embeddings
themselves are used as given: normalize them in the model (as the official code does) if you want the
paper's setup.

Usage::

    loss_fn = ee_cuda.losses.MultiSimilarityLoss(n_inner_pts=2)            # EE with 2 synthetic points
    loss = loss_fn(F.normalize(model(images), dim=1), labels)               # pairs: all same-label pairs
    hphn = ee_cuda.losses.HPHNTripletLoss(margin=0.2, n_inner_pts=2)        # batches in the adjacent layout

Notation (docs/design.md §1, §9): for a positive pair ``p = (i, j)``, ``d_p = ||x_i - x_j||`` and
``s_p = <x_i, x_j>``; for a pair ``q`` of another label, ``d̂_pq`` is the distance of the hardest negative
pair between the augmented sets of ``p`` and ``q`` (``ee_cuda.hard_negative_pairs``: the minimum over the
``T² = (n+2)²`` point pairs), ``ŝ_pq`` the dot product of that same pair of points; ``N(p)`` is the set of
pairs of other labels. The paper (Ko & Gu, CVPR 2020, Sec. 3: synthetic point generation, hard negative
pair mining, and the four losses with EE) replaces each negative term of a loss by the hardest of the
``T²`` negative point pairs between two augmented sets. The formulas below are those of docs/design.md §9,
which pins the paper's down (its equations are cited by section here, not by number); where the paper
leaves a choice, the docstring says "package choice".

Choices the paper leaves open, made here (and tested in ``tests/test_losses.py``):

* **Pairs without negatives.** A pair with no negative contributes exactly 0 and its gradient is 0
  (never NaN/inf). ``N(p)`` is empty only when every positive pair of the batch has ``p``'s label, i.e.
  either every pair has a negative or none has; hence "mean over all pairs" and "mean over pairs with a
  negative" coincide, and ``reduction="mean"`` divides by the number of pairs (HPHN: anchors). A batch
  with no pairs (or no negatives) gives a loss of 0 that is still connected to the graph.
* **Computation dtype.** float16/bfloat16 embeddings (e.g. under ``torch.autocast``) are upcast to float32
  for the whole loss, ops included, and autocast is disabled inside the loss, so the mining and the loss
  are float32; the result is float32. float32/float64 inputs stay as they are.
* **ŝ without points.** The dot product of the selected pair is computed as
  ``ŝ_pq = (|a|² + |b|² - d̂_pq²) / 2`` with ``a = a(p, t*)``, ``b = a(q, r*)`` the pair chosen by
  ``hard_negative_pairs`` (its ``index``). The squared norms of all ``P×T`` augmented points come from
  ``|x_i|², |x_j|², s_p`` (docs/design.md §4: ``|u|² = ((n+1-t)²|x_i|² + 2t(n+1-t)s_p + t²|x_j|²)/(n+1)²``, and a
  normalized point has norm ``|u| / max(|u|, 1e-12)``), so no synthetic point is ever materialized and the
  gradient flows through ``d̂`` (the fused op) and the norms. This is the identity
  ``<a, b> = (|a|² + |b|² - |a - b|²)/2``, exact up to rounding (absolute error ``~eps·(|a|²+|b|²)``).

**Reference sets** (``ref_emb``, ``ref_labels``; a memory bank, PML's ``ref_emb``). Every loss also takes
``forward(embeddings, labels, ref_emb=R, ref_labels=y_R)`` (keyword-only, both or neither): the queries and
their positives come from the batch, the negatives from the reference set only (docs/design.md §9). For the
pair losses ``N(p)`` becomes the reference's pairs ``q`` of other labels (built from ``ref_labels`` with the
loss's ``pairs`` mode), ``d̂_pq = hard_negative_pairs(..., ref_X=R, ...)[p, q]`` (``P×Q``) and ``ŝ_pq``
its dot product (the reference side's point norms from ``R``); HPHN keeps ``d_ap`` from the batch and takes
``d_an`` from the reference's (augmented) rows. ``R`` needs the embeddings' width and device, and the same
computation dtype (float16/bfloat16/float32 all compute in float32, float64 in float64); gradients flow to
``embeddings`` and, where it requires grad, to ``ref_emb``. Package choices: a pair (HPHN: an anchor) with no
negative in the reference contributes 0 and still counts in ``reduction="mean"`` (with a reference set
"every pair or none has a negative" no longer holds, so the mean is over all items, not those with a
negative); a reference that contains the batch itself is harmless, since a query's own pair has its own
label and is never its negative. ``ee_cuda.losses.CrossBatchMemory`` keeps such a reference set across
batches (``ee_cuda.memory``).

``torch.compile``: every loss traces with ``fullgraph=True``, called as ``loss(X, labels)`` or with explicit
pairs. Pairs built from the labels (``positive_pairs(labels, "all")``) have a data-dependent count, so the
losses never branch on it (an empty batch of pairs takes the same graph).

``ee_cuda.reference.losses`` holds a pure-PyTorch twin of every loss that materializes all augmented
points and the full distance and dot-product matrices (the test oracle).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from ._validation import check_embeddings, check_labels, check_n_inner

__all__ = ["HPHNTripletLoss", "TripletLoss", "LiftedStructureLoss", "NPairLoss", "MultiSimilarityLoss",
           "EELoss", "CrossBatchMemory", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")
EPS = 1e-12  # docs/design.md §1
_PAIR_MODES = ("all", "adjacent")


def _no_autocast(device: torch.device):
    """Autocast off inside the loss: its own products run in the (upcast) input dtype."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss computes in for inputs of ``dtype``: float64 stays, everything else is float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _compute_dtype_input(X: torch.Tensor) -> torch.Tensor:
    return X.to(_compute_dtype(X.dtype))


def _check_reference(embeddings: torch.Tensor, ref_emb, ref_labels) -> bool:
    """``ref_emb (R, D)`` and ``ref_labels (R,)``, both or neither; returns whether they are given. ``ref_emb``
    must match the embeddings in width and device and compute in the same dtype (see ``_compute_dtype``)."""
    if (ref_emb is None) != (ref_labels is None):
        given, missing = ("ref_emb", "ref_labels") if ref_labels is None else ("ref_labels", "ref_emb")
        raise ValueError(f"ref_emb and ref_labels go together (both or neither): got {given} without {missing}")
    if ref_emb is None:
        return False
    check_embeddings(ref_emb, "ref_emb")
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(f"ref_emb has D={ref_emb.shape[1]} columns but embeddings have D={embeddings.shape[1]}; "
                         "they must match")
    if ref_emb.device != embeddings.device:
        raise ValueError(f"ref_emb is on {ref_emb.device} but embeddings are on {embeddings.device}; "
                         "put both on one device")
    if _compute_dtype(ref_emb.dtype) != _compute_dtype(embeddings.dtype):
        raise TypeError(f"ref_emb is {ref_emb.dtype} but embeddings are {embeddings.dtype}: the loss would compute "
                        f"them in {_compute_dtype(ref_emb.dtype)} and {_compute_dtype(embeddings.dtype)}; give both "
                        "float64, or both float16/bfloat16/float32 (computed in float32)")
    check_labels(ref_labels, ref_emb.shape[0], ref_emb.device, "ref_labels")
    return True


def _reference_pairs(ref_labels: torch.Tensor, mode: str, who: str) -> torch.Tensor:
    """The reference's positive pairs in ``mode``; a reference that breaks the adjacent layout is named as such."""
    try:
        return ops.positive_pairs(ref_labels, mode)
    except ValueError as exc:
        raise ValueError(f"{who}: ref_emb/ref_labels must be in the adjacent layout (rows 2k, 2k+1 of one label) "
                         f"here: {exc}") from None


def _reduce(per: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per
    total = per.sum()
    if reduction == "sum":
        return total
    # sym_max: no branch on the item count, which is data-dependent when the pairs come from the labels
    return total / torch.sym_max(per.shape[0], 1)


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


class EELoss(nn.Module):
    """Base class: argument checks, dtype/autocast handling, reduction.

    Subclasses implement ``per_item(embeddings, labels, pairs=None, *, ref_emb=None, ref_labels=None)
    -> (losses, items)`` where ``items`` is ``(P, 2)`` positive pairs (indices into the batch) for the pair
    losses and ``(B,)`` anchor indices for HPHN; ``ref_emb``/``ref_labels`` is the optional reference set the
    negatives come from (see the module docstring).
    """

    def __init__(self, n_inner_pts: int = 0, l2_norm: bool = True, reduction: str = "mean"):
        super().__init__()
        self.n_inner_pts = check_n_inner(n_inner_pts, "n_inner_pts")
        self.l2_norm = bool(l2_norm)
        self.reduction = _check_reduction(reduction)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor | None = None, *,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None):
        losses, _ = self.per_item(embeddings, labels, pairs, ref_emb=ref_emb, ref_labels=ref_labels)
        return _reduce(losses, self.reduction)

    def _prepare(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """Checked inputs in the compute dtype: ``(X, labels, ref)`` with ``ref = (ref_X, ref_labels)`` or None."""
        check_embeddings(embeddings, "embeddings")
        check_labels(labels, embeddings.shape[0], embeddings.device)
        ref = None
        if _check_reference(embeddings, ref_emb, ref_labels):
            ref = (_compute_dtype_input(ref_emb), ref_labels)
        return _compute_dtype_input(embeddings), labels, ref

    def per_item(self, embeddings, labels, pairs=None, *, ref_emb=None, ref_labels=None):  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        keys = [k for k in ("margin", "soft_margin", "alpha", "beta", "base") if hasattr(self, k)]
        keys += ["n_inner_pts", "l2_norm", "reduction"]
        if hasattr(self, "pairs"):
            keys.append("pairs")
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)


# --------------------------------------------------------------------------------------------------
# HPHN triplet: exactly the official loss/hphn_triplet.py
# --------------------------------------------------------------------------------------------------

def _official_dist(X: torch.Tensor, Y: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(clamp(|a|² + |b|² - 2<a, b>, 1e-12, 1e12))`` between the rows of ``X`` and those of ``Y``
    (default ``X``; official ``euclidean_dist``)."""
    sq = (X * X).sum(dim=1)
    sq_y = sq if Y is None else (Y * Y).sum(dim=1)
    d2 = sq[:, None] + sq_y[None, :] - 2.0 * (X @ (X if Y is None else Y).t())
    return d2.clamp(1e-12, 1e12).sqrt()


class HPHNTripletLoss(EELoss):
    r"""Hard-positive/hard-negative (batch-hard) triplet loss with EE, as the official code computes it.

    ``HPHNTripletLoss(margin=0.2, soft_margin=False, n_inner_pts=0, l2_norm=True, reduction="mean")``

    Reproduces ``loss/hphn_triplet.py`` of clovaai/embedding-expansion (with ``get_embedding_aug``) for the
    same inputs, per anchor (docs/design.md §9). The anchors are the ``B`` original rows; with
    ``dist(a, b) = sqrt(clamp(|a|² + |b|² - 2<a,b>, 1e-12, 1e12))``:

    * ``d_ap(i) = max_{j: y_j = y_i} dist(x_i, x_j)`` over the originals (``j = i`` included, as upstream:
      it only matters when all positives coincide with ``x_i``);
    * ``d_an(i) = min_{k=0..n} min_{z of another label} dist(G_k[i], z)`` with ``G_0[i] = x_i`` and
      ``G_k[i] = normalize(((n+1-k) x_i + k x_{i^1}) / (n+1))`` the synthetic copies of anchor ``i``, and
      ``z`` every augmented row ``[X; G_1; ...; G_n]`` of another label ("include synthetic positives");
    * per-anchor loss ``relu(d_ap - d_an + margin)``, or ``log(1 + exp(d_ap - d_an))`` with
      ``soft_margin=True`` (upstream ignores ``margin`` then; computed as ``logaddexp(diff, 0)``, stable and
      exact for large ``diff``, where ``F.softplus`` would return ``diff`` itself).

    This is the batch-hard triplet loss of Hermans et al. (2017) with the paper's EE negatives; at
    ``n_inner_pts=0`` it *is* batch-hard triplet (PML ``TripletMarginLoss`` with ``BatchHardMiner``, see
    the tests). ``n_inner_pts > 0`` needs the official sampler's adjacent layout: rows ``2k, 2k+1`` share a
    label (``ValueError`` otherwise); ``n_inner_pts=0`` accepts any layout.

    Fused path: ``d_ap`` from one ``X Xᵀ`` (``B×B``); ``d_an`` from ``ee_cuda.hard_negative_points`` with
    the ``B/2`` adjacent pairs ``k = (2k, 2k+1)``. Their points ``a(k, t)`` are every augmented row once:
    ``G_t[2k] = a(k, t)`` and ``G_t[2k+1] = a(k, n+1-t)`` (the same sums, so the same floats), so the
    candidates ``a(q, r)`` over pairs ``q`` of other labels are exactly the augmented rows of other labels,
    and ``d_an(2k) = min_{t<=n} dist[k, t]``, ``d_an(2k+1) = min_{t>=1} dist[k, t]`` (clamped to
    ``[1e-6, 1e6]``). No ``(n+1)B × (n+1)B`` matrix exists.

    With a reference set (``ref_emb=R``, ``ref_labels=y_R``; a memory bank): ``d_ap(i)`` is as above, from the
    batch only; ``d_an(i) = min_{k=0..n} min_{z of another label} dist(G_k[i], z)`` over the reference's
    augmented rows ``z`` in ``[R; G_1(R); ...; G_n(R)]`` (``R`` itself at ``n_inner_pts=0``), where
    ``G_k(R)`` are ``R``'s synthetic rows of its adjacent pairs, so ``R`` must be in the adjacent layout too
    (even ``R``) when ``n_inner_pts > 0``. Fused: ``n = 0`` takes the ``B×R`` distance matrix,
    ``n > 0`` ``hard_negative_points`` of the batch's adjacent pairs against the reference's (same clamp).
    An anchor with no row of another label in the reference contributes 0.

    Where the package chose (docs/design.md §9 overrides upstream): an anchor with no negative (a batch of one class)
    contributes 0; upstream falls back to the row maximum and yields ``relu(d_ap - max_row + margin)``.
    ``num_instances`` of upstream is not needed (the adjacent layout is checked instead).
    ``reduction="mean"`` averages over the ``B`` anchors (upstream returns the per-anchor vector, which
    ``reduction="none"`` gives).
    """

    def __init__(self, margin: float = 0.2, soft_margin: bool = False, n_inner_pts: int = 0,
                 l2_norm: bool = True, reduction: str = "mean"):
        super().__init__(n_inner_pts, l2_norm, reduction)
        self.margin = float(margin)
        self.soft_margin = bool(soft_margin)

    def per_item(self, embeddings, labels, pairs=None, *, ref_emb=None, ref_labels=None):
        if pairs is not None:
            raise ValueError("HPHNTripletLoss: pairs must be None (anchors are the rows; n_inner_pts > 0 "
                             "uses the adjacent layout (2k, 2k+1))")
        X, labels, ref = self._prepare(embeddings, labels, ref_emb, ref_labels)
        n = self.n_inner_pts
        B = X.shape[0]
        with _no_autocast(X.device):
            same = labels[:, None] == labels[None, :]
            negative = ~same if ref is None else labels[:, None] != ref[1][None, :]   # (B, B) or (B, R)
            has_neg = negative.any(dim=1)
            dist = _official_dist(X)
            d_ap = (dist * same).max(dim=1).values if B > 0 else dist.new_zeros(0)
            if n == 0:
                to_ref = dist if ref is None else _official_dist(X, ref[0])
                d_an = torch.where(negative, to_ref, torch.full_like(to_ref, float("inf")))
                # the identity column: no branch on B or R (either may be 0)
                d_an = _row_reduce(d_an, lambda t: t.min(dim=1).values, float("inf"))
            else:
                if B % 2:
                    raise ValueError(f"HPHNTripletLoss: n_inner_pts > 0 needs the adjacent layout and an even "
                                     f"batch, got B={B}")
                pairs = ops.positive_pairs(labels, "adjacent")  # checks the layout (ValueError names the rows)
                reference = {}
                if ref is not None:
                    if ref[0].shape[0] % 2:
                        raise ValueError(f"HPHNTripletLoss: n_inner_pts > 0 needs ref_emb in the adjacent layout "
                                         f"and an even number of rows, got R={ref[0].shape[0]}")
                    reference = dict(ref_X=ref[0], ref_pairs=_reference_pairs(ref[1], "adjacent", "HPHNTripletLoss"),
                                     ref_labels=ref[1])
                hn, _ = ops.hard_negative_points(X, pairs, labels, n, self.l2_norm, **reference)   # (B/2, n+2)
                # anchor 2k sees a(k, 0..n), anchor 2k+1 sees a(k, n+1..1) (its G_t is a(k, n+1-t))
                d_an = torch.stack([hn[:, :n + 1].min(dim=1).values, hn[:, 1:].min(dim=1).values], dim=1)
                d_an = d_an.reshape(B).clamp(1e-6, 1e6)
            d_an = torch.where(has_neg, d_an, torch.zeros_like(d_an))  # finite where unused
            diff = d_ap - d_an
            per = torch.logaddexp(diff, torch.zeros_like(diff)) if self.soft_margin else F.relu(diff + self.margin)
            per = torch.where(has_neg, per, torch.zeros_like(per))
        return per, torch.arange(B, device=X.device)


# --------------------------------------------------------------------------------------------------
# Pair losses with hard negative pair mining
# --------------------------------------------------------------------------------------------------

class _PairStats:
    """Everything the pair losses need about the positive pairs and their hard negative pairs.

    ``ref``: None (the negative pairs ``q`` are the batch's own ``pairs``: ``P×P``) or
    ``(ref_X, ref_labels, ref_pairs)`` (the ``q`` are the reference's pairs: ``P×Q``)."""

    def __init__(self, X, labels, pairs, n, normalize, need_dot, ref=None):
        pairs = pairs.long()
        self.P = P = pairs.shape[0]
        xi, xj = X[pairs[:, 0]], X[pairs[:, 1]]
        self.d_p = torch.linalg.vector_norm(xi - xj, dim=1)
        self.s_p = (xi * xj).sum(dim=1)
        lab = labels[pairs[:, 0]]
        if ref is None:
            ref_lab, reference = lab, {}
        else:
            ref_X, ref_labels, ref_pairs = ref
            ref_pairs = ref_pairs.long()
            ref_lab = ref_labels[ref_pairs[:, 0]]
            reference = dict(ref_X=ref_X, ref_pairs=ref_pairs, ref_labels=ref_labels)
        self.neg = lab[:, None] != ref_lab[None, :]
        self.has_neg = self.neg.any(dim=1)
        dist, index = ops.hard_negative_pairs(X, pairs, labels, n, normalize, **reference)
        # finite everywhere (0 where same label) so that masked arithmetic never makes NaN gradients
        self.dhat = torch.where(self.neg, dist, torch.zeros_like(dist))
        self.shat = None
        if need_dot:
            sq = self._point_sq_norms((xi * xi).sum(dim=1), (xj * xj).sum(dim=1), self.s_p, n, normalize)
            if ref is None:
                ref_sq = sq
            else:
                rk, rl = ref_X[ref_pairs[:, 0]], ref_X[ref_pairs[:, 1]]
                ref_sq = self._point_sq_norms((rk * rk).sum(dim=1), (rl * rl).sum(dim=1), (rk * rl).sum(dim=1), n,
                                              normalize)
            Q, T = ref_sq.shape
            t_idx = index[..., 0].clamp_min(0)
            # flat index q*T + r* of a(q, r*) in ref_sq; gathers (whose backward is a scatter-add) rather than
            # advanced indexing (an accumulating index_put, several times slower on P x Q)
            qr_idx = index[..., 1].clamp_min(0) + torch.arange(0, Q * T, T, device=X.device).view(1, Q)
            norm_a = torch.gather(sq, 1, t_idx)                                         # |a(p, t*)|²
            norm_b = ref_sq.reshape(Q * T).gather(0, qr_idx.reshape(P * Q)).view(P, Q)  # |a(q, r*)|²
            shat = (norm_a + norm_b - self.dhat * self.dhat) * 0.5
            self.shat = torch.where(self.neg, shat, torch.zeros_like(shat))

    @staticmethod
    def _point_sq_norms(ni, nj, s, n, normalize):
        """``|a(p, t)|²`` for all ``p`` and ``t = 0..n+1`` from ``|x_i|², |x_j|², <x_i, x_j>`` (docs/design.md §4)."""
        if n == 0:
            return torch.stack([ni, nj], dim=1)
        w = torch.arange(1, n + 1, device=ni.device, dtype=ni.dtype) / (n + 1)
        w = w.view(1, n)
        u2 = ((1 - w) ** 2 * ni[:, None] + 2 * w * (1 - w) * s[:, None] + w ** 2 * nj[:, None]).clamp_min(0)
        if normalize:
            # |u / max(|u|, eps)|² = 1 when |u| >= eps, else |u|²/eps²
            u2 = torch.where(u2 >= EPS * EPS, torch.ones_like(u2), u2 / (EPS * EPS))
        return torch.cat([ni[:, None], u2, nj[:, None]], dim=1)


def _row_reduce(x: torch.Tensor, reduce, identity: float) -> torch.Tensor:
    """``reduce`` over the rows of ``x`` with one ``identity`` column appended, so that ``x`` may have no
    column (no pairs) without a branch on its width, which is data-dependent when the pairs come from the
    labels (``torch.compile``)."""
    return reduce(torch.cat([x, x.new_full((x.shape[0], 1), identity)], dim=1))


def _masked_logsumexp(z: torch.Tensor, mask: torch.Tensor, add_one: bool):
    """Row-wise ``log(Σ_{mask} exp(z))`` (``log(1 + Σ ...)`` with ``add_one``), NaN-free for empty rows.

    Returns ``(lse, any)``; rows with an empty mask get ``lse = 0`` (with ``add_one`` that is exact:
    ``log(1 + 0)``) and must be masked by the caller when ``add_one`` is False.
    """
    neg_inf = torch.full_like(z, float("-inf"))
    zm = torch.where(mask, z, neg_inf)
    if add_one:
        # the zero term keeps the maximum finite; by hand rather than torch.logsumexp, whose decomposition
        # branches on the (data-dependent, under torch.compile) element count
        zm = torch.cat([z.new_zeros((z.shape[0], 1)), zm], dim=1)
        m = zm.amax(dim=1, keepdim=True).detach()
        return m.squeeze(1) + torch.log(torch.exp(zm - m).sum(dim=1)), mask.any(dim=1)
    anyv = mask.any(dim=1)
    m = _row_reduce(zm, lambda t: t.amax(dim=1), float("-inf"))
    m = torch.where(anyv, m, torch.zeros_like(m)).detach()
    s = torch.where(mask, torch.exp(torch.where(mask, z, torch.zeros_like(z)) - m[:, None]),
                    torch.zeros_like(z)).sum(dim=1)
    s = torch.where(anyv, s, torch.ones_like(s))
    return m + torch.log(s), anyv


class _PairLoss(EELoss):
    _needs_dot = False

    def __init__(self, n_inner_pts=0, l2_norm=True, reduction="mean", pairs="all"):
        super().__init__(n_inner_pts, l2_norm, reduction)
        if pairs not in _PAIR_MODES:
            raise ValueError(f"pairs must be one of {_PAIR_MODES}, got {pairs!r}")
        self.pairs = pairs

    def per_item(self, embeddings, labels, pairs=None, *, ref_emb=None, ref_labels=None):
        X, labels, ref = self._prepare(embeddings, labels, ref_emb, ref_labels)
        if pairs is None:
            pairs = ops.positive_pairs(labels, self.pairs)
        if ref is not None:
            ref = ref + (_reference_pairs(ref[1], self.pairs, type(self).__name__),)
        with _no_autocast(X.device):
            st = _PairStats(X, labels, pairs, self.n_inner_pts, self.l2_norm, self._needs_dot, ref)
            per = self._pair_losses(st)
            per = torch.where(st.has_neg, per, torch.zeros_like(per))
        return per, pairs

    def _pair_losses(self, st: _PairStats) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TripletLoss(_PairLoss):
    r"""Triplet loss with EE hard negative pair mining (docs/design.md §9; the paper's triplet loss with EE, Sec. 3,
    on Schroff et al. 2015).

    ``TripletLoss(margin=0.2, n_inner_pts=0, l2_norm=True, reduction="mean", pairs="all")``

    Per positive pair ``p = (i, j)``: ``L_p = relu(d_p - min_{q in N(p)} d̂_pq + margin)`` with
    ``d̂_pq = min_{t, r} ||a(p, t) - a(q, r)||`` (``hard_negative_pairs``). ``reduction="mean"`` is
    ``(1/|P|) Σ_p L_p``. ``pairs``: ``"all"`` same-label pairs (default) or ``"adjacent"``
    ``(2k, 2k+1)``; ``forward(..., pairs=)`` takes explicit pairs. A pair without a negative gives 0.

    At ``n_inner_pts=0``, ``min_q d̂_pq = min(h_i, h_j)`` where ``h_i`` is the distance from ``x_i`` to its
    nearest sample of another label (that belongs to some positive pair), so
    ``L_p = max(relu(d_p - h_i + m), relu(d_p - h_j + m))``: the larger of the two triplet-margin terms of
    PML's ``TripletMarginLoss`` on the triplets ``(i, j, n_i*)`` and ``(j, i, n_j*)`` that
    ``BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard")`` mines (tested). It is not the plain
    all-triplets loss: one term per pair, with the negative hardest for either endpoint.

    With a reference set (``ref_emb=R``, ``ref_labels=y_R``): ``L_p = relu(d_p - min_{q in N_R(p)} d̂_pq +
    margin)`` where ``p`` runs over the batch's pairs, ``N_R(p)`` over the pairs of ``R`` (``pairs`` mode
    applied to ``y_R``) of another label than ``p``, and ``d̂_pq = min_{t, r} ||a(p, t) - a_R(q, r)||`` is
    ``hard_negative_pairs(X, pairs, labels, n, ref_X=R, ref_pairs=..., ref_labels=y_R)`` (``P×Q``).
    """

    def __init__(self, margin: float = 0.2, n_inner_pts: int = 0, l2_norm: bool = True,
                 reduction: str = "mean", pairs: str = "all"):
        super().__init__(n_inner_pts, l2_norm, reduction, pairs)
        self.margin = float(margin)

    def _pair_losses(self, st):
        inf = torch.full_like(st.dhat, float("inf"))
        hardest = torch.where(st.neg, st.dhat, inf)
        hardest = _row_reduce(hardest, lambda t: t.min(dim=1).values, float("inf"))
        hardest = torch.where(st.has_neg, hardest, torch.zeros_like(hardest))
        return F.relu(st.d_p - hardest + self.margin)


class LiftedStructureLoss(_PairLoss):
    r"""Lifted structured loss with EE hard negative pair mining (docs/design.md §9; the paper's lifted structure
    loss with EE, Sec. 3, on Song et al. 2016).

    ``LiftedStructureLoss(margin=1.0, n_inner_pts=0, l2_norm=True, reduction="mean", pairs="all")``

    Per positive pair: ``J_p = d_p + log Σ_{q in N(p)} exp(margin - d̂_pq)`` (log-sum-exp taken stably),
    item loss ``L_p = relu(J_p)² / 2`` so that ``reduction="mean"`` is
    ``1/(2|P|) Σ_p relu(J_p)²`` (Song et al. 2016's ``1/(2|P|)`` normalization); ``"sum"`` is
    ``Σ_p relu(J_p)²/2``. A pair without a negative gives 0 (``log Σ ∅ = -inf``).

    Package choice / difference from Song et al.: the negatives are the *pairs* ``q`` of other labels, each
    represented once by its hardest point pair ``d̂_pq`` (the paper's EE form), whereas the original sums
    over every negative *sample* of both ``i`` and ``j``. Hence no established loss equals this one at
    ``n_inner_pts=0`` (PML ``LiftedStructureLoss`` and ``GeneralizedLiftedStructureLoss`` differ).

    With a reference set (``ref_emb=R``, ``ref_labels=y_R``): ``J_p = d_p + log Σ_{q in N_R(p)} exp(margin -
    d̂_pq)`` with ``d_p`` from the batch and ``q``, ``d̂_pq`` as in ``TripletLoss``: the pairs of ``R`` of
    another label and the ``P×Q`` search against them.
    """

    def __init__(self, margin: float = 1.0, n_inner_pts: int = 0, l2_norm: bool = True,
                 reduction: str = "mean", pairs: str = "all"):
        super().__init__(n_inner_pts, l2_norm, reduction, pairs)
        self.margin = float(margin)

    def _pair_losses(self, st):
        lse, anyv = _masked_logsumexp(self.margin - st.dhat, st.neg, add_one=False)
        J = st.d_p + lse
        return torch.where(anyv, F.relu(J) ** 2 * 0.5, torch.zeros_like(J))


class NPairLoss(_PairLoss):
    r"""N-pair loss with EE hard negative pair mining (docs/design.md §9; the paper's N-pair loss with EE, Sec. 3,
    on Sohn 2016).

    ``NPairLoss(n_inner_pts=0, l2_norm=True, reduction="mean", pairs="all")``

    Per positive pair ``p = (i, j)``: ``L_p = log(1 + Σ_{q in N(p)} exp(ŝ_pq - s_p))`` with
    ``s_p = <x_i, x_j>`` and ``ŝ_pq`` the dot product of the hardest (closest) point pair between the
    augmented sets of ``p`` and ``q``; computed as a log-sum-exp with a zero term (stable, 0 without
    negatives). No L2 regularizer on the embeddings (Sohn's ``l2_reg`` is left to the user).

    Difference from Sohn (2016) / PML ``NPairsLoss``: those take one anchor ``x_i`` and the dot products
    ``<x_i, x_k+>`` with one positive ``x_k+`` of each other class, this takes per pair ``q`` the closest of
    the ``T²`` point pairs (at ``n=0``, the closest of the four cross pairs); so no established loss equals
    it at ``n_inner_pts=0``.

    With a reference set (``ref_emb=R``, ``ref_labels=y_R``): ``L_p = log(1 + Σ_{q in N_R(p)} exp(ŝ_pq -
    s_p))`` over the pairs ``q`` of ``R`` of another label; ``ŝ_pq = (|a(p, t*)|² + |a_R(q, r*)|² -
    d̂_pq²) / 2`` for the pair ``(t*, r*)`` the ``P×Q`` search selects, the norms ``|a_R(q, r)|²`` from
    ``R``'s rows (as for the batch's).
    """

    _needs_dot = True

    def __init__(self, n_inner_pts: int = 0, l2_norm: bool = True, reduction: str = "mean",
                 pairs: str = "all"):
        super().__init__(n_inner_pts, l2_norm, reduction, pairs)

    def _pair_losses(self, st):
        lse, _ = _masked_logsumexp(st.shat - st.s_p[:, None], st.neg, add_one=True)
        return lse


class MultiSimilarityLoss(_PairLoss):
    r"""Multi-similarity loss with EE hard negative pair mining (docs/design.md §9; the paper's MS loss with EE,
    Sec. 3, on Wang et al. 2019).

    ``MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, n_inner_pts=0, l2_norm=True, reduction="mean",
    pairs="all")``

    Per positive pair: ``L_p = (1/alpha) log(1 + exp(-alpha (s_p - base)))
    + (1/beta) log(1 + Σ_{q in N(p)} exp(beta (ŝ_pq - base)))`` (Wang et al. 2019's weighting, without
    its pair-mining step; both terms computed stably). Package choice: a pair without a negative
    contributes 0 *including* its positive term (docs/design.md §9's rule; that happens only in a batch where all
    pairs share one label).

    Difference from Wang et al. / PML ``MultiSimilarityLoss``: those are per anchor with a sum over all its
    positives and negative samples; here the positive term is the pair itself and the negatives are the
    pairs of other labels through their closest point pair, so no established loss equals it at
    ``n_inner_pts=0``.

    With a reference set (``ref_emb=R``, ``ref_labels=y_R``): the positive term as above (the batch's pair),
    the negative term ``(1/beta) log(1 + Σ_{q in N_R(p)} exp(beta (ŝ_pq - base)))`` over the pairs of ``R``
    of another label, with ``ŝ_pq`` as in ``NPairLoss``. A pair with no such ``q`` contributes 0, its
    positive term included (the rule above; with a reference set it can happen to some pairs only).
    """

    _needs_dot = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, n_inner_pts: int = 0,
                 l2_norm: bool = True, reduction: str = "mean", pairs: str = "all"):
        super().__init__(n_inner_pts, l2_norm, reduction, pairs)
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)

    def _pair_losses(self, st):
        # log(1 + e^z) as logaddexp(z, 0): exact for every z (F.softplus returns z itself above z = 20, an
        # error of up to e^-20 that float64 resolves)
        z = -self.alpha * (st.s_p - self.base)
        pos = torch.logaddexp(z, torch.zeros_like(z)) / self.alpha
        lse, _ = _masked_logsumexp(self.beta * (st.shat - self.base), st.neg, add_one=True)
        return pos + lse / self.beta


from .memory import CrossBatchMemory  # noqa: E402  (re-exported; ee_cuda.memory builds on the losses above)
