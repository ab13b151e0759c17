"""Metrics of the masks a user gets at the deployed threshold, per image (fields ``pred_mask``, ``gt_mask``).

Pooled Dice (:class:`~anomalib_pixelrefine.metrics.Dice`) is dominated by the large defects; a user judges the masks
image by image. These metrics average over images instead:

* :class:`MeanImageDice`, :class:`MeanImageIoU`: mean per-image Dice / IoU over the *defective* test images
  (an empty predicted mask scores 0);
* :class:`EmptyMaskRate`: share of defective images whose predicted mask is empty (the defect is missed entirely);
* :class:`GoodFPArea`: mean predicted-mask area fraction on the *good* images (false alarms).

Each is NaN, with a one-line warning, when the test set has no image of the kind it averages over.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from anomalib.metrics import AnomalibMetric
from torchmetrics import Metric

from .functional import check_binary

logger = logging.getLogger(__name__)

__all__ = ["EmptyMaskRate", "GoodFPArea", "MeanImageDice", "MeanImageIoU", "per_image_mask_stats"]


def per_image_mask_stats(pred_mask: torch.Tensor, gt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image Dice, IoU, predicted and true area fractions of binary masks ``(B, [1,] H, W)``.

    Returns:
        ``{"dice", "iou", "pred_area", "gt_area"}``, each ``(B,)``; Dice/IoU are NaN for images without a defect.
    """
    pred = check_binary(pred_mask, "pred_mask").reshape(len(pred_mask), -1)
    gt = check_binary(gt_mask, "gt_mask").reshape(len(gt_mask), -1)
    if pred.shape != gt.shape:
        msg = f"pred_mask has {tuple(pred.shape)} pixels per image but gt_mask has {tuple(gt.shape)}."
        raise ValueError(msg)
    inter = (pred & gt).sum(1).double()
    pred_sum, gt_sum = pred.sum(1).double(), gt.sum(1).double()
    defective = gt_sum > 0
    nan = torch.full_like(inter, float("nan"))
    return {
        "dice": torch.where(defective, 2 * inter / (pred_sum + gt_sum).clamp_min(1), nan),
        "iou": torch.where(defective, inter / (pred_sum + gt_sum - inter).clamp_min(1), nan),
        "pred_area": pred_sum / pred.shape[1],
        "gt_area": gt_sum / gt.shape[1],
    }


class _PerImageMaskMetric(Metric):
    """Sums per-image statistics of defective and good images; subclasses pick the average."""

    is_differentiable = False
    full_state_update = False
    _over = "defective"  # which images the average is over

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("dice", "iou", "empty", "n_defective", "good_area", "n_good"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted binary masks ``preds`` and ground-truth masks ``target``."""
        stats = per_image_mask_stats(preds, target)
        defective = stats["gt_area"] > 0
        self.dice += stats["dice"][defective].sum()
        self.iou += stats["iou"][defective].sum()
        self.empty += (stats["pred_area"][defective] == 0).sum()
        self.n_defective += defective.sum()
        self.good_area += stats["pred_area"][~defective].sum()
        self.n_good += (~defective).sum()

    def _average(self, total: torch.Tensor) -> torch.Tensor:
        count = self.n_defective if self._over == "defective" else self.n_good
        if count == 0:
            logger.warning(
                "%s is undefined: the test set has no %s image; reporting NaN.", type(self).__name__, self._over
            )
            return torch.tensor(float("nan"))
        return (total / count).float()


class _MeanImageDice(_PerImageMaskMetric):
    higher_is_better = True

    def compute(self) -> torch.Tensor:
        """Mean Dice over the defective images."""
        return self._average(self.dice)


class _MeanImageIoU(_PerImageMaskMetric):
    higher_is_better = True

    def compute(self) -> torch.Tensor:
        """Mean IoU over the defective images."""
        return self._average(self.iou)


class _EmptyMaskRate(_PerImageMaskMetric):
    higher_is_better = False

    def compute(self) -> torch.Tensor:
        """Share of defective images with an empty predicted mask."""
        return self._average(self.empty)


class _GoodFPArea(_PerImageMaskMetric):
    higher_is_better = False
    _over = "good"

    def compute(self) -> torch.Tensor:
        """Mean predicted area fraction on the good images."""
        return self._average(self.good_area)


class MeanImageDice(AnomalibMetric, _MeanImageDice):  # type: ignore[misc]
    """Mean per-image Dice at the deployed threshold over defective images (fields ``pred_mask``, ``gt_mask``)."""

    default_fields = ("pred_mask", "gt_mask")


class MeanImageIoU(AnomalibMetric, _MeanImageIoU):  # type: ignore[misc]
    """Mean per-image IoU at the deployed threshold over defective images (fields ``pred_mask``, ``gt_mask``)."""

    default_fields = ("pred_mask", "gt_mask")


class EmptyMaskRate(AnomalibMetric, _EmptyMaskRate):  # type: ignore[misc]
    """Share of defective images whose deployed mask is empty (fields ``pred_mask``, ``gt_mask``)."""

    default_fields = ("pred_mask", "gt_mask")


class GoodFPArea(AnomalibMetric, _GoodFPArea):  # type: ignore[misc]
    """Mean deployed-mask area fraction on good images (fields ``pred_mask``, ``gt_mask``)."""

    default_fields = ("pred_mask", "gt_mask")
