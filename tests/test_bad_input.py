"""Bad input (docs/design.md §8): raises a TypeError/ValueError naming the argument, before any kernel runs."""
from __future__ import annotations

import pytest
import torch

import ee_cuda
from ee_cuda import reference as R
from conftest import make_batch

SEARCH = [ee_cuda.hard_negative_pairs, ee_cuda.hard_negative_points, R.hard_negative_pairs, R.hard_negative_points]


@pytest.fixture
def batch():
    X, labels = make_batch(3, 2, 4)
    return X, ee_cuda.positive_pairs(labels), labels


@pytest.mark.parametrize("op", SEARCH)
def test_search_bad_inputs(op, batch):
    X, pairs, labels = batch
    cases = [
        ((X[0], pairs, labels, 2), ValueError, "X must have shape"),
        ((X[None], pairs, labels, 2), ValueError, "X must have shape"),
        ((X.long(), pairs, labels, 2), TypeError, "X must be a floating"),
        (([[0.0]], pairs, labels, 2), TypeError, "X must be a torch.Tensor"),
        ((X, pairs, labels.float(), 2), TypeError, "labels must be an integer"),
        ((X, pairs, labels[:-1], 2), ValueError, "labels must have length"),
        ((X, pairs, labels[None], 2), ValueError, "labels must have shape"),
        ((X, pairs.float(), labels, 2), TypeError, "pairs must be an integer"),
        ((X, pairs[:, :1], labels, 2), ValueError, "pairs must have shape"),
        ((X, pairs.reshape(-1), labels, 2), ValueError, "pairs must have shape"),
        ((X, pairs + X.shape[0], labels, 2), ValueError, "pairs holds indices outside"),
        ((X, pairs - 10, labels, 2), ValueError, "pairs holds indices outside"),
        ((X, torch.tensor([[0, 0]]), labels, 2), ValueError, "pairs row 0 pairs a sample with itself"),
        ((X, torch.tensor([[0, 2]]), labels, 2), ValueError, "not a positive pair"),
        ((X, pairs, labels, -1), ValueError, "n_inner must be >= 0"),
        ((X, pairs, labels, 1.5), TypeError, "n_inner must be an int"),
        ((X, pairs, labels.to("meta"), 2), ValueError, "labels is on meta"),
        ((X, pairs.to("meta"), labels, 2), ValueError, "pairs is on meta"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            op(*args)


@pytest.mark.parametrize("op", [ee_cuda.expand, R.expand])
def test_expand_bad_inputs(op, batch):
    X, pairs, _ = batch
    with pytest.raises(ValueError, match="X must have shape"):
        op(X[0], pairs, 2)
    with pytest.raises(ValueError, match="n_inner"):
        op(X, pairs, -3)
    with pytest.raises(ValueError, match="pairs holds indices"):
        op(X, pairs * 100, 2)
    with pytest.raises(TypeError, match="X must be a floating"):
        op(X.int(), pairs, 2)


def test_positive_pairs_and_embedding_aug_bad_inputs():
    with pytest.raises(ValueError, match="even batch"):
        ee_cuda.positive_pairs(torch.tensor([0, 0, 1]), "adjacent")
    with pytest.raises(ValueError, match="rows 2 and 3"):
        ee_cuda.positive_pairs(torch.tensor([0, 0, 1, 2]), "adjacent")
    with pytest.raises(ValueError, match="mode"):
        ee_cuda.positive_pairs(torch.tensor([0, 0]), "every")
    with pytest.raises(TypeError, match="labels"):
        ee_cuda.positive_pairs(torch.tensor([0.0, 0.0]))
    X, labels = make_batch(2, 2, 3)
    for aug in (ee_cuda.embedding_aug, R.embedding_aug):
        with pytest.raises(ValueError, match="num_instance"):
            aug(X, labels, 3, 2)
        with pytest.raises(ValueError, match="rows 0 and 1"):
            aug(X, torch.tensor([0, 1, 1, 1]), 2, 2)
        with pytest.raises(ValueError, match="n_inner_pts"):
            aug(X, labels, 2, -1)
        with pytest.raises(ValueError, match="even number of rows"):
            aug(X[:3], labels[:3], 2, 1)


def test_raw_ops_check_their_arguments(batch):
    """Direct torch.ops calls bypass the Python checks; the C++ side still refuses bad input cleanly."""
    X, pairs, labels = batch
    ops = torch.ops.ee_cuda
    with pytest.raises(ValueError, match="X must have shape"):
        ops.hard_negative_pairs(X[0], pairs, labels, 2, True)
    with pytest.raises(TypeError, match="pairs must be an int64"):
        ops.hard_negative_points(X, pairs.int(), labels, 2, True)
    with pytest.raises(ValueError, match="n_inner must be >= 0"):
        ops.expand(X, pairs, -1, True)
    with pytest.raises(ValueError, match="labels must have shape"):
        ops.hard_negative_pairs(X, pairs, labels[:2], 2, True)
    with pytest.raises(ValueError, match="pairs holds indices outside"):
        ops.hard_negative_pairs(X, pairs + 50, labels, 2, True)
    with pytest.raises(ValueError, match="pairs holds indices outside"):
        ops.expand(X, pairs - 50, 2, True)
    with pytest.raises(ValueError, match=r"pairs row 1 pairs a sample with itself: \[3, 3\]"):
        ops.hard_negative_points(X, torch.tensor([[0, 1], [3, 3]]), labels, 2, True)
    with pytest.raises(ValueError, match=r"pairs row 0 = \(0, 5\) is not a positive pair"):
        ops.hard_negative_pairs(X, torch.tensor([[0, 5]]), torch.tensor([0, 0, 0, 1, 1, 1]), 2, True)
    with pytest.raises(ValueError, match="X has no rows"):
        ops.hard_negative_pairs(X[:0], pairs, labels[:0], 2, True)
    with pytest.raises(ValueError, match="X has no rows"):
        ops.expand(X[:0], pairs, 2, True)
    d, i = ops.hard_negative_pairs(X, pairs, labels, 2, True)
    with pytest.raises(ValueError, match="index must have shape"):
        ops.hard_negative_pairs_backward(d, X, pairs, d, i[..., :1], 2, True)
    with pytest.raises(ValueError, match="grad must have shape"):
        ops.hard_negative_pairs_backward(d[:1], X, pairs, d, i, 2, True)


def test_device_side_value_checks():
    """The CUDA path's value checks (device-side assertions, no host read), run on CPU tensors, where
    torch._assert_async raises at once: valid pairs pass, each kind of bad row fails with its message."""
    from ee_cuda._validation import check_adjacent_labels_on_device, check_pair_values_on_device
    X, labels = make_batch(3, 4, 5)
    pairs = ee_cuda.positive_pairs(labels)
    check_pair_values_on_device(pairs, X.shape[0], labels)
    check_adjacent_labels_on_device(labels)
    for bad, message in ((pairs + X.shape[0], "outside"), (pairs - 20, "outside"),
                         (torch.tensor([[1, 1]]), "itself"), (torch.tensor([[0, 5]]), "not a positive pair")):
        with pytest.raises(RuntimeError, match=message):
            check_pair_values_on_device(bad, X.shape[0], labels)
    with pytest.raises(RuntimeError, match="outside"):
        check_pair_values_on_device(torch.tensor([[0, 1]]), 0, labels[:0])
    with pytest.raises(RuntimeError, match="different labels"):
        check_adjacent_labels_on_device(torch.tensor([0, 0, 1, 2]))
