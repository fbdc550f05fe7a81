"""Shared pieces of the ee_cuda benchmarks: workloads, implementations, checks, memory meters.

Used by the pytest-benchmark suite (``bench/bench_*.py`` through ``bench/conftest.py``, CPU) and by the
stand-alone GPU benchmark ``bench/gpu_bench.py``. Nothing here depends on pytest.

Vocabulary
----------
* **config**: one batch shape (docs/design.md §12: workloads W1, W1b, W2, W3, or a point of the n / B sweeps):
  ``B = classes × per_class``, ``D``, ``n``, and the positive-pair layout ``pairs`` ("adjacent" / "all").
  A **memory-bank** config (workload ``XBM``, group "memory") adds a reference set of ``M`` rows (``ref_X``,
  its adjacent pairs and labels, see ``MEMORY``): the ops search the reference's augmented points, and
  forward+backward differentiates ``X`` and, in one variant (``ref_grad=True``), ``ref_X`` too; in the other
  (``ref_grad=False``, XBM's own case: a detached memory) ``ref_X`` requires no gradient.
* **target**: what is timed. The ops ``hard_negative_points`` / ``hard_negative_pairs`` (on the pairs of
  the config), the losses of ``ee_cuda.losses`` (HPHN uses the adjacent layout itself, the pair losses
  their default ``pairs="all"``), and ``gram`` (``X @ X.T``, the floor every implementation pays; with a
  reference set the cross-Gram ``X @ ref_X.T``).
* **impl**: ``fused`` (the compiled extension), ``eager`` (the plain pure-PyTorch reference: materialized
  augmented points and the full distance matrix) and ``compiled`` (that same reference under
  ``torch.compile``). For the ops the reference is ``ee_cuda.reference``. For HPHN it is the port of the
  official loss, ``ee_cuda.reference.losses.hphn_triplet``. For the pair losses it is the same loss module
  run with ``ee_cuda.use_backend("reference")``: loss formulas over the reference ops (materialized points,
  ``torch.cdist`` distance matrix). ``ee_cuda.reference.losses``' pair losses, the test oracle, use the
  loop-based ``cdist`` (no matrix-product shortcut) plus a full dot-product matrix and take minutes on W1
  already, so they are not a fair baseline; the baseline used is the faster of the two plain forms.
* **mode**: ``fwd`` (inference: the input does not require grad) or ``fwdbwd`` (forward and backward of
  the output with a fixed random output gradient, or of the loss).
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

OPS = ("hard_negative_points", "hard_negative_pairs")
LOSSES = ("HPHNTripletLoss", "TripletLoss", "LiftedStructureLoss", "NPairLoss", "MultiSimilarityLoss")
PAIR_LOSSES = LOSSES[1:]
TARGETS = OPS + LOSSES + ("gram",)
IMPLS = ("fused", "eager", "compiled")
MODES = ("fwdbwd", "fwd")   # run order: the fused forward+backward result is what later cases are checked against

# docs/design.md §12. pairs: the layouts the ops are timed on for that workload.
WORKLOADS = {
    "W1": dict(B=128, D=512, n=2, classes=4, per_class=32, pairs=("adjacent", "all"), devices=("cpu", "cuda")),
    "W1b": dict(B=128, D=512, n=2, classes=64, per_class=2, pairs=("adjacent",), devices=("cpu", "cuda")),
    "W2": dict(B=1024, D=512, n=8, classes=256, per_class=4, pairs=("adjacent", "all"), devices=("cpu", "cuda")),
    "W3": dict(B=4096, D=1024, n=16, classes=1024, per_class=4, pairs=("adjacent", "all"), devices=("cuda",)),
}
# The memory-bank case (XBM: a batch against a memory of past embeddings; issue 17): a PK batch with K = 2
# (64 classes × 2 rows, W1b's batch) against M reference rows in the adjacent layout (Q = M/2 pairs). The
# memory's pairs are labelled from a dataset of `dataset_classes` classes, every class once (M = 4096) or
# twice (M = 16384) in a seeded random order, the batch's 64 among them, as in XBM, whose memory holds the
# current batch too. Two variants of forward+backward (`ref_grads`): gradients to X and ref_X (True), and to X
# only (False: the memory detached, XBM's case; the floor is then the forward product and dX = dG ref_X alone).
# Selected with the workload name "XBM" (not in the CPU suite's default: its reference cases take minutes).
MEMORY = dict(B=128, D=512, ns=(2, 8), Ms=(4096, 16384), classes=64, per_class=2, dataset_classes=4096,
              ref_grads=(True, False), devices=("cpu", "cuda"))
MEMORY_TARGET_M = 16384    # the memory targets are checked at this M
SWEEP_N = (0, 2, 4, 8, 16)            # at W2's B, D, classes × per_class; adjacent pairs
SWEEP_B = (128, 256, 512, 1024, 2048, 4096)   # at W2's D and n, 4 per class; adjacent pairs


@dataclasses.dataclass(frozen=True)
class Config:
    name: str          # "W1", "W2", ..., "n=4", "B=256"
    B: int
    D: int
    n: int
    classes: int
    per_class: int
    pairs: str         # layout of the ops' pairs; the losses choose their own (see target_pairs)
    group: str = "workload"   # "workload", "sweep_n", "sweep_B", "memory"
    M: int = 0         # rows of the reference set (memory bank); 0: none, the ops search the batch itself
    ref_classes: int = 0      # classes the reference's pairs are labelled from (see MEMORY)
    ref_grad: bool = True     # with a reference set: forward+backward differentiates ref_X too (False: detached)

    @property
    def T(self):
        return self.n + 2

    def num_pairs(self, layout):
        if layout == "adjacent":
            return self.B // 2
        return self.classes * self.per_class * (self.per_class - 1) // 2

    @property
    def memory(self):
        return self.M > 0

    def num_ref_pairs(self):
        """Pairs of the reference set (its adjacent layout); the batch's own pairs without one."""
        return self.M // 2 if self.memory else self.num_pairs(self.pairs)

    def key(self):
        return (self.B, self.D, self.n, self.classes, self.per_class, self.pairs, self.M, self.ref_classes,
                self.ref_grad)

    def shape_key(self):
        """The shape, without the ops' pair layout (the losses and the floor are timed once per shape)."""
        return (self.B, self.D, self.n, self.classes, self.per_class, self.M, self.ref_classes, self.ref_grad)

    def label(self):
        return f"{self.name}[{self.pairs}]" if self.group == "workload" else f"{self.name}"


