"""A memory bank of past embeddings whose rows are the EE losses' negatives (cross-batch memory).

``CrossBatchMemory(loss, embedding_size, memory_size=1024)`` follows XBM (Wang et al., "Cross-Batch Memory
for Embedding Learning", CVPR 2020) and PML's ``CrossBatchMemory`` naming: a ring buffer of the last
``memory_size`` embeddings (detached) and their labels. Each call ``memory(embeddings, labels)`` enqueues the
batch and then returns ``loss(embeddings, labels, ref_emb=M, ref_labels=y_M)``: the batch's rows are the
queries (anchors, positive pairs), the memory's filled rows ``M`` the reference set the negatives come from
(``ee_cuda.losses``, "Reference sets"; docs/design.md §9). Gradients reach the batch's embeddings only.

Usage::

    loss_fn = ee_cuda.losses.CrossBatchMemory(ee_cuda.losses.HPHNTripletLoss(n_inner_pts=2),
                                              embedding_size=128, memory_size=4096).to(device)
    for images, labels in loader:                       # even batches in the adjacent layout
        emb = F.normalize(model(images), dim=1)
        loss = loss_fn(emb, labels)                     # XBM adds the in-batch loss: see below

Semantics (package choices):

* **The current batch is in the memory** when the loss runs (XBM does the same). A query's own pair has
  its own label, so it is never its own negative; other rows of the batch are negatives like any memory
  row, but detached: they pass no gradient on their side. XBM's full objective adds the in-batch loss,
  which does: ``loss(emb, labels) + weight * memory(emb, labels)``.
* **Partial fill.** Until ``memory_size`` rows have been written only the filled rows (``num_filled``)
  form the reference set; afterwards all of them do. Rows are handed over in slot order (not in the order
  they were written), which changes no loss value.
* **Ring and layout.** A batch is written at the write pointer ``queue_idx``; the rows that do not fit before
  the end of the buffer wrap to its start, row by row, and the pointer advances by the batch size modulo
  ``memory_size``. A batch larger than ``memory_size`` is refused. Losses whose negatives come in adjacent
  pairs (``HPHNTripletLoss`` with ``n_inner_pts > 0``, and ``pairs="adjacent"``) need the memory's rows
  ``2k, 2k+1`` to be real positive pairs: they require an even ``memory_size`` and even batches in the
  adjacent layout (checked before the batch is written), so the pointer stays even and a batch's pair
  ``(2j, 2j+1)`` lands on slots ``(e, e+1)`` with ``e`` even, also across the wrap-around.
* **Dtype and device.** The memory holds embeddings in the loss's compute dtype (float16/bfloat16 batches,
  e.g. under autocast, are stored in float32; construct with ``dtype=torch.float64`` for float64 batches)
  on the device it is moved to with ``.to()``; a batch of another compute dtype or device is an error,
  never a silent conversion of the memory.
* **Snapshot.** The loss gets a copy of the filled rows (``O(num_filled · D)`` per call), so that a later
  enqueue, which writes the buffers in place, never invalidates a graph that still holds them (several
  forwards before one backward).
* **No host synchronization.** ``queue_idx`` and ``num_filled`` are Python ints on the host, so enqueueing is
  two slice copies on the device and reads nothing back (on CUDA, the layout check is a device-side
  assertion). They are saved in ``state_dict`` as the module's extra state, next to the
  ``embedding_memory`` and ``label_memory`` buffers. Run the memory eagerly (``torch.compile`` would
  specialize on the pointer); the loss inside may be compiled.

With several processes, wrap the memory: ``GlobalBatchLoss(CrossBatchMemory(loss, ...))`` gathers the
global batch first, so every rank enqueues the same global batch and holds the same memory, and the loss is
that of one process with the concatenated batch (``ee_cuda.distributed``). The other order would keep only
the local batches in each rank's memory and mine among them.

PML users: ``CrossBatchMemory(EEPMLLoss(ee_loss, reducer=...), ...)`` works the same (the adapter takes
``ref_emb``/``ref_labels``); PML's own ``CrossBatchMemory`` cannot wrap the adapter (see
``ee_cuda.integrations.pml``).
"""
from __future__ import annotations

import torch
from torch import nn

from . import ops
from ._validation import check_embeddings, check_labels
from .losses import EELoss, HPHNTripletLoss, _compute_dtype

__all__ = ["CrossBatchMemory"]


def _ee_loss_of(loss) -> EELoss:
    """The EE loss that ``loss`` runs: ``loss`` itself, or the one an ``EEPMLLoss`` wraps (its ``ee_loss``)."""
    ee_loss = getattr(loss, "ee_loss", loss)
    if not isinstance(ee_loss, EELoss):
        raise TypeError(f"loss must be an ee_cuda.losses loss or an EEPMLLoss wrapping one, got {type(loss).__name__}")
    return ee_loss


