"""Retrieval and clustering metrics as the paper evaluates them (docs/design.md §10).

- ``recall_at_k``: share of queries whose ``k`` nearest *other* samples (Euclidean) include one of the
  same label. Computed in chunks of queries on the embeddings' device, so no ``N x N`` matrix is ever
  held at once.
- ``nmi``: ``2 I(Y;C) / (H(Y) + H(C))``, equal to scikit-learn's ``normalized_mutual_info_score`` with
  ``average_method="arithmetic"``; computed here from the contingency table (``entropy_terms`` exposes
  the per-cluster conditional entropies, as in the review's worked example).
- ``pairwise_f1``: F1 of "same cluster" as a predictor of "same class" over all unordered sample pairs.
- ``cluster``: scikit-learn k-means (no faiss needed).
- ``evaluate``: all of them at once, with ``k`` = number of classes for the clustering.

``recall_at_k``, ``nmi`` and ``pairwise_f1`` need only torch and numpy; ``cluster`` and ``evaluate`` need
scikit-learn, the optional extra ``repro`` (``pip install "ee_cuda[repro]"``), and raise an ``ImportError``
that says so without it.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["recall_at_k", "nmi", "pairwise_f1", "cluster", "evaluate", "entropy_terms"]


def _as_numpy_labels(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {x.shape}")
    return x


def _check_embeddings(embeddings, labels):
    if not isinstance(embeddings, torch.Tensor):
        embeddings = torch.as_tensor(np.asarray(embeddings))
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        embeddings = embeddings.float()
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    labels = labels.to(embeddings.device)
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    return embeddings, labels


@torch.no_grad()
def recall_at_k(embeddings, labels, ks: Sequence[int] = (1, 2, 4, 8), chunk_size: int = 1024,
                gallery=None, gallery_labels=None, exclude=None) -> dict:
    """Recall@k for every ``k`` in ``ks``: ``{k: share of queries with a same-label sample among its k
    nearest other samples}``.

    By default the queries are the gallery (leave-one-out: a query never retrieves itself). With
    ``gallery``/``gallery_labels`` the queries search that separate set instead; ``exclude`` then is an
    optional ``(N_query, m)`` long tensor of gallery rows each query must not retrieve (``-1`` = none),
    used for synthetic points, whose generating originals are excluded.
    Distances are Euclidean, computed ``chunk_size`` queries at a time on the embeddings' device in
    float32 or better. Ties are broken by ``torch.topk``.
    """
    embeddings, labels = _check_embeddings(embeddings, labels)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    self_search = gallery is None
    if self_search:
        gallery, gallery_labels = embeddings, labels
    else:
        gallery, gallery_labels = _check_embeddings(gallery, gallery_labels)
        gallery, gallery_labels = gallery.to(embeddings.device), gallery_labels.to(embeddings.device)
    n_query, n_gal = embeddings.shape[0], gallery.shape[0]
    avail = n_gal - (1 if self_search else 0)
    if n_query == 0:
        return {k: float("nan") for k in ks}
    kmax = min(max(ks), avail)
    if kmax < 1:
        raise ValueError("recall_at_k needs at least two samples")
    work = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    q_all, g = embeddings.to(work), gallery.to(work)
    g_sq = (g * g).sum(1)
    hits = {k: 0 for k in ks}
    for start in range(0, n_query, chunk_size):
        q = q_all[start:start + chunk_size]
        d2 = (q * q).sum(1, keepdim=True) + g_sq[None, :] - 2.0 * (q @ g.T)
        d2.clamp_(min=0)
        if self_search:
            rows = torch.arange(q.shape[0], device=q.device)
            d2[rows, rows + start] = float("inf")
        if exclude is not None:
            ex = exclude[start:start + chunk_size].to(q.device).long()
            valid = ex >= 0
            r = torch.arange(q.shape[0], device=q.device)[:, None].expand_as(ex)
            d2[r[valid], ex[valid]] = float("inf")
        nn_idx = d2.topk(kmax, dim=1, largest=False).indices
        match = gallery_labels[nn_idx] == labels[start:start + chunk_size, None]
        first = torch.where(match.any(1), match.float().argmax(1), torch.full_like(match[:, 0], kmax,
                                                                                  dtype=torch.long))
        for k in ks:
            hits[k] += int((first < min(k, kmax)).sum())
    return {k: hits[k] / n_query for k in ks}


def _contingency(labels, clusters) -> np.ndarray:
    y, c = _as_numpy_labels(labels), _as_numpy_labels(clusters)
    if y.shape != c.shape:
        raise ValueError(f"labels and clusters must have the same length, got {y.shape[0]} and {c.shape[0]}")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((yi.max() + 1 if yi.size else 0, ci.max() + 1 if ci.size else 0), dtype=np.int64)
    np.add.at(table, (yi, ci), 1)
    return table


def _entropy(counts: np.ndarray, base: float) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(base))


def entropy_terms(labels, clusters, base: float = 2.0) -> dict:
    """The pieces of NMI: ``{"H_Y", "H_C", "H_Y_given_C", "I", "per_cluster"}``.

    ``per_cluster[c] = P(C=c) * H(Y | C=c)``, the review's ``H(Y|C=c)`` term (log base ``base``; bits by
    default), keyed by cluster id in sorted order; ``H_Y_given_C`` is their sum and ``I = H_Y - H_Y_given_C``.
    """
    table = _contingency(labels, clusters)
    n = table.sum()
    cluster_ids = np.unique(_as_numpy_labels(clusters))
    per_cluster = {}
    for j, cid in enumerate(cluster_ids):
        col = table[:, j]
        per_cluster[cid.item()] = float(col.sum() / n) * _entropy(col, base) if n else 0.0
    h_y, h_c = _entropy(table.sum(1), base), _entropy(table.sum(0), base)
    h_y_c = float(sum(per_cluster.values()))
    return {"H_Y": h_y, "H_C": h_c, "H_Y_given_C": h_y_c, "I": h_y - h_y_c, "per_cluster": per_cluster}


def nmi(labels, clusters) -> float:
    """Normalized mutual information ``2 I(Y;C) / (H(Y) + H(C))`` (arithmetic mean normalization).

    Equals scikit-learn's ``normalized_mutual_info_score(labels, clusters)``. When both labelings are
    constant (``H(Y) = H(C) = 0``) it is 1.0, as scikit-learn defines it.
    """
    t = entropy_terms(labels, clusters, base=math.e)
    denom = t["H_Y"] + t["H_C"]
    if denom <= 0:
        return 1.0
    return float(min(max(2.0 * t["I"] / denom, 0.0), 1.0))


def pairwise_f1(labels, clusters) -> float:
    """Pairwise F1 over all unordered sample pairs.

    precision = share of same-cluster pairs that are same-class; recall = share of same-class pairs that
    are same-cluster; F1 is their harmonic mean (0 when there is no true positive pair).
    """
    table = _contingency(labels, clusters)

    def comb2(x):
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    tp = comb2(table)
    same_cluster, same_class = comb2(table.sum(0)), comb2(table.sum(1))
    if tp == 0:
        return 0.0
    precision, recall = tp / same_cluster, tp / same_class
    return 2 * precision * recall / (precision + recall)


def cluster(embeddings, k: int, seed: int = 0, n_init: int = 3, threads: int | None = 1) -> np.ndarray:
    """k-means assignments (scikit-learn ``KMeans``, ``n_init`` restarts, ``random_state=seed``).

    ``threads`` caps the BLAS/OpenMP threads k-means uses (default 1: on a busy machine, oversubscribed
    OpenMP is tens of times slower); ``None`` leaves scikit-learn's default.
    """
    try:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise ImportError('ee_cuda.metrics.cluster needs scikit-learn, the optional extra "repro": '
                          'pip install "ee_cuda[repro]" (or pip install scikit-learn)') from exc

    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}")
    if not 1 <= int(k) <= x.shape[0]:
        raise ValueError(f"k must be in 1..N={x.shape[0]}, got {k}")
    with threadpool_limits(limits=threads):
        return KMeans(n_clusters=int(k), n_init=n_init, random_state=int(seed)).fit_predict(x)


def evaluate(embeddings, labels, ks: Iterable[int] = (1, 2, 4, 8), seed: int = 0) -> dict:
    """All metrics: ``{"nmi", "f1", "recall@1", "recall@2", ...}`` (k-means with k = number of classes)."""
    embeddings, labels_t = _check_embeddings(embeddings, labels)
    ks = tuple(ks)
    y = labels_t.cpu().numpy()
    clusters = cluster(embeddings, len(np.unique(y)), seed=seed)
    out = {"nmi": nmi(y, clusters), "f1": pairwise_f1(y, clusters)}
    for k, v in recall_at_k(embeddings, labels_t, ks).items():
        out[f"recall@{k}"] = v
    return out
