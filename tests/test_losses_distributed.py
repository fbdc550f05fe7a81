"""ee_cuda.distributed: hard-negative mining over the global batch, gloo backend, 2 CPU processes.

Checks that the loss and the gradients equal those of one process holding the whole batch: the gradient
of the local rows (``grad_scale=1``) and, under DDP, the parameter gradients (``grad_scale="world_size"``).
"""
from __future__ import annotations

import os
import random
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ee_cuda import losses as L
from ee_cuda.distributed import GlobalBatchLoss, all_gather_with_grad, gather_batch

WORLD = 2
D_IN, D = 12, 8


def _cases():
    """(name, loss factory); built in every process."""
    return [
        ("hphn_n2", lambda: L.HPHNTripletLoss(n_inner_pts=2)),
        ("hphn_n0_soft", lambda: L.HPHNTripletLoss(soft_margin=True)),
        ("triplet_n2", lambda: L.TripletLoss(n_inner_pts=2)),
        ("lifted_n2_adjacent", lambda: L.LiftedStructureLoss(n_inner_pts=2, pairs="adjacent")),
        ("npair_n8", lambda: L.NPairLoss(n_inner_pts=8)),
        ("ms_n2_nol2", lambda: L.MultiSimilarityLoss(n_inner_pts=2, l2_norm=False)),
        ("triplet_none", lambda: L.TripletLoss(n_inner_pts=2, reduction="none")),
    ]


def _worker(rank, init_file, X, y, inputs, state, sizes, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        start = sum(sizes[:rank])
        sl = slice(start, start + sizes[rank])
        res = {}
        # gather itself: rank order, gradient to the local slice only
        xl = X[sl].clone().requires_grad_(True)
        g_all = all_gather_with_grad(xl)
        (g_all * torch.arange(g_all.shape[0], dtype=X.dtype)[:, None]).sum().backward()
        res["gathered"] = g_all.detach()
        res["gather_grad"] = xl.grad
        _, _, local = gather_batch(xl.detach(), y[sl])
        res["local_slice"] = (local.start, local.stop)
        for name, make in _cases():
            xl = X[sl].clone().requires_grad_(True)
            out = GlobalBatchLoss(make(), grad_scale=1)(xl, y[sl])
            g, = torch.autograd.grad(out.sum() if out.dim() else out, xl)
            xs = X[sl].clone().requires_grad_(True)
            out_s = GlobalBatchLoss(make())(xs, y[sl])  # grad_scale="world_size": same value, grad x WORLD
            g_s, = torch.autograd.grad(out_s.sum() if out_s.dim() else out_s, xs)
            res[name] = (out.detach(), g, out_s.detach(), g_s)
        # DDP: parameter gradients equal the single-process ones
        model = torch.nn.Linear(D_IN, D).double()
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = GlobalBatchLoss(L.MultiSimilarityLoss(n_inner_pts=2))
        out = loss(torch.nn.functional.normalize(ddp(inputs[sl]), dim=1), y[sl])
        out.backward()
        res["ddp"] = (out.detach(), model.weight.grad.clone(), model.bias.grad.clone())
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    seed = random.SystemRandom().randrange(2 ** 31)
    torch.manual_seed(seed)
    classes, per_class = 4, 4
    y = torch.randperm(50)[:classes].repeat_interleave(per_class)
    X = torch.randn(classes * per_class, D, dtype=torch.float64)
    inputs = torch.randn(classes * per_class, D_IN, dtype=torch.float64)
    state = torch.nn.Linear(D_IN, D).double().state_dict()
    sizes = [6, 10]  # uneven local batches; both even (adjacent pairs never straddle ranks)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(init_file, X, y, inputs, state, sizes, tmp), nprocs=WORLD, join=True)
        res = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    return dict(seed=seed, X=X, y=y, inputs=inputs, state=state, sizes=sizes, res=res)


def _slices(sizes):
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, start + s))
        start += s
    return out


def test_all_gather_with_grad(results):
    X, res, sl = results["X"], results["res"], _slices(results["sizes"])
    w = torch.arange(X.shape[0], dtype=X.dtype)[:, None].expand_as(X)
    for r in range(WORLD):
        torch.testing.assert_close(res[r]["gathered"], X)          # rank order, uneven sizes
        torch.testing.assert_close(res[r]["gather_grad"], w[sl[r]])  # only the local rows' own gradient
        assert res[r]["local_slice"] == (sl[r].start, sl[r].stop)


@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_global_loss_equals_single_process(results, name):
    seed, X, y, res = results["seed"], results["X"], results["y"], results["res"]
    make = dict(_cases())[name]
    Xs = X.clone().requires_grad_(True)
    single = make()(Xs, y)
    g_single, = torch.autograd.grad(single.sum() if single.dim() else single, Xs)
    for r, sl in enumerate(_slices(results["sizes"])):
        out, g, out_s, g_s = res[r][name]
        msg = lambda m: f"seed={seed} rank={r} {name}: {m}"  # noqa: E731
        torch.testing.assert_close(out, single.detach(), rtol=1e-10, atol=1e-12, msg=msg)
        torch.testing.assert_close(g, g_single[sl], rtol=1e-10, atol=1e-12, msg=msg)
        torch.testing.assert_close(out_s, single.detach(), rtol=1e-10, atol=1e-12, msg=msg)
        torch.testing.assert_close(g_s, WORLD * g_single[sl], rtol=1e-10, atol=1e-12, msg=msg)
    assert g_single.abs().sum() > 0


def test_ddp_parameter_gradients_equal_single_process(results):
    seed, y, inputs, res = results["seed"], results["y"], results["inputs"], results["res"]
    model = torch.nn.Linear(D_IN, D).double()
    model.load_state_dict(results["state"])
    out = L.MultiSimilarityLoss(n_inner_pts=2)(torch.nn.functional.normalize(model(inputs), dim=1), y)
    out.backward()
    for r in range(WORLD):
        loss_r, gw, gb = res[r]["ddp"]
        msg = lambda m: f"seed={seed} rank={r}: {m}"  # noqa: E731
        torch.testing.assert_close(loss_r, out.detach(), rtol=1e-10, atol=1e-12, msg=msg)
        torch.testing.assert_close(gw, model.weight.grad, rtol=1e-9, atol=1e-12, msg=msg)
        torch.testing.assert_close(gb, model.bias.grad, rtol=1e-9, atol=1e-12, msg=msg)


def test_not_initialized_is_a_plain_call():
    torch.manual_seed(random.SystemRandom().randrange(2 ** 31))
    X = torch.randn(8, 4, dtype=torch.float64)
    y = torch.arange(4).repeat_interleave(2)
    loss = L.TripletLoss(n_inner_pts=2)
    assert torch.equal(GlobalBatchLoss(loss)(X, y), loss(X, y))
    with pytest.raises(ValueError, match="grad_scale"):
        GlobalBatchLoss(loss, grad_scale="twice")
