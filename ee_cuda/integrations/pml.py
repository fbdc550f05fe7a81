"""pytorch-metric-learning (PML) adapter: use the EE losses where PML expects a loss function.

``EEPMLLoss(loss, reducer=None)`` wraps an ``ee_cuda.losses`` module (``HPHNTripletLoss``,
``TripletLoss``, ``LiftedStructureLoss``, ``NPairLoss``, ``MultiSimilarityLoss``) as a PML
``BaseMetricLossFunction``. Its ``compute_loss`` returns the per-item losses with PML's reduction types,
so PML's reducers apply to them and PML's ``DistributedLossWrapper`` works:

* ``HPHNTripletLoss``: one loss per anchor, ``reduction_type="element"``, indices ``arange(B)``;
* the pair losses: one loss per positive pair, ``reduction_type="pos_pair"``, indices ``(i, j)``.

The default reducer is PML's ``MeanReducer``, which reproduces ``reduction="mean"`` of the wrapped loss
(its own ``reduction`` is ignored: PML reduces). An ``AvgNonZeroReducer`` gives PML's usual "average over
non-zero losses". The EE losses mine their own hard negatives, so ``indices_tuple`` (a miner's output)
and ``ref_emb``/``ref_labels`` are rejected with a ``ValueError``; PML's ``distance`` argument is not used
(the losses are defined with the Euclidean distance and the dot product, spec §5). Under
``DistributedLossWrapper`` (``efficient=False``) the loss runs on the gathered batch and PML multiplies it
by the world size, which makes DDP's averaged gradients equal those of one process.

Importing this module raises ``ImportError`` when PML is not installed.
"""
from __future__ import annotations


try:
    from pytorch_metric_learning.losses import BaseMetricLossFunction
    from pytorch_metric_learning.reducers import MeanReducer
except ImportError as exc:  # pragma: no cover - exercised only without PML
    raise ImportError("ee_cuda.integrations.pml needs pytorch-metric-learning: "
                      "pip install pytorch-metric-learning") from exc

from ..losses import EELoss, HPHNTripletLoss

__all__ = ["EEPMLLoss"]


class EEPMLLoss(BaseMetricLossFunction):
    """An ``ee_cuda.losses`` loss as a PML ``BaseMetricLossFunction`` (see the module docstring)."""

    def __init__(self, loss: EELoss, reducer=None, **kwargs):
        if not isinstance(loss, EELoss):
            raise TypeError(f"loss must be an ee_cuda.losses loss module, got {type(loss).__name__}")
        super().__init__(reducer=reducer, **kwargs)
        self.ee_loss = loss

    def get_default_reducer(self):
        return MeanReducer()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if labels is None:
            raise ValueError("EEPMLLoss needs labels")
        if indices_tuple is not None:
            raise ValueError("EEPMLLoss: the EE losses mine their own hard negatives; pass no indices_tuple "
                             "(no miner)")
        if ref_emb is not embeddings:
            raise ValueError("EEPMLLoss: ref_emb/ref_labels are not supported (use DistributedLossWrapper "
                             "with efficient=False)")
        labels = labels.to(embeddings.device)
        losses, items = self.ee_loss.per_item(embeddings, labels)
        if losses.numel() == 0:
            return self.zero_losses()
        if isinstance(self.ee_loss, HPHNTripletLoss):
            return {"loss": {"losses": losses, "indices": items, "reduction_type": "element"}}
        items = items.long()
        return {"loss": {"losses": losses, "indices": (items[:, 0], items[:, 1]), "reduction_type": "pos_pair"}}

    def extra_repr(self) -> str:
        return f"loss={self.ee_loss!r}"
