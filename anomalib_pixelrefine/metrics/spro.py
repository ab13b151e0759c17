"""sPRO: saturated per-region overlap (MVTec LOCO AD, Bergmann et al., IJCV 2022) as an anomalib metric.

anomalib 2.7 has AUPRO, PRO and (AU)PIMO but no sPRO, and its ``MVTecLOCODataset`` merges the per-defect masks
into one binary ``gt_mask`` (the per-defect ``semantic_mask`` is not put into the batch). So this module adds:

* the sPRO curve/AUC itself (:func:`~anomalib_pixelrefine.metrics.functional.spro_curve`), which reduces to
  anomalib's AUPRO for saturation 1.0 with background negatives (checked in the tests);
* two ways to get defects and saturation areas:

  - default: each connected component of ``gt_mask`` is one defect (anomalib's ``connected_components_cpu``) and
    its saturation area is ``saturation`` x its own area (``saturation=1.0`` = plain PRO);
  - MVTec LOCO: ``defects_config`` (path to a category's ``defects_config.json`` or its parsed list) plus the
    ``mask_path`` batch field. Every mask file in the image's ground-truth folder is one defect; its pixel value
    selects the config entry (``saturation_threshold`` in pixels, or a fraction of the defect area if
    ``relative_saturation``). Masks are resized (nearest) to the anomaly map and absolute areas scaled by the
    resize ratio.

The FPR follows the LOCO protocol: all pixels of the anomaly-free test images (if the test set has none, the
background pixels of all images, as in AUPRO). The result is the area under the sPRO curve up to ``fpr_limit``,
normalised by ``fpr_limit`` (LOCO's main number uses 0.05). Anomaly maps are kept (float32, CPU) until ``compute``
like anomalib's AUPRO, because the exact curve needs every pixel. Single-process only (no DDP sync of the
variable-size defect lists).

Example:
    >>> from anomalib_pixelrefine.metrics import SPRO
    >>> spro = SPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", saturation=0.5)
    >>> loco = SPRO(
    ...     fields=["anomaly_map", "gt_mask", "mask_path"],
    ...     defects_config="datasets/MVTec_LOCO/juice_bottle/defects_config.json",
    ... )
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.metrics import AnomalibMetric
from anomalib.utils.cv import connected_components_cpu
from PIL import Image
from torch.nn import functional as F
from torchmetrics import Metric

from .functional import aspro_score, check_binary
from .undefined import undefined

__all__ = ["SPRO", "load_defects_config"]

_IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"}


def load_defects_config(config: str | Path | Sequence[dict]) -> dict[int, tuple[float, bool]]:
    """Parse an MVTec LOCO ``defects_config.json`` into ``{pixel_value: (saturation_threshold, relative)}``."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            msg = f"defects_config file not found: {path}"
            raise FileNotFoundError(msg)
        config = json.loads(path.read_text())
    table = {}
    for i, entry in enumerate(config):
        missing = {"pixel_value", "saturation_threshold", "relative_saturation"} - set(entry)
        if missing:
            msg = f"defects_config entry {i} is missing key(s) {sorted(missing)}: {entry}"
            raise ValueError(msg)
        table[int(entry["pixel_value"])] = (float(entry["saturation_threshold"]), bool(entry["relative_saturation"]))
    return table


