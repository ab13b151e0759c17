"""Training losses of the PAE autoencoders (CAE / VAE / AAE)."""

import torch
from kornia.losses import ssim_loss
from torch import nn
from torch.nn import functional as F

RECONSTRUCTION_LOSSES = ("mse", "ssim")


class PaeLoss(nn.Module):
    """Reconstruction loss (MSE, eq. 1 of PAEDID, or SSIM as in SSIM-AE) plus the VAE's KL term.

    Args:
        reconstruction_loss: ``"mse"`` or ``"ssim"`` (kornia, ``(1 - SSIM) / 2``).
        kl_weight: Weight of the KL divergence (VAE only).
        ssim_window: SSIM window size.

    Raises:
        ValueError: If ``reconstruction_loss`` is unknown.
    """

    def __init__(self, reconstruction_loss: str = "mse", kl_weight: float = 1e-3, ssim_window: int = 11) -> None:
        super().__init__()
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            msg = f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got '{reconstruction_loss}'"
            raise ValueError(msg)
        self.reconstruction_loss = reconstruction_loss
        self.kl_weight = kl_weight
        self.ssim_window = ssim_window

    def reconstruction(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Mean reconstruction loss."""
        if self.reconstruction_loss == "mse":
            return F.mse_loss(reconstruction, image)
        return ssim_loss(reconstruction, image, self.ssim_window)

    @staticmethod
    def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """Mean (per latent element) KL divergence of ``N(μ, σ²)`` from ``N(0, I)`` (eq. 5 of the AE paper)."""
        return -0.5 * torch.mean(1.0 + log_var - mean.pow(2) - log_var.exp())

    def forward(
        self,
        image: torch.Tensor,
        reconstruction: torch.Tensor,
        mean: torch.Tensor | None = None,
        log_var: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruction loss, plus ``kl_weight * KL`` when ``log_var`` is given."""
        loss = self.reconstruction(image, reconstruction)
        if mean is not None and log_var is not None:
            loss = loss + self.kl_weight * self.kl_divergence(mean, log_var)
        return loss


def critic_loss(critic_fake: torch.Tensor, critic_prior: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss (minimised): ``E[C(z_enc)] - E[C(z_prior)]``."""
    return critic_fake.mean() - critic_prior.mean()


def generator_adversarial_loss(critic_fake: torch.Tensor) -> torch.Tensor:
    """Adversarial loss of the encoder (generator): ``-E[C(z_enc)]``."""
    return -critic_fake.mean()
