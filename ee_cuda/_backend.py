"""Which implementation runs an op: the fused kernels or the pure-PyTorch reference.

By default an op runs fused when the compiled extension has a kernel for the input's device, and falls
back to ``ee_cuda.reference`` otherwise with a one-time warning that says why. ``backend=`` on each op,
or the ``use_backend`` context manager, forces either ("fused" raises if it is unavailable).
The choice lives in a module global rather than a ContextVar so that ``torch.compile`` can trace it
(it guards on the value); it is therefore process-wide, not per thread.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

import importlib.util

if importlib.util.find_spec("ee_cuda._C") is None:
    _C, _IMPORT_ERROR = None, "it is not built (run `pip install --no-build-isolation -e .`)"
else:
    try:
        from . import _C  # noqa: F401  (loading it registers the ee_cuda:: ops)
        _IMPORT_ERROR = None
    except ImportError as exc:  # a broken build, e.g. compiled against another torch
        _C, _IMPORT_ERROR = None, f"it failed to import: {exc}"

BACKENDS = ("auto", "fused", "reference")
_forced = "auto"
_warned: set = set()


def compiled_info() -> dict:
    if _C is None:
        return {"cpu": False, "openmp": False, "cpu_vector_isa": None, "cuda": False, "cuda_arch_list": None}
    return dict(_C.build_info())


_INFO = compiled_info()


def _unavailable_reason(device: torch.device) -> str | None:
    if _C is None:
        return f"the compiled extension ee_cuda._C is unavailable: {_IMPORT_ERROR}"
    if device.type == "cpu":
        return None if _INFO["cpu"] else "the extension was built without CPU kernels"
    if device.type == "cuda":
        return None if _INFO["cuda"] else ("the extension was built without CUDA kernels "
                                           "(rebuild with FORCE_CUDA=1 and a CUDA toolkit)")
    return f"there are no fused kernels for device type {device.type!r}"


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the block with ``name`` in ``("auto", "fused", "reference")``."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def use_fused(op: str, device: torch.device, backend: str | None) -> bool:
    choice = _forced if backend is None else backend
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "reference":
        return False
    reason = _unavailable_reason(device)
    if reason is None:
        return True
    if choice == "fused":
        raise RuntimeError(f"ee_cuda.{op}: backend='fused' requested but {reason}")
    if (op, device.type) not in _warned:
        _warned.add((op, device.type))
        warnings.warn(f"ee_cuda.{op}: using the pure-PyTorch reference on {device.type} because {reason}",
                      RuntimeWarning, stacklevel=3)
    return False
