"""Argument checks shared by the fused ops and the reference (docs/design.md §8).

Every public op validates here, before any kernel runs, and raises a ``TypeError`` or ``ValueError``
naming the argument. Checks that need the values of a tensor (pair indices in range, pair labels equal)
read a few reductions of them back to the host on the CPU, and raise a ``ValueError`` naming the first bad
row. On CUDA they are device-side assertions instead (``torch._assert_async``, as PyTorch's own index checks):
no host read, so a training step stays free of synchronization and can be captured in a CUDA graph; a bad
row fails when the device reaches the check, without its number. Under ``torch.compile`` they are skipped
(the CUDA kernels never read out of bounds: an invalid row makes the results computed from it NaN).
"""
from __future__ import annotations

import torch

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_embeddings(X, name: str = "X") -> None:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, D), got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"{name} must have shape (B, D), got a tensor of rank {X.dim()} and shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {X.dtype}")


def check_n_inner(n_inner, name: str = "n_inner") -> int:
    if isinstance(n_inner, bool) or not isinstance(n_inner, int):
        # torch.SymInt and numpy integers are accepted through __index__.
        try:
            n_inner = n_inner.__index__()
        except (AttributeError, TypeError):
            raise TypeError(f"{name} must be an int >= 0, got {type(n_inner).__name__}") from None
    if n_inner < 0:
        raise ValueError(f"{name} must be >= 0, got {n_inner}")
    return int(n_inner)


def check_labels(labels, B: int, device: torch.device, name: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor of shape (B,), got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (int64 preferred), got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(labels.shape)}")
    if labels.shape[0] != B:
        raise ValueError(f"{name} must have length {B} (rows of its embeddings), got {labels.shape[0]}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}; put both on one device")


def check_pairs(pairs, B: int, device: torch.device, labels=None, name: str = "pairs", values: bool = True) -> None:
    """Type, shape and device of ``pairs``; with ``values``, also its rows: indices in ``[0, B)``, ``i != j``
    and (given ``labels``) one label per pair. The fused CPU ops pass ``values=False``: their kernel makes
    the same value checks, with the same messages, in one pass before it computes anything."""
    if not isinstance(pairs, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor of shape (P, 2), got {type(pairs).__name__}")
    if pairs.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (int64), got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name} must have shape (P, 2), got shape {tuple(pairs.shape)}")
    if pairs.device != device:
        raise ValueError(f"{name} is on {pairs.device} but the embeddings are on {device}; put both on one device")
    if not values or torch.compiler.is_compiling() or pairs.shape[0] == 0:
        return
    if pairs.device.type == "cuda":
        check_pair_values_on_device(pairs, B, labels, name)
        return
    lo, hi = int(pairs.min()), int(pairs.max())
    if lo < 0 or hi >= B:
        bad = ((pairs < 0) | (pairs >= B)).any(dim=1).nonzero()[0, 0].item()
        raise ValueError(
            f"{name} holds indices outside [0, B={B}): row {bad} is {pairs[bad].tolist()}")
    same = pairs[:, 0] == pairs[:, 1]
    if bool(same.any()):
        bad = same.nonzero()[0, 0].item()
        raise ValueError(f"{name} row {bad} pairs a sample with itself: {pairs[bad].tolist()} (need i != j)")
    if labels is not None:
        differ = labels[pairs[:, 0]] != labels[pairs[:, 1]]
        if bool(differ.any()):
            bad = differ.nonzero()[0, 0].item()
            i, j = pairs[bad].tolist()
            raise ValueError(
                f"{name} row {bad} = ({i}, {j}) is not a positive pair: "
                f"labels[{i}]={labels[i].item()} != labels[{j}]={labels[j].item()}")


