"""Undefined metrics are NaN: a test set without defects (or without normal images) has no Dice, IoU, sPRO or AUROC.

anomalib's AUROC (torchmetrics' ROC) returns 0.0 with only a torchmetrics warning when the test set has a single
class, and a pooled Dice of "nothing predicted, nothing to find" is 0 / 0. This package's metrics report such values
as ``nan`` and emit one :class:`UndefinedMetricWarning` saying why; :class:`AUROC` is anomalib's AUROC with the same
behaviour, :class:`AUPRO` anomalib's AUPRO (0.0 without defects).
"""

from __future__ import annotations

import warnings

import torch
from anomalib import metrics as anomalib_metrics
from torchmetrics.utilities import dim_zero_cat

__all__ = ["AUPRO", "AUROC", "UndefinedMetricWarning", "undefined"]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given test set and is reported as NaN."""


def undefined(metric: object, reason: str) -> torch.Tensor:
    """Warn (one line naming the metric and ``reason``) and return a NaN scalar."""
    name = getattr(metric, "name", None) or type(metric).__name__
    warnings.warn(f"{name} is undefined and reported as NaN: {reason}.", UndefinedMetricWarning, stacklevel=3)
    return torch.tensor(float("nan"))


class AUROC(anomalib_metrics.AUROC):
    """anomalib's AUROC, but ``nan`` (with an :class:`UndefinedMetricWarning`) when the targets hold a single class.

    anomalib/torchmetrics return 0.0 for a test set without anomalous (or without normal) images or pixels.
    """

    def compute(self) -> torch.Tensor:
        """AUROC, or ``nan`` if only one class was seen."""
        if self.thresholds is None:
            target = dim_zero_cat(self.target) if self.target else torch.zeros(0)
            positives, total = int((target > 0).sum()), target.numel()
        else:  # binned state: confmat (T, 2, 2) = [[tn, fp], [fn, tp]] per threshold
            counts = self.confmat[0]
            positives, total = int(counts[1].sum()), int(counts.sum())
        if positives in {0, total}:
            kind = "anomalous" if positives == 0 else "normal"
            return undefined(self, f"the targets hold no {kind} sample ({total} seen)")
        return super().compute()


class AUPRO(anomalib_metrics.AUPRO):
    """anomalib's AUPRO, but ``nan`` (with an :class:`UndefinedMetricWarning`) when no ground-truth pixel is a defect.

    anomalib returns 0.0 for a test set without defect regions.
    """

    def compute(self) -> torch.Tensor:
        """AUPRO, or ``nan`` if there is no defect region."""
        if not self.target or not any(bool((target > 0).any()) for target in self.target):
            return undefined(self, "the ground truth has no defect region (a test set of normal images only)")
        return super().compute()
