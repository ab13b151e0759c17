"""Pixelwise refinement network of PNI (section 3.3).

The paper's network (Lee et al. 2019, DenseNet161 encoder) is replaced by a small U-Net-style encoder-decoder whose
widths are configurable: on CPU and without downloadable weights a DenseNet161 cannot be trained here. The two
paper modifications are kept: 4-channel input (RGB + coarse map) with *early fusion* (separate first convolutions for
the image and the map, summed), and the output is the coarse map plus a predicted residual.
"""

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RefinementNet(nn.Module):
    """Encoder-decoder predicting a residual correction of a coarse anomaly map.

    Args:
        channels: Widths of the encoder stages; stage ``i > 0`` halves the resolution.

    Example:
        >>> net = RefinementNet(channels=(8, 16))
        >>> net(torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            msg = f"refine_channels must be a non-empty list of positive widths, got {channels}."
            raise ValueError(msg)
        first = channels[0]
        # Early fusion: image and map get their own first convolution, the features are summed.
        self.image_stem = nn.Sequential(nn.Conv2d(3, first, 3, padding=1, bias=False), nn.BatchNorm2d(first))
        self.map_stem = nn.Sequential(nn.Conv2d(1, first, 3, padding=1, bias=False), nn.BatchNorm2d(first))
        self.stem_block = _conv_block(first, first)
        self.down = nn.ModuleList(_conv_block(c_in, c_out, stride=2) for c_in, c_out in itertools.pairwise(channels))
        self.up = nn.ModuleList(
            _conv_block(c_deep + c_skip, c_skip)
            for c_deep, c_skip in zip(channels[:0:-1], channels[-2::-1], strict=True)
        )
        self.head = nn.Conv2d(first, 1, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity map (zero residual)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Refine ``coarse`` (``(B, 1, H, W)``, in ``[0, 1]``) given the normalised ``image`` (``(B, 3, H, W)``)."""
        x = self.stem_block(F.relu(self.image_stem(image) + self.map_stem(coarse)))
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return coarse + self.head(x)
