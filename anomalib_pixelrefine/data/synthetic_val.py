"""Validation without annotated defects: held-back normal training images plus copies with synthetic defects.

Most anomalib users have only normal images. anomalib's ``val_split_mode="synthetic"`` holds back a share of the
training images and paints DRAEM-style Perlin anomalies on half of them; thresholds calibrated that way fit Perlin
blobs only. :class:`SyntheticValidationMixin` keeps anomalib's split (same ``val_split_ratio``, same seed) and paints
every kind of this package's generators instead (cut-paste, scars, Perlin, cracks, strokes, stains, burns, pitting,
scratches, texture swaps, in turn), on a copy of *every* held-back image, so validation has as many normal as
defective images and never touches the test split. Image and pixel thresholds (anomalib's F1-adaptive ones) and the
refiners' initial masks are then calibrated without a single annotated defect.

Example:
    >>> from anomalib_pixelrefine.data import SyntheticValMVTecAD
    >>> datamodule = SyntheticValMVTecAD(root="./datasets/MVTecAD", category="bottle")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import pandas as pd
from anomalib.data import Folder, MVTecAD
from anomalib.data.datasets.base import AnomalibDataset
from anomalib.data.datasets.image.mvtecad import IMG_EXTENSIONS, MVTecADDataset, make_mvtec_ad_dataset
from anomalib.data.utils import Split, ValSplitMode, read_image
from anomalib.data.utils.split import random_split
from anomalib.data.utils.synthetic import SyntheticAnomalyDataset
from PIL import Image

from anomalib_pixelrefine.checks import DEFAULT_MAX_FALSE_ALARM_RATE, check_number, normals_needed

from .generators import defect_generator, to_uint8

logger = logging.getLogger(__name__)

__all__ = [
    "SYNTHETIC_VAL_DEFECTS",
    "AnyImageMVTecADDataset",
    "SyntheticDefectValDataset",
    "SyntheticValFolder",
    "SyntheticValMVTecAD",
]

#: Defect kinds painted on the held-back images, in turn.
SYNTHETIC_VAL_DEFECTS: tuple[str, ...] = (
    "cut_paste_color",
    "scar",
    "perlin",
    "crack",
    "hand_drawn",
    "stain",
    "burn",
    "pitting",
    "scratch",
    "texture_swap",
)


class SyntheticDefectValDataset(SyntheticAnomalyDataset):
    """Normal images plus one defective copy of each (this package's generators), written to a temporary folder.

    Reuses anomalib's :class:`SyntheticAnomalyDataset` life cycle (the temporary folder is removed with the dataset;
    copies do not remove it), with this package's defect kinds instead of Perlin noise only.

    Args:
        augmentations: The source dataset's augmentations.
        source_samples: anomalib samples of normal images (``image_path``, ``label``, ``label_index``, ...).
        dataset_name: Name used for the temporary folder.
        defects: Defect kinds, used in turn (names of :func:`anomalib_pixelrefine.data.generators.defect_generator`).
        seed: Seed of the defects (image ``i`` gets its own generator seeded with ``(seed, i)``).
    """

    def __init__(
        self,
        augmentations: Any,
        source_samples: pd.DataFrame,
        dataset_name: str,
        defects: Sequence[str] = SYNTHETIC_VAL_DEFECTS,
        seed: int = 0,
    ) -> None:
        # Not SyntheticAnomalyDataset.__init__: it would paint Perlin anomalies; the rest of its life cycle is kept.
        AnomalibDataset.__init__(self, augmentations=augmentations)

        if len(source_samples) == 0:
            msg = "The synthetic validation set needs at least one held-back normal image (raise val_split_ratio)."
            raise ValueError(msg)
        if (source_samples.label_index == 1).any():
            msg = "The synthetic validation set must be built from normal images only."
            raise ValueError(msg)
        self.source_samples = source_samples
        self.root = Path(mkdtemp(prefix=f"pixelrefine_val_{dataset_name}_"))
        self._cleanup = True
        (self.root / "abnormal").mkdir()
        (self.root / "ground_truth").mkdir()
        normal = source_samples.filter(["image_path", "label", "label_index", "mask_path", "split"]).copy()
        normal["split"] = Split.VAL
        rows = []
        for index, path in enumerate(normal.image_path):
            generator = defect_generator(defects[index % len(defects)], seed=seed * 1_000_003 + index)
            image = read_image(path, as_tensor=True)
            defective, mask = generator(image[:3] if image.shape[0] > 3 else image)
            name = f"{index:04d}.png"
            Image.fromarray(to_uint8(defective)).save(self.root / "abnormal" / name)
            Image.fromarray(to_uint8(mask, is_mask=True)).save(self.root / "ground_truth" / name)
            rows.append(
                {
                    "image_path": str(self.root / "abnormal" / name),
                    "label": "abnormal",
                    "label_index": 1,
                    "mask_path": str(self.root / "ground_truth" / name),
                    "split": Split.VAL,
                }
            )
        normal["mask_path"] = ""
        self.samples = pd.concat([normal, pd.DataFrame(rows)], ignore_index=True)
        self.samples.attrs["task"] = "segmentation"


class SyntheticValidationMixin:
    """anomalib datamodule mixin: ``val_split_mode="synthetic"`` paints this package's defect kinds.

    Args:
        val_defects: Defect kinds painted on the held-back normal images (default :data:`SYNTHETIC_VAL_DEFECTS`).
        max_false_alarm_rate: The false-alarm budget the post-processor will use (default: the post-processors'
            default, ``None``: not known). The share of held-back training images is raised, up to half of them, so
            that at least ``1 / max_false_alarm_rate - 1`` normal images are held back and the budget's threshold
            meets it (:func:`~anomalib_pixelrefine.post_processing.decision.false_alarm_threshold`).
        *args: The datamodule's arguments.
        **kwargs: The datamodule's keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        val_defects: Sequence[str] | None = None,
        max_false_alarm_rate: float | None = DEFAULT_MAX_FALSE_ALARM_RATE,
        **kwargs: Any,
    ) -> None:
        check_number(type(self).__name__, "max_false_alarm_rate", max_false_alarm_rate, 0, 1, optional=True)
        self.max_false_alarm_rate = max_false_alarm_rate
        self.val_defects = list(val_defects or SYNTHETIC_VAL_DEFECTS)
        for name in self.val_defects:
            defect_generator(name, 0)  # one-line error for an unknown kind, before any work
        super().__init__(*args, **kwargs)

    def _create_val_split(self) -> None:
        if self.val_split_mode != ValSplitMode.SYNTHETIC:
            super()._create_val_split()  # type: ignore[misc]
            return
        # anomalib's own split of the training images (same ratio and seed as its synthetic mode).
        self.train_data, normal_val = random_split(self.train_data, self._held_back_ratio(), seed=self.seed)
        seed = 0 if self.seed is None else int(self.seed)
        self.val_data = SyntheticDefectValDataset(
            normal_val.augmentations,
            normal_val.samples,
            normal_val.name,
            defects=self.val_defects,
            seed=seed,
        )

    def _held_back_ratio(self) -> float:
        """``val_split_ratio``, raised (at most to 0.5) to hold back what ``max_false_alarm_rate`` needs."""
        ratio = float(self.val_split_ratio)
        rate, total = self.max_false_alarm_rate, len(self.train_data)
        if not rate or total == 0:
            return ratio
        needed = normals_needed(rate)
        if ratio * total >= needed:
            return ratio
        raised = min(needed / total, 0.5)
        logger.info(
            "%s: max_false_alarm_rate=%g needs %d held-back normal images; val_split_ratio raised %.2f -> %.2f.",
            type(self).__name__,
            rate,
            needed,
            ratio,
            raised,
        )
        if raised * total < needed:
            logger.warning(
                "%s: %d training images cannot hold back %d normal images for max_false_alarm_rate=%g (half are kept "
                "for training); the budget's threshold will be the maximum of the held-back scores.",
                type(self).__name__,
                total,
                needed,
                rate,
            )
        return max(ratio, raised)


