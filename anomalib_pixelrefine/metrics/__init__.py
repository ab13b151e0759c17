"""Segmentation metrics for anomalib: Dice/IoU at the model threshold, best-threshold Dice/IoU, sPRO.

The classes are anomalib metrics (``AnomalibMetric`` + torchmetrics ``Metric``) for ``anomalib.metrics.Evaluator``;
the functions in :mod:`anomalib_pixelrefine.metrics.functional` work on plain tensors.
"""

from .deployed import EmptyMaskRate, GoodFPArea, MeanImageDice, MeanImageIoU, per_image_mask_stats
from .functional import (
    aspro_score,
    best_threshold_dice,
    best_threshold_iou,
    dice_score,
    iou_score,
    spro_curve,
    spro_score,
)
from .segmentation import BestDice, BestIoU, Dice, IoU
from .spro import SPRO, load_defects_config

__all__ = [
    "SPRO",
    "BestDice",
    "BestIoU",
    "Dice",
    "EmptyMaskRate",
    "GoodFPArea",
    "IoU",
    "MeanImageDice",
    "MeanImageIoU",
    "aspro_score",
    "best_threshold_dice",
    "best_threshold_iou",
    "dice_score",
    "iou_score",
    "load_defects_config",
    "per_image_mask_stats",
    "spro_curve",
    "spro_score",
]
