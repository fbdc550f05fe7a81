"""Optional adapters to other libraries. Each submodule imports its library only when imported itself:

* ``ee_cuda.integrations.pml`` — pytorch-metric-learning (``pip install pytorch-metric-learning``):
  ``EEPMLLoss`` wraps an ``ee_cuda.losses`` module as a PML ``BaseMetricLossFunction``.
"""
__all__ = ["pml"]