def workload_configs(names, device="cpu"):
    out = []
    for name in names:
        if name == "XBM":
            out += memory_configs(device)
            continue
        w = WORKLOADS[name]
        if device not in w["devices"]:
            continue
        for layout in w["pairs"]:
            out.append(Config(name, w["B"], w["D"], w["n"], w["classes"], w["per_class"], layout))
    return out


def memory_name(M, n, ref_grad):
    """``XBM[M=…,n=…]`` (gradients to ``X`` and ``ref_X``), ``XBM[M=…,n=…,detached]`` (to ``X`` only)."""
    return f"XBM[M={M},n={n}{'' if ref_grad else ',detached'}]"


def memory_configs(device="cpu"):
    """The memory-bank case: every (ref_grad, M, n) of ``MEMORY``, adjacent pairs in the batch and in the memory."""
    w = MEMORY
    if device not in w["devices"]:
        return []
    return [Config(memory_name(M, n, rg), w["B"], w["D"], n, w["classes"], w["per_class"], "adjacent", "memory",
                   M=M, ref_classes=w["dataset_classes"], ref_grad=rg)
            for rg in w["ref_grads"] for M in w["Ms"] for n in w["ns"]]


def sweep_configs():
    w = WORKLOADS["W2"]
    out = [Config(f"n={n}", w["B"], w["D"], n, w["classes"], w["per_class"], "adjacent", "sweep_n") for n in SWEEP_N]
    out += [Config(f"B={B}", B, w["D"], w["n"], B // 4, 4, "adjacent", "sweep_B") for B in SWEEP_B]
    return out


def quick_configs():
    """Tiny shapes for smoke-testing the harness (``--quick``)."""
    return [Config("Q1", 32, 16, 2, 4, 8, "adjacent"), Config("Q1", 32, 16, 2, 4, 8, "all"),
            Config("n=0", 32, 16, 0, 8, 4, "adjacent", "sweep_n"),
            Config("n=4", 32, 16, 4, 8, 4, "adjacent", "sweep_n"),
            Config("B=16", 16, 16, 2, 4, 4, "adjacent", "sweep_B"),
            Config("B=64", 64, 16, 2, 16, 4, "adjacent", "sweep_B")]


def quick_memory_configs():
    """Tiny memory-bank shapes (``--bench-quick`` with the workload XBM)."""
    return [Config(memory_name(M, 2, rg), 32, 16, 2, 16, 2, "adjacent", "memory", M=M, ref_classes=48, ref_grad=rg)
            for rg in MEMORY["ref_grads"] for M in (64, 256)]


def target_pairs(cfg: Config, target: str) -> str:
    """Positive-pair layout a target runs on: the config's for ops, the loss's own for losses."""
    if target == "HPHNTripletLoss":
        return "adjacent"
    if target in PAIR_LOSSES:
        return "all"
    return cfg.pairs


SWEEP_LOSSES = {"sweep_n": ("HPHNTripletLoss", "TripletLoss"), "sweep_B": ("HPHNTripletLoss",)}


def targets_for(cfg: Config):
    """Targets timed on a config: ops on every layout; losses and the Gram floor once per shape (on the
    adjacent entry). The n sweep times HPHN and one pair loss (the four pair losses share their cost, the
    ``hard_negative_pairs`` search over all pairs, and differ only in ``O(P²)`` element-wise work); the B
    sweep times HPHN only (all pairs at B = 4096 are 6144 pairs: a 6144² output per call)."""
    if cfg.memory:
        return list(OPS) + ["gram"]
    if cfg.pairs != "adjacent":
        return list(OPS)
    losses = LOSSES if cfg.group == "workload" else SWEEP_LOSSES[cfg.group]
    return list(OPS) + list(losses) + ["gram"]


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def make_inputs(cfg: Config, device="cpu", dtype=torch.float32, seed=0):
    """Rows L2-normalized random normal (docs/design.md §12); labels ``classes × per_class`` in the adjacent layout."""
    g = torch.Generator().manual_seed(seed + 1000 * cfg.B + cfg.D + 7 * cfg.n)
    X = F.normalize(torch.randn(cfg.B, cfg.D, generator=g, dtype=torch.float64), dim=1).to(dtype)
    labels = torch.arange(cfg.classes).repeat_interleave(cfg.per_class)
    return X.to(device), labels.to(device)


def make_ref_inputs(cfg: Config, device="cpu", dtype=torch.float32, seed=0):
    """The memory of a memory-bank config: ``ref_X (M, D)`` unit-norm random normal rows, ``ref_labels (M,)``
    (pair ``q`` = rows ``2q, 2q+1`` labelled from ``ref_classes`` classes, see ``MEMORY``) and ``ref_pairs``."""
    Q = cfg.M // 2
    g = torch.Generator().manual_seed(seed + 7919 + cfg.M + 13 * cfg.n)
    ref_X = F.normalize(torch.randn(cfg.M, cfg.D, generator=g, dtype=torch.float64), dim=1).to(dtype)
    ref_labels = (torch.randperm(Q, generator=g) % cfg.ref_classes).repeat_interleave(2)
    ref_pairs = torch.arange(cfg.M).view(Q, 2)
    return ref_X.to(device), ref_labels.to(device), ref_pairs.to(device)


def output_grad(cfg: Config, target: str, labels, pairs, device, seed=1, ref_labels=None, ref_pairs=None):
    """Fixed random gradient for an op's ``dist`` output, zero where the output is +inf (against the
    reference set's pairs when one is given)."""
    P, T = pairs.shape[0], cfg.T
    lab = labels[pairs[:, 0]]
    ref_lab = lab if ref_labels is None else ref_labels[ref_pairs[:, 0]]
    neg = lab[:, None] != ref_lab[None, :]
    g = torch.Generator().manual_seed(seed)
    if target == "hard_negative_points":
        w = torch.rand(P, T, generator=g).to(device)
        return w * neg.any(dim=1, keepdim=True)
    w = torch.rand(P, ref_lab.shape[0], generator=g).to(device)
    return w * neg


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------

def fused_backend():
    """The backend the "fused" impl forces; EE_BENCH_FUSED_BACKEND=reference to test the harness."""
    return os.environ.get("EE_BENCH_FUSED_BACKEND", "fused")


def fused_available(device="cpu"):
    import ee_cuda
    if fused_backend() != "fused":
        return True, None
    info = ee_cuda.build_info()
    key = "cuda" if str(device).startswith("cuda") else "cpu"
    if info.get(key):
        return True, None
    return False, f"fused {key.upper()} kernels not built (ee_cuda.build_info()={info})"


def build_fn(cfg: Config, target: str, impl: str, labels, pairs):
    """``fn(X) -> output`` for one target and implementation (tensor, tuple, or scalar loss)."""
    import ee_cuda
    from ee_cuda import reference

    n = cfg.n
    if cfg.memory:
        return _build_memory_fn(cfg, target, impl, labels, pairs)
    if target == "gram":
        return lambda X: X @ X.T
    if target in OPS:
        if impl == "fused":
            op, be = getattr(ee_cuda, target), fused_backend()
            return lambda X: op(X, pairs, labels, n, backend=be)
        ref = getattr(reference, target)
        if impl == "compiled":
            ref = torch.compile(ref, dynamic=False)
        return lambda X: ref(X, pairs, labels, n)
    # losses
    from ee_cuda import losses
    from ee_cuda.reference import losses as reference_losses
    if impl == "fused":
        mod, be = getattr(losses, target)(n_inner_pts=n), fused_backend()

        def run(X):
            with ee_cuda.use_backend(be):
                return mod(X, labels)
        return run
    if target == "HPHNTripletLoss":
        ref = reference_losses.hphn_triplet
        if impl == "compiled":
            ref = torch.compile(ref, dynamic=False)
        return lambda X: ref(X, labels, n_inner_pts=n)
    mod = getattr(losses, target)(n_inner_pts=n)
    call = torch.compile(mod, dynamic=False) if impl == "compiled" else mod

    def run_ref(X):
        with ee_cuda.use_backend("reference"):
            return call(X, labels)
    return run_ref


def _build_memory_fn(cfg, target, impl, labels, pairs):
    """``fn((X, ref_X)) -> output`` of a memory-bank config; ``labels``, ``pairs`` are the pairs
    ``(batch's, reference's)`` of ``setup_case``."""
    import ee_cuda
    from ee_cuda import reference

    (lab, ref_lab), (pr, ref_pr), n = labels, pairs, cfg.n
    if target == "gram":
        return lambda XR: XR[0] @ XR[1].T
    if impl == "fused":
        op, be = getattr(ee_cuda, target), fused_backend()
        return lambda XR: op(XR[0], pr, lab, n, ref_X=XR[1], ref_pairs=ref_pr, ref_labels=ref_lab, backend=be)
    ref = getattr(reference, target)
    if impl == "compiled":
        ref = torch.compile(ref, dynamic=False)
    return lambda XR: ref(XR[0], pr, lab, n, ref_X=XR[1], ref_pairs=ref_pr, ref_labels=ref_lab)


def make_step(cfg, target, mode, fn, X, grad):
    """The timed callable: ``step() -> (outputs, dX)``; returns the fresh input it differentiates.

    ``X`` may be a tuple of tensors (a memory-bank config's ``(X, ref_X)``): forward+backward then
    differentiates every one, and ``dX`` is the tuple of their gradients; with ``cfg.ref_grad`` false only
    ``X`` requires grad (``ref_X`` is passed detached, as XBM's memory) and ``dX`` is the 1-tuple ``(dX,)``."""
    if mode == "fwd":
        Xs = tuple(x.detach() for x in X) if isinstance(X, tuple) else X.detach()

        def step():
            with torch.no_grad():
                return fn(Xs), None
        return step, Xs
    if isinstance(X, tuple):
        Xg = tuple(x.detach().clone().requires_grad_(i == 0 or cfg.ref_grad) for i, x in enumerate(X))
    else:
        Xg = X.detach().clone().requires_grad_(True)

    def step_bwd():
        clear_grad(Xg)
        out = fn(Xg)
        if isinstance(out, tuple):
            torch.autograd.backward(out[0], grad)
        elif grad is not None:
            torch.autograd.backward(out, grad)
        else:
            out.backward()
        return out, (tuple(x.grad for x in Xg if x.requires_grad) if isinstance(Xg, tuple) else Xg.grad)
    return step_bwd, Xg


def clear_grad(X):
    """``X.grad = None`` for an input or a tuple of inputs (``make_step``'s)."""
    for x in (X if isinstance(X, tuple) else (X,)):
        x.grad = None


def grad_for(cfg, target, labels, pairs, device):
    if cfg.memory:
        (lab, ref_lab), (pr, ref_pr) = labels, pairs
        if target == "gram":
            g = torch.Generator().manual_seed(2)
            return torch.rand(cfg.B, cfg.M, generator=g).to(device)
        return output_grad(cfg, target, lab, pr, device, ref_labels=ref_lab, ref_pairs=ref_pr)
    if target in OPS:
        return output_grad(cfg, target, labels, pairs, device)
    if target == "gram":
        g = torch.Generator().manual_seed(2)
        return torch.rand(cfg.B, cfg.B, generator=g).to(device)
    return None


def setup_case(cfg, target, device="cpu"):
    """``(X, labels, pairs, output gradient)`` of a case; for a memory-bank config ``X``, ``labels`` and
    ``pairs`` are the tuples ``(batch's, reference's)``."""
    from ee_cuda import reference
    X, labels = make_inputs(cfg, device)
    pairs = reference.positive_pairs(labels, target_pairs(cfg, target))
    if cfg.memory:
        ref_X, ref_labels, ref_pairs = make_ref_inputs(cfg, device)
        X, labels, pairs = (X, ref_X), (labels, ref_labels), (pairs, ref_pairs)
    return X, labels, pairs, grad_for(cfg, target, labels, pairs, device)


# ------------------------------------------------------------------------------------------------
# Correctness check (fused vs reference)
# ------------------------------------------------------------------------------------------------

def _detach(out):
    if isinstance(out, tuple):
        return tuple(o.detach().clone() for o in out)
    return out.detach().clone()


def snapshot(result):
    out, dx = result
    if isinstance(dx, tuple):
        return _detach(out), tuple(None if d is None else d.detach().clone() for d in dx)
    return _detach(out), (None if dx is None else dx.detach().clone())


def compare(expected, got, target, mode):
    """Max deviations between two ``(outputs, dX)`` snapshots; raises AssertionError when out of tolerance.

    Tolerances (float32): distances / loss values ``1e-4`` absolute+relative; indices identical except
    for at most 0.1% near-ties (whose distances agree); ``dX`` relative L2 error ``<= 1e-2`` (``1e-4``
    when every index agrees). Returns a dict of the measured errors. With a reference set ``dX`` is the
    pair ``(dX, dref_X)``, each checked so (``rel_err_dX``, ``rel_err_dref_X``), or with a detached reference
    (``ref_grad=False``) the 1-tuple ``(dX,)``: only ``dX`` is compared. Both snapshots must hold as many
    gradients.
    """
    (eo, edx), (go, gdx) = expected, got
    info = {}
    if isinstance(eo, tuple):
        ed, ei = eo[0].double().cpu(), eo[1].cpu()
        gd, gi = go[0].double().cpu(), go[1].cpu()
        fin = torch.isfinite(ed)
        assert torch.equal(fin, torch.isfinite(gd)), f"{target}: +inf pattern differs"
        err = (ed[fin] - gd[fin]).abs().max().item() if fin.any() else 0.0
        info["max_abs_err_dist"] = err
        tol = 1e-4 * (1 + ed[fin].abs().max().item()) if fin.any() else 1e-4
        assert err <= tol, f"{target}: max |dist error| {err:.3g} > {tol:.3g}"
        mism = (ei != gi).any(dim=-1).double().mean().item()
        info["index_mismatch"] = mism
        assert mism <= 1e-3, f"{target}: {mism:.3%} of indices differ"
    else:
        ev, gv = eo.double().cpu(), go.double().cpu()
        err = (ev - gv).abs().max().item() if ev.numel() else 0.0
        info["max_abs_err_out"] = err
        tol = 1e-4 * (1 + ev.abs().max().item()) if ev.numel() else 1e-4
        if target == "gram":
            tol = 1e-3 * (1 + ev.abs().max().item())
        assert err <= tol, f"{target}: output error {err:.3g} > {tol:.3g}"
    if mode == "fwdbwd" and edx is not None and gdx is not None:
        names = ("dX", "dref_X") if isinstance(edx, tuple) else ("dX",)
        if isinstance(edx, tuple):
            assert isinstance(gdx, tuple) and len(edx) == len(gdx) and len(edx) <= 2, \
                f"{target}: {len(edx)} expected gradients, {len(gdx) if isinstance(gdx, tuple) else 1} got"
        for name, e, g in zip(names, edx if isinstance(edx, tuple) else (edx,),
                              gdx if isinstance(gdx, tuple) else (gdx,)):
            e, g = e.double().cpu(), g.double().cpu()
            rel = ((e - g).norm() / e.norm().clamp_min(1e-30)).item()
            info[f"rel_err_{name}"] = rel
            assert math.isfinite(rel) and rel <= 1e-2, f"{target}: {name} relative error {rel:.3g} > 1e-2"
    return info


# ------------------------------------------------------------------------------------------------
# Cost model (to plan which reference cases fit) and memory budget of the fused ops
# ------------------------------------------------------------------------------------------------

def ref_points(cfg: Config, target: str) -> int:
    """Rows of the reference's materialized distance matrix."""
    if target == "gram":
        return cfg.B
    if target == "HPHNTripletLoss":
        return (cfg.n + 1) * cfg.B
    return cfg.num_pairs(target_pairs(cfg, target)) * cfg.T


def ref_candidates(cfg: Config) -> int:
    """Columns of the reference's distance matrix with a reference set: the memory's augmented points."""
    return cfg.num_ref_pairs() * cfg.T


def est_ref_seconds(cfg, target, mode, seconds_per_unit=1.2e-10):
    """Rough seconds per call of the CPU reference: ``c · M² · D`` with ``M`` rows of its distance matrix.

    Calibrated on the 2-core CPU of this project (W2 "all", M = 15360: about 14 s forward+backward). With a
    reference set the matrix is ``M × (Q·T)`` and the memory's ``Q·T`` augmented points (and their backward)
    cost as much again: ``c`` is about 4x (XBM M = 16384, n = 8: 17-26 s forward+backward on a loaded machine).
    """
    if cfg.memory:
        if target == "gram":
            return 2e-10 * cfg.B * cfg.M * cfg.D * ((3 if cfg.ref_grad else 2) if mode == "fwdbwd" else 1)
        s = 4 * seconds_per_unit * ref_points(cfg, target) * ref_candidates(cfg) * max(cfg.D, 64)
        return s if mode == "fwdbwd" else 0.4 * s
    if target == "gram":
        return 2e-10 * cfg.B * cfg.B * cfg.D
    M = ref_points(cfg, target)
    c = seconds_per_unit * (2.0 if target == "HPHNTripletLoss" else 1.0)
    s = c * M * M * max(cfg.D, 64)
    return s if mode == "fwdbwd" else 0.4 * s


def est_ref_bytes(cfg, target, mode) -> int:
    """Rough peak bytes of the reference: a few ``M × M`` float32 matrices alive at once (with a reference
    set: a few ``M × Q·T`` ones and a few copies of the memory's ``Q·T × D`` augmented points)."""
    k = {"fwd": 2.5, "fwdbwd": 5.0}[mode]
    if cfg.memory:
        cols = ref_candidates(cfg)
        return int(k * ref_points(cfg, target) * cols * 4 + k * cols * cfg.D * 4)
    M = ref_points(cfg, target)
    if target == "HPHNTripletLoss":
        k *= 2
    if target in PAIR_LOSSES:
        k += 1
    return int(k * M * M * 4)


def fused_budget_bytes(cfg, target, mode, dtype_bytes=4) -> int | None:
    """``B×B`` Gram matrix plus the op's outputs (dist + int64 index); plus ``dX`` and the output
    gradient for forward+backward. For a loss: those of the op it runs on (its scalar output is free)."""
    if cfg.memory:
        return None   # the memory target is relative to the measured cross-Gram floor: see output_bytes
    op = {"HPHNTripletLoss": "hard_negative_points"}.get(target, target)
    if target in PAIR_LOSSES:
        op = "hard_negative_pairs"
    gram = cfg.B * cfg.B * dtype_bytes
    P = cfg.num_pairs(target_pairs(cfg, target)) if target != "HPHNTripletLoss" else cfg.B
    if op == "hard_negative_points":
        cells = P * cfg.T
    elif op == "hard_negative_pairs":
        cells = P * P
    else:  # gram
        cells = 0
    outputs = cells * (dtype_bytes + 16)
    total = gram + outputs
    if mode == "fwdbwd":
        total += cells * dtype_bytes + cfg.B * cfg.D * dtype_bytes
    return total


def output_bytes(cfg, target, dtype_bytes=4) -> int:
    """Bytes of an op's outputs: ``dist`` plus the int64 ``index`` pairs (``(P, T)`` for points, ``(P, Q)``
    for pairs, ``Q`` the reference's pairs); 0 for the floor."""
    if target not in OPS:
        return 0
    P = cfg.num_pairs(target_pairs(cfg, target))
    cells = P * (cfg.T if target == "hard_negative_points" else cfg.num_ref_pairs())
    return cells * (dtype_bytes + 16)


# ------------------------------------------------------------------------------------------------
# Memory meters
# ------------------------------------------------------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class RSSMeter:
    """Peak resident-set growth of this process during a block (CPU; catches native allocations).

    ``start()`` returns free heap memory to the OS (``malloc_trim``), resets the kernel's high-water mark
    (``/proc/self/clear_refs`` <- 5) and records the current RSS; ``stop()`` returns ``VmHWM - baseline``
    in bytes. glibc's mmap threshold is pinned (``mallopt``): at 32 MiB while timing, with the trim
    threshold at 64 MiB (the values glibc's dynamic thresholds settle at in a process that frees blocks of
    up to 32 MiB, as a training loop does; pinning one turns off the dynamics of both, so the trim threshold
    is pinned with it, else it stays at its 128 KiB start and every call re-faults the pages at the heap's
    top); at 64 KiB and 128 KiB between ``start`` and ``stop``. Between them every free heap chunk of a page
    or more is held (allocated, never written; ``_hold_free_chunks``), so that each request of a page or more
    lands on fresh memory: a block of 64 KiB or more is mapped and unmapped when freed, a smaller one comes from
    the heap's top, whose pages ``malloc_trim`` released. Without the hold, a request might or might not land
    on the resident pages of a block freed earlier in the call, depending on the heap's history, and one call
    read anywhere from its live peak to the sum of its temporaries.
    What this measures: the pages the call's allocations touch (pages never written are not counted), up to
    small blocks: one under 64 KiB freed during the call stays resident, and a request under a page may land
    on a resident fragment, so where most blocks are small the reading can fall either side of the live
    bytes. Resolution: a page. Holds the calling thread's arena only (the suite runs one
    thread); needs glibc's ``mallinfo2`` (2.33), without which nothing is held.
    """

    _libc = None
    M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1
    TIMING_THRESHOLD, MEASURE_THRESHOLD = 32 * 2**20, 64 * 2**10
    TIMING_TRIM, MEASURE_TRIM = 64 * 2**20, 128 * 2**10
    PAGE = 4096

    def __init__(self):
        self.ok = os.path.exists("/proc/self/clear_refs")
        if self.ok and RSSMeter._libc is None:
            try:
                RSSMeter._libc = ctypes.CDLL("libc.so.6")
                RSSMeter._libc.malloc.restype = ctypes.c_void_p
                RSSMeter._libc.malloc.argtypes = [ctypes.c_size_t]
                RSSMeter._libc.free.argtypes = [ctypes.c_void_p]
                if hasattr(RSSMeter._libc, "mallinfo2"):
                    RSSMeter._libc.mallinfo2.restype = _MallInfo2
                self._mallopt(self.TIMING_THRESHOLD, self.TIMING_TRIM)
            except OSError:
                RSSMeter._libc = False
        self.base = None
        self._held = []

    def _mallopt(self, threshold, trim):
        if self._libc:
            self._libc.mallopt(self.M_MMAP_THRESHOLD, threshold)
            self._libc.mallopt(self.M_TRIM_THRESHOLD, trim)

    @staticmethod
    def _status():
        vals = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":")
                    vals[k] = int(v.split()[0]) * 1024
        return vals

    def start(self):
        if not self.ok:
            return
        self._mallopt(self.MEASURE_THRESHOLD, self.MEASURE_TRIM)
        if self._libc:
            self._libc.malloc_trim(0)
            self._held = self._hold_free_chunks()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.ok = False
            self._release_held()
            return
        self.base = self._status()["VmRSS"]

    def stop(self):
        if not self.ok or self.base is None:
            return None
        peak = max(0, self._status()["VmHWM"] - self.base)
        self._release_held()
        self._mallopt(self.TIMING_THRESHOLD, self.TIMING_TRIM)
        return peak

    def _hold_free_chunks(self):
        """Allocate (untouched) every free heap chunk of a page or more, largest first (see the class)."""
        held = []
        if not hasattr(self._libc, "mallinfo2"):
            return held
        size = 2**30
        while size >= self.PAGE:
            before = self._libc.mallinfo2()
            p = self._libc.malloc(size)
            after = self._libc.mallinfo2()
            if p and after.hblkhd == before.hblkhd and after.arena == before.arena:
                held.append(p)          # a free chunk (or the heap's top) served it: keep it out of the call's reach
                continue
            if p:
                self._libc.free(p)      # mapped or the heap grown: no free chunk this large is left
            size //= 2
        return held

    def _release_held(self):
        for p in self._held:
            self._libc.free(p)
        self._held = []


class CudaMeter:
    """Peak allocated CUDA memory above what was allocated before (``torch.cuda.max_memory_allocated``)."""

    def __init__(self, device):
        self.device = device
        self.base = None

    def start(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def stop(self):
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.base


# ------------------------------------------------------------------------------------------------
# Machine description
# ------------------------------------------------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def portable_paths(text: str) -> str:
    """``text`` with absolute paths inside the repository made relative to it and any other absolute path
    cut to ``…/<last component>``: what a committed report records names no path outside the repository."""
    def relative(match):
        path = match.group(0)
        if path == REPO_ROOT or path.startswith(REPO_ROOT + os.sep):
            return os.path.relpath(path, REPO_ROOT) + (os.sep if path.endswith(os.sep) else "")
        return "…/" + os.path.basename(path.rstrip(os.sep))
    return re.sub(r"(?<![\w.…])/[^\s=:,'\"]+", relative, text)


def machine_info(device="cpu"):
    import ee_cuda
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "ee_cuda_build_info": ee_cuda.build_info(),
            "fused_backend": fused_backend(), "command": portable_paths(" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    pkg = os.path.dirname(os.path.abspath(ee_cuda.__file__))
    info["ee_cuda_path"] = portable_paths(pkg)
    libs = [f for f in os.listdir(pkg) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if libs:
        info["ee_cuda_lib_mtime_utc"] = time.strftime("%Y-%m-%d %H:%M:%S",
                                                      time.gmtime(os.path.getmtime(os.path.join(pkg, libs[0]))))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        info["git_commit"] = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "csrc", "ee_cuda", "setup.py"],
                               capture_output=True, text=True, timeout=10).stdout
        info["git_dirty"] = [line[3:] for line in dirty.splitlines() if line.strip()]
    except Exception:  # noqa: BLE001
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = p.name
        info["gpu_mem_gib"] = round(p.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def fmt_time(s):
    if s is None:
        return "—"
    if s == math.inf:
        return "OOM"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def fmt_bytes(b):
    if b is None:
        return "—"
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
    if b >= 2**20:
        return f"{b / 2**20:.1f} MiB"
    return f"{b / 2**10:.0f} KiB"


# ------------------------------------------------------------------------------------------------
# Cases and the CPU plan (which reference cases fit the session's time budget)
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    cfg: Config
    target: str
    impl: str          # fused / eager / compiled; "torch" for the gram floor
    mode: str
    priority: int = 0
    est_s: float = 0.0       # planned wall time of the whole case (warm-up, compile, rounds)
    skip: str | None = None  # reason, decided by the plan

    @property
    def kind(self):
        return "op" if self.target in OPS else ("gram" if self.target == "gram" else "loss")

    @property
    def id(self):
        return f"{self.cfg.label()}-{self.target}-{self.mode}-{self.impl}"

    def record(self):
        c = self.cfg
        rec = dict(id=self.id, config=c.name, group=c.group, B=c.B, D=c.D, n=c.n, classes=c.classes,
                   per_class=c.per_class, pairs=target_pairs(c, self.target), config_pairs=c.pairs,
                   target=self.target, kind=self.kind, impl=self.impl, mode=self.mode,
                   priority=self.priority, planned_s=round(self.est_s, 2))
        if c.memory:
            rec.update(M=c.M, ref_classes=c.ref_classes, ref_grad=c.ref_grad, output_bytes=output_bytes(c, self.target))
        return rec


def timing_plan(t_call, impl):
    """(rounds, iterations) from the seconds one call takes: about 1 s per fused case, 3 s per
    reference case, at least 3 rounds where that fits (2 for fused calls over 0.7 s), 1 round for
    reference calls over 3 s."""
    if impl in ("fused", "torch"):
        iterations = max(1, int(0.005 / max(t_call, 1e-7)))
        rounds = int(min(30, max(3, 1.0 / max(t_call * iterations, 1e-7))))
        if t_call > 0.4:
            rounds = int(min(3, max(2, 2.0 / t_call))) if t_call <= 2.0 else 1
        return rounds, iterations
    rounds = int(min(10, max(1, 3.0 / max(t_call, 1e-7))))
    return rounds, 1


SLOW_CALL_S = 3.0   # eager reference calls this slow get no untimed warm-up: the timed call is checked


def _compile_s(target, mode):
    s = 8.0 if mode == "fwd" else 15.0
    return s * (1.5 if target in LOSSES else 1.0)


def est_fused_seconds(cfg, target):
    """Rough seconds per fused call on the CPU: the Gram product plus the ``P² T²`` scan."""
    if target == "gram":
        return est_ref_seconds(cfg, "gram", "fwd")
    P = cfg.B if target == "HPHNTripletLoss" else cfg.num_pairs(target_pairs(cfg, target))
    if cfg.memory:   # the cross-Gram, its backward products (two; one, dX, when detached), the P·T × Q·T scan
        return (4e-10 + 2e-10 * cfg.ref_grad) * cfg.B * cfg.M * cfg.D + 2e-9 * P * cfg.T * ref_candidates(cfg)
    return 2e-10 * cfg.B * cfg.B * cfg.D + 6e-9 * (P * cfg.T) ** 2


def plan_case_seconds(case):
    if case.impl in ("fused", "torch"):
        t = est_fused_seconds(case.cfg, case.target)
        rounds, its = timing_plan(t, case.impl)
        return 0.3 + t * (1 + rounds * its + (1 if t < 0.5 else 0))
    t = est_ref_seconds(case.cfg, case.target, case.mode)
    rounds, _ = timing_plan(t, case.impl)
    if case.impl == "eager":
        return t * (rounds + (0 if t > SLOW_CALL_S else 1))
    return _compile_s(case.target, case.mode) + t * (rounds + 1 + (1 if t <= 2.0 else 0)) * 1.1


REQUIRED_PRIORITY = 2   # cases at or below this priority run whatever the budget says


def _priority(case):
    """0: fused and the Gram floor (always). 1: the reference forward+backward on W1, W1b, W2, the n
    sweep of the ops and the memory-bank case. 2: the compiled reference forward+backward on W2 and the
    memory-bank case. Then the rest, by use."""
    c, impl, mode = case.cfg, case.impl, case.mode
    if impl in ("fused", "torch"):
        return 0
    if c.memory:   # selected on purpose (workload XBM): its targets need the eager rows, the table both
        return 1 if impl == "eager" else 2
    ref = impl == "eager"
    op = case.kind == "op"
    if ref and est_ref_seconds(c, case.target, mode) <= 1.0:
        return 1   # cheap: always worth it
    if c.group == "workload":
        if mode == "fwdbwd":
            if ref:
                return 1
            if c.name == "W2":
                return 2
            return 4 if op else 6
        if ref:
            return 3 if op else 5
        return 6 if (op and c.name == "W2") else 7
    if c.group == "sweep_n" and op and ref:
        return 1
    if c.group == "sweep_n" and ref and est_ref_seconds(c, case.target, mode) <= 3.0:
        return 3
    if ref:
        return 3 if op else 5
    return 8 if op else 9


def build_plan(configs, targets=None, impls=IMPLS, modes=MODES, budget_s=600.0, max_call_s=45.0,
               max_bytes=6 * 2**30, fused_ok=(True, None)):
    """All cases in run order, each with a priority, an estimated cost and a skip reason (or None).

    Reference cases whose single call is predicted over ``max_call_s`` or over ``max_bytes`` are skipped
    as over budget; the rest are admitted by priority while the summed estimate fits ``budget_s``.
    """
    seen, cases = set(), []
    for cfg in configs:
        for target in targets_for(cfg):
            if targets is not None and target not in targets:
                continue
            key = (cfg.key(), target) if target in OPS else (cfg.shape_key(), target)
            if key in seen:   # a sweep point equal to a workload: the report reuses the workload's row
                continue
            seen.add(key)
            for mode in (modes if cfg.group == "workload" else ("fwdbwd",)):
                for impl in (("torch",) if target == "gram" else impls):
                    case = Case(cfg, target, impl, mode)
                    case.priority = _priority(case)
                    case.est_s = plan_case_seconds(case)
                    cases.append(case)
    for case in cases:
        if case.impl == "fused" and not fused_ok[0]:
            case.skip = f"skipped: {fused_ok[1]}"
        if case.impl in ("eager", "compiled"):
            t = est_ref_seconds(case.cfg, case.target, case.mode)
            b = est_ref_bytes(case.cfg, case.target, case.mode)
            if b > max_bytes:
                case.skip = (f"skipped: OOM/over budget (reference needs ~{b / 2**30:.1f} GiB, "
                             f"limit {max_bytes / 2**30:.0f} GiB)")
            elif t > max_call_s:
                case.skip = f"skipped: over budget (~{t:.0f} s per reference call, limit {max_call_s:.0f} s)"
    spent = 0.0
    cases.sort(key=lambda c: c.priority)   # stable: run order is priority, then config order
    for case in cases:
        if case.skip:
            continue
        if spent + case.est_s > budget_s and case.priority > REQUIRED_PRIORITY:
            case.skip = (f"skipped: over the session time budget ({budget_s:.0f} s; priority "
                         f"{case.priority}, ~{case.est_s:.0f} s)")
            continue
        spent += case.est_s
    return cases
