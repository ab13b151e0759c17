"""PAEDID refiner: deep image decomposition (PAEDID eq. 3/4) with a PAE deep prior, guided by the host's anomaly map.

The PAE (``anomalib_pixelrefine.models.image.pae.PaeModel``) is trained on the training images seen during the
host's fit. At test time the host's anomaly map chooses which latent patches are replaced by their memory-bank
neighbours (``deep_prior(x, patch_scores=host_map)``), and ``decompose`` splits ``X = L + S``; ``|S|`` is the map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_pixelrefine.checks import check_number, check_widths
from anomalib_pixelrefine.models.image.pae import PaeModel, decompose, sparse_to_anomaly_map
from anomalib_pixelrefine.models.image.pae.loss import PaeLoss

from .base import RefiningPostProcessor, dilate, seeded_module


def train_pae(
    pae: PaeModel,
    images: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    coreset_sampling_ratio: float | None = None,
) -> None:
    """Train a (plain/VAE) PAE on images in ``[0, 1]`` and build its memory bank.

    A short Adam loop (PaeLoss reconstruction + KL) instead of a nested Lightning fit: the refiner is itself running
    inside the host's Lightning fit.
    """
    generator = torch.Generator().manual_seed(seed)
    loss_fn = PaeLoss("mse")
    params = list(pae.encoder.parameters()) + list(pae.decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    pae.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = images[order[start : start + batch_size]].to(next(pae.parameters()).device)
            reconstruction, _, mean, log_var = pae(batch)
            loss = loss_fn(batch, reconstruction, mean, log_var)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    pae.eval()
    with torch.no_grad():
        latents = torch.cat([pae.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    pae.build_memory_bank(latents, coreset_sampling_ratio=coreset_sampling_ratio, seed=seed)


def pae_input(pae: PaeModel, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize images to the PAE's stride multiple (returns the original size to resize back)."""
    size = (x.shape[-2], x.shape[-1])
    stride = pae.stride
    target = (max(stride, round(size[0] / stride) * stride), max(stride, round(size[1] / stride) * stride))
    if target != size:
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    return x, size


class PaedidRefiner(RefiningPostProcessor):
    """PAEDID decomposition over any host: the host's map selects the replaced latent patches of the PAE prior.

    Args:
        channels: PAE encoder widths (paper: ``[64, 128]``; small default for CPU).
        aggregation_length: PAE latent aggregation ``l``.
        num_neighbors: PAE ``k`` nearest latents.
        alpha: Fraction of latent patches replaced (top by host score).
        pae_epochs: PAE training epochs on the training images.
        pae_lr: PAE learning rate.
        lam: Sparsity ``λ`` of eq. 3 (``λ1`` of eq. 4).
        steps: Decomposition iterations.
        lr: Decomposition learning rate.
        noisy: Use eq. 4 (noisy decomposition).
        lam_ssim: ``λ2`` of eq. 4.
        **kwargs: :class:`RefiningPostProcessor` / anomalib ``PostProcessor`` arguments.
    """

    def __init__(
        self,
        channels: list[int] | tuple[int, ...] = (32, 64),
        aggregation_length: int = 3,
        num_neighbors: int = 9,
        alpha: float = 0.1,
        pae_epochs: int = 20,
        pae_lr: float = 1e-3,
        lam: float = 1.0,
        steps: int = 30,
        lr: float = 0.05,
        noisy: bool = False,
        lam_ssim: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mask_threshold", 0.1)
        super().__init__(**kwargs)
        owner = type(self).__name__
        check_widths(owner, "channels", channels)
        for name, value, low in (("aggregation_length", aggregation_length, 1), ("num_neighbors", num_neighbors, 1)):
            check_number(owner, name, value, low, integer=True)
        check_number(owner, "pae_epochs", pae_epochs, 0, integer=True)
        check_number(owner, "steps", steps, 0, integer=True)
        check_number(owner, "alpha", alpha, 0, 1)
        for name, value in (("pae_lr", pae_lr), ("lr", lr)):
            check_number(owner, name, value, 0, low_open=True)
        for name, value in (("lam", lam), ("lam_ssim", lam_ssim)):
            check_number(owner, name, value, 0)
        self.channels = [int(c) for c in channels]
        self.aggregation_length = aggregation_length
        self.num_neighbors = num_neighbors
        self.alpha = alpha
        self.pae_epochs = pae_epochs
        self.pae_lr = pae_lr
        self.lam = lam
        self.steps = steps
        self.lr = lr
        self.noisy = noisy
        self.lam_ssim = lam_ssim
        self.pae = self._build_pae()

    def _build_pae(self) -> PaeModel:
        return seeded_module(
            self.seed,
            lambda: PaeModel(
                channels=self.channels,
                aggregation_length=self.aggregation_length,
                num_neighbors=self.num_neighbors,
                alpha=self.alpha,
            ),
        )

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (
            *super()._checkpoint_config_keys,
            *("alpha", "lam", "steps", "lr", "noisy", "lam_ssim", "channels", "aggregation_length", "num_neighbors"),
        )

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the configuration; rebuild the PAE when the checkpoint's architecture differs."""
        super().load_checkpoint_config(config)
        self.channels = [int(c) for c in self.channels]
        pae = self.pae
        if (
            list(pae.channels) != self.channels
            or pae.aggregation_length != self.aggregation_length
            or pae.num_neighbors != self.num_neighbors
        ):
            self.pae = self._build_pae()

    def fit_prior(self, images: torch.Tensor) -> None:
        """Train the PAE and build its latent memory bank."""
        torch.manual_seed(self.seed)
        images, _ = pae_input(self.pae, images)
        train_pae(self.pae, images, self.pae_epochs, self.pae_lr, seed=self.seed)

    def refine_maps(
        self,
        pixels: torch.Tensor,
        host_maps: torch.Tensor,
        initial_masks: torch.Tensor,
        host_model: nn.Module,
    ) -> torch.Tensor:
        """Decomposition ``X = L + S`` with prior ``X̂ = PAE(X; host-selected patches)``.

        ``output="host"``: the host map sharpened by the support of ``S`` inside the dilated initial mask
        (:meth:`RefiningPostProcessor.host_unit_maps`, background ``X - S``); ``"pixel"``: ``|S|`` (paper).
        """
        x, size = pae_input(self.pae, pixels)
        scores = F.interpolate(host_maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
        prior = self.pae.deep_prior(x, patch_scores=scores, alpha=self.alpha)
        _, sparse = decompose(
            x, prior, lam=self.lam, steps=self.steps, lr=self.lr, noisy=self.noisy, lam_ssim=self.lam_ssim
        )
        self.last_info = {"prior": prior.detach()}
        if self.output == "host":
            if tuple(sparse.shape[-2:]) != size:
                sparse = F.interpolate(sparse, size=size, mode="bilinear", align_corners=False)
            background = (pixels - sparse).clamp(0, 1)  # X - S (the noise e of eq. 4 stays with the background)
            roi = dilate(initial_masks, self.roi_dilation)
            maps, self.last_info["support"] = self.host_unit_maps(pixels, background, host_maps, roi, host_model)
            return maps
        anomaly_map = sparse_to_anomaly_map(sparse)
        if tuple(anomaly_map.shape[-2:]) != size:
            anomaly_map = F.interpolate(anomaly_map, size=size, mode="bilinear", align_corners=False)
        return anomaly_map
