"""F2PAD (Feature-to-Pixel Anomaly Detection) as an anomalib post-processor.

Reference: F2PAD, pixel-level anomaly segmentation from a feature-level detector by penalised regression. Solves
eq. (12)::

    min_n  l_n(n) + α1 l_p1(n) + α2 l_p2(n) + β l_a(x - n),   β = β0 / |m0|

over the dilated ROI of the host's initial mask ``m0`` with bilateral local gradient sharing (eq. 13–14), adaptive
per-pixel steps ``γ0 / |x - n|`` (eq. 15) and Adan. ``n0`` is the best-matching window of the training images
(default), a classical inpainting of ``m0`` (the paper's MAE needs weights not available offline) or a PAE deep
prior. The paper's refined anomaly map is ``||x - n||`` (channel L2, ``output="pixel"``); the default
``output="host"`` keeps the host's score units and uses ``||x - n||`` for the support only
(:meth:`RefiningPostProcessor.host_unit_maps`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_pixelrefine.checks import check_choice, check_number, check_widths, warn_no_effect
from anomalib_pixelrefine.models.image.pae import PaeModel, pae_input, train_pae

from .base import RefiningPostProcessor, dilate, image_range, seeded_module
from .optim import (
    PixelAdan,
    bilateral_weights,
    exemplar_fill,
    fit_mog,
    inpaint,
    log_sparsity,
    mog_prior,
    range_penalty,
    share_gradients,
    total_variation,
)
from .scorers import get_scorer, scorer_class

INIT_MODES = ("inpaint", "exemplar", "pae", "image")


def crop_extents(roi: torch.Tensor, context: int, align: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image crops covering each ROI's bounding box plus ``context`` pixels, with edges aligned to ``align``.

    Returns:
        ``(offsets (B, 2), sizes (B, 2))``: top-left corners (multiples of ``align``) and ``(h, w)`` of the crops.
    """
    _, _, h, w = roi.shape
    rows, cols = roi[:, 0].any(2), roi[:, 0].any(1)
    idx_h = torch.arange(h, device=roi.device)
    idx_w = torch.arange(w, device=roi.device)
    y0 = torch.where(rows, idx_h, h).amin(1) - context
    y1 = torch.where(rows, idx_h, -1).amax(1) + 1 + context
    x0 = torch.where(cols, idx_w, w).amin(1) - context
    x1 = torch.where(cols, idx_w, -1).amax(1) + 1 + context
    align_h = align if h % align == 0 else 1
    align_w = align if w % align == 0 else 1
    # Aligned extents: crop offsets stay multiples of the feature strides.
    y0 = torch.div(y0.clamp_min(0), align_h, rounding_mode="floor") * align_h
    x0 = torch.div(x0.clamp_min(0), align_w, rounding_mode="floor") * align_w
    y1 = torch.div(y1.clamp_max(h) + align_h - 1, align_h, rounding_mode="floor") * align_h
    x1 = torch.div(x1.clamp_max(w) + align_w - 1, align_w, rounding_mode="floor") * align_w
    return torch.stack([y0, x0], 1), torch.stack([(y1 - y0).clamp(1, h), (x1 - x0).clamp(1, w)], 1)


def crop_groups(roi: torch.Tensor, context: int, align: int) -> list[tuple[torch.Tensor, torch.Tensor, tuple]]:
    """Images grouped by their own crop size (a common size would grow every crop to the batch's largest ROI).

    Returns:
        ``[(image indices, offsets (G, 2), (crop_h, crop_w)), ...]``, one entry per distinct crop size.
    """
    offsets, sizes = crop_extents(roi, context, align)
    unique, group = torch.unique(sizes, dim=0, return_inverse=True)
    groups = []
    for g, (crop_h, crop_w) in enumerate(unique.tolist()):  # a few distinct (aligned) sizes per batch
        index = (group == g).nonzero()[:, 0]
        groups.append((index, offsets[index], (crop_h, crop_w)))
    return groups


