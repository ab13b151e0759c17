"""Segmentation metrics for anomalib: Dice/IoU at the model threshold, best-threshold Dice/IoU, sPRO.

The classes are anomalib metrics (``AnomalibMetric`` + torchmetrics ``Metric``) for ``anomalib.metrics.Evaluator``;
the functions in :mod:`anomalib_pixelrefine.metrics.functional` work on plain tensors. Metrics that are undefined for
a test set (Dice/IoU/best Dice/sPRO without any defect pixel, AUROC with a single class) are ``nan`` with an
:class:`UndefinedMetricWarning` saying why; :class:`AUROC` and :class:`AUPRO` are anomalib's with that behaviour.
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
from .undefined import AUPRO, AUROC, UndefinedMetricWarning

__all__ = [
    "AUPRO",
    "AUROC",
    "SPRO",
    "BestDice",
    "BestIoU",
    "Dice",
    "EmptyMaskRate",
    "GoodFPArea",
    "IoU",
    "MeanImageDice",
    "MeanImageIoU",
    "UndefinedMetricWarning",
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