class _SPRO(Metric):
    """Area under the sPRO curve up to ``fpr_limit``.

    Args:
        fpr_limit: Upper FPR integration limit in (0, 1]. Defaults to 0.05 (MVTec LOCO).
        saturation: Saturation area as a fraction of each defect's area, used when no ``defects_config`` is given.
        defects_config: MVTec LOCO ``defects_config.json`` path or parsed list; needs the ``mask_path`` field.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        fpr_limit: float = 0.05,
        saturation: float = 1.0,
        defects_config: str | Path | Sequence[dict] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < fpr_limit <= 1:
            msg = f"fpr_limit must be in (0, 1], got {fpr_limit}."
            raise ValueError(msg)
        if not 0 < saturation <= 1:
            msg = f"saturation is a fraction of the defect area in (0, 1], got {saturation}."
            raise ValueError(msg)
        self.fpr_limit = float(fpr_limit)
        self.saturation = float(saturation)
        self.defects = load_defects_config(defects_config) if defects_config is not None else None
        # list states: one entry per batch (maps) or per image ((R_i, H, W) defects, (R_i,) saturation areas)
        self.add_state("maps", default=[], dist_reduce_fx="cat")
        self.add_state("regions", default=[], dist_reduce_fx="cat")
        self.add_state("saturations", default=[], dist_reduce_fx="cat")

    def _regions_from_components(self, target: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # anomalib numbers the components 1..N consecutively image after image (and torch.unique is slow on CPU)
        labels = connected_components_cpu(target[:, None].float().cpu())[:, 0]
        last = labels.flatten(1).amax(1).tolist()
        regions, sats = [], []
        first = 1
        for image_labels, last_id in zip(labels, last, strict=True):
            ids = torch.arange(first, max(first, last_id + 1), dtype=image_labels.dtype)
            first = max(first, last_id + 1)
            region = image_labels[None] == ids[:, None, None]
            regions.append(region)
            sats.append(region.sum((1, 2)).double() * self.saturation)
        return regions, sats

    def _regions_from_loco(
        self,
        target: torch.Tensor,
        mask_paths: Sequence[str | None],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        h, w = target.shape[-2:]
        regions, sats = [], []
        for has_defect, mask_path in zip(target.flatten(1).any(1).tolist(), mask_paths, strict=True):
            folder = Path(mask_path).parent if mask_path else None
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if folder else []
            if has_defect and not files:
                msg = (
                    f"gt_mask has defect pixels but no ground-truth mask files were found for mask_path={mask_path!r}."
                )
                raise ValueError(msg)
            image_regions, image_sats = [], []
            for file in files if has_defect else []:
                mask = np.asarray(Image.open(file))
                mask = mask[..., 0] if mask.ndim == 3 else mask
                value = int(mask.max())
                if value == 0:
                    continue
                if value not in self.defects:
                    msg = (
                        f"Mask {file} has pixel value {value}, which is not in defects_config ({sorted(self.defects)})."
                    )
                    raise ValueError(msg)
                full = torch.from_numpy(mask == value)
                small = F.interpolate(full[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0
                if not small.any():  # a defect thinner than one map pixel: keep the pixels it touches
                    small = F.adaptive_max_pool2d(full[None, None].float(), (h, w))[0, 0] > 0
                threshold, relative = self.defects[value]
                area = small.sum().double()
                sat = area * threshold if relative else torch.tensor(threshold * h * w / full.numel()).double()
                image_regions.append(small)
                image_sats.append(sat.reshape(1))
            regions.append(torch.stack(image_regions) if image_regions else torch.zeros(0, h, w, dtype=torch.bool))
            sats.append(torch.cat(image_sats) if image_sats else torch.zeros(0, dtype=torch.float64))
        return regions, sats

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        mask_paths: Sequence[str | None] | None = None,
    ) -> None:
        """Store a batch of anomaly maps ``(B, [1,] H, W)`` with binary ``gt_mask`` and, for LOCO, ``mask_path``."""
        target = check_binary(target, "gt_mask")
        if preds.dim() == 4 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if preds.shape != target.shape or preds.dim() != 3:
            msg = (
                f"Shape mismatch: anomaly_map has shape {tuple(preds.shape)} but gt_mask has shape "
                f"{tuple(target.shape)} (expected equal (B, H, W))."
            )
            raise ValueError(msg)
        if self.defects is None:
            regions, sats = self._regions_from_components(target)
        else:
            if mask_paths is None:
                msg = (
                    'SPRO with defects_config needs the "mask_path" field: '
                    'fields=["anomaly_map", "gt_mask", "mask_path"].'
                )
                raise ValueError(msg)
            regions, sats = self._regions_from_loco(target.cpu(), list(mask_paths))
        self.maps.append(preds.detach().float().cpu())
        self.regions.extend(regions)
        self.saturations.extend(sats)

    def compute(self) -> torch.Tensor:
        """Normalised area under the sPRO curve on ``[0, fpr_limit]``; ``nan`` if the test set has no defect."""
        if not self.maps:
            msg = "SPRO.compute() called before any update."
            raise RuntimeError(msg)
        if sum(r.shape[0] for r in self.regions) == 0:
            return undefined(self, "the ground truth has no defect region (a test set of normal images only)")
        maps = torch.cat(self.maps)
        return aspro_score(maps, self.regions, self.saturations, fpr_limit=self.fpr_limit)


class SPRO(AnomalibMetric, _SPRO):  # type: ignore[misc]
    """AUC-sPRO as an anomalib metric (default fields ``anomaly_map``, ``gt_mask``; add ``mask_path`` for LOCO)."""

    default_fields = ("anomaly_map", "gt_mask")
