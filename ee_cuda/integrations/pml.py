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

``ref_emb``/``ref_labels``: as for every PML loss, the negatives then come from the reference set and the
queries (anchors, positive pairs) from ``embeddings`` (``ee_cuda.losses``, "Reference sets"); both are
L2-normalized when the distance normalizes. Without ``ref_emb`` PML passes ``ref_emb=embeddings``, which
is the in-batch loss.

Not supported, with a ``ValueError``: a miner's ``indices_tuple`` (the EE losses mine their own hard
negatives among the augmented points). Under ``DistributedLossWrapper`` (``efficient=False``) the loss runs
on the gathered batch and PML multiplies it by the world size, which makes DDP's averaged gradients equal
those of one process.

PML's ``CrossBatchMemory`` cannot wrap this adapter: its constructor checks ``type(loss).__name__``
against a fixed list (``CrossBatchMemory.supported_losses()``: ``TripletMarginLoss``,
``MultiSimilarityLoss``, ...) and raises ``Exception("CrossBatchMemory not supported for EEPMLLoss")``; and
its ``forward`` always passes an ``indices_tuple`` (all pairs between the batch and the memory, or its
miner's), which this adapter refuses. Use the package's memory bank ``ee_cuda.losses.CrossBatchMemory``
instead: it takes the adapter as its loss, calls it with ``ref_emb``/``ref_labels`` only, and keeps the
adjacent layout HPHN with EE needs (example, run by the tests)::

    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from pytorch_metric_learning import reducers, samplers
    from ee_cuda.integrations.pml import EEPMLLoss
    from ee_cuda.losses import CrossBatchMemory, HPHNTripletLoss

    features, labels = torch.randn(512, 32), torch.arange(32).repeat_interleave(16)   # 32 classes x 16
    sampler = samplers.MPerClassSampler(labels, m=4, batch_size=64, length_before_new_iter=512)  # even m
    loader = DataLoader(TensorDataset(features, labels), batch_size=64, sampler=sampler)
    model = torch.nn.Linear(32, 16)
    pml_loss = EEPMLLoss(HPHNTripletLoss(margin=0.2, n_inner_pts=2), reducer=reducers.AvgNonZeroReducer())
    loss_fn = CrossBatchMemory(pml_loss, embedding_size=16, memory_size=256)  # the last 4 batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        loss = loss_fn(model(x), y)   # enqueue the batch, then the PML loss with the memory as ref_emb
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

The memory stores the embeddings as given; the adapter L2-normalizes the batch and the memory alike
(PML's default distance) when it is called.
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
        in_batch = ref_emb is embeddings  # what PML passes when no ref_emb was given
        normalize = _normalizes(self.distance)
        if normalize:
            embeddings = self.distance.normalize(embeddings)
        labels = labels.to(embeddings.device)
        reference = {}
        if not in_batch:
            if normalize:
                ref_emb = self.distance.normalize(ref_emb)
            reference = dict(ref_emb=ref_emb, ref_labels=ref_labels)
        losses, items = self.ee_loss.per_item(embeddings, labels, **reference)
        if losses.numel() == 0:
            return self.zero_losses()
        if isinstance(self.ee_loss, HPHNTripletLoss):
            return {"loss": {"losses": losses, "indices": items, "reduction_type": "element"}}
        items = items.long()
        return {"loss": {"losses": losses, "indices": (items[:, 0], items[:, 1]), "reduction_type": "pos_pair"}}

    def extra_repr(self) -> str:
        return f"loss={self.ee_loss!r}"
