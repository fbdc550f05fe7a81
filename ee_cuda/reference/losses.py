"""Pure-PyTorch twins of the losses of ``ee_cuda.losses`` (docs/design.md §9): the test oracle.

Each twin materializes everything the way a hand-written implementation would: all augmented points
(``ee_cuda.reference.augmented_points`` / ``embedding_aug``), the full ``(P·T) × (P·T)`` distance matrix
(``torch.cdist`` without the matrix-product shortcut) and the full dot-product matrix, and reads ``d̂_pq``
and ``ŝ_pq`` straight from them. They share no code with ``ee_cuda.losses`` except the loss formulas of
docs/design.md §9. Memory is ``O((P·T)²)``: for tests and small batches only.

``hphn_triplet_official`` is a line-by-line port of the official MXNet ``loss/hphn_triplet.py`` (with
``get_embedding_aug``), including upstream's behaviour for anchors without a negative;
``hphn_triplet`` is the same with the package's rule (such anchors contribute 0).

Every twin takes ``ref_emb``/``ref_labels`` (a reference set the negatives come from, docs/design.md §9):
the batch's augmented points (HPHN: augmented rows) against the reference's, materialized the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops

__all__ = ["hphn_triplet", "hphn_triplet_official", "triplet", "lifted_structure", "npair",
           "multi_similarity", "hard_negative_pair_stats"]


def _reduce(per, reduction):
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        return per.sum() / max(per.shape[0], 1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _euclidean_dist(x, y, clip_min=1e-12, clip_max=1e12):
    """The official ``euclidean_dist``."""
    m, n = x.shape[0], y.shape[0]
    squared_x = x.pow(2).sum(dim=1, keepdim=True).expand(m, n)
    squared_y = y.pow(2).sum(dim=1, keepdim=True).expand(n, m).t()
    dist = squared_x + squared_y - 2 * (x @ y.t())
    return dist.clamp(clip_min, clip_max).sqrt()


def hphn_triplet_official(embeddings, labels, margin=0.2, soft_margin=False, n_inner_pts=0, l2_norm=True):
    """Per-anchor loss of the official ``HPHNTripletLoss.hybrid_forward`` (a vector of length ``B``)."""
    batch_size = embeddings.shape[0]
    if n_inner_pts != 0:
        embeddings, labels = ops.embedding_aug(embeddings, labels, 2, n_inner_pts, l2_norm)
    dist_mat = _euclidean_dist(embeddings, embeddings)
    N = dist_mat.shape[0]
    is_pos = (labels[None, :].expand(N, N) == labels[None, :].expand(N, N).t()).to(dist_mat.dtype)
    is_neg = (labels[None, :].expand(N, N) != labels[None, :].expand(N, N).t()).to(dist_mat.dtype)
    dist_pos = dist_mat * is_pos
    if n_inner_pts != 0:
        dist_ap = dist_pos[:batch_size, :batch_size].max(dim=1).values
    else:
        dist_ap = dist_pos.max(dim=1).values
    dist_neg = dist_mat * is_neg + dist_mat.max(dim=1, keepdim=True).values * is_pos
    dist_an = dist_neg.min(dim=1).values
    if n_inner_pts != 0:
        num_group = N // batch_size
        dist_an = dist_an.reshape(num_group, batch_size).min(dim=0).values
    if soft_margin:
        return torch.log(1 + torch.exp(dist_ap - dist_an))
    return F.relu(dist_ap - dist_an + margin)


def hphn_triplet(embeddings, labels, margin=0.2, soft_margin=False, n_inner_pts=0, l2_norm=True,
                 reduction="mean", ref_emb=None, ref_labels=None):
    """Twin of ``ee_cuda.losses.HPHNTripletLoss``: the official loss, anchors without negatives give 0.

    With ``ref_emb``/``ref_labels``: ``d_ap`` from the batch's originals; ``d_an`` the minimum over each
    anchor's augmented rows (``embedding_aug`` of the batch) of the official distance to the reference's
    augmented rows (``embedding_aug`` of the reference) of another label."""
    if ref_emb is None:
        per = hphn_triplet_official(embeddings, labels, margin, soft_margin, n_inner_pts, l2_norm)
        has_neg = (labels[:, None] != labels[None, :]).any(dim=1)
    else:
        per, has_neg = _hphn_triplet_with_reference(embeddings, labels, ref_emb, ref_labels, margin, soft_margin,
                                                    n_inner_pts, l2_norm)
    per = torch.where(has_neg, per, torch.zeros_like(per))
    return _reduce(per, reduction)


def _hphn_triplet_with_reference(X, labels, ref_X, ref_labels, margin, soft_margin, n_inner_pts, l2_norm):
    """Per-anchor loss and whether each anchor has a negative in the reference."""
    B = X.shape[0]
    dist_ap = (_euclidean_dist(X, X) * (labels[:, None] == labels[None, :])).max(dim=1).values
    aug, aug_labels, ref_aug, ref_aug_labels = X, labels, ref_X, ref_labels
    if n_inner_pts != 0:
        aug, aug_labels = ops.embedding_aug(X, labels, 2, n_inner_pts, l2_norm)
        ref_aug, ref_aug_labels = ops.embedding_aug(ref_X, ref_labels, 2, n_inner_pts, l2_norm)
    dist = _euclidean_dist(aug, ref_aug)
    dist = torch.where(aug_labels[:, None] != ref_aug_labels[None, :], dist, torch.full_like(dist, float("inf")))
    dist = torch.cat([dist, dist.new_full((dist.shape[0], 1), float("inf"))], dim=1)  # the reference may be empty
    has_neg = (labels[:, None] != ref_labels[None, :]).any(dim=1)
    dist_an = dist.min(dim=1).values.reshape(n_inner_pts + 1, B).min(dim=0).values
    dist_an = torch.where(has_neg, dist_an, torch.zeros_like(dist_an))
    if soft_margin:
        return torch.log(1 + torch.exp(dist_ap - dist_an)), has_neg
    return F.relu(dist_ap - dist_an + margin), has_neg


def hard_negative_pair_stats(X, labels, pairs, n_inner_pts, l2_norm=True, ref=None):
    """Materialized ``d_p, s_p, d̂ (P, Q), ŝ (P, Q)`` and the negative mask (``d̂ = ŝ = 0`` off the mask).

    The negative pairs ``q`` are the batch's own ``pairs`` (``Q = P``), or with
    ``ref = (ref_X, ref_labels, ref_pairs)`` the reference's pairs."""
    pairs = pairs.long()
    P, T = pairs.shape[0], n_inner_pts + 2
    A = ops.augmented_points(X, pairs, n_inner_pts, l2_norm)              # (P, T, D)
    lab = labels[pairs[:, 0]]
    if ref is None:
        A_ref, ref_lab = A, lab
    else:
        ref_X, ref_labels, ref_pairs = ref
        A_ref = ops.augmented_points(ref_X, ref_pairs.long(), n_inner_pts, l2_norm)   # (Q, T, D)
        ref_lab = ref_labels[ref_pairs[:, 0].long()]
    Q = A_ref.shape[0]
    flat, flat_ref = A.reshape(P * T, X.shape[1]), A_ref.reshape(Q * T, X.shape[1])  # P or Q may be 0
    d_p = torch.cdist(A[:, :1], A[:, T - 1:], compute_mode="donot_use_mm_for_euclid_dist").view(P)  # ||x_i - x_j||
    s_p = (A[:, 0] * A[:, T - 1]).sum(dim=1)                                                        # <x_i, x_j>
    dist = torch.cdist(flat, flat_ref, compute_mode="donot_use_mm_for_euclid_dist").view(P, T, Q, T)
    dots = (flat @ flat_ref.t()).view(P, T, Q, T)
    dist = dist.permute(0, 2, 1, 3).reshape(P, Q, T * T)
    dots = dots.permute(0, 2, 1, 3).reshape(P, Q, T * T)
    neg = lab[:, None] != ref_lab[None, :]
    dhat, arg = dist.min(dim=-1)
    shat = dots.gather(-1, arg[..., None]).squeeze(-1)
    zero = torch.zeros_like(dhat)
    return d_p, s_p, torch.where(neg, dhat, zero), torch.where(neg, shat, zero), neg


