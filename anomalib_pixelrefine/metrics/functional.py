"""Functional segmentation metrics: Dice, IoU, best-threshold Dice/IoU and sPRO.

All functions are vectorised torch code and pool every pixel of the given set (a "set-level" score, as in the
PAEDID/F2PAD papers), i.e. they are not means of per-image scores.

Conventions:
    * Binary masks may be ``bool`` or numeric tensors holding only 0 and 1; anything else raises ``ValueError``.
    * A pixel is predicted anomalous when ``score >= threshold`` (the scikit-learn ``precision_recall_curve``
      convention). anomalib's post-processor uses ``score > threshold``; the two only differ on exact ties.
    * Empty vs empty: when prediction and target are both empty (no positive pixel anywhere), Dice and IoU are
      defined as 1.0 (perfect agreement); scikit-learn's ``zero_division=1.0`` gives the same value. The anomalib
      metric classes (:class:`~anomalib_pixelrefine.metrics.Dice`, ...) instead report a test set without any defect
      pixel as ``nan`` with a warning: a set-level score is undefined there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.utilities.compute import auc

__all__ = [
    "aspro_score",
    "best_threshold_dice",
    "best_threshold_iou",
    "binary_counts",
    "dice_from_counts",
    "dice_score",
    "iou_from_counts",
    "iou_score",
    "spro_curve",
    "spro_score",
    "threshold_sweep",
]


def check_binary(mask: torch.Tensor, name: str = "gt_mask") -> torch.Tensor:
    """Return ``mask`` as a bool tensor, raising ``ValueError`` if it holds values other than 0 and 1."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() and torch.isnan(mask).any():
        msg = f"{name} must be a binary mask (0/1 or bool) but contains NaN."
        raise ValueError(msg)
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        values = torch.unique(mask[bad])[:5].tolist()
        msg = f"{name} must be a binary mask (0/1 or bool) but contains other values, e.g. {values}."
        raise ValueError(msg)
    return mask != 0


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` naming both tensors if their shapes differ."""
    if a.shape != b.shape:
        msg = f"Shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}."
        raise ValueError(msg)


def binary_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int]:
    """Count true positives, false positives and false negatives of two binary masks of the same shape."""
    check_same_shape(pred, target, "pred", "target")
    pred = check_binary(pred, "pred")
    target = check_binary(target, "target")
    tp = int((pred & target).sum())
    fp = int(pred.sum()) - tp
    fn = int(target.sum()) - tp
    return tp, fp, fn


def dice_from_counts(tp: torch.Tensor | float, fp: torch.Tensor | float, fn: torch.Tensor | float) -> torch.Tensor:
    """Dice = 2TP / (2TP + FP + FN), element-wise; 1.0 where the denominator is 0 (empty vs empty)."""
    tp, fp, fn = (torch.as_tensor(x, dtype=torch.float64) for x in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1e-300), torch.ones_like(den))


def iou_from_counts(tp: torch.Tensor | float, fp: torch.Tensor | float, fn: torch.Tensor | float) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN), element-wise; 1.0 where the denominator is 0 (empty vs empty)."""
    tp, fp, fn = (torch.as_tensor(x, dtype=torch.float64) for x in (tp, fp, fn))
    den = tp + fp + fn
    return torch.where(den > 0, tp / den.clamp_min(1e-300), torch.ones_like(den))


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice (F1) of two binary masks of any (equal) shape, pooled over all pixels.

    Args:
        pred: Predicted binary mask.
        target: Ground-truth binary mask, same shape.

    Returns:
        Scalar float tensor; 1.0 if both masks are empty.
    """
    return dice_from_counts(*binary_counts(pred, target)).float()


def iou_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU (Jaccard) of two binary masks of any (equal) shape, pooled over all pixels; 1.0 if both are empty."""
    return iou_from_counts(*binary_counts(pred, target)).float()


def histogram_counts(
    scores: torch.Tensor,
    target: torch.Tensor,
    low: float,
    width: float,
    num_bins: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram positives/negatives into ``num_bins`` bins ``[low + k*width, low + (k+1)*width)``.

    Scores outside the range are clamped into the first/last bin.
    """
    idx = ((scores.double() - low) / width).floor().clamp_(0, num_bins - 1).long()
    pos = torch.bincount(idx[target], minlength=num_bins)
    neg = torch.bincount(idx[~target], minlength=num_bins)
    return pos, neg


def sweep_from_histogram(
    pos: torch.Tensor,
    neg: torch.Tensor,
    low: float,
    width: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn per-bin counts into a descending threshold sweep ``(thresholds, tp, fp)``.

    Threshold ``k`` is the lower edge of bin ``k``; predicted positive = every score in bins ``>= k``.
    """
    tp = pos.flip(0).cumsum(0).flip(0)
    fp = neg.flip(0).cumsum(0).flip(0)
    thresholds = low + width * torch.arange(pos.numel(), dtype=torch.float64)
    keep = (pos + neg) > 0  # empty bins repeat the counts of the next non-empty bin above
    return thresholds[keep].flip(0), tp[keep].flip(0), fp[keep].flip(0)


def threshold_sweep(
    scores: torch.Tensor,
    target: torch.Tensor,
    num_thresholds: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Cumulative TP/FP counts for every candidate threshold (like a PR curve).

    Args:
        scores: Anomaly scores, any shape.
        target: Binary ground truth, same shape.
        num_thresholds: ``None`` for the exact sweep over all unique scores (sorts all pixels: memory ~ 20 bytes per
            pixel). An int bins the score range ``[min, max]`` into that many equal bins instead (memory O(bins),
            thresholds exact to one bin width).

    Returns:
        ``(thresholds, tp, fp, num_positives)`` with thresholds in descending order; ``tp[i]``/``fp[i]`` count the
        pixels with ``score >= thresholds[i]``.
    """
    check_same_shape(scores, target, "anomaly_maps", "masks")
    target = check_binary(target, "masks").reshape(-1)
    scores = scores.reshape(-1)
    if scores.numel() == 0:
        msg = "anomaly_maps is empty."
        raise ValueError(msg)
    if not torch.isfinite(scores).all():
        msg = "anomaly_maps contains NaN or infinite values."
        raise ValueError(msg)
    num_pos = int(target.sum())
    if num_thresholds is not None:
        if num_thresholds < 1:
            msg = f"num_thresholds must be >= 1 or None, got {num_thresholds}."
            raise ValueError(msg)
        low, high = float(scores.min()), float(scores.max())
        width = (high - low) / num_thresholds if high > low else 1.0
        pos, neg = histogram_counts(scores, target, low, width, num_thresholds)
        thr, tp, fp = sweep_from_histogram(pos, neg, low, width)
        return thr, tp, fp, num_pos
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    tp = target[order].long().cumsum(0)
    fp = torch.arange(1, scores.numel() + 1) - tp
    # keep the last index of each run of equal scores: threshold = that score includes the whole run
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    last[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    return sorted_scores[last].double(), tp[last], fp[last], num_pos


def _best_from_sweep(
    thresholds: torch.Tensor,
    tp: torch.Tensor,
    fp: torch.Tensor,
    num_pos: int,
    kind: str,
    above_max: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the best Dice/IoU of a sweep; ``above_max`` = a threshold that predicts nothing (default: next float)."""
    fn = num_pos - tp
    scores = dice_from_counts(tp, fp, fn) if kind == "dice" else iou_from_counts(tp, fp, fn)
    # the "predict nothing" threshold (above the maximum): 1.0 if there are no positives, else 0.0
    empty_score = 1.0 if num_pos == 0 else 0.0
    best = int(torch.argmax(scores))
    if scores[best] >= empty_score:
        return scores[best].float(), thresholds[best].float()
    if above_max is None:
        above_max = torch.nextafter(thresholds[0].float(), torch.tensor(float("inf")))
    return torch.tensor(empty_score), torch.as_tensor(above_max).float()


def best_threshold_dice(
    anomaly_maps: torch.Tensor,
    masks: torch.Tensor,
    num_thresholds: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best Dice over all thresholds on the pooled set, as reported by PAEDID/F2PAD ("optimal threshold").

    Equal to the maximum F1 of scikit-learn's ``precision_recall_curve`` on the flattened pixels.

    Args:
        anomaly_maps: Scores, any shape.
        masks: Binary ground truth, same shape.
        num_thresholds: ``None`` = exact over all unique scores; int = binned sweep (see :func:`threshold_sweep`).

    Returns:
        ``(dice, threshold)``: pixels with ``score >= threshold`` are predicted anomalous. With no positive pixel at
        all the best is predicting nothing: ``(1.0, just above max(score))``.
    """
    return _best_from_sweep(*threshold_sweep(anomaly_maps, masks, num_thresholds), kind="dice")


def best_threshold_iou(
    anomaly_maps: torch.Tensor,
    masks: torch.Tensor,
    num_thresholds: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best IoU over all thresholds on the pooled set; same arguments/return as :func:`best_threshold_dice`.

    IoU = Dice / (2 - Dice) is monotone in Dice, so the best threshold is the same as for Dice.
    """
    return _best_from_sweep(*threshold_sweep(anomaly_maps, masks, num_thresholds), kind="iou")


# ---------------------------------------------------------------------------------------------------------------------
# sPRO (MVTec LOCO AD, Bergmann et al., IJCV 2022)
# ---------------------------------------------------------------------------------------------------------------------


def _stack_regions(
    anomaly_maps: torch.Tensor,
    masks_per_defect: Sequence[torch.Tensor],
    saturation_thresholds: float | Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate inputs; return ``(regions[R,H,W] bool, image_index[R], saturation[R] in pixels)``."""
    if anomaly_maps.dim() != 3:
        msg = f"anomaly_maps must have shape (N, H, W), got {tuple(anomaly_maps.shape)}."
        raise ValueError(msg)
    n, h, w = anomaly_maps.shape
    if len(masks_per_defect) != n:
        msg = f"masks_per_defect must hold one (R_i, H, W) tensor per image: got {len(masks_per_defect)} for {n} maps."
        raise ValueError(msg)
    regions, image_index = [], []
    for i, m in enumerate(masks_per_defect):
        m = m.reshape(-1, *m.shape[-2:]) if m.numel() else m.reshape(0, h, w)
        if m.shape[-2:] != (h, w):
            msg = f"masks_per_defect[{i}] has spatial size {tuple(m.shape[-2:])} but anomaly_maps has {(h, w)}."
            raise ValueError(msg)
        regions.append(check_binary(m.to(anomaly_maps.device), f"masks_per_defect[{i}]"))
        image_index.append(torch.full((m.shape[0],), i, dtype=torch.long, device=anomaly_maps.device))
    regions_t = torch.cat(regions) if regions else torch.zeros(0, h, w, dtype=torch.bool)
    image_index_t = torch.cat(image_index) if image_index else torch.zeros(0, dtype=torch.long)
    area = regions_t.sum((1, 2)).double()
    if (area == 0).any():
        msg = "masks_per_defect contains an empty defect mask (every defect needs at least one pixel)."
        raise ValueError(msg)
    if isinstance(saturation_thresholds, (int, float)):
        if not 0 < saturation_thresholds <= 1:
            msg = f"A scalar saturation threshold is an area fraction in (0, 1], got {saturation_thresholds}."
            raise ValueError(msg)
        saturation = area * float(saturation_thresholds)
    else:
        if len(saturation_thresholds) != n:
            msg = f"saturation_thresholds must hold one (R_i,) tensor per image: got {len(saturation_thresholds)}."
            raise ValueError(msg)
        sat = [torch.as_tensor(s, dtype=torch.float64).reshape(-1) for s in saturation_thresholds]
        if [s.numel() for s in sat] != [int((image_index_t == i).sum()) for i in range(n)]:
            msg = "saturation_thresholds must give exactly one value per defect mask of each image."
            raise ValueError(msg)
        saturation = torch.cat(sat).to(area.device) if sat else torch.zeros(0, dtype=torch.float64)
        if (saturation <= 0).any():
            msg = "saturation_thresholds (pixel areas) must be > 0."
            raise ValueError(msg)
    # a saturation larger than the defect could never be reached: cap it at the defect area
    return regions_t, image_index_t, torch.minimum(saturation, area)


def spro_score(
    anomaly_maps: torch.Tensor,
    masks_per_defect: Sequence[torch.Tensor],
    saturation_thresholds: float | Sequence[torch.Tensor],
    threshold: float,
) -> torch.Tensor:
    """Saturated per-region overlap at one threshold (MVTec LOCO AD).

    ``sPRO = 1/R * sum_r min(|P ∩ A_r| / s_r, 1)`` over all defects ``A_r`` of all images, with ``P`` the pixels
    with ``score >= threshold`` and ``s_r`` the saturation area of defect ``r``.

    Args:
        anomaly_maps: ``(N, H, W)`` scores.
        masks_per_defect: One ``(R_i, H, W)`` binary tensor per image, one channel per defect (``R_i`` may be 0).
            Defects may overlap (MVTec LOCO stores each defect as its own mask file).
        saturation_thresholds: Either a float in (0, 1] (fraction of each defect's own area, 1.0 = plain PRO) or one
            ``(R_i,)`` tensor of absolute pixel areas per image. Areas above the defect area are capped to it.
        threshold: Binarisation threshold.

    Returns:
        Scalar sPRO; ``nan`` if there is no defect.
    """
    regions, image_index, saturation = _stack_regions(anomaly_maps, masks_per_defect, saturation_thresholds)
    if regions.shape[0] == 0:
        return torch.tensor(float("nan"))
    overlap = ((anomaly_maps[image_index] >= threshold) & regions).sum((1, 2)).double()
    return (overlap / saturation).clamp(max=1.0).mean().float()


def spro_curve(
    anomaly_maps: torch.Tensor,
    masks_per_defect: Sequence[torch.Tensor],
    saturation_thresholds: float | Sequence[torch.Tensor],
    negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPRO as a function of the false positive rate, exact over all unique thresholds.

    Args:
        anomaly_maps: ``(N, H, W)`` scores.
        masks_per_defect: As in :func:`spro_score`.
        saturation_thresholds: As in :func:`spro_score`.
        negatives: ``(N, H, W)`` binary mask of the pixels that count for the FPR. ``None`` = the MVTec LOCO
            protocol: every pixel of the images without any defect (anomaly-free images); if there is no such image,
            the background pixels of all images are used (the AUPRO protocol).

    Returns:
        ``(fpr, spro, thresholds)``, ascending in FPR, starting at ``(0, 0, +inf)``.
    """
    regions, image_index, saturation = _stack_regions(anomaly_maps, masks_per_defect, saturation_thresholds)
    if regions.shape[0] == 0:
        msg = "spro_curve needs at least one defect mask."
        raise ValueError(msg)
    n = anomaly_maps.shape[0]
    if negatives is None:
        has_defect = torch.zeros(n, dtype=torch.bool, device=anomaly_maps.device)
        has_defect[image_index] = True
        if (~has_defect).any():
            negatives = (~has_defect)[:, None, None].expand_as(anomaly_maps)
        else:
            union = torch.zeros_like(anomaly_maps, dtype=torch.bool).index_put_(
                (image_index,), regions, accumulate=True
            )
            negatives = ~union
    else:
        check_same_shape(negatives, anomaly_maps, "negatives", "anomaly_maps")
        negatives = check_binary(negatives, "negatives")
    neg_scores = anomaly_maps[negatives].double()
    if neg_scores.numel() == 0:
        msg = "No negative pixels to compute the false positive rate."
        raise ValueError(msg)

    # Each defect pixel adds min(j/s, 1) - min((j-1)/s, 1) to its region's overlap score, j = its rank (best first)
    # within the region. Ranks: sort by score descending, then stably by region id.
    region_id = torch.arange(regions.shape[0], device=regions.device)[:, None, None].expand_as(regions)[regions]
    pix_scores = anomaly_maps[image_index][regions].double()
    order = torch.argsort(pix_scores, descending=True, stable=True)
    order = order[torch.argsort(region_id[order], stable=True)]
    counts = torch.bincount(region_id, minlength=regions.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, order.numel() + 1, device=order.device) - starts[region_id[order]]
    sat = saturation[region_id]
    gain = (rank / sat).clamp(max=1.0) - ((rank - 1) / sat).clamp(max=1.0)

    all_scores = torch.cat([pix_scores, neg_scores])
    all_gain = torch.cat([gain, torch.zeros_like(neg_scores)]) / regions.shape[0]
    all_fp = torch.cat([torch.zeros_like(pix_scores), torch.ones_like(neg_scores)]) / neg_scores.numel()
    glob = torch.argsort(all_scores, descending=True, stable=True)
    sorted_scores = all_scores[glob]
    spro = all_gain[glob].cumsum(0).clamp(max=1.0)
    fpr = all_fp[glob].cumsum(0).clamp(max=1.0)
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    last[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    zero = torch.zeros(1, dtype=torch.float64, device=fpr.device)
    inf = torch.full((1,), float("inf"), dtype=torch.float64, device=fpr.device)
    return torch.cat([zero, fpr[last]]), torch.cat([zero, spro[last]]), torch.cat([inf, sorted_scores[last]])


def area_under_limited_curve(fpr: torch.Tensor, tpr: torch.Tensor, fpr_limit: float) -> torch.Tensor:
    """Trapezoidal area under ``tpr(fpr)`` on ``[0, fpr_limit]`` (linear interpolation at the limit), / fpr_limit."""
    if not 0 < fpr_limit <= 1:
        msg = f"fpr_limit must be in (0, 1], got {fpr_limit}."
        raise ValueError(msg)
    inside = fpr <= fpr_limit
    i = int(inside.nonzero()[-1])
    x, y = fpr[: i + 1], tpr[: i + 1]
    if x[-1] < fpr_limit and i + 1 < fpr.numel():
        x0, x1, y0, y1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x = torch.cat([x, x.new_tensor([fpr_limit])])
        y = torch.cat([y, y_lim.reshape(1)])
    return (auc(x, y) / fpr_limit).float()


def aspro_score(
    anomaly_maps: torch.Tensor,
    masks_per_defect: Sequence[torch.Tensor],
    saturation_thresholds: float | Sequence[torch.Tensor],
    fpr_limit: float = 0.05,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised area under the sPRO curve up to ``fpr_limit`` (MVTec LOCO reports 0.05; also 0.01, 0.1, 0.3)."""
    fpr, spro, _ = spro_curve(anomaly_maps, masks_per_defect, saturation_thresholds, negatives)
    return area_under_limited_curve(fpr, spro, fpr_limit)
