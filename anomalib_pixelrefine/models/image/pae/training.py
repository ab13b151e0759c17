"""Fitting a :class:`PaeModel` outside Lightning, and the pieces the Lightning model :class:`Pae` shares with it.

The refining post-processors (PAEDID refiner, F2PAD with ``init="pae"``) train their PAE inside the host's Lightning
fit, so they cannot nest a second ``Trainer``: :func:`train_pae` is a short Adam loop with the same loss step
(:func:`autoencoder_loss`), optimised parameters (:meth:`PaeModel.autoencoder_parameters`) and memory-bank
construction (:meth:`PaeModel.fit_memory_bank`) as :class:`Pae`'s training.
"""

import torch
from torch.nn import functional as F

from .loss import PaeLoss
from .torch_model import PaeModel


def autoencoder_loss(pae: PaeModel, loss_fn: PaeLoss, images: torch.Tensor) -> torch.Tensor:
    """Training loss of one batch: reconstruction (plus KL for a VAE, which samples its latent in training mode).

    Args:
        pae: The model (in training mode for the VAE's sampling).
        loss_fn: Reconstruction / KL loss.
        images: Images ``(B, C, H, W)`` in ``[0, 1]``.

    Returns:
        The scalar loss.
    """
    reconstruction, _, mean, log_var = pae.reconstruct(images)
    return loss_fn(images, reconstruction, mean, log_var)


def pae_input(pae: PaeModel, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize images to the nearest multiple of the PAE's stride (bilinear).

    Args:
        pae: The model (its :attr:`PaeModel.stride`).
        x: Images ``(B, C, H, W)``.

    Returns:
        ``(resized, (H, W))``: the images the PAE accepts and the original size to resize its outputs back to.
    """
    size = (x.shape[-2], x.shape[-1])
    stride = pae.stride
    target = (max(stride, round(size[0] / stride) * stride), max(stride, round(size[1] / stride) * stride))
    if target != size:
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    return x, size


def train_pae(
    pae: PaeModel,
    images: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    coreset_sampling_ratio: float | None = None,
) -> None:
    """Train a plain (or VAE) PAE on images in ``[0, 1]`` with the MSE loss, then build its memory bank.

    The AAE's critic is not trained here (its autoencoder is trained as a plain one).

    Args:
        pae: The model; left in eval mode.
        images: Training images ``(N, C, H, W)`` (sides divisible by the stride, see :func:`pae_input`).
        epochs: Passes over the images.
        lr: Adam learning rate.
        batch_size: Images per step (and per encoded chunk of the memory bank).
        seed: Seed of the shuffling and of the coreset projection.
        coreset_sampling_ratio: Coreset fraction of the memory bank; ``None`` keeps all latents.
    """
    generator = torch.Generator().manual_seed(seed)
    loss_fn = PaeLoss("mse")
    optimizer = torch.optim.Adam(pae.autoencoder_parameters(), lr=lr)
    device = next(pae.parameters()).device
    pae.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            loss = autoencoder_loss(pae, loss_fn, images[order[start : start + batch_size]].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    pae.eval()
    chunks = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    pae.fit_memory_bank(chunks, coreset_sampling_ratio=coreset_sampling_ratio, seed=seed)