def check_reference_set(X, ref_X, ref_pairs, ref_labels, values: bool = True) -> bool:
    """The optional reference set of the searches (docs/design.md §3): all of ``ref_X``, ``ref_pairs``,
    ``ref_labels`` or none. Returns whether it is given; checks each argument by name, and that ``ref_X``
    matches ``X`` in width, dtype and device. ``values`` as in ``check_pairs``."""
    given = {"ref_X": ref_X, "ref_pairs": ref_pairs, "ref_labels": ref_labels}
    missing = [name for name, v in given.items() if v is None]
    if len(missing) == len(given):
        return False
    if missing:
        present = [name for name in given if name not in missing]
        raise ValueError(f"the reference set is all or none: got {', '.join(present)} without {', '.join(missing)}")
    check_embeddings(ref_X, "ref_X")
    if ref_X.shape[1] != X.shape[1]:
        raise ValueError(f"ref_X has D={ref_X.shape[1]} columns but X has D={X.shape[1]}; they must match")
    if ref_X.dtype != X.dtype:
        raise TypeError(f"ref_X is {ref_X.dtype} but X is {X.dtype}; they must match")
    if ref_X.device != X.device:
        raise ValueError(f"ref_X is on {ref_X.device} but X is on {X.device}; put both on one device")
    check_labels(ref_labels, ref_X.shape[0], ref_X.device, "ref_labels")
    check_pairs(ref_pairs, ref_X.shape[0], ref_X.device, ref_labels, "ref_pairs", values)
    return True


def check_pair_values_on_device(pairs, B: int, labels=None, name: str = "pairs") -> None:
    """``check_pairs``' value checks as assertions on the tensors' device, with no host read (the CUDA path;
    on the CPU ``torch._assert_async`` raises at once, which the tests use)."""
    torch._assert_async(((pairs >= 0) & (pairs < B)).all(), f"{name} holds indices outside [0, B={B})")
    torch._assert_async((pairs[:, 0] != pairs[:, 1]).all(), f"{name} has a row that pairs a sample with itself")
    if labels is not None and B > 0:
        inside = pairs.clamp(0, B - 1)  # no out-of-bounds read while the first assertion is in flight
        torch._assert_async((labels[inside[:, 0]] == labels[inside[:, 1]]).all(),
                            f"{name} has a row that is not a positive pair (its two labels differ)")


def check_adjacent_labels_on_device(labels: torch.Tensor) -> None:
    pairs = labels.view(-1, 2)
    torch._assert_async((pairs[:, 0] == pairs[:, 1]).all(),
                        "labels: an adjacent pair (rows 2k, 2k+1) has different labels")


def check_adjacent_labels(labels: torch.Tensor) -> None:
    """Rows ``2k`` and ``2k+1`` share a label (the official sampler's layout); ``labels`` has even length.
    On CUDA a device-side assertion (no host read), as in ``check_pair_values_on_device``."""
    if torch.compiler.is_compiling() or labels.shape[0] == 0:
        return
    if labels.device.type == "cuda":
        check_adjacent_labels_on_device(labels)
        return
    pairs = labels.view(-1, 2)
    differ = pairs[:, 0] != pairs[:, 1]
    if bool(differ.any()):
        k = differ.nonzero()[0, 0].item()
        raise ValueError(
            f"labels: rows {2 * k} and {2 * k + 1} form an adjacent pair but have different labels "
            f"({labels[2 * k].item()} != {labels[2 * k + 1].item()})")


def check_embedding_aug_args(X, labels, num_instance, n_inner_pts) -> int:
    """The arguments of ``embedding_aug``; returns ``n_inner_pts`` as an int."""
    check_embeddings(X, "embeddings")
    n = check_n_inner(n_inner_pts, "n_inner_pts")
    check_labels(labels, X.shape[0], X.device)
    if isinstance(num_instance, bool) or not isinstance(num_instance, int) or num_instance <= 0 or num_instance % 2:
        raise ValueError(f"num_instance must be a positive even int (as upstream asserts), got {num_instance!r}")
    if X.shape[0] % 2:
        raise ValueError(f"embeddings must have an even number of rows (adjacent pairs), got B={X.shape[0]}")
    check_adjacent_labels(labels)
    return n
