"""A small convolutional embedding network for the offline datasets of ``ee_cuda.repro.data``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EmbeddingNet"]


class EmbeddingNet(nn.Module):
    """Three conv-BN-ReLU blocks (the first two max-pooled), 2x2 adaptive average pooling, a linear
    layer to ``dim``, batch normalization and L2 normalization: embeddings lie on the unit hypersphere, as
    EE assumes. The BatchNorm before the normalization spreads the embeddings of a randomly initialized
    network over the sphere; without it hardest-negative triplet losses collapse from scratch (every
    distance near 0, loss stuck at the margin). Works for any input side >= 4 (8x8 digits, 16x16 glyphs)."""

    def __init__(self, dim: int = 64, width: int = 32, in_channels: int = 1):
        super().__init__()
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(in_channels, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                                      *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16 * w, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(self.head(self.features(x))), dim=1)
