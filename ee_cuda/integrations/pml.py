"""pytorch-metric-learning (PML) adapter: use the EE losses where PML expects a loss function.

``EEPMLLoss(loss, reducer=None, distance=None, **kwargs)`` wraps an ``ee_cuda.losses`` module
(``HPHNTripletLoss``, ``TripletLoss``, ``LiftedStructureLoss``, ``NPairLoss``, ``MultiSimilarityLoss``) as a
PML ``BaseMetricLossFunction``. Its ``compute_loss`` returns the per-item losses with PML's reduction
types, so PML's reducers apply to them and PML's ``DistributedLossWrapper`` works:

* ``HPHNTripletLoss``: one loss per anchor, ``reduction_type="element"``, indices ``arange(B)``;
* the pair losses: one loss per positive pair, ``reduction_type="pos_pair"``, indices ``(i, j)``.

The default reducer is PML's ``MeanReducer``, which reproduces ``reduction="mean"`` of the wrapped loss
(its own ``reduction`` is ignored: PML reduces). An ``AvgNonZeroReducer`` gives PML's usual "average over
non-zero losses". PML's embedding regularizers (``embedding_regularizer=``) work as for any PML loss.

``distance``: the EE losses are defined on Euclidean distances between embeddings and their synthetic
points (docs/design.md §9), so the only distance accepted is PML's ``LpDistance(p=2, power=1)``.
With ``normalize_embeddings=True`` (PML's default) the embeddings are L2-normalized before the loss, as
every PML loss does with that distance; with ``False`` they are used as given. Any other distance
(``CosineSimilarity``, ``DotProductSimilarity``, another ``p`` or ``power``, ...) raises a ``ValueError``.

Not supported, each with a ``ValueError``: a miner's ``indices_tuple`` (the EE losses mine their own hard
negatives among the augmented points) and ``ref_emb``/``ref_labels`` (the losses mine inside the batch);
hence PML's ``CrossBatchMemory``, which calls its loss with both, refuses this adapter. Under
``DistributedLossWrapper`` (``efficient=False``) the loss runs on the gathered batch and PML multiplies it
by the world size, which makes DDP's averaged gradients equal those of one process.
``HPHNTripletLoss`` with ``n_inner_pts > 0`` needs batches in the adjacent layout (rows ``2k, 2k+1`` of one
class): PML's ``MPerClassSampler`` with an even ``m`` gives it.

Importing this module raises ``ImportError`` when PML is not installed.
"""
from __future__ import annotations

try:
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import BaseMetricLossFunction
    from pytorch_metric_learning.reducers import MeanReducer
except ImportError as exc:
    raise ImportError('ee_cuda.integrations.pml needs pytorch-metric-learning, the optional extra "pml": '
                      'pip install "ee_cuda[pml]" (or pip install pytorch-metric-learning)') from exc

from ..losses import EELoss, HPHNTripletLoss

__all__ = ["EEPMLLoss"]


def _normalizes(distance) -> bool:
    """Whether ``distance`` (which must be Euclidean) L2-normalizes the embeddings first."""
    if type(distance) is not LpDistance or distance.p != 2 or distance.power != 1:
        raise ValueError(
            f"EEPMLLoss: distance={distance!r} is not supported: the EE losses are defined on Euclidean "
            "distances between embeddings and their synthetic points, so only LpDistance(p=2, power=1) "
            "applies (normalize_embeddings=True, PML's default, L2-normalizes the embeddings first)")
    return bool(distance.normalize_embeddings)


class EEPMLLoss(BaseMetricLossFunction):
    """An ``ee_cuda.losses`` loss as a PML ``BaseMetricLossFunction`` (see the module docstring)."""

    def __init__(self, loss: EELoss, reducer=None, **kwargs):
        if not isinstance(loss, EELoss):
            raise TypeError(f"loss must be an ee_cuda.losses loss module, got {type(loss).__name__}")
        super().__init__(reducer=reducer, **kwargs)
        _normalizes(self.distance)
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
            raise ValueError("EEPMLLoss: ref_emb/ref_labels are not supported: the EE losses mine inside the "
                             "batch (for several processes use DistributedLossWrapper with efficient=False)")
        if _normalizes(self.distance):
            embeddings = self.distance.normalize(embeddings)
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
