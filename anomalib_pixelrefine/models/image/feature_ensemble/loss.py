"""SimpleNet's truncated L1 loss for the discriminator head."""

import torch
from torch import nn


class SimpleNetLoss(nn.Module):
    """Truncated L1 loss of SimpleNet (Liu et al., CVPR 2023, eq. 5).

    ``loss = mean(max(0, th - D(true))) + mean(max(0, th + D(fake)))``: normal features are pushed above ``th``,
    noise-perturbed ones below ``-th``; scores beyond the thresholds add no loss.

    Args:
        margin: Truncation threshold ``th`` (SimpleNet: 0.5).
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if margin < 0:
            msg = f"margin must be >= 0, got {margin}"
            raise ValueError(msg)
        self.margin = margin

    def forward(self, true_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """Loss of the discriminator scores of true and fake features (any matching shapes)."""
        true_loss = torch.clamp(self.margin - true_scores, min=0).mean()
        fake_loss = torch.clamp(self.margin + fake_scores, min=0).mean()
        return true_loss + fake_loss
