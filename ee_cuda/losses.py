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
           "EELoss", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")
EPS = 1e-12  # docs/design.md §1
_PAIR_MODES = ("all", "adjacent")


def _no_autocast(device: torch.device):
    """Autocast off inside the loss: its own products run in the (upcast) input dtype."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype_input(X: torch.Tensor) -> torch.Tensor:
    return X if X.dtype in (torch.float32, torch.float64) else X.float()


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

    Subclasses implement ``per_item(embeddings, labels, pairs=None) -> (losses, items)`` where ``items``
    is ``(P, 2)`` positive pairs for the pair losses and ``(B,)`` anchor indices for HPHN.
    """

    def __init__(self, n_inner_pts: int = 0, l2_norm: bool = True, reduction: str = "mean"):
        super().__init__()
        self.n_inner_pts = check_n_inner(n_inner_pts, "n_inner_pts")
        self.l2_norm = bool(l2_norm)
        self.reduction = _check_reduction(reduction)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor | None = None):
        losses, _ = self.per_item(embeddings, labels, pairs)
        return _reduce(losses, self.reduction)

    def _prepare(self, embeddings, labels):
        check_embeddings(embeddings, "embeddings")
        check_labels(labels, embeddings.shape[0], embeddings.device)
        return _compute_dtype_input(embeddings), labels

    def per_item(self, embeddings, labels, pairs=None):  # pragma: no cover - abstract
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

def _official_dist(X: torch.Tensor) -> torch.Tensor:
    """``sqrt(clamp(|a|² + |b|² - 2<a, b>, 1e-12, 1e12))`` between all rows (official ``euclidean_dist``)."""
    sq = (X * X).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.t())
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

    def per_item(self, embeddings, labels, pairs=None):
        if pairs is not None:
            raise ValueError("HPHNTripletLoss: pairs must be None (anchors are the rows; n_inner_pts > 0 "
                             "uses the adjacent layout (2k, 2k+1))")
        X, labels = self._prepare(embeddings, labels)
        n = self.n_inner_pts
        B = X.shape[0]
        with _no_autocast(X.device):
            same = labels[:, None] == labels[None, :]
            has_neg = (~same).any(dim=1)
            dist = _official_dist(X)
            d_ap = (dist * same).max(dim=1).values if B > 0 else dist.new_zeros(0)
            if n == 0:
                d_an = torch.where(same, torch.full_like(dist, float("inf")), dist)
                d_an = d_an.min(dim=1).values if B > 0 else dist.new_zeros(0)
            else:
                if B % 2:
                    raise ValueError(f"HPHNTripletLoss: n_inner_pts > 0 needs the adjacent layout and an even "
                                     f"batch, got B={B}")
                pairs = ops.positive_pairs(labels, "adjacent")  # checks the layout (ValueError names the rows)
                hn, _ = ops.hard_negative_points(X, pairs, labels, n, self.l2_norm)   # (B/2, n+2)
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
    """Everything the pair losses need about the positive pairs and their hard negative pairs."""

    def __init__(self, X, labels, pairs, n, normalize, need_dot):
        pairs = pairs.long()
        self.P = P = pairs.shape[0]
        xi, xj = X[pairs[:, 0]], X[pairs[:, 1]]
        self.d_p = torch.linalg.vector_norm(xi - xj, dim=1)
        self.s_p = (xi * xj).sum(dim=1)
        lab = labels[pairs[:, 0]]
        self.neg = lab[:, None] != lab[None, :]
        self.has_neg = self.neg.any(dim=1)
        dist, index = ops.hard_negative_pairs(X, pairs, labels, n, normalize)
        # finite everywhere (0 where same label) so that masked arithmetic never makes NaN gradients
        self.dhat = torch.where(self.neg, dist, torch.zeros_like(dist))
        self.shat = None
        if need_dot:
            sq = self._point_sq_norms((xi * xi).sum(dim=1), (xj * xj).sum(dim=1), self.s_p, n, normalize)
            T = sq.shape[1]
            t_idx = index[..., 0].clamp_min(0)
            # flat index q*T + r* of a(q, r*) in sq; gathers (whose backward is a scatter-add) rather than
            # advanced indexing (an accumulating index_put, several times slower on P x P)
            qr_idx = index[..., 1].clamp_min(0) + torch.arange(0, P * T, T, device=X.device).view(1, P)
            norm_a = torch.gather(sq, 1, t_idx)                                 # |a(p, t*)|²
            norm_b = sq.reshape(P * T).gather(0, qr_idx.reshape(P * P)).view(P, P)  # |a(q, r*)|²
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

    def per_item(self, embeddings, labels, pairs=None):
        X, labels = self._prepare(embeddings, labels)
        if pairs is None:
            pairs = ops.positive_pairs(labels, self.pairs)
        with _no_autocast(X.device):
            st = _PairStats(X, labels, pairs, self.n_inner_pts, self.l2_norm, self._needs_dot)
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