def _needs_adjacent_layout(ee_loss: EELoss) -> bool:
    """Whether the loss reads the reference's rows as adjacent pairs ``(2k, 2k+1)``."""
    return ((isinstance(ee_loss, HPHNTripletLoss) and ee_loss.n_inner_pts > 0)
            or getattr(ee_loss, "pairs", None) == "adjacent")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class CrossBatchMemory(nn.Module):
    """A ring buffer of past embeddings as the reference set of an EE loss (see the module docstring).

    ``CrossBatchMemory(loss, embedding_size, memory_size=1024, *, dtype=torch.float32, device=None)``;
    ``forward(embeddings, labels)`` enqueues the batch, then returns
    ``loss(embeddings, labels, ref_emb=filled memory, ref_labels=its labels)``.

    ``loss``: an ``ee_cuda.losses`` loss, or an ``ee_cuda.integrations.pml.EEPMLLoss`` wrapping one.
    Buffers ``embedding_memory (memory_size, embedding_size)`` and ``label_memory (memory_size,)`` int64;
    host ints ``queue_idx`` (next slot to write) and ``num_filled`` (rows written so far, at most
    ``memory_size``). ``enqueue`` writes a batch without computing a loss; ``contents`` returns the filled
    rows; ``reset`` empties the memory.
    """

    def __init__(self, loss: nn.Module, embedding_size: int, memory_size: int = 1024, *,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.loss = loss
        self.embedding_size = _positive_int(embedding_size, "embedding_size")
        self.memory_size = _positive_int(memory_size, "memory_size")
        self._adjacent = self._check_memory_layout()
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (a loss's compute dtype), got {dtype}")
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_size, dtype=dtype, device=device))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long, device=device))
        self.queue_idx = 0
        self.num_filled = 0

    def _check_memory_layout(self) -> bool:
        """Whether the loss needs the adjacent layout; then ``memory_size`` must be even."""
        ee_loss = _ee_loss_of(self.loss)
        adjacent = _needs_adjacent_layout(ee_loss)
        if adjacent and self.memory_size % 2:
            raise ValueError(f"memory_size must be even for {ee_loss!r}, whose negatives are the memory's "
                             f"adjacent pairs (2k, 2k+1), got {self.memory_size}")
        return adjacent

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        self.enqueue(embeddings, labels)
        ref_emb, ref_labels = self.contents()
        return self.loss(embeddings, labels, ref_emb=ref_emb.clone(), ref_labels=ref_labels.clone())

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the batch (detached, in the loss's compute dtype) at ``queue_idx``, wrapping around."""
        check_embeddings(embeddings, "embeddings")
        B = embeddings.shape[0]
        check_labels(labels, B, embeddings.device)
        memory = self.embedding_memory
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings have D={embeddings.shape[1]} columns but the memory holds "
                             f"embedding_size={self.embedding_size}")
        if embeddings.device != memory.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the memory is on {memory.device}; "
                             "move the memory with .to(device)")
        if _compute_dtype(embeddings.dtype) != memory.dtype:
            raise TypeError(f"embeddings are {embeddings.dtype}, computed in {_compute_dtype(embeddings.dtype)}, "
                            f"but the memory holds {memory.dtype}; construct it with that dtype or use .to(dtype)")
        if B > self.memory_size:
            raise ValueError(f"a batch of B={B} rows does not fit a memory of memory_size={self.memory_size}")
        if self._adjacent:
            if B % 2:
                raise ValueError(f"{_ee_loss_of(self.loss)!r} needs even batches in the adjacent layout, got B={B}")
            ops.positive_pairs(labels, "adjacent")  # the layout, before the batch is written
        start = self.queue_idx
        before_end = min(B, self.memory_size - start)
        rows = embeddings.detach().to(memory.dtype)
        memory[start:start + before_end].copy_(rows[:before_end])
        self.label_memory[start:start + before_end].copy_(labels[:before_end])
        memory[:B - before_end].copy_(rows[before_end:])
        self.label_memory[:B - before_end].copy_(labels[before_end:])
        self.queue_idx = (start + B) % self.memory_size
        self.num_filled = min(self.num_filled + B, self.memory_size)

    def contents(self):
        """``(embeddings (num_filled, D), labels (num_filled,))``: the filled rows, in slot order (views)."""
        return self.embedding_memory[:self.num_filled], self.label_memory[:self.num_filled]

    def reset(self) -> None:
        """Empty the memory: nothing filled, the write pointer at slot 0."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx = 0
        self.num_filled = 0

    def get_extra_state(self) -> dict:
        return {"queue_idx": self.queue_idx, "num_filled": self.num_filled}

    def set_extra_state(self, state: dict) -> None:
        queue_idx, num_filled = int(state["queue_idx"]), int(state["num_filled"])
        if not (0 <= queue_idx < self.memory_size and 0 <= num_filled <= self.memory_size):
            raise ValueError(f"a saved memory state queue_idx={queue_idx}, num_filled={num_filled} does not fit "
                             f"memory_size={self.memory_size}")
        self.queue_idx, self.num_filled = queue_idx, num_filled

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, memory_size={self.memory_size}, "
                f"queue_idx={self.queue_idx}, num_filled={self.num_filled}")
