"""Paired statistics for plain-vs-EE comparisons (docs/design.md §11).

Every comparison of the harness is paired: for a seed ``s`` the two variants share the network's
initialization and the sequence of batches, so the per-seed difference ``d_s = metric_B(s) - metric_A(s)``
removes what the seed does to both. ``paired`` summarizes the differences (mean, standard error, a
two-sided t test and a t interval with ``k - 1`` degrees of freedom); ``holm`` corrects the p-values of the
comparisons in one table for their number (Holm's step-down method, which controls the family-wise error
rate as Bonferroni does and rejects at least as often); ``verdict`` words the corrected result.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["paired", "holm", "verdict", "ALPHA"]

ALPHA = 0.05


def paired(a, b, confidence: float = 1 - ALPHA) -> dict:
    """Summary of the paired differences ``b - a`` (equal-length sequences, one value per seed).

    Returns ``diffs``, ``k``, ``mean``, ``sd`` (sample, ``ddof=1``), ``se = sd / sqrt(k)``, ``df = k - 1``,
    ``t = mean / se``, ``p`` (two-sided, Student's t with ``df``), and ``ci`` = ``mean ± t_{df, 1-α/2} se``.
    With one seed, or differences that are all equal (to rounding), the test is undefined: ``p`` is ``nan``
    (and ``se`` is 0 in the second case), so no verdict is drawn from it."""
    try:
        from scipy import stats
    except ImportError as exc:
        raise ImportError('ee_cuda.repro.stats needs scipy, part of the optional extra "repro": '
                          'pip install "ee_cuda[repro]"') from exc

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired() needs two 1-D sequences of equal length, got {a.shape} and {b.shape}")
    d = b - a
    k = len(d)
    mean = float(d.mean()) if k else math.nan
    out = {"diffs": d.tolist(), "k": k, "mean": mean, "df": k - 1}
    if k < 2:
        return {**out, "sd": math.nan, "se": math.nan, "t": math.nan, "p": math.nan, "ci": [math.nan, math.nan]}
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal differences whatever their rounding
        sd = 0.0
    se = sd / math.sqrt(k)
    if se == 0.0:
        return {**out, "sd": 0.0, "se": 0.0, "t": math.nan, "p": math.nan, "ci": [mean, mean]}
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), k - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1)) * se
    return {**out, "sd": sd, "se": se, "t": t, "p": p, "ci": [mean - half, mean + half]}


def holm(pvalues) -> list:
    """Holm-adjusted p-values, in the input order: the ``i``-th smallest of ``m`` is multiplied by
    ``m - i`` (``i`` from 0), made non-decreasing in that order and capped at 1. ``nan`` entries (untested
    comparisons) stay ``nan`` and do not count in ``m``."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(mean: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """``"helped"`` / ``"hurt"`` when the corrected p-value is below ``alpha`` (by the sign of the mean
    difference), ``"no effect detected"`` otherwise, ``"not tested"`` when no test was possible."""
    if p_adjusted is None or math.isnan(p_adjusted):
        return "not tested"
    if p_adjusted < alpha:
        return "helped" if mean > 0 else "hurt"
    return "no effect detected"
