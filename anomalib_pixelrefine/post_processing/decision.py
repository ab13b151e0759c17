"""One decision rule and a false-alarm budget set on held-back normal images.

The rule, applied by :class:`DecisionPostProcessor` (and every refiner, which inherits it) in ``Engine.test``,
``Engine.predict``, ``forward`` (export, ``TorchInferencer``):

- a pixel is in ``pred_mask`` when its map is above the pixel threshold **and** its image's score is above the image
  threshold (no mask pixel on an image below the image threshold);
- ``pred_label`` is True exactly when ``pred_mask`` is non-empty.

The budget (``max_false_alarm_rate``) caps the share of *normal* validation images (the held-back normal originals
of ``val_split_mode="synthetic"``) above the image threshold: the threshold is anomalib's F1-adaptive one (calibrated
on the synthetic defects), raised to the upper quantile of the normal images' raw scores when that is higher
(:func:`budget_image_threshold`); ``max_false_alarm_area`` raises the pixel threshold until the mean predicted area
on those images is at most that fraction of the image. Without a budget the thresholds are anomalib's (F1-adaptive
on validation).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer

from anomalib_pixelrefine.checks import DEFAULT_MAX_FALSE_ALARM_RATE, check_number, normals_needed

__all__ = [
    "DEFAULT_MAX_FALSE_ALARM_RATE",
    "DecisionPostProcessor",
    "DecisionPostProcessorMixin",
    "agree",
    "area_threshold",
    "budget_image_threshold",
    "false_alarm_threshold",
    "normals_needed",
]

logger = logging.getLogger(__name__)


def false_alarm_threshold(
    normal_scores: torch.Tensor, rate: float, owner: str = "false_alarm_threshold", warn: bool = True
) -> torch.Tensor:
    """Raw image threshold that a new normal image exceeds with probability at most ``rate`` (split-conformal).

    With ``n`` scores, the threshold is the ``k``-th largest, ``k = floor(rate (n + 1))`` (at least 1): a new normal
    image exchangeable with the held-back ones is above it with probability ``k / (n + 1) <= rate``. ``rate=0`` and
    fewer than ``1 / rate - 1`` scores give the largest score, whose false-alarm rate is ``1 / (n + 1)``: more than
    ``rate`` (a warning says so unless ``warn=False``).

    Args:
        normal_scores: Raw scores of normal (held-back) images, any shape.
        rate: Allowed share of normal images above the threshold, in ``[0, 1)``.
        owner: Name used in the warning.
        warn: Warn when there are too few scores for ``rate``.

    Raises:
        ValueError: Without any finite normal score.
    """
    check_number(owner, "max_false_alarm_rate", rate, 0, 1)
    scores = normal_scores.detach().flatten().float()
    scores = scores[torch.isfinite(scores)]
    if scores.numel() == 0:
        msg = f"{owner}: no held-back normal image score to set the image threshold from (max_false_alarm_rate)."
        raise ValueError(msg)
    n = scores.numel()
    if warn and rate > 0 and n < normals_needed(rate):
        logger.warning(
            "%s: only %d held-back normal images for max_false_alarm_rate=%g (at least %d needed): the image threshold "
            "is their maximum score, the false-alarm rate on new images is about 1/(n+1)=%.3f; hold back more normal "
            "images (val_split_ratio) for this budget.",
            owner,
            n,
            rate,
            normals_needed(rate),
            1 / (n + 1),
        )
    k = min(max(math.floor(rate * (n + 1) + 1e-9), 1), n)
    return scores.topk(k).values[-1]


def budget_image_threshold(
    normal_scores: torch.Tensor, rate: float, f1_threshold: float, owner: str = "budget", warn: bool = True
) -> float:
    """Image threshold under a false-alarm budget: the F1-adaptive threshold, raised to the budget's quantile.

    The budget is a cap (at most ``rate`` of the normal images above the threshold); below the cap the threshold
    the synthetic defects call for is kept. A NaN ``f1_threshold`` (no defective validation image) gives the quantile.
    """
    quantile = float(false_alarm_threshold(normal_scores, rate, owner, warn=warn))
    return quantile if math.isnan(f1_threshold) else max(quantile, float(f1_threshold))


def area_threshold(normal_maps: torch.Tensor, budget: float) -> torch.Tensor:
    """Raw pixel threshold giving a mean predicted area of at most ``budget`` on the normal maps.

    Args:
        normal_maps: Raw maps of normal images ``(N, ...)``; pixels that can never be in a mask (images below the
            image threshold) are ``-inf``.
        budget: Allowed mean predicted area fraction in ``[0, 1)``.
    """
    flat = normal_maps.detach().flatten().float()
    k = min(math.floor(budget * flat.numel() + 1e-9) + 1, flat.numel())
    return flat.topk(k).values[-1]


def agree(pred_label: torch.Tensor | None, pred_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Apply the decision rule: masks only on images labelled anomalous, then label = mask non-empty.

    Args:
        pred_label: Image labels from the image threshold ``(B,)`` (``None``: masks decide alone).
        pred_mask: Binary masks ``(B, [1,] H, W)`` (``None``: labels are returned unchanged).

    Returns:
        ``(pred_label, pred_mask)``.
    """
    if pred_mask is None:
        return pred_label, pred_mask
    mask = pred_mask.bool()
    if pred_label is not None:
        gate = pred_label.bool().reshape(-1, *([1] * (mask.dim() - 1)))
        mask = mask & gate
    return mask.flatten(1).any(1) if mask.dim() > 1 else mask, mask


