"""Differentiable feature-level anomaly scorers ``s(n)`` of host models (F2PAD eq. 5–7).

A scorer wraps the *torch model* of a fitted host (e.g. anomalib's ``PatchcoreModel``) and returns, for a batch of
images in the host's input space, the per-image sum of feature anomaly scores over a region of interest. Gradients
flow from the scores back to the pixels. Adding a host is one small class::

    @register_scorer(MyModel)
    class MyScorer(FeatureScorer):
        def prepare(self, x0, roi, offset, full_size): ...
        def loss(self, x): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.cflow.torch_model import CflowModel
from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from anomalib_pixelrefine.errors import PixelRefineError
from anomalib_pixelrefine.models.components import input_gradients
from anomalib_pixelrefine.models.image.feature_ensemble import FeatureEnsembleModel
from anomalib_pixelrefine.models.image.pni import PniModel

_SCORERS: list[tuple[type[nn.Module], type[FeatureScorer]]] = []


def register_scorer(*model_types: type[nn.Module]) -> Callable[[type[FeatureScorer]], type[FeatureScorer]]:
    """Class decorator registering a scorer for one or more host torch-model types.

    Args:
        *model_types: Torch model classes (``isinstance`` match, latest registration wins).

    Returns:
        The decorator.
    """

    def decorator(cls: type[FeatureScorer]) -> type[FeatureScorer]:
        for model_type in model_types:
            _SCORERS.insert(0, (model_type, cls))
        return cls

    return decorator


def available_scorers() -> dict[str, str]:
    """Mapping host torch-model class name -> scorer class name."""
    return {model_type.__name__: cls.__name__ for model_type, cls in _SCORERS}


def scorer_class(model: nn.Module) -> type[FeatureScorer] | None:
    """The scorer class registered for a host torch model (``None``: F2PAD cannot optimise through it)."""
    return next((cls for model_type, cls in _SCORERS if isinstance(model, model_type)), None)


def get_scorer(model: nn.Module, **kwargs: Any) -> FeatureScorer:
    """Build the scorer for a host torch model.

    Args:
        model: Host torch model (``pl_module.model``).
        **kwargs: Scorer options (e.g. ``num_candidates``).

    Returns:
        A scorer instance.

    Raises:
        NoScorerError: (a ``TypeError``) If no scorer is registered for the model's type.
    """
    cls = scorer_class(model)
    if cls is None:
        msg = (
            f"No differentiable F2PAD scorer is registered for host model '{type(model).__name__}'. Available: "
            f"{sorted(available_scorers())}. Use max_iters=0 (no optimisation through the host), or write a "
            f"FeatureScorer subclass and decorate it with @register_scorer({type(model).__name__})."
        )
        raise NoScorerError(msg)
    return cls(model, **kwargs)


class NoScorerError(PixelRefineError, TypeError):
    """F2PAD with ``max_iters > 0`` on a host model without a registered differentiable scorer."""


def extract_with_grad(extractor: TimmFeatureExtractor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run an anomalib ``TimmFeatureExtractor`` with autograd enabled w.r.t. the input (see ``input_gradients``)."""
    with input_gradients(extractor):
        return extractor(x)


def roi_to_grid(roi: torch.Tensor, size: tuple[int, int], dilate: int = 1) -> torch.Tensor:
    """Pixel ROI ``(B, 1, H, W)`` -> boolean feature-grid mask ``(B, h, w)`` (max pooling + dilation)."""
    grid = F.adaptive_max_pool2d(roi.float(), size)
    if dilate > 0:
        grid = F.max_pool2d(grid, 2 * dilate + 1, stride=1, padding=dilate)
    return grid[:, 0] > 0


class FeatureScorer:
    """Base class: differentiable sum of feature anomaly scores over a ROI.

    Args:
        model: Fitted host torch model.
        feature_dilation: Feature cells added around the ROI's cells when summing scores.
    """

    needs_full_image = False  # True: scores depend on absolute positions of uncropped images (F2PAD skips cropping)

    def __init__(self, model: nn.Module, feature_dilation: int = 1, **kwargs: Any) -> None:
        del kwargs
        self.model = model
        self.feature_dilation = feature_dilation
        self.grid_mask: torch.Tensor | None = None

    def prepare(self, x0: torch.Tensor, roi: torch.Tensor, offset: torch.Tensor, full_size: tuple[int, int]) -> None:
        """Prepare the scorer at the initial estimate ``n0`` (called once before optimisation).

        Args:
            x0: Initial images ``(B, 3, h, w)`` in the host's input space (possibly crops).
            roi: Pixel ROI ``(B, 1, h, w)`` whose scores enter the loss.
            offset: ``(B, 2)`` top-left pixel of each crop in the full image.
            full_size: Full image size ``(H, W)``.
        """
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image ``l_n`` ``(B,)``: sum of scores at the prepared ROI's feature cells."""
        raise NotImplementedError


