"""The library without its optional extras: ``import ee_cuda``, the ops, the losses, the metrics that need
no clustering, ``distributed`` and the PML adapter's error, in a subprocess where scikit-learn, matplotlib,
tqdm and pytorch-metric-learning cannot be imported."""
from __future__ import annotations

import os
import subprocess
import sys


BLOCKED = ("sklearn", "scipy", "threadpoolctl", "matplotlib", "tqdm", "pytorch_metric_learning")

SCRIPT = r'''
import importlib.abc
import sys

BLOCKED = @BLOCKED@


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Blocker())

import torch
import ee_cuda
from ee_cuda import metrics
from ee_cuda.distributed import GlobalBatchLoss

torch.manual_seed(0)
X = torch.nn.functional.normalize(torch.randn(32, 8), dim=1).requires_grad_()
labels = torch.arange(8).repeat_interleave(4)
for loss_fn in (ee_cuda.HPHNTripletLoss(n_inner_pts=2), ee_cuda.MultiSimilarityLoss(n_inner_pts=2),
                GlobalBatchLoss(ee_cuda.TripletLoss(n_inner_pts=2))):
    loss = loss_fn(X, labels)
    loss.backward()
    assert torch.isfinite(loss) and X.grad is not None and torch.isfinite(X.grad).all()
    X.grad = None
recall = metrics.recall_at_k(X.detach(), labels, ks=(1, 2))
assert 0.0 <= recall[1] <= recall[2] <= 1.0
assert 0.0 <= metrics.nmi(labels, labels % 3) <= 1.0 and 0.0 <= metrics.pairwise_f1(labels, labels % 3) <= 1.0
for call, extra in ((lambda: metrics.cluster(X.detach(), 8), "ee_cuda[repro]"),
                    (lambda: __import__("ee_cuda.integrations.pml"), "ee_cuda[pml]")):
    try:
        call()
    except ImportError as exc:
        assert extra in str(exc), str(exc)
    else:
        raise AssertionError(f"no ImportError naming {extra}")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("light install ok:", ee_cuda.build_info()["backend"])
'''


def _script(blocked, body=None):
    """SCRIPT with ``blocked`` made unimportable, its body replaced by ``body`` if given."""
    script = SCRIPT.replace("@BLOCKED@", repr(tuple(blocked)))
    return script if body is None else script.split("import torch\n")[0] + body


def test_library_works_without_optional_extras():
    res = subprocess.run([sys.executable, "-c", _script(BLOCKED)], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "light install ok" in res.stdout


def test_import_ee_cuda_loads_no_harness_module():
    """``import ee_cuda`` imports neither the reproduction harness nor scikit-learn, matplotlib or PML, even
    where they are installed (torch itself imports tqdm when it is there)."""
    body = ("import ee_cuda, sys\n"
            "bad = sorted(m for m in sys.modules if m.startswith('ee_cuda.repro')\n"
            "             or m.split('.')[0] in ('sklearn', 'matplotlib', 'pytorch_metric_learning'))\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", _script((), body)], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stdout + res.stderr
