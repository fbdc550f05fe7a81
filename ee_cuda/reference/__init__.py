"""The pure-PyTorch twins: the tests' oracle, and the fallback where no fused kernel exists.

``ee_cuda.reference`` holds the op twins (same signatures as the public ops, ``ee_cuda.reference.ops``);
``ee_cuda.reference.losses`` holds materialized twins of ``ee_cuda.losses`` and a port of the official
HPHN code. Both materialize every augmented point: for tests and small batches only.
"""
from . import losses
from .ops import (augmented_points, build_info, embedding_aug, expand, hard_negative_pairs, hard_negative_points,
                  positive_pairs)

__all__ = ["expand", "hard_negative_pairs", "hard_negative_points", "positive_pairs", "embedding_aug",
           "augmented_points", "build_info", "losses"]