@register_scorer(PatchcoreModel)
class PatchcoreScorer(FeatureScorer):
    """PatchCore eq. (5): distance to the nearest of ``|M|`` candidate memory-bank features found at ``n0``.

    Args:
        model: Fitted ``PatchcoreModel``.
        num_candidates: ``|M_ij|`` (paper: 50).
        feature_dilation: See :class:`FeatureScorer`.
    """

    def __init__(
        self, model: PatchcoreModel, num_candidates: int = 50, feature_dilation: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(model, feature_dilation)
        if model.memory_bank.numel() == 0:
            msg = "PatchcoreModel memory bank is empty: fit the host model before refining."
            raise RuntimeError(msg)
        self.num_candidates = num_candidates
        self.candidates: torch.Tensor | None = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable PatchCore embedding ``(B, C, h, w)``."""
        features = extract_with_grad(self.model.feature_extractor, x)
        features = {layer: self.model.feature_pooler(feature) for layer, feature in features.items()}
        return self.model.generate_embedding(features)

    def prepare(self, x0: torch.Tensor, roi: torch.Tensor, offset: torch.Tensor, full_size: tuple[int, int]) -> None:
        """Find the candidate sets ``M_ij`` at ``n0`` for the ROI's feature cells."""
        del offset, full_size
        bank = self.model.memory_bank.detach().clone()
        with torch.no_grad():
            emb = self.embed(x0)
        self.grid_mask = roi_to_grid(roi, tuple(emb.shape[-2:]), self.feature_dilation)
        query = emb.permute(0, 2, 3, 1)[self.grid_mask]  # (P, C)
        k = min(self.num_candidates, bank.shape[0])
        dist = PatchcoreModel.euclidean_dist(query, bank)
        index = dist.topk(k, largest=False, dim=1).indices  # (P, k)
        self.candidates = bank[index]  # (P, k, C)
        self.candidate_sq_norms = self.candidates.pow(2).sum(-1)  # (P, k)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ROI cells of ``min_m ||f_ij - m||``."""
        emb = self.embed(x).permute(0, 2, 3, 1)
        query = emb[self.grid_mask]  # (P, C)
        with torch.no_grad():  # nearest candidate by one batched matmul (||q||^2 is constant per row)
            scores = self.candidate_sq_norms - 2 * torch.bmm(self.candidates, query.unsqueeze(-1)).squeeze(-1)
            nearest = self.candidates[torch.arange(len(query), device=x.device), scores.argmin(1)]  # (P, C)
        # Exact distance to it: same value and (sub)gradient as min over all candidates, without a (P, |M|, C) graph.
        dist = ((query - nearest).pow(2).sum(-1) + 1e-12).sqrt()
        batch_index = self.grid_mask.nonzero()[:, 0]
        return torch.zeros(x.shape[0], dtype=dist.dtype, device=x.device).index_add(0, batch_index, dist)


@register_scorer(PadimModel)
class PadimScorer(FeatureScorer):
    """PaDiM eq. (7): squared Mahalanobis distance to the per-location Gaussian.

    Crops are mapped to the full-image feature grid with their pixel offset (``offset`` a multiple of the stride).
    """

    def __init__(self, model: PadimModel, feature_dilation: int = 1, **kwargs: Any) -> None:
        super().__init__(model, feature_dilation)
        if model.gaussian.mean.numel() == 0 or model.gaussian.inv_covariance.numel() == 0:
            msg = "PadimModel Gaussian is not fitted: fit the host model before refining."
            raise RuntimeError(msg)
        # Clones leave inference mode (the host is fitted inside Lightning's inference-mode validation).
        self.mean = model.gaussian.mean.detach().clone()  # (C, H*W)
        self.inv_cov = model.gaussian.inv_covariance.detach().clone()  # (H*W, C, C)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable PaDiM embedding ``(B, C, h, w)``."""
        return self.model.generate_embedding(extract_with_grad(self.model.feature_extractor, x))

    def prepare(self, x0: torch.Tensor, roi: torch.Tensor, offset: torch.Tensor, full_size: tuple[int, int]) -> None:
        """Gather the Gaussians of the ROI's feature cells."""
        with torch.no_grad():
            emb = self.embed(x0[:1])
        h, w = emb.shape[-2:]
        stride = x0.shape[-2] // h
        full_h, full_w = full_size[0] // stride, full_size[1] // stride
        if full_h * full_w != self.mean.shape[1]:
            msg = f"PaDiM Gaussian has {self.mean.shape[1]} locations but the image gives {full_h}x{full_w}."
            raise ValueError(msg)
        self.grid_mask = roi_to_grid(roi, (h, w), self.feature_dilation)
        cells = self.grid_mask.nonzero()  # (P, 3): b, i, j
        gy = cells[:, 1] + torch.div(offset[cells[:, 0], 0], stride, rounding_mode="floor")
        gx = cells[:, 2] + torch.div(offset[cells[:, 0], 1], stride, rounding_mode="floor")
        loc = gy * full_w + gx
        self.loc_mean = self.mean[:, loc].T.to(x0.dtype)  # (P, C)
        inv = self.inv_cov[loc].to(x0.dtype)
        self.loc_inv = 0.5 * (inv + inv.transpose(1, 2))  # (P, C, C), exactly symmetric (see loss)
        self.batch_index = cells[:, 0]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ROI cells of ``(f - mu)^T Σ^-1 (f - mu)``."""
        emb = self.embed(x).permute(0, 2, 3, 1)[self.grid_mask]
        delta = emb - self.loc_mean
        # q = δᵀAδ with one batched mat-vec: y = Aδ (no graph), q = δ·y; the gradient of q is 2Aδ = 2y for a
        # symmetric A, so ``2 δ·y - q.detach()`` has q's value and q's exact gradient (autograd would add Aᵀδ again).
        y = torch.bmm(self.loc_inv, delta.detach().unsqueeze(-1)).squeeze(-1)
        quad = (delta * y).sum(-1)
        dist = 2 * quad - quad.detach()
        return torch.zeros(x.shape[0], dtype=dist.dtype, device=x.device).index_add(0, self.batch_index, dist)


@register_scorer(CflowModel)
class CflowScorer(FeatureScorer):
    """CFLOW-AD eq. (6): ``-LogSigmoid`` of the per-dimension flow log-likelihood, summed over pooled layers."""

    def __init__(self, model: CflowModel, feature_dilation: int = 1, **kwargs: Any) -> None:
        super().__init__(model, feature_dilation)
        self.masks: list[torch.Tensor] = []
        self.encodings: list[torch.Tensor] = []

    def prepare(self, x0: torch.Tensor, roi: torch.Tensor, offset: torch.Tensor, full_size: tuple[int, int]) -> None:
        """Feature-cell masks and sliced positional encodings per pooled layer."""
        with torch.no_grad():
            activation = self.model.encoder(x0[:1])
        self.masks, self.encodings = [], []
        for layer in self.model.pool_layers:
            h, w = activation[layer].shape[-2:]
            stride = x0.shape[-2] // h
            mask = roi_to_grid(roi, (h, w), self.feature_dilation)
            cells = mask.nonzero()
            full = positional_encoding_2d(self.model.condition_vector, full_size[0] // stride, full_size[1] // stride)
            full = full.to(x0.device, x0.dtype)
            gy = cells[:, 1] + torch.div(offset[cells[:, 0], 0], stride, rounding_mode="floor")
            gx = cells[:, 2] + torch.div(offset[cells[:, 0], 1], stride, rounding_mode="floor")
            self.masks.append(mask)
            self.encodings.append(full[:, gy, gx].T)  # (P, P_enc)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over layers and ROI cells of ``-log σ(log p / C)``."""
        self.model.decoders.eval()
        activation = extract_with_grad(self.model.encoder, x)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer_idx, layer in enumerate(self.model.pool_layers):
            feats = activation[layer]
            dim = feats.shape[1]
            mask = self.masks[layer_idx]
            e_p = feats.permute(0, 2, 3, 1)[mask]
            p_u, log_jac_det = self.model.decoders[layer_idx](e_p, [self.encodings[layer_idx]])
            log_prob = get_logp(dim, p_u, log_jac_det) / dim
            score = -F.logsigmoid(log_prob)
            total = total.index_add(0, mask.nonzero()[:, 0], score.to(total.dtype))
        return total


class FeatureMapScorer(FeatureScorer):
    """Hosts exposing ``feature_map(images, differentiable)`` (this package's models): its sum over the ROI's cells.

    The host computes the map exactly as in its own forward (before upsampling and smoothing); the scorer only
    selects the feature cells of the ROI.
    """

    def prepare(self, x0: torch.Tensor, roi: torch.Tensor, offset: torch.Tensor, full_size: tuple[int, int]) -> None:
        """Feature-cell mask of the ROI on the host's feature grid."""
        del offset, full_size
        with torch.no_grad():
            maps = self.model.feature_map(x0)
        self.grid_mask = roi_to_grid(roi, tuple(maps.shape[-2:]), self.feature_dilation)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the host's feature map over the prepared ROI cells."""
        return (self.model.feature_map(x, differentiable=True) * self.grid_mask).flatten(1).sum(1)


@register_scorer(PniModel)
class PniF2padScorer(FeatureMapScorer):
    """PNI: eq. (4) masked nearest-neighbour distances (training-range normalised), averaged over backbones.

    The host's inputs are ``[0, 1]`` images (PniModel normalises them itself). Position histograms need the full image,
    so F2PAD optimises the ROI inside the uncropped image for this host.
    """

    needs_full_image = True

    def prepare(self, x0: torch.Tensor, roi: torch.Tensor, offset: torch.Tensor, full_size: tuple[int, int]) -> None:
        """Refuse crops (position histograms), then as :class:`FeatureMapScorer`."""
        if tuple(x0.shape[-2:]) != tuple(full_size):
            msg = "PNI position histograms need full images: use F2PAD(optimisation={'roi_local': False}) on Pni."
            raise ValueError(msg)
        super().prepare(x0, roi, offset, full_size)


@register_scorer(FeatureEnsembleModel)
class FeatureEnsembleScorer(FeatureMapScorer):
    """FeatureEnsemble: the ensemble's feature-grid map (output mode: calibrated member maps averaged)."""