class AnyImageMVTecADDataset(MVTecADDataset):
    """anomalib's ``MVTecADDataset`` reading every image format :func:`~.folder.validate_mvtec_folder` accepts.

    anomalib's reads ``.png``/``.PNG`` only and silently drops JPEG, BMP, TIFF and WebP files. The samples are built
    by anomalib's own ``make_mvtec_ad_dataset`` (same image/mask matching), with the extensions found in the folder.

    Args:
        root: Dataset root.
        category: Category folder name.
        augmentations: Augmentations applied to the images.
        split: ``train``, ``test`` or ``None`` (both).
    """

    def __init__(
        self,
        root: Path | str,
        category: str,
        augmentations: Any = None,
        split: str | Split | None = None,
    ) -> None:
        from .folder import IMAGE_EXTENSIONS

        AnomalibDataset.__init__(self, augmentations=augmentations)  # MVTecADDataset's would read PNG only
        self.root_category = Path(root) / category
        self.category = category
        self.split = split
        files = self.root_category.rglob("*")
        suffixes = tuple(sorted({f.suffix for f in files if f.suffix.lower() in IMAGE_EXTENSIONS})) or IMG_EXTENSIONS
        self.samples = make_mvtec_ad_dataset(self.root_category, split=split, extensions=suffixes)


