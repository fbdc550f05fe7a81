"""Positive pairs of a batch (docs/design.md §3): every same-label pair, or the official adjacent layout."""
from __future__ import annotations

import torch

from ._validation import check_adjacent_labels, check_labels

__all__ = ["positive_pairs"]


def positive_pairs(labels: torch.Tensor, mode: str = "all") -> torch.Tensor:
    """Positive pairs of a batch, a contiguous ``LongTensor (P, 2)`` on the labels' device.

    ``"all"``: every unordered same-label pair ``(i, j)``, ``i < j``, in row-major order. (``nonzero()``
    returns a column-major view on the CPU; it is made contiguous once here rather than by every op that
    reads it, forward and backward.)
    ``"adjacent"``: ``(2k, 2k+1)`` for every ``k`` (the official sampler's layout); ``ValueError`` if
    ``B`` is odd or the two rows of a pair have different labels.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor of shape (B,), got {type(labels).__name__}")
    check_labels(labels, labels.shape[0] if labels.dim() == 1 else -1, labels.device)
    B = labels.shape[0]
    if mode == "all":
        same = labels[:, None] == labels[None, :]
        return torch.triu(same, diagonal=1).nonzero().contiguous()
    if mode == "adjacent":
        if B % 2:
            raise ValueError(f"labels: mode='adjacent' needs an even batch, got B={B}")
        check_adjacent_labels(labels)
        return torch.arange(B, device=labels.device).view(-1, 2)
    raise ValueError(f"mode must be 'all' or 'adjacent', got {mode!r}")