def _pairs(labels, pairs, mode):
    return ops.positive_pairs(labels, mode) if pairs is None else pairs


def _reference(ref_emb, ref_labels, mode):
    """``ref`` for ``hard_negative_pair_stats``: the reference's pairs in ``mode``, or None without one."""
    return None if ref_emb is None else (ref_emb, ref_labels, ops.positive_pairs(ref_labels, mode))


def _lse_masked(z, mask, add_one):
    """``log(Σ_{mask} exp z)`` (``log(1 + Σ ...)`` with ``add_one``); rows with an empty mask give 0."""
    z = torch.where(mask, z, torch.full_like(z, float("-inf")))
    if add_one:
        z = torch.cat([z.new_zeros(z.shape[0], 1), z], dim=1)
    has = torch.isfinite(z).any(dim=1)
    z = torch.where(has[:, None], z, torch.zeros_like(z))
    return torch.where(has, torch.logsumexp(z, dim=1), z.new_zeros(z.shape[0]))


def triplet(embeddings, labels, margin=0.2, n_inner_pts=0, l2_norm=True, reduction="mean", pairs=None,
            pair_mode="all", ref_emb=None, ref_labels=None):
    pairs = _pairs(labels, pairs, pair_mode)
    d_p, _, dhat, _, neg = hard_negative_pair_stats(embeddings, labels, pairs, n_inner_pts, l2_norm,
                                                    _reference(ref_emb, ref_labels, pair_mode))
    has = neg.any(dim=1)
    hardest = torch.where(neg, dhat, torch.full_like(dhat, float("inf")))
    hardest = hardest.min(dim=1).values if hardest.shape[1] else d_p  # no negative pair at all: masked below
    per = F.relu(d_p - torch.where(has, hardest, torch.zeros_like(d_p)) + margin)
    return _reduce(torch.where(has, per, torch.zeros_like(per)), reduction)


