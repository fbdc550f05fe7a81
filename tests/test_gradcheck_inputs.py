"""The gradcheck tests' inputs (conftest.gradcheck_off_switches): finite differences test a backward only where
the function is differentiable, and a hard negative that switches within their step is not."""
import pytest
import torch

import ee_cuda
from conftest import fresh_seed, gradcheck_off_switches, gradient_jump


def tied_negatives():
    """Pair (0, 1) of label 0 with two negatives tied at distance 1 from row 0 (rows 2 and 4), the others far."""
    X = torch.tensor([[0, 0, 1], [0, 0, 2], [1, 0, 1], [5, 5, 5], [-1, 0, 1], [-5, -5, -5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return X.requires_grad_(), labels, ee_cuda.positive_pairs(labels)


def test_a_switch_of_the_hard_negative_is_told_and_avoided():
    """At a tie of two hard negatives gradcheck fails although the backward is right (its finite differences
    straddle the two negatives' gradients); gradient_jump() reads it there and not at inputs off the tie, and
    gradcheck_off_switches() checks at the next draw."""
    seed = fresh_seed()
    X, labels, pairs = tied_negatives()

    def nearest(x):
        return ee_cuda.hard_negative_points(x, pairs, labels, 0, False)[0]

    assert not torch.autograd.gradcheck(nearest, (X,), raise_exception=False)
    assert gradient_jump(nearest, (X,)) > 1e-2
    off = (X.detach() + 0.1 * torch.randn_like(X)).requires_grad_()
    assert gradient_jump(nearest, (off,)) < 1e-4, f"seed={seed}"
    draws = iter([(X,), (off,)])
    gradcheck_off_switches(nearest, lambda: next(draws), f"seed={seed}")
    with pytest.raises(pytest.fail.Exception, match="none of 3 draws"):
        gradcheck_off_switches(nearest, lambda: (X,), "tie", max_draws=3)
