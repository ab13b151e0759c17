"""Dice / IoU segmentation metrics as anomalib metrics.

* :class:`Dice`, :class:`IoU`: binary masks at the model's threshold (fields ``("pred_mask", "gt_mask")``). They only
  accumulate the pooled TP/FP/FN counts (memory O(1)).
* :class:`BestDice`, :class:`BestIoU`: best Dice/IoU over all thresholds of the whole test set (the "optimal
  threshold" numbers of PAEDID/F2PAD; fields ``("anomaly_map", "gt_mask")``). The chosen threshold is exposed as
  ``best_threshold`` after ``compute()``.

Best-threshold accumulation (memory-flat): two ``num_bins`` histograms (positive / negative pixels) over an aligned
bin grid. The grid is set from the first batch's ``[min, max]``; when a later batch falls outside, the bin width is
doubled (and the range extended up or down by its own length) until it fits. Old bins then merge pairwise into new
bins, so no count is ever split or re-estimated. The result is the exact best Dice/IoU over thresholds restricted to
the bin edges (resolution = final bin width, typically range / 5,000 for the default 10,000 bins), computed with
O(num_bins) memory whatever the test-set size. Use :func:`~anomalib_pixelrefine.metrics.functional.best_threshold_dice`
with ``num_thresholds=None`` for the exact value on tensors in memory.

Example:
    >>> from anomalib.metrics import Evaluator
    >>> from anomalib_pixelrefine.metrics import BestDice, Dice
    >>> evaluator = Evaluator(test_metrics=[
    ...     Dice(fields=["pred_mask", "gt_mask"], prefix="pixel_"),
    ...     BestDice(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
    ... ])
"""

from __future__ import annotations

from typing import Any

import torch
from anomalib.metrics import AnomalibMetric
from torchmetrics import Metric

from .functional import (
    _best_from_sweep,
    check_binary,
    dice_from_counts,
    histogram_counts,
    iou_from_counts,
    sweep_from_histogram,
)
from .undefined import undefined

__all__ = ["BestDice", "BestIoU", "Dice", "IoU"]