class DecisionPostProcessorMixin:
    """Budgeted thresholds and the decision rule for an anomalib ``PostProcessor`` (see the module docstring).

    Args:
        max_false_alarm_rate: Share of held-back normal images allowed above the image threshold (``None``:
            anomalib's F1-adaptive image threshold).
        max_false_alarm_area: Mean predicted area fraction allowed on held-back normal images (``None``: no limit
            beyond the F1-adaptive pixel threshold).
    """

    def _init_budget(self, max_false_alarm_rate: float | None, max_false_alarm_area: float | None) -> None:
        owner = type(self).__name__
        check_number(owner, "max_false_alarm_rate", max_false_alarm_rate, 0, 1, optional=True)
        check_number(owner, "max_false_alarm_area", max_false_alarm_area, 0, 1, optional=True)
        self.max_false_alarm_rate = max_false_alarm_rate
        self.max_false_alarm_area = max_false_alarm_area
        self._normal_scores: list[torch.Tensor] = []
        self._normal_maps: list[torch.Tensor] = []
        #: Raw scores of the last validation's normal images and its F1-adaptive image threshold (for reports).
        self.val_normal_scores: torch.Tensor | None = None
        self.f1_image_threshold: float = math.nan

    def collect_normals(self, outputs: Batch) -> None:
        """Keep the raw scores (and, with an area budget, the maps) of the validation batch's normal images."""
        labels, scores = getattr(outputs, "gt_label", None), getattr(outputs, "pred_score", None)
        if labels is None or scores is None:
            return
        normal = ~labels.detach().bool().reshape(-1)
        self._normal_scores.append(scores.detach().reshape(-1)[normal].float().cpu())
        maps = getattr(outputs, "anomaly_map", None)
        if self.max_false_alarm_area is not None and maps is not None:
            self._normal_maps.append(maps.detach().reshape(len(normal), -1)[normal].float().cpu())

    def apply_budget(self) -> None:
        """After anomalib's calibration: image threshold from the rate budget, pixel threshold from the area one."""
        scores, maps = self._normal_scores, self._normal_maps
        self._normal_scores, self._normal_maps = [], []
        self.f1_image_threshold = float(self._image_threshold)
        if not scores or sum(len(s) for s in scores) == 0:
            if self.max_false_alarm_rate is not None or self.max_false_alarm_area is not None:
                logger.warning(
                    "%s: validation has no normal image; false-alarm budget not applied (anomalib's thresholds kept).",
                    type(self).__name__,
                )
            return
        self.val_normal_scores = torch.cat(scores)
        if self.max_false_alarm_rate is not None:
            rate, f1 = self.max_false_alarm_rate, self.f1_image_threshold
            threshold = budget_image_threshold(self.val_normal_scores, rate, f1, type(self).__name__)
            self._image_threshold.fill_(threshold)
        if self.max_false_alarm_area is not None and maps:
            flat = torch.cat(maps)
            gated = torch.where((self.val_normal_scores > self.image_threshold.cpu()).view(-1, 1), flat, -torch.inf)
            area = area_threshold(gated, self.max_false_alarm_area).to(self._pixel_threshold)
            self._pixel_threshold.copy_(
                torch.where(torch.isnan(self._pixel_threshold), area, self._pixel_threshold.maximum(area))
            )

    def agree(
        self, pred_label: torch.Tensor | None, pred_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:func:`agree`, keeping the masks before the image gate in ``ungated_mask`` (benchmark operating points)."""
        if pred_mask is not None and not torch.compiler.is_compiling():
            self.__dict__["ungated_mask"] = pred_mask.detach()
        return agree(pred_label, pred_mask)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled state (torch export) without the last batch's masks."""
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("ungated_mask", None)
        return state

    def decide(self, batch: Batch | InferenceBatch) -> InferenceBatch | None:
        """Decision rule on a post-processed batch (in place for ``Batch``; a new ``InferenceBatch`` otherwise)."""
        label, mask = self.agree(batch.pred_label, batch.pred_mask)
        if isinstance(batch, InferenceBatch):
            return InferenceBatch(
                pred_score=batch.pred_score, pred_label=label, anomaly_map=batch.anomaly_map, pred_mask=mask
            )
        batch.pred_label, batch.pred_mask = label, mask
        return None


class DecisionPostProcessor(DecisionPostProcessorMixin, PostProcessor):
    """Anomalib ``PostProcessor`` with the decision rule and the false-alarm budget (this package's models' default).

    Args:
        max_false_alarm_rate: See :class:`DecisionPostProcessorMixin` (default
            :data:`DEFAULT_MAX_FALSE_ALARM_RATE`).
        max_false_alarm_area: See :class:`DecisionPostProcessorMixin`.
        **kwargs: anomalib ``PostProcessor`` arguments.
    """

    def __init__(
        self,
        max_false_alarm_rate: float | None = DEFAULT_MAX_FALSE_ALARM_RATE,
        max_false_alarm_area: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_budget(max_false_alarm_rate, max_false_alarm_area)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "max_false_alarm_rate", "max_false_alarm_area")

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any, **kwargs: Any
    ) -> None:
        """Calibration statistics (anomalib) plus the normal images' scores."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        if not trainer.sanity_checking:
            self.collect_normals(outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Thresholds (anomalib), then the budget."""
        super().on_validation_epoch_end(trainer, pl_module)
        if self.enable_thresholding:
            self.apply_budget()

    def post_process_batch(self, batch: Batch) -> None:
        """Normalise and threshold (anomalib), then the decision rule."""
        super().post_process_batch(batch)
        if self.enable_thresholding:
            self.decide(batch)

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """Post-processing (anomalib), then the decision rule (export, ``TorchInferencer``)."""
        out = super().forward(predictions)
        return self.decide(out) if self.enable_thresholding else out
