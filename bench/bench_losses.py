"""Fused vs reference timings of the losses of ``ee_cuda.losses`` (docs/design.md §9) on the workloads of docs/design.md §12.

HPHN triplet (adjacent layout, against the port of the official loss) and the four pair losses
(all positive pairs, against the same module over the reference ops), forward and forward+backward.
Cases, plan and checks: see ``bench/conftest.py`` and ``bench/benchlib.py``.
"""
KINDS = ("loss",)


def test_loss(bench_case, case):
    bench_case(case)