class SyntheticValMVTecAD(SyntheticValidationMixin, MVTecAD):
    """anomalib's ``MVTecAD`` with synthetic validation by default (``val_split_mode="synthetic"``, 25 %).

    Args:
        *args: ``MVTecAD`` arguments.
        val_split_mode: anomalib's validation mode; ``synthetic`` uses this package's defect kinds.
        val_split_ratio: Share of the training images held back for validation.
        val_defects: See :class:`SyntheticValidationMixin`.
        max_false_alarm_rate: See :class:`SyntheticValidationMixin`.
        **kwargs: ``MVTecAD`` keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        val_split_mode: ValSplitMode | str = ValSplitMode.SYNTHETIC,
        val_split_ratio: float = 0.25,
        val_defects: Sequence[str] | None = None,
        max_false_alarm_rate: float | None = DEFAULT_MAX_FALSE_ALARM_RATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            val_defects=val_defects,
            max_false_alarm_rate=max_false_alarm_rate,
            **kwargs,
        )

    def _setup(self, _stage: str | None = None) -> None:
        """As anomalib's ``MVTecAD``, with datasets that read every accepted image format (not PNG only)."""
        self.train_data = AnyImageMVTecADDataset(split=Split.TRAIN, root=self.root, category=self.category)
        self.test_data = AnyImageMVTecADDataset(split=Split.TEST, root=self.root, category=self.category)


class SyntheticValFolder(SyntheticValidationMixin, Folder):
    """anomalib's ``Folder`` with synthetic validation by default (``val_split_mode="synthetic"``, 25 %).

    Args:
        *args: ``Folder`` arguments.
        val_split_mode: anomalib's validation mode; ``synthetic`` uses this package's defect kinds.
        val_split_ratio: Share of the training images held back for validation.
        val_defects: See :class:`SyntheticValidationMixin`.
        max_false_alarm_rate: See :class:`SyntheticValidationMixin`.
        **kwargs: ``Folder`` keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        val_split_mode: ValSplitMode | str = ValSplitMode.SYNTHETIC,
        val_split_ratio: float = 0.25,
        val_defects: Sequence[str] | None = None,
        max_false_alarm_rate: float | None = DEFAULT_MAX_FALSE_ALARM_RATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            val_defects=val_defects,
            max_false_alarm_rate=max_false_alarm_rate,
            **kwargs,
        )
