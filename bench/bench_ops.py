"""Fused vs reference timings of the ops (and the ``X @ X.T`` floor): the workloads of docs/design.md §12 and n / B sweeps.

The core comparison of the project: ``hard_negative_points`` and ``hard_negative_pairs``, forward and
forward+backward, fused kernels vs the pure-PyTorch reference (eager and ``torch.compile``), with the
peak extra memory of each. Cases, plan and checks: see ``bench/conftest.py`` and ``bench/benchlib.py``.
Run: ``pytest bench/ --benchmark-only`` (or this file alone).
"""
KINDS = ("op", "gram")


def test_op(bench_case, case):
    bench_case(case)
