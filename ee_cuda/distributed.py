"""Mining hard negatives over the global batch in data-parallel training.

With ``torch.distributed`` (DDP) each rank holds a local batch. EE mines its hard negatives among
augmented points, so mining over the *global* batch gives every anchor more (and harder) negatives.
``GlobalBatchLoss(loss)`` gathers embeddings and labels from all ranks, runs the loss on the global batch
(identical on every rank) and lets the gradient flow back to the local rows only:

* ``all_gather_with_grad(x)``: the rank-ordered concatenation of every rank's ``x`` (local sizes may
  differ); the local slice *is* ``x`` (autograd), the other slices are constants. Rank ``r`` therefore
  gets ``∂L/∂x_r`` exactly, since ``L`` is a function of all rows and ``x_r`` enters through its slot;
  no communication happens in backward.
* ``GlobalBatchLoss(loss, group=None, grad_scale="world_size")``: the returned value is the loss of the
  global batch, equal to that of one process holding the concatenated batch (rank order). DDP *averages*
  parameter gradients over ranks, which would give ``(1/R) ∂L/∂θ``; with ``grad_scale="world_size"``
  (default) the backward pass multiplies the gradient by the world size ``R`` (the value is unchanged), so
  after DDP's averaging the parameter gradients equal those of the single process. Use ``grad_scale=1``
  when the gradients are summed rather than averaged (or to get ``∂L/∂x_local`` itself).
  PML's ``DistributedLossWrapper`` makes the same correction by returning ``loss * world_size``.

With a memory bank, put the memory inside: ``GlobalBatchLoss(CrossBatchMemory(loss, ...))`` (see
``ee_cuda.memory``). The memory then enqueues the global batch, so every rank holds the same memory (all
ranks' recent batches) and the loss is that of one process with the concatenated batches; its
``memory_size`` counts global rows. (The other order would fill each rank's memory with its local batches
only, and mine the gathered batch against them.)

Without an initialized process group (or with one rank) ``GlobalBatchLoss`` just calls the loss.
Every rank must call it the same number of times (it communicates). For ``HPHNTripletLoss`` with
``n_inner_pts > 0`` each local batch must be in the adjacent layout (even sizes), which the rank-ordered
concatenation then keeps.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_gather_with_grad", "all_gather_no_grad", "gather_batch", "GlobalBatchLoss", "is_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _gather_padded(x: torch.Tensor, group=None):
    """All ranks' ``x`` (``(n_r, ...)``, ``n_r`` may differ) as a list of detached tensors in rank order."""
    world = dist.get_world_size(group)
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    buf = x.detach()
    if buf.shape[0] < longest:
        pad = buf.new_zeros((longest - buf.shape[0],) + tuple(buf.shape[1:]))
        buf = torch.cat([buf, pad], dim=0)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf.contiguous(), group=group)
    return [p[:s] for p, s in zip(parts, sizes)]


def all_gather_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Rank-ordered concatenation of every rank's ``x`` (no gradient), e.g. for labels."""
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x
    return torch.cat(_gather_padded(x, group), dim=0)


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Rank-ordered concatenation of every rank's ``x``; gradients flow to the local slice only."""
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x
    parts = _gather_padded(x, group)
    parts[dist.get_rank(group)] = x
    return torch.cat(parts, dim=0)


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor, group=None):
    """``(global_embeddings, global_labels, local_slice)``: the global batch in rank order and the rows
    of it that belong to this rank."""
    if not is_distributed() or dist.get_world_size(group) == 1:
        return embeddings, labels, slice(0, embeddings.shape[0])
    n = torch.tensor([embeddings.shape[0]], device=embeddings.device, dtype=torch.long)
    all_emb = all_gather_with_grad(embeddings, group)
    all_lab = all_gather_no_grad(labels, group)
    rank = dist.get_rank(group)
    sizes = all_gather_no_grad(n, group).tolist()
    start = sum(sizes[:rank])
    return all_emb, all_lab, slice(start, start + sizes[rank])


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


class GlobalBatchLoss(nn.Module):
    """Run ``loss`` (an ``ee_cuda.losses`` module) on the batch gathered from all ranks (see module doc).

    ``GlobalBatchLoss(loss, group=None, grad_scale="world_size")``; ``forward(embeddings, labels)``.
    ``grad_scale``: ``"world_size"`` (for DDP's gradient averaging) or a number.
    """

    def __init__(self, loss: nn.Module, group=None, grad_scale="world_size"):
        super().__init__()
        if not (grad_scale == "world_size" or isinstance(grad_scale, (int, float))):
            raise ValueError(f"grad_scale must be 'world_size' or a number, got {grad_scale!r}")
        self.loss = loss
        self.group = group
        self.grad_scale = grad_scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        if not is_distributed() or dist.get_world_size(self.group) == 1:
            return self.loss(embeddings, labels)
        all_emb, all_lab, _ = gather_batch(embeddings, labels, self.group)
        out = self.loss(all_emb, all_lab)
        scale = dist.get_world_size(self.group) if self.grad_scale == "world_size" else float(self.grad_scale)
        return out if scale == 1 else _ScaleGrad.apply(out, float(scale))