def _align(preds: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Allow ``(B, 1, H, W)`` vs ``(B, H, W)``; any other shape difference raises ``ValueError``."""
    if preds.shape != target.shape:
        squeeze_p = [s for s in preds.shape if s != 1]
        squeeze_t = [s for s in target.shape if s != 1]
        if squeeze_p != squeeze_t or preds.shape[0] != target.shape[0]:
            msg = f"Shape mismatch: {name} has shape {tuple(preds.shape)} but gt_mask has shape {tuple(target.shape)}."
            raise ValueError(msg)
        preds = preds.reshape(target.shape)
    return preds, target


class _CountMetric(Metric):
    """Accumulates pooled TP/FP/FN of binary predictions; subclasses define the score."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add the counts of a batch of binary predicted masks ``preds`` against binary ``target`` masks."""
        preds, target = _align(preds, target, "pred_mask")
        preds = check_binary(preds, "pred_mask (Dice/IoU need binary predictions; use BestDice for anomaly maps)")
        target = check_binary(target, "gt_mask")
        tp = (preds & target).sum()
        self.tp += tp
        self.fp += preds.sum() - tp
        self.fn += target.sum() - tp

    def _no_defect(self) -> bool:
        return int(self.tp + self.fn) == 0


_NO_DEFECT = "the ground truth has no defect pixel (a test set of normal images only)"


class _Dice(_CountMetric):
    """Pooled Dice = 2TP / (2TP + FP + FN) over all updates; ``nan`` (with a warning) if no ground-truth defect."""

    def compute(self) -> torch.Tensor:
        """Dice of the accumulated counts."""
        if self._no_defect():
            return undefined(self, _NO_DEFECT)
        return dice_from_counts(self.tp, self.fp, self.fn).float()


class _IoU(_CountMetric):
    """Pooled IoU = TP / (TP + FP + FN) over all updates; ``nan`` (with a warning) if no ground-truth defect."""

    def compute(self) -> torch.Tensor:
        """IoU of the accumulated counts."""
        if self._no_defect():
            return undefined(self, _NO_DEFECT)
        return iou_from_counts(self.tp, self.fp, self.fn).float()


class Dice(AnomalibMetric, _Dice):  # type: ignore[misc]
    """Dice at the model's threshold as an anomalib metric (default fields ``pred_mask``, ``gt_mask``)."""

    default_fields = ("pred_mask", "gt_mask")


class IoU(AnomalibMetric, _IoU):  # type: ignore[misc]
    """IoU at the model's threshold as an anomalib metric (default fields ``pred_mask``, ``gt_mask``)."""

    default_fields = ("pred_mask", "gt_mask")


class _BestThresholdMetric(Metric):
    """Best Dice/IoU over all thresholds from two growing aligned histograms (see module docstring).

    Args:
        num_bins: Number of histogram bins (even, >= 2). Default 10,000 (160 kB of state).
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    # forward() must not merge histograms on different grids: recompute on the full state instead
    full_state_update = True
    _kind = "dice"

    def __init__(self, num_bins: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_bins < 2 or num_bins % 2:
            msg = f"num_bins must be an even integer >= 2, got {num_bins}."
            raise ValueError(msg)
        self.num_bins = num_bins
        # Histograms on different grids cannot be summed, so this metric does not support multi-process sync.
        self.add_state("pos_hist", default=torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx=None)
        self.add_state("neg_hist", default=torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx=None)
        self.add_state("low", default=torch.tensor(float("nan"), dtype=torch.float64), dist_reduce_fx=None)
        self.add_state("width", default=torch.tensor(float("nan"), dtype=torch.float64), dist_reduce_fx=None)
        self.best_threshold: torch.Tensor = torch.tensor(float("nan"))

    def _grow(self, lo: float, hi: float) -> None:
        """Double the bin width until ``[lo, hi]`` fits, merging old bins pairwise (exact)."""
        half = self.num_bins // 2
        while lo < float(self.low) or hi >= float(self.low + self.num_bins * self.width):
            merged_pos = self.pos_hist.view(half, 2).sum(1)
            merged_neg = self.neg_hist.view(half, 2).sum(1)
            self.pos_hist = torch.zeros_like(self.pos_hist)
            self.neg_hist = torch.zeros_like(self.neg_hist)
            if lo < float(self.low):  # extend downwards: old range becomes the upper half
                self.pos_hist[half:], self.neg_hist[half:] = merged_pos, merged_neg
                self.low = self.low - self.num_bins * self.width
            else:  # extend upwards: old range becomes the lower half
                self.pos_hist[:half], self.neg_hist[:half] = merged_pos, merged_neg
            self.width = self.width * 2

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of anomaly maps ``preds`` with binary ground-truth masks ``target``."""
        preds, target = _align(preds, target, "anomaly_map")
        target = check_binary(target, "gt_mask").reshape(-1)
        scores = preds.detach().reshape(-1).double()
        if scores.numel() == 0:
            return
        if not torch.isfinite(scores).all():
            msg = "anomaly_map contains NaN or infinite values."
            raise ValueError(msg)
        lo, hi = float(scores.min()), float(scores.max())
        if torch.isnan(self.low):
            span = hi - lo if hi > lo else max(abs(lo), 1.0) * 1e-6
            # (num_bins - 1) bins over [lo, hi] so that hi falls strictly inside the last bin
            self.low = torch.tensor(lo, dtype=torch.float64, device=self.pos_hist.device)
            self.width = torch.tensor(span / (self.num_bins - 1), dtype=torch.float64, device=self.pos_hist.device)
        self._grow(lo, hi)
        pos, neg = histogram_counts(scores, target, float(self.low), float(self.width), self.num_bins)
        self.pos_hist += pos.to(self.pos_hist.device)
        self.neg_hist += neg.to(self.neg_hist.device)

    def compute(self) -> torch.Tensor:
        """Best score over the bin-edge thresholds; sets ``best_threshold`` (predict ``score >= best_threshold``).

        ``nan`` (and a warning) if the ground truth has no defect pixel: every threshold above the maximum would then
        score a meaningless 1.0.
        """
        if torch.isnan(self.low):
            msg = f"{self.__class__.__name__}.compute() called before any update with a non-empty anomaly_map."
            raise RuntimeError(msg)
        if int(self.pos_hist.sum()) == 0:
            self.best_threshold = torch.tensor(float("nan"))
            return undefined(self, _NO_DEFECT)
        low, width = float(self.low), float(self.width)
        thresholds, tp, fp = sweep_from_histogram(self.pos_hist.cpu(), self.neg_hist.cpu(), low, width)
        above_max = torch.tensor(float(self.low + self.num_bins * self.width))
        score, self.best_threshold = _best_from_sweep(
            thresholds,
            tp,
            fp,
            int(self.pos_hist.sum()),
            self._kind,
            above_max=above_max,
        )
        return score


class _BestDice(_BestThresholdMetric):
    _kind = "dice"


class _BestIoU(_BestThresholdMetric):
    _kind = "iou"


class BestDice(AnomalibMetric, _BestDice):  # type: ignore[misc]
    """Best-threshold Dice over the test set (default fields ``anomaly_map``, ``gt_mask``); see ``best_threshold``."""

    default_fields = ("anomaly_map", "gt_mask")


class BestIoU(AnomalibMetric, _BestIoU):  # type: ignore[misc]
    """Best-threshold IoU over the test set (default fields ``anomaly_map``, ``gt_mask``); see ``best_threshold``."""

    default_fields = ("anomaly_map", "gt_mask")
