"""Losses of PNI: neighbourhood-MLP cross-entropy and the refinement regression loss."""

import torch
import torch.nn.functional as F
from torch import nn


def refinement_loss(refined: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PNI eq. (10)-(11): ``(l_reg + l_grad) / 2`` with mean squared errors.

    ``l_reg`` is the L2 error of the map and ``l_grad`` the mean of the L2 errors of its vertical and horizontal
    finite differences, i.e. ``0.5 * L2 + 0.25 * L2(d/dh) + 0.25 * L2(d/dw)`` as in the public code.

    Args:
        refined: Predicted maps ``(B, 1, H, W)``.
        target: Ground-truth masks ``(B, 1, H, W)`` in ``{0, 1}``.

    Returns:
        Scalar loss.
    """
    if refined.shape != target.shape:
        msg = f"refined {tuple(refined.shape)} and target {tuple(target.shape)} shapes differ."
        raise ValueError(msg)
    reg = F.mse_loss(refined, target)
    grad_h = F.mse_loss(refined.diff(dim=-2), target.diff(dim=-2))
    grad_w = F.mse_loss(refined.diff(dim=-1), target.diff(dim=-1))
    return 0.5 * reg + 0.25 * (grad_h + grad_w)


class RefinementLoss(nn.Module):
    """Module wrapper of :func:`refinement_loss`."""

    def forward(self, refined: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the refinement loss."""
        return refinement_loss(refined, target)
