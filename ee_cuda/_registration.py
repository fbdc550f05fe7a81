"""Fake (meta) kernels and autograd for the ops that ``ee_cuda._C`` registers as ``torch.ops.ee_cuda.*``.

The backward of every op is an op of its own (``*_backward``), so it dispatches per device and traces
under ``torch.compile``; double backward is not supported (the backward ops have no autograd).
"""
from __future__ import annotations

import torch

_lib = "ee_cuda::"


def _dist_like(X, *shape):
    """The searches' dist: in the accumulation type (float32 for half inputs), which the backward reads; the
    public ops round it to X's dtype."""
    return X.new_empty(shape, dtype=torch.float64 if X.dtype == torch.float64 else torch.float32)


@torch.library.register_fake(_lib + "expand")
def _expand_fake(X, pairs, n_inner, normalize):
    return X.new_empty(pairs.shape[0], n_inner, X.shape[1])


def _search_outputs(X, pairs, cols):
    """A search's ``(dist (P, cols), index (P, cols, 2))``."""
    P = pairs.shape[0]
    return _dist_like(X, P, cols), pairs.new_empty(P, cols, 2)


@torch.library.register_fake(_lib + "hard_negative_pairs")
def _pairs_fake(X, pairs, labels, n_inner, normalize):
    return _search_outputs(X, pairs, pairs.shape[0])


@torch.library.register_fake(_lib + "hard_negative_points")
def _points_fake(X, pairs, labels, n_inner, normalize):
    return _search_outputs(X, pairs, n_inner + 2)


@torch.library.register_fake(_lib + "expand_backward")
def _expand_backward_fake(grad, X, pairs, n_inner, normalize):
    return torch.empty_like(X)


@torch.library.register_fake(_lib + "hard_negative_pairs_backward")
def _pairs_backward_fake(grad, X, pairs, dist, index, n_inner, normalize):
    return torch.empty_like(X)


@torch.library.register_fake(_lib + "hard_negative_points_backward")
def _points_backward_fake(grad, X, pairs, dist, index, n_inner, normalize):
    return torch.empty_like(X)


@torch.library.register_fake(_lib + "hard_negative_pairs_ref")
def _pairs_ref_fake(X, pairs, labels, ref_X, ref_pairs, ref_labels, n_inner, normalize):
    return _search_outputs(X, pairs, ref_pairs.shape[0])


@torch.library.register_fake(_lib + "hard_negative_points_ref")
def _points_ref_fake(X, pairs, labels, ref_X, ref_pairs, ref_labels, n_inner, normalize):
    return _search_outputs(X, pairs, n_inner + 2)


def _ref_grad_like(ref_X, ref_grad):
    """The reference backwards' dref_X: ref_X's shape, or (0, D) when ref_X needs no gradient (a detached
    memory bank: the dGᵀ X product is skipped)."""
    return torch.empty_like(ref_X) if ref_grad else ref_X.new_empty(0, ref_X.shape[1])


@torch.library.register_fake(_lib + "hard_negative_pairs_ref_backward")
def _pairs_ref_backward_fake(grad, X, pairs, ref_X, ref_pairs, dist, index, n_inner, normalize, ref_grad):
    return torch.empty_like(X), _ref_grad_like(ref_X, ref_grad)


@torch.library.register_fake(_lib + "hard_negative_points_ref_backward")
def _points_ref_backward_fake(grad, X, pairs, ref_X, ref_pairs, dist, index, n_inner, normalize, ref_grad):
    return torch.empty_like(X), _ref_grad_like(ref_X, ref_grad)


def _setup_expand(ctx, inputs, output):
    X, pairs, n_inner, normalize = inputs
    ctx.save_for_backward(X, pairs)
    ctx.n_inner, ctx.normalize = n_inner, normalize


def _backward_expand(ctx, grad):
    X, pairs = ctx.saved_tensors
    dX = torch.ops.ee_cuda.expand_backward(grad.contiguous(), X, pairs, ctx.n_inner, ctx.normalize)
    return dX, None, None, None


def _save_search(ctx, tensors, index, n_inner, normalize):
    ctx.save_for_backward(*tensors)
    ctx.n_inner, ctx.normalize = n_inner, normalize
    # index has no gradient; without this autograd would hand the backward a zero int64 tensor of index's
    # shape (P x P x 2 for hard_negative_pairs: 8x the memory of dist).
    ctx.mark_non_differentiable(index)
    ctx.set_materialize_grads(False)


def _setup_search(ctx, inputs, output):
    X, pairs, labels, n_inner, normalize = inputs
    dist, index = output
    _save_search(ctx, (X, pairs, dist, index), index, n_inner, normalize)


def _search_backward(op):
    def backward(ctx, grad_dist, grad_index):
        if grad_dist is None:
            return None, None, None, None, None
        X, pairs, dist, index = ctx.saved_tensors
        dX = op(grad_dist.contiguous(), X, pairs, dist, index, ctx.n_inner, ctx.normalize)
        return dX, None, None, None, None
    return backward


def _setup_reference_search(ctx, inputs, output):
    X, pairs, labels, ref_X, ref_pairs, ref_labels, n_inner, normalize = inputs
    dist, index = output
    _save_search(ctx, (X, pairs, ref_X, ref_pairs, dist, index), index, n_inner, normalize)


def _reference_search_backward(op):
    def backward(ctx, grad_dist, grad_index):
        if grad_dist is None:
            return (None,) * 8
        X, pairs, ref_X, ref_pairs, dist, index = ctx.saved_tensors
        ref_grad = ctx.needs_input_grad[3]
        dX, dref = op(grad_dist.contiguous(), X, pairs, ref_X, ref_pairs, dist, index, ctx.n_inner, ctx.normalize,
                      ref_grad)
        return dX, None, None, dref if ref_grad else None, None, None, None, None
    return backward


torch.library.register_autograd(_lib + "expand", _backward_expand, setup_context=_setup_expand)
torch.library.register_autograd(_lib + "hard_negative_pairs",
                                _search_backward(torch.ops.ee_cuda.hard_negative_pairs_backward),
                                setup_context=_setup_search)
torch.library.register_autograd(_lib + "hard_negative_points",
                                _search_backward(torch.ops.ee_cuda.hard_negative_points_backward),
                                setup_context=_setup_search)
torch.library.register_autograd(_lib + "hard_negative_pairs_ref",
                                _reference_search_backward(torch.ops.ee_cuda.hard_negative_pairs_ref_backward),
                                setup_context=_setup_reference_search)
torch.library.register_autograd(_lib + "hard_negative_points_ref",
                                _reference_search_backward(torch.ops.ee_cuda.hard_negative_points_ref_backward),
                                setup_context=_setup_reference_search)