def lifted_structure(embeddings, labels, margin=1.0, n_inner_pts=0, l2_norm=True, reduction="mean",
                     pairs=None, pair_mode="all", ref_emb=None, ref_labels=None):
    pairs = _pairs(labels, pairs, pair_mode)
    d_p, _, dhat, _, neg = hard_negative_pair_stats(embeddings, labels, pairs, n_inner_pts, l2_norm,
                                                    _reference(ref_emb, ref_labels, pair_mode))
    has = neg.any(dim=1)
    J = d_p + _lse_masked(margin - dhat, neg, add_one=False)
    per = torch.where(has, F.relu(J) ** 2 / 2, torch.zeros_like(J))
    return _reduce(per, reduction)


def npair(embeddings, labels, n_inner_pts=0, l2_norm=True, reduction="mean", pairs=None, pair_mode="all",
          ref_emb=None, ref_labels=None):
    pairs = _pairs(labels, pairs, pair_mode)
    _, s_p, _, shat, neg = hard_negative_pair_stats(embeddings, labels, pairs, n_inner_pts, l2_norm,
                                                    _reference(ref_emb, ref_labels, pair_mode))
    per = _lse_masked(shat - s_p[:, None], neg, add_one=True)
    return _reduce(torch.where(neg.any(dim=1), per, torch.zeros_like(per)), reduction)


def multi_similarity(embeddings, labels, alpha=2.0, beta=50.0, base=0.5, n_inner_pts=0, l2_norm=True,
                     reduction="mean", pairs=None, pair_mode="all", ref_emb=None, ref_labels=None):
    pairs = _pairs(labels, pairs, pair_mode)
    _, s_p, _, shat, neg = hard_negative_pair_stats(embeddings, labels, pairs, n_inner_pts, l2_norm,
                                                    _reference(ref_emb, ref_labels, pair_mode))
    pos = torch.log1p(torch.exp(-alpha * (s_p - base))) / alpha
    negt = _lse_masked(beta * (shat - base), neg, add_one=True) / beta
    per = pos + negt
    return _reduce(torch.where(neg.any(dim=1), per, torch.zeros_like(per)), reduction)
