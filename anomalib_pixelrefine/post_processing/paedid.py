"""PAEDID refiner: deep image decomposition (PAEDID eq. 3/4) with a PAE deep prior, guided by the host's anomaly map.

The PAE (``anomalib_pixelrefine.models.image.pae.PaeModel``) is trained on the training images seen during the
host's fit (``train_pae``). At test time the host's anomaly map chooses which latent patches are replaced by their
memory-bank neighbours (``deep_prior(x, patch_scores=host_map)``), and the PAE's own decomposition
(``PaeModel.split``, with the refiner's ``lam`` / ``steps`` / ``lr`` / ``noisy`` / ``lam_ssim`` stored on the PAE)
splits ``X = L + S``; ``|S|`` is the map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_pixelrefine.checks import check_number, check_widths
from anomalib_pixelrefine.models.image.pae import PaeModel, pae_input, sparse_to_anomaly_map, train_pae

from .base import RefiningPostProcessor, dilate, seeded_module


class _PaeSetting:
    """A :class:`PaedidRefiner` argument stored on its PAE (``refiner.lam = 0.5`` sets ``refiner.pae.lam``)."""

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute

    def __get__(self, refiner: PaedidRefiner | None, owner: type | None = None) -> Any:
        return self if refiner is None else getattr(refiner.pae, self.attribute)

    def __set__(self, refiner: PaedidRefiner, value: Any) -> None:
        setattr(refiner.pae, self.attribute, value)


class PaedidRefiner(RefiningPostProcessor):
    """PAEDID decomposition over any host: the host's map selects the replaced latent patches of the PAE prior.

    Args:
        channels: PAE encoder widths (paper: ``[64, 128]``; small default for CPU).
        aggregation_length: PAE latent aggregation ``l``.
        num_neighbors: PAE ``k`` nearest latents.
        alpha: Fraction of latent patches replaced (top by host score).
        pae_epochs: PAE training epochs on the training images.
        pae_lr: PAE learning rate.
        pae_batch_size: Training images per PAE step. The default 3 epochs of 2 images per step give the same
            refined Dice as 20 epochs of 8 on the validation split of the realistic benchmark (mean of 8 host/set/seed
            runs: 0.525 vs 0.527) at a sixth of the fit time (post_processing README).
        lam: Sparsity ``λ`` of eq. 3 (``λ1`` of eq. 4).
        steps: Decomposition iterations.
        lr: Decomposition learning rate.
        noisy: Use eq. 4 (noisy decomposition).
        lam_ssim: ``λ2`` of eq. 4.
        **kwargs: :class:`RefiningPostProcessor` / anomalib ``PostProcessor`` arguments.
    """

    # The refiner's decomposition arguments are the PAE's settings (``PaeModel.split`` reads them there).
    alpha = _PaeSetting("alpha")
    lam = _PaeSetting("lam")
    steps = _PaeSetting("decomposition_steps")
    lr = _PaeSetting("decomposition_lr")
    noisy = _PaeSetting("noisy")
    lam_ssim = _PaeSetting("lam_ssim")
    _PAE_SETTINGS = ("alpha", "lam", "steps", "lr", "noisy", "lam_ssim")

    def __init__(
        self,
        channels: list[int] | tuple[int, ...] = (32, 64),
        aggregation_length: int = 3,
        num_neighbors: int = 9,
        alpha: float = 0.1,
        pae_epochs: int = 3,
        pae_lr: float = 1e-3,
        pae_batch_size: int = 2,
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
        check_number(owner, "pae_batch_size", pae_batch_size, 1, integer=True)
        check_number(owner, "steps", steps, 0, integer=True)
        check_number(owner, "alpha", alpha, 0, 1)
        for name, value in (("pae_lr", pae_lr), ("lr", lr)):
            check_number(owner, name, value, 0, low_open=True)
        for name, value in (("lam", lam), ("lam_ssim", lam_ssim)):
            check_number(owner, name, value, 0)
        self.channels = [int(c) for c in channels]
        self.aggregation_length = aggregation_length
        self.num_neighbors = num_neighbors
        self.pae_epochs = pae_epochs
        self.pae_lr = pae_lr
        self.pae_batch_size = pae_batch_size
        self.pae = self._build_pae(
            {"alpha": alpha, "lam": lam, "steps": steps, "lr": lr, "noisy": noisy, "lam_ssim": lam_ssim}
        )

    def _build_pae(self, settings: dict[str, Any]) -> PaeModel:
        """A seeded PAE with the refiner's architecture and decomposition ``settings`` (``_PAE_SETTINGS`` names)."""
        keywords = {type(self).__dict__[name].attribute: value for name, value in settings.items()}
        return seeded_module(
            self.seed,
            lambda: PaeModel(
                channels=self.channels,
                aggregation_length=self.aggregation_length,
                num_neighbors=self.num_neighbors,
                **keywords,
            ),
        )

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (
            *super()._checkpoint_config_keys,
            *self._PAE_SETTINGS,
            *("channels", "aggregation_length", "num_neighbors"),
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
            self.pae = self._build_pae({name: getattr(self, name) for name in self._PAE_SETTINGS})

    def fit_prior(self, images: torch.Tensor) -> None:
        """Train the PAE and build its latent memory bank."""
        torch.manual_seed(self.seed)
        images, _ = pae_input(self.pae, images)
        train_pae(self.pae, images, self.pae_epochs, self.pae_lr, batch_size=self.pae_batch_size, seed=self.seed)

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
        prior = self.pae.deep_prior(x, patch_scores=scores)
        _, sparse = self.pae.split(x, prior)
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