def gather_crops(x: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crops ``(B, C, size)`` at ``offsets`` (vectorised gather)."""
    b, c, _, w = x.shape
    ys = offsets[:, 0].view(b, 1, 1) + torch.arange(size[0], device=x.device).view(1, -1, 1)
    xs = offsets[:, 1].view(b, 1, 1) + torch.arange(size[1], device=x.device).view(1, 1, -1)
    flat = (ys * w + xs).view(b, 1, -1).expand(b, c, -1)
    return x.flatten(2).gather(2, flat).view(b, c, *size)


def scatter_crops(full: torch.Tensor, crops: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Write crops back into ``full`` (copy) at ``offsets``."""
    b, c, h, w = full.shape
    size = crops.shape[-2:]
    ys = offsets[:, 0].view(b, 1, 1) + torch.arange(size[0], device=full.device).view(1, -1, 1)
    xs = offsets[:, 1].view(b, 1, 1) + torch.arange(size[1], device=full.device).view(1, 1, -1)
    flat = (ys * w + xs).view(b, 1, -1).expand(b, c, -1)
    return full.flatten(2).scatter(2, flat, crops.flatten(2)).view(b, c, h, w)


#: The paper's optimisation of the background ``n`` (eq. 8-15, Algorithm 1, the MoG prior of eq. 10) and the ROI
#: crops it runs on: in effect only with ``max_iters > 0`` (or ``reestimate``). Keys of ``F2PAD(optimisation=...)``.
OPTIMISATION: dict[str, Any] = {
    "alpha1": 0.02,  # weight of the MoG pixel prior (eq. 10), per optimised pixel
    "alpha2": 0.02,  # weight of the TV prior (eq. 11), per optimised pixel
    "beta0": 1.0,  # sparsity weight, beta = beta0 / |m0| (eq. 8 with the paper's size normalisation)
    "n_components": 5,  # MoG components (EM on training pixels)
    "prior_pixels": 20000,  # training pixels sampled to fit the MoG prior
    "log_eps": 1e-4,  # epsilon of the LOG penalty (paper: 1e-4)
    "lr": 0.01,  # base step, times the adaptive step min(gamma0 / |x - n|, gamma_max)
    "gamma0": 1.0,  # gamma0 of eq. 15 (paper: 1.0)
    "gamma_max": 5.0,  # cap of the adaptive step factor (gamma0 / |a| diverges at a = 0)
    "adaptive_step": True,  # eq. 15 (False: constant lr, the plain-Adan ablation)
    "gradient_sharing": True,  # eq. 13-14 (False: the plain-Adan ablation)
    "ks": 2,  # neighbourhood radius of gradient sharing (paper: 5; weights beyond ~3 px vanish for sigma0 = 1.1)
    "sigma0": 1.1,  # spatial bandwidth of eq. 14
    "sigma1": 0.3,  # colour bandwidth of eq. 14 (pixels in [0, 1])
    "clip": 0.03,  # element-wise clipping of the shared gradient (paper: 0.03)
    "range_weight": 100.0,  # weight of the [0, 1] pixel range penalty
    "tol": 1e-3,  # stop an image when its objective fell by less than tol (relative) over check_every steps
    "check_every": 10,  # stopping-rule window
    "num_candidates": 50,  # PatchCore |M_ij| (paper: 50)
    "roi_local": True,  # optimise/score crops around the ROI (False: the full image, the speed-up comparison)
    "context": 16,  # extra pixels around the ROI in the crops (receptive-field context of the features)
    "crop_align": 32,  # crop corners are multiples of this (the host's largest feature stride) when the image size is
    "reestimate": False,  # re-estimate n with beta = 0 inside the final mask (last_info["background"])
    "reestimate_iters": 50,  # iterations of the re-estimation
}
#: ``init="exemplar"``: training images kept, best windows (from different images) combined per pixel.
EXEMPLAR: dict[str, Any] = {"images": 16, "windows": 5}
#: ``init="pae"``: the PAE deep prior trained on the training images.
PAE_PRIOR: dict[str, Any] = {"epochs": 20, "channels": [32, 64]}
# Section argument -> {section key: attribute}. The attributes (and checkpoints' ``checkpoint_config``) stay flat.
_SECTIONS: dict[str, dict[str, str]] = {
    "optimisation": {key: key for key in OPTIMISATION},
    "exemplar": {"images": "num_exemplars", "windows": "exemplar_windows"},
    "pae_prior": {"epochs": "pae_epochs", "channels": "pae_channels"},
}
_SECTION_DEFAULTS = {"optimisation": OPTIMISATION, "exemplar": EXEMPLAR, "pae_prior": PAE_PRIOR}


def flat_options(
    alpha1: float | None = None,
    alpha2: float | None = None,
    beta0: float | None = None,
    n_components: int | None = None,
    log_eps: float | None = None,
    lr: float | None = None,
    gamma0: float | None = None,
    gamma_max: float | None = None,
    adaptive_step: bool | None = None,
    gradient_sharing: bool | None = None,
    ks: int | None = None,
    sigma0: float | None = None,
    sigma1: float | None = None,
    clip: float | None = None,
    range_weight: float | None = None,
    tol: float | None = None,
    check_every: int | None = None,
    roi_local: bool | None = None,
    context: int | None = None,
    num_candidates: int | None = None,
    num_exemplars: int | None = None,
    exemplar_windows: int | None = None,
    reestimate: bool | None = None,
    reestimate_iters: int | None = None,
    pae_epochs: int | None = None,
    pae_channels: list[int] | None = None,
    prior_pixels: int | None = None,
    crop_align: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The flat option keywords of earlier F2PAD versions that were given (their checkpoints record them).

    ``F2PAD(**kwargs)`` passes its ``**kwargs`` here and to its base class, so jsonargparse (Lightning's checkpoint
    instantiator, the CLI) accepts these keywords; F2PAD reads them into their section with a ``FutureWarning``.
    """
    given = dict(locals())
    del given["_"]
    return {key: value for key, value in given.items() if value is not None}


def _resolve_sections(
    given: dict[str, dict[str, Any] | None], flat: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Flat attribute values from the section arguments and the flat keywords of earlier versions.

    Returns:
        ``(attribute -> value for every option, section -> the keys the caller set)``.
    """
    values, set_keys = {}, {}
    for section, keys in _SECTIONS.items():
        options = given[section] or {}
        if not isinstance(options, dict):
            msg = f"F2PAD: {section} must be a dict of {', '.join(keys)}, got {options!r}."
            raise ValueError(msg)
        unknown = sorted(set(options) - set(keys))
        if unknown:
            msg = f"F2PAD: unknown {section} key(s) {', '.join(unknown)}; known: {', '.join(keys)}."
            raise ValueError(msg)
        options = dict(options)
        for key, attribute in keys.items():
            if attribute in flat:  # flat keyword of an earlier version (e.g. a checkpoint's hyper-parameters)
                if key in options:
                    msg = f"F2PAD: {attribute} given both flat and in {section}; give it once, in {section}."
                    raise ValueError(msg)
                options[key] = flat[attribute]
        set_keys[section] = options
        values |= {attribute: options.get(key, _SECTION_DEFAULTS[section][key]) for key, attribute in keys.items()}
    return values, set_keys


#: Upper bounds of F2PAD's size arguments: far above any useful value (defaults: 16, 5, 50, 5, 2, 16, 32, 20000,
#: 0, 50, 20, 10), low enough that a typo such as ``num_exemplars=1e9`` is refused at construction.
MAX_SIZES = {
    "num_exemplars": 10_000,
    "exemplar_windows": 1_000,
    "num_candidates": 100_000,
    "n_components": 1_000,
    "ks": 100,
    "context": 10_000,
    "crop_align": 4_096,
    "prior_pixels": 100_000_000,
    "max_iters": 1_000_000,
    "reestimate_iters": 1_000_000,
    "pae_epochs": 100_000,
    "check_every": 1_000_000,
}


class F2PAD(RefiningPostProcessor):
    """F2PAD refining post-processor for feature-based hosts (PatchCore, PaDiM, CFLOW, ... see ``scorers``).

    The default refines with the exemplar background alone: ``F2PAD()``. The paper's method is
    ``F2PAD(init="inpaint", max_iters=100)``; its settings go in ``optimisation`` (keys and defaults:
    :data:`OPTIMISATION`). A section whose mode is off (``optimisation`` with ``max_iters=0``, ``exemplar`` without
    ``init="exemplar"``, ``pae_prior`` without ``init="pae"``) warns once (:class:`NoEffectWarning`) when set.

    Args:
        init: ``n0``: ``"exemplar"`` (best-matching windows of stored training images,
            :func:`~anomalib_pixelrefine.post_processing.optim.exemplar_fill`), ``"inpaint"`` (OpenCV Telea), ``"pae"``
            (PAE deep prior trained on the training images) or ``"image"``.
        max_iters: Iterations of the paper's optimisation (paper: 1200 on a GPU). Default 0: the refined background
            is ``n0`` itself; on the realistic benchmark (11 defect kinds, pretrained hosts, deployed threshold) the
            optimisation did not improve on the exemplar ``n0`` and cost 40-70x the time; on the paper's
            high-contrast cut-paste defects ``init="inpaint", max_iters=50`` gains over PatchCore (profile ``f2pad``).
        optimisation: Overrides of :data:`OPTIMISATION` (the objective's weights, the Adan steps, gradient sharing,
            stopping, the ROI crops, the re-estimation).
        exemplar: Overrides of :data:`EXEMPLAR`: ``images`` kept, ``windows`` combined per pixel (each pixel takes
            the window closest to the image; chosen on the validation split of the realistic benchmark: 1 -> 5
            windows raised deployed Dice 0.569 -> 0.625, mean of 4 host/set pairs).
        pae_prior: Overrides of :data:`PAE_PRIOR`: PAE training ``epochs`` and encoder ``channels``.
        **kwargs: :class:`RefiningPostProcessor` / anomalib ``PostProcessor`` arguments. The flat option keywords
            of earlier versions (``alpha1=...``, ``num_exemplars=...``, e.g. in their checkpoints) are read into
            their section with a ``FutureWarning``.
    """

    def __init__(
        self,
        init: str = "exemplar",
        max_iters: int = 0,
        optimisation: dict[str, Any] | None = None,
        exemplar: dict[str, Any] | None = None,
        pae_prior: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        flat = flat_options(**kwargs)  # earlier versions' flat keywords (their checkpoints)
        for key in flat:
            del kwargs[key]
        super().__init__(**kwargs)
        owner = type(self).__name__
        if flat:
            msg = f"{owner}: flat keyword(s) {', '.join(sorted(flat))} read into their section (optimisation, "
            msg += "exemplar, pae_prior); pass them there."
            warnings.warn(msg, FutureWarning, stacklevel=2)
        given = {"optimisation": optimisation, "exemplar": exemplar, "pae_prior": pae_prior}
        values, set_keys = _resolve_sections(given, flat)
        check_choice(owner, "init", init, INIT_MODES)
        check_number(owner, "max_iters", max_iters, 0, integer=True)
        positive = ("log_eps", "lr", "gamma0", "gamma_max", "sigma0", "sigma1", "clip")
        for name in positive:
            check_number(owner, name, values[name], 0, low_open=True)
        for name in ("alpha1", "alpha2", "beta0", "range_weight", "tol"):
            check_number(owner, name, values[name], 0)
        integers = {"n_components": 1, "ks": 0, "check_every": 1, "context": 0, "num_candidates": 1}
        integers |= {"reestimate_iters": 0, "num_exemplars": 1, "exemplar_windows": 1, "pae_epochs": 0}
        integers |= {"prior_pixels": 1, "crop_align": 1}
        for name, low in integers.items():
            check_number(owner, name, values[name], low, integer=True)
        # Sizes far beyond any use only exhaust memory or time (e.g. num_exemplars=10**9): refused at construction.
        sizes = {name: values[name] for name in MAX_SIZES if name != "max_iters"} | {"max_iters": max_iters}
        for name, value in sizes.items():
            check_number(owner, name, value, high=MAX_SIZES[name], integer=True)
        check_widths(owner, "pae_channels", values["pae_channels"])
        values["pae_channels"] = [int(c) for c in values["pae_channels"]]
        for name, value in values.items():
            setattr(self, name, value)
        self.init, self.max_iters = init, max_iters
        self._warn_unused_sections(set_keys)
        self.register_buffer("mog_means", torch.full((self.n_components, 3), 0.5))
        self.register_buffer("mog_inv_covs", torch.eye(3).repeat(self.n_components, 1, 1))
        self.mog_means: torch.Tensor
        self.mog_inv_covs: torch.Tensor
        # Training images for init="exemplar" (shape set by fit_prior; checkpoints restore any shape).
        self.register_buffer("exemplars", torch.zeros(0, 3, 1, 1))
        self.exemplars: torch.Tensor
        self.pae = self._build_pae() if init == "pae" else None

    def _warn_unused_sections(self, set_keys: dict[str, dict[str, Any]]) -> None:
        """Warn once about section options set to a non-default value in a mode that ignores them."""
        off = {
            "optimisation": "with max_iters=0 (no optimisation)" if self.max_iters == 0 and not self.reestimate else "",
            "exemplar": "" if self.init == "exemplar" else f'with init="{self.init}"',
            "pae_prior": "" if self.init == "pae" else f'with init="{self.init}"',
        }
        for section, reason in off.items():
            defaults = _SECTION_DEFAULTS[section]
            changed = [f"{section}.{key}" for key, value in set_keys[section].items() if value != defaults[key]]
            if reason:
                warn_no_effect(type(self).__name__, changed, reason, stacklevel=4)

    @property
    def optimisation(self) -> dict[str, Any]:
        """The optimisation settings in effect (plain data, recorded in checkpoints)."""
        return {key: getattr(self, attribute) for key, attribute in _SECTIONS["optimisation"].items()}

    @property
    def exemplar(self) -> dict[str, Any]:
        """The exemplar settings in effect."""
        return {key: getattr(self, attribute) for key, attribute in _SECTIONS["exemplar"].items()}

    @property
    def pae_prior(self) -> dict[str, Any]:
        """The PAE-prior settings in effect."""
        return {key: getattr(self, attribute) for key, attribute in _SECTIONS["pae_prior"].items()}

    _TUNABLE = (
        "alpha1", "alpha2", "beta0", "log_eps", "lr", "gamma0", "gamma_max", "adaptive_step", "gradient_sharing",
        "ks", "sigma0", "sigma1", "clip", "range_weight", "max_iters", "tol", "check_every", "roi_local",
        "context", "num_candidates", "reestimate", "reestimate_iters",
        "prior_pixels", "crop_align", "num_exemplars", "exemplar_windows",
    )  # fmt: skip

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, *self._TUNABLE, "init", "pae_channels")

    def hook_host(self, host: nn.Module) -> None:
        """Hook the host; with ``max_iters > 0`` a host without a differentiable scorer is refused here.

        This runs when the refiner and the host model meet in an ``AnomalibModule`` (at its construction), so such a
        host fails at once instead of at test time, after the whole fit.

        Raises:
            NoScorerError: (a ``TypeError``) If ``max_iters > 0`` and no scorer is registered for the host model.
        """
        if self.max_iters > 0 and scorer_class(host) is None:
            get_scorer(host)  # raises the one-line error naming the host and the supported ones
        super().hook_host(host)

    def _build_pae(self) -> PaeModel:
        return seeded_module(self.seed, lambda: PaeModel(channels=self.pae_channels))

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the configuration; a refiner built with another ``init`` or PAE gets the checkpoint's PAE module."""
        super().load_checkpoint_config(config)
        self.pae_channels = [int(c) for c in self.pae_channels]
        if self.init == "pae" and (self.pae is None or list(self.pae.channels) != self.pae_channels):
            self.pae = self._build_pae()

    # ------------------------------------------------------------------ prior
    def fit_prior(self, images: torch.Tensor) -> None:
        """Fit the MoG pixel prior on sampled training pixels (and the PAE / the exemplars for those ``init``)."""
        generator = torch.Generator().manual_seed(self.seed)
        pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
        pick = torch.randperm(len(pixels), generator=generator)[: self.prior_pixels]
        means, inv_covs = fit_mog(pixels[pick], self.n_components, self.seed)
        q = len(means)
        self.mog_means[:q].copy_(means)
        self.mog_inv_covs[:q].copy_(inv_covs)
        self.mog_means[q:].copy_(means[:1].expand(self.n_components - q, -1))  # duplicates do not change the min
        self.mog_inv_covs[q:].copy_(inv_covs[:1].expand(self.n_components - q, -1, -1))
        if self.init == "exemplar":
            keep = torch.randperm(len(images), generator=generator)[: self.num_exemplars]
            self.exemplars = images[keep].detach().clone().to(self.mog_means.device)
        if self.pae is not None:
            torch.manual_seed(self.seed)
            train_pae(self.pae, pae_input(self.pae, images)[0], self.pae_epochs, 1e-3, seed=self.seed)

    # ------------------------------------------------------------------ initialisation
    def initial_background(self, pixels: torch.Tensor, fill: torch.Tensor, host_maps: torch.Tensor) -> torch.Tensor:
        """``n0``: ``pixels`` with ``fill`` pixels replaced (inpainting, PAE prior or nothing)."""
        if self.init == "image":
            return pixels.clone()
        if self.init == "pae":
            x, size = pae_input(self.pae, pixels)
            scores = F.interpolate(host_maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
            prior = self.pae.deep_prior(x, patch_scores=scores)
            prior = F.interpolate(prior, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
            return torch.where(fill, prior, pixels)
        if self.init == "exemplar":
            if len(self.exemplars) == 0:
                msg = 'F2PAD(init="exemplar") has no stored training images: fit it (fit_prior) or load its checkpoint'
                raise RuntimeError(msg)
            return exemplar_fill(pixels, fill, self.exemplars, windows=self.exemplar_windows)
        return inpaint(pixels, fill)

    # ------------------------------------------------------------------ objective
    def objective(
        self,
        n: torch.Tensor,
        x: torch.Tensor,
        region: torch.Tensor,
        beta: torch.Tensor,
        scorer_loss: Callable[[torch.Tensor], torch.Tensor] | None,
        ln_ref: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (12) per image ``(B,)`` and its ``l_n`` part; ``region`` ``(B, 1, H, W)`` weights the pixel terms."""
        area = region.flatten(1).sum(1).clamp_min(1.0)
        ln = torch.zeros(n.shape[0], dtype=n.dtype, device=n.device)
        if scorer_loss is not None:
            ln = scorer_loss(self.to_input(n)) / ln_ref
        total = ln + self.range_weight * range_penalty(n)
        if self.alpha1 > 0:
            means, inv = self.mog_means.to(n), self.mog_inv_covs.to(n)
            total = total + self.alpha1 * mog_prior(n, means, inv, region) / area
        if self.alpha2 > 0:
            total = total + self.alpha2 * total_variation(n, region) / area
        total = total + beta * log_sparsity(x - n, region, self.log_eps)
        return total, ln

    # ------------------------------------------------------------------ optimiser
    def optimise(
        self,
        x: torch.Tensor,
        n0: torch.Tensor,
        region: torch.Tensor,
        beta: torch.Tensor,
        scorer_loss: Callable[[torch.Tensor], torch.Tensor] | None,
        ln_ref: torch.Tensor | None,
        max_iters: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimise eq. (12) over the pixels in ``region`` (Algorithm 1, steps 3–8), all images at once.

        Returns:
            ``(n, iterations per image)``.
        """
        n = n0.detach().clone()
        region_f = region.to(n.dtype)
        weights = bilateral_weights(x, self.ks, self.sigma0, self.sigma1) if self.gradient_sharing else None
        adan = PixelAdan(n.shape, n.device, n.dtype)
        active = torch.ones(n.shape[0], dtype=torch.bool, device=n.device)
        iterations = torch.zeros(n.shape[0], dtype=torch.long, device=n.device)
        last_check = None
        for it in range(max_iters):
            n.requires_grad_(True)
            total, _ = self.objective(n, x, region_f, beta, scorer_loss, ln_ref)
            (grad,) = torch.autograd.grad(total.sum(), n)
            grad = torch.nan_to_num(grad) * region_f
            if weights is not None:
                grad = share_gradients(grad, weights, self.ks) * region_f
            grad = grad.clamp(-self.clip, self.clip)
            step = torch.full_like(n, self.lr)
            if self.adaptive_step:
                step = self.lr * (self.gamma0 / (x - n.detach()).abs().clamp_min(1e-6)).clamp(max=self.gamma_max)
            update = adan.step(grad, step) * active.view(-1, 1, 1, 1) * region_f
            n = (n.detach() - torch.nan_to_num(update)).clamp(-0.1, 1.1)
            iterations += active.long()
            value = total.detach()
            if last_check is None:
                last_check = value
            elif (it + 1) % self.check_every == 0:
                active &= (last_check - value) > self.tol * last_check.abs().clamp_min(1e-8)
                last_check = value
                if not active.any():
                    break
        return n.detach().clamp(0, 1), iterations

    def _refine_crops(
        self,
        x: torch.Tensor,
        n0_full: torch.Tensor,
        roi: torch.Tensor,
        m0: torch.Tensor,
        offsets: torch.Tensor,
        size: tuple[int, int],
        scorer: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Optimise crops of one common ``size`` -> (full-size anomaly maps, backgrounds, iterations)."""
        h, w = x.shape[-2:]
        x_c = gather_crops(x, offsets, size)
        n0_c = gather_crops(n0_full, offsets, size)
        roi_c = gather_crops(roi.float(), offsets, size) > 0.5
        region = roi_c if self.roi_local else torch.ones_like(roi_c)
        beta = self.beta0 / m0.flatten(1).sum(1).clamp_min(1).to(x.dtype)
        scorer_loss, ln_ref = None, None
        if scorer is not None:
            scorer.prepare(self.to_input(n0_c), region.float(), offsets, (h, w))
            with torch.no_grad():
                ln_ref = scorer.loss(self.to_input(n0_c)).clamp_min(1e-6)
            scorer_loss = scorer.loss
        n_c, its = self.optimise(x_c, n0_c, region, beta, scorer_loss, ln_ref, self.max_iters)
        if self.reestimate:
            mask_c = self.binarise((x_c - n_c).pow(2).sum(1, keepdim=True).sqrt() * roi_c)
            n_c, _ = self.optimise(
                x_c, n_c, dilate(mask_c, 1), torch.zeros_like(beta), scorer_loss, ln_ref, self.reestimate_iters
            )
        amap_c = (x_c - n_c).pow(2).sum(1, keepdim=True).sqrt() * roi_c
        amap = scatter_crops(torch.zeros_like(x[:, :1]), amap_c, offsets)
        return amap, scatter_crops(x.clone(), n_c, offsets), its

    # ------------------------------------------------------------------ refinement
    def refine_maps(
        self,
        pixels: torch.Tensor,
        host_maps: torch.Tensor,
        initial_masks: torch.Tensor,
        host_model: nn.Module,
    ) -> torch.Tensor:
        """Refined maps: in host units (``output="host"``, :meth:`host_unit_maps`) or ``||x - n*||`` (``"pixel"``).

        ``"pixel"``: ``||x - n*||`` inside the dilated ROI, plus a tiny tie-breaker from the host map elsewhere.
        """
        start = time.perf_counter()
        b, _, h, w = pixels.shape
        roi_full = dilate(initial_masks, self.roi_dilation)
        low, high = image_range(host_maps)
        refined = 1e-3 * (host_maps - low) / (high - low).clamp_min(1e-12)  # keeps the host's order outside the ROI
        background = pixels.clone()
        iterations = torch.zeros(b, dtype=torch.long)
        todo = roi_full.flatten(1).any(1).nonzero()[:, 0]
        groups, scorer, n0_full = [], None, None
        if len(todo) > 0:
            scorer = get_scorer(host_model, num_candidates=self.num_candidates) if self.max_iters > 0 else None
            # Exemplar windows are normal texture, so they can fill the whole ROI; the diffusion fills stay on m0.
            fill = roi_full[todo] if self.init == "exemplar" else dilate(initial_masks[todo], 1)
            n0_full = self.initial_background(pixels[todo], fill, host_maps[todo])
            if self.roi_local and not (scorer is not None and scorer.needs_full_image):
                groups = crop_groups(roi_full[todo], self.context, align=self.crop_align)
            else:
                zeros = torch.zeros(len(todo), 2, dtype=torch.long, device=pixels.device)
                groups = [(torch.arange(len(todo), device=pixels.device), zeros, (h, w))]
        for index, offsets, size in groups:
            sel = todo[index]
            amap, n_full, its = self._refine_crops(
                pixels[sel], n0_full[index], roi_full[sel], initial_masks[sel], offsets, size, scorer
            )
            refined[sel] = torch.where(roi_full[sel], amap, refined[sel])
            background[sel] = n_full
            iterations[sel.cpu()] = its.cpu()
        self.last_info = {"iterations": iterations, "background": background.detach()}
        self.last_info["initial_masks"] = initial_masks.detach()
        if self.output == "host":
            refined, self.last_info["support"] = self.host_unit_maps(
                pixels, background, host_maps, roi_full, host_model
            )
        self.last_info["seconds"] = time.perf_counter() - start
        return refined
