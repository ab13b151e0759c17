"""One benchmark job: fit and test one model x post-processor x data set x seed through anomalib's ``Engine``.

:class:`PixelRefineBenchmarkJob` is anomalib's :class:`~anomalib.pipelines.benchmark.job.BenchmarkJob` with a
different payload: the job holds only its (picklable) configuration and builds the data, model, post-processor and
evaluator inside :meth:`run`, i.e. inside the worker process when the runner isolates jobs. It records the metrics of
the issue (image/pixel AUROC, AUPRO, best Dice/IoU, Dice/IoU at the threshold), fit time, inference time per image and
the peak resident memory, plus per-image Dice for the size plot and a qualitative grid.

Peak memory (``peak_rss_mb``, method in ``rss_method``):

* ``vmhwm``: Linux. The kernel's resident high-water mark is reset at the start of the job (``/proc/self/clear_refs``
  ``5``) and read at its end (``VmHWM``), so it is the peak resident size of the process *during this job*; it
  includes what the process already held (Python, torch, previous jobs when ``isolation: none``), reported
  separately as ``rss_start_mb``.
* ``ru_maxrss``: elsewhere; ``resource.getrusage(...).ru_maxrss``, a process-lifetime high-water mark, exact per job
  only with ``isolation: process`` (each job in a fresh process).
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import os
import re
import resource
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch
from anomalib.pipelines.benchmark.job import BenchmarkJob
from lightning.pytorch import Callback, seed_everything
from torch.nn import functional as F

from anomalib_pixelrefine import registry

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_COLUMNS",
    "OPERATING_BUDGETS",
    "ComponentUnavailableError",
    "PixelRefineBenchmarkJob",
    "build_datamodule",
    "build_test_metrics",
    "calibration_name",
    "host_pixel_threshold",
    "model_init_args",
    "pretrained_label",
    "resolve_model_class",
    "resolve_post_processor",
]

# Short names of this package's models (imported lazily: one that cannot be imported gives a skipped row).
OUR_MODELS: dict[str, str] = registry.MODELS
DEFAULT_DATA = {"default", "pixelrefine", "embedded"}
# ``init_args`` of the embedded data: ``category``, then ``build_default_benchmark``'s and ``default_datamodule``'s.
DEFAULT_DATA_BUILD_KEYS = ("root", "image_size", "n_train", "n_test_good", "n_test_defect", "defects", "seed")
DEFAULT_DATA_LOADER_KEYS = (
    "train_batch_size",
    "eval_batch_size",
    "num_workers",
    "val_split_mode",
    "val_split_ratio",
    "max_false_alarm_rate",
)

# Result column -> (metric class path, fields, prefix). ``best_dice``/``best_iou`` pick the threshold in hindsight on
# the test masks (the oracle); the deployed-threshold columns are ``dice``/``iou`` (pooled) and the per-image ones.
# Our AUROC/AUPRO: nan (not 0.0) when undefined.
METRIC_COLUMNS: dict[str, tuple[str, list[str], str]] = {
    "image_auroc": ("anomalib_pixelrefine.metrics.AUROC", ["pred_score", "gt_label"], "image_"),
    "pixel_auroc": ("anomalib_pixelrefine.metrics.AUROC", ["anomaly_map", "gt_mask"], "pixel_"),
    "aupro": ("anomalib_pixelrefine.metrics.AUPRO", ["anomaly_map", "gt_mask"], "pixel_"),
    "best_dice": ("anomalib_pixelrefine.metrics.BestDice", ["anomaly_map", "gt_mask"], "pixel_"),
    "best_iou": ("anomalib_pixelrefine.metrics.BestIoU", ["anomaly_map", "gt_mask"], "pixel_"),
    "dice": ("anomalib_pixelrefine.metrics.Dice", ["pred_mask", "gt_mask"], "pixel_"),
    "iou": ("anomalib_pixelrefine.metrics.IoU", ["pred_mask", "gt_mask"], "pixel_"),
    "mean_image_dice": ("anomalib_pixelrefine.metrics.MeanImageDice", ["pred_mask", "gt_mask"], "pixel_"),
    "mean_image_iou": ("anomalib_pixelrefine.metrics.MeanImageIoU", ["pred_mask", "gt_mask"], "pixel_"),
    "empty_mask_rate": ("anomalib_pixelrefine.metrics.EmptyMaskRate", ["pred_mask", "gt_mask"], "pixel_"),
    "good_fp_area": ("anomalib_pixelrefine.metrics.GoodFPArea", ["pred_mask", "gt_mask"], "pixel_"),
}
#: Operating points of the benchmark: false-alarm budgets (share of held-back normal validation images allowed above
#: the image threshold: the synthetic-F1 threshold raised to their quantile, as the post-processors deploy it) plus the
#: synthetic-F1 image threshold alone. Each becomes ``op_dice_<name>`` (mean per-image Dice
#: over the defective test images under the decision rule) and ``op_flagged_<name>`` (share of good test images with
#: any mask pixel), and ``op_val_recall_<name>`` (share of synthetic-defect validation images above the threshold).
OPERATING_BUDGETS: dict[str, float | None] = {"0pct": 0.0, "1pct": 0.01, "5pct": 0.05, "10pct": 0.1, "f1": None}

#: Columns computed from the image labels only (image-level data sets such as ``elpv_real``).
IMAGE_LEVEL_COLUMNS = ("image_auroc",)


class ComponentUnavailableError(ImportError):
    """A model, post-processor or data set named in the configuration is not available here (job is skipped)."""


def _import_object(class_path: str) -> Any:
    try:
        return registry.import_object(class_path)
    except (ImportError, AttributeError) as error:
        msg = f"{class_path} is not available ({type(error).__name__}: {error})."
        raise ComponentUnavailableError(msg) from error


def resolve_model_class(name: str) -> type:
    """Return the model class for a short name (``Padim``, ``Pae``, ...) or a full class path.

    Args:
        name: anomalib model name (case-insensitive), one of this package's models, or ``package.module.Class``.

    Returns:
        The ``AnomalibModule`` subclass.

    Raises:
        ComponentUnavailableError: If the class cannot be imported (e.g. an optional dependency is missing).
        ValueError: If the name is unknown or not an ``AnomalibModule``.
    """
    from anomalib.models import AnomalibModule

    cls = _import_object(registry.model_path(name))
    if not (isinstance(cls, type) and issubclass(cls, AnomalibModule)):
        msg = f"{name!r} resolves to {cls!r}, which is not an anomalib AnomalibModule."
        raise ValueError(msg)
    return cls


def resolve_post_processor(spec: str | dict[str, Any] | None) -> Any:
    """Build the post-processor of a job.

    Args:
        spec: ``"default"``/``None`` (the model's own), a short name of ``pixelrefine --post_processor``
            (``f2pad``, ``paedid``), a class path, or ``{"class_path": ..., "init_args": {...}}``.

    Returns:
        ``True`` for the model's default post-processor, otherwise the post-processor instance.

    Raises:
        ComponentUnavailableError: If the class cannot be imported.
        ValueError: For an unknown short name.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "default"):
        return True
    init_args: dict[str, Any] = {}
    if isinstance(spec, dict):
        init_args = dict(spec.get("init_args") or {})
        spec = spec["class_path"]
    return _import_object(registry.post_processor_path(str(spec)))(**init_args)


def post_processor_name(spec: str | dict[str, Any] | None) -> str:
    """Label of a post-processor specification (tables, file names, ``exclude``): its ``name``, else the class."""
    if spec is None:
        return "default"
    if isinstance(spec, dict):
        if spec.get("name"):
            return str(spec["name"])
        spec = spec["class_path"]
    return str(spec).rsplit(".", 1)[-1].lower() if "." in str(spec) else str(spec).lower()


def model_name(spec: str | dict[str, Any]) -> str:
    """Label of a model specification: its ``name`` (a variant of the same class), else the class name."""
    if isinstance(spec, dict) and spec.get("name"):
        return str(spec["name"])
    class_path = spec if isinstance(spec, str) else spec["class_path"]
    return str(class_path).rsplit(".", 1)[-1]


def data_name(spec: str | dict[str, Any]) -> str:
    """Short label of a data specification: the category, prefixed by the datamodule class for anomalib data."""
    if isinstance(spec, str):
        return spec
    init_args = spec.get("init_args") or {}
    label = str(init_args.get("category") or init_args.get("name") or "")
    class_name = str(spec["class_path"]).rsplit(".", 1)[-1]
    if class_name.lower() in DEFAULT_DATA:
        return label or "default"
    return f"{class_name}/{label}" if label else class_name


def calibration_name(spec: str | dict[str, Any]) -> str:
    """How a job's thresholds are calibrated: its validation split.

    ``synthetic`` (the embedded data's default: synthetic defects on held-back training images), ``oracle_test``
    (``same_as_test``: calibrated on the test masks themselves, an upper bound), or the datamodule's mode.
    """
    spec = {"class_path": spec} if isinstance(spec, str) else spec
    mode = (spec.get("init_args") or {}).get("val_split_mode")
    if mode is None:
        return "synthetic" if str(spec["class_path"]).lower() in DEFAULT_DATA else "datamodule"
    mode = str(getattr(mode, "value", mode))
    return "oracle_test" if mode == "same_as_test" else mode


def pretrained_label(init_args: dict[str, Any]) -> str:
    """``true``/``false`` when every backbone of a model's arguments is (not) pretrained, ``mixed``, or ``n/a``."""
    flags = [init_args["pre_trained"]] if "pre_trained" in init_args else []
    flags += [member.get("pre_trained", True) for member in init_args.get("members") or [] if isinstance(member, dict)]
    if "backbone" in init_args and "pre_trained" not in init_args:
        flags.append(True)  # anomalib's default
    if not flags:
        return "n/a"
    return str(bool(flags[0])).lower() if len(set(map(bool, flags))) == 1 else "mixed"


def model_init_args(model_cls: type, init_args: dict[str, Any], seed: int) -> dict[str, Any]:
    """A model's arguments for a job: ``init_args``, plus the job's seed for models with a ``seed`` argument.

    Models such as ``Pae`` and ``Pni`` seed their own weights and coresets; without this every seed of a grid would
    build the same model.

    Args:
        model_cls: The model class.
        init_args: The configured arguments (an explicit ``seed`` is kept).
        seed: The job's seed.

    Returns:
        A new dictionary.
    """
    kwargs = dict(init_args)
    if "seed" in inspect.signature(model_cls).parameters:
        kwargs.setdefault("seed", seed)
    return kwargs


def install_offline_weights(init_args: dict[str, Any]) -> None:
    """Put the offline ImageNet weights of every pretrained EfficientNet-Lite backbone of a model into the hub cache."""
    from anomalib_pixelrefine.weights import ensure_offline_weights

    specs = [init_args, *(m for m in init_args.get("members") or [] if isinstance(m, dict))]
    for spec in specs:
        if spec.get("pre_trained", True) and isinstance(spec.get("backbone"), str):
            ensure_offline_weights(spec["backbone"])


#: Model arguments naming a folder of anomaly-source textures that anomalib downloads (DTD) when it is missing.
TEXTURE_DIR_ARGS = ("dtd_dir",)


def prepare_texture_dirs(init_args: dict[str, Any]) -> list[str]:
    """Create the missing texture folders a model's ``init_args`` name (``Draem``'s ``dtd_dir``), empty.

    anomalib downloads DTD into a missing ``dtd_dir``, which fails offline; with an existing folder without images its
    ``PerlinAnomalyGenerator`` paints Perlin-noise textures instead (anomalib's own fallback). A folder that exists is
    used as it is; the default ``dtd_dir`` (not in ``init_args``) is left to anomalib.

    Returns:
        The folders created.
    """
    created = []
    for key in TEXTURE_DIR_ARGS:
        value = init_args.get(key)
        if isinstance(value, str | Path) and not Path(value).exists():
            Path(value).mkdir(parents=True)
            created.append(str(value))
            logger.warning("%s %s did not exist: created empty (no textures: Perlin-noise anomalies).", key, value)
    return created


def is_image_level(spec: str | dict[str, Any]) -> bool:
    """Whether a data specification is an image-level category of the embedded data (no masks)."""
    from anomalib_pixelrefine.data import IMAGE_LEVEL_CATEGORIES

    spec = {"class_path": spec} if isinstance(spec, str) else spec
    category = (spec.get("init_args") or {}).get("category")
    return str(spec["class_path"]).lower() in DEFAULT_DATA and category in IMAGE_LEVEL_CATEGORIES


def build_default_data(init_args: dict[str, Any]) -> Path:
    """Build (or reuse, it is cached) one category of the embedded default benchmark and return its folder.

    Raises:
        ComponentUnavailableError: For ``elpv`` without the ``elpv-dataset`` package.
    """
    from anomalib_pixelrefine.data import build_default_benchmark, elpv_available

    args = dict(init_args)
    category = args.pop("category", None)
    if category is None:
        msg = "The default data set needs 'init_args.category' (e.g. gravel, brick, grass, elpv)."
        raise ValueError(msg)
    if category == "elpv" and not elpv_available():
        msg = "category 'elpv' needs the optional elpv-dataset package (pip install anomalib-pixelrefine[elpv])."
        raise ComponentUnavailableError(msg)
    kwargs = {key: args[key] for key in DEFAULT_DATA_BUILD_KEYS if key in args}
    kwargs.setdefault("root", "./datasets/pixelrefine")
    return build_default_benchmark(categories=[category], **kwargs)[category]


def build_datamodule(spec: str | dict[str, Any], seed: int) -> Any:
    """Instantiate the datamodule of a job.

    Args:
        spec: ``{"class_path": "default", "init_args": {"category": ..., <build_default_benchmark args>,
            <default_datamodule args>}}`` for the embedded benchmark, or any anomalib datamodule
            (``MVTecAD``, ``Visa``, ``BTech``, ``MVTecLOCO``, ``Folder``, or a class path) with its ``init_args``.
        seed: Seed of the datamodule's splits.

    Returns:
        The datamodule.
    """
    from anomalib.data import AnomalibDataModule

    if isinstance(spec, str):
        spec = {"class_path": spec}
    class_path = str(spec["class_path"])
    init_args = dict(spec.get("init_args") or {})
    if class_path.lower() in DEFAULT_DATA:
        from anomalib_pixelrefine.data import default_datamodule

        path = build_default_data(init_args)
        loader_args = {key: init_args[key] for key in DEFAULT_DATA_LOADER_KEYS if key in init_args}
        return default_datamodule(path, seed=seed, **loader_args)
    if "." in class_path:
        cls = _import_object(class_path)
    else:
        import anomalib.data

        cls = getattr(anomalib.data, class_path, None)
        if cls is None:
            msg = f"Unknown data set {class_path!r}: not 'default', not an anomalib datamodule, not a class path."
            raise ValueError(msg)
    if not (isinstance(cls, type) and issubclass(cls, AnomalibDataModule)):
        msg = f"{class_path!r} is not an anomalib AnomalibDataModule."
        raise ValueError(msg)
    init_args.setdefault("seed", seed)
    return cls(**init_args)


def build_test_metrics(image_level: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Instantiate the test metrics of :data:`METRIC_COLUMNS`.

    Args:
        image_level: The test set has image labels only: build :data:`IMAGE_LEVEL_COLUMNS` only.

    Returns:
        ``({column: metric}, {column: reason})`` where the second dict lists metrics that are not available.
    """
    metrics: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for column, (class_path, fields, prefix) in METRIC_COLUMNS.items():
        if image_level and column not in IMAGE_LEVEL_COLUMNS:
            continue
        try:
            metrics[column] = _import_object(class_path)(fields=fields, prefix=prefix)
        except ComponentUnavailableError as error:
            missing[column] = str(error)
    return metrics, missing


# --------------------------------------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, flags=re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def reset_peak_rss() -> str:
    """Reset the process's resident high-water mark if the OS allows it; return the method used to read it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return "ru_maxrss"
    return "vmhwm" if _status_mb("VmHWM") is not None else "ru_maxrss"


def peak_rss_mb(method: str) -> float:
    """Peak resident memory in MiB (see the module docstring for the two methods)."""
    if method == "vmhwm":
        value = _status_mb("VmHWM")
        if value is not None:
            return value
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss / (1024 * 1024) if sys.platform == "darwin" else max_rss / 1024


# -------------------------------------------------------------------------------------------------------- callback
def host_pixel_threshold(post_processor: Any) -> float | None:
    """The deployed pixel threshold of the host model in raw anomaly-map units (``None`` when not calibrated).

    A refiner keeps the host's calibrated threshold (its initial masks) in ``host_pixel_threshold``; anomalib's
    ``PostProcessor`` in ``pixel_threshold`` (before its normalisation).
    """
    for name in ("host_pixel_threshold", "pixel_threshold"):
        value = getattr(post_processor, name, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and torch.isfinite(value):
            return float(value)
    return None


class TestOutputCollector(Callback):
    """Collect per-image results and the test-loop time while ``Engine.test`` runs.

    Trainer callbacks run before the model's own callbacks (post-processor, evaluator), so in ``on_test_batch_end``
    this sees the host model's raw anomaly map; the post-processor then updates the same batch object in place,
    which is read at the start of the next batch (or at the end of the epoch).

    Args:
        n_samples: Number of defective images kept for the qualitative grid.
        max_side: Maps kept for the grid are resized to at most this side.
    """

    def __init__(self, n_samples: int = 3, max_side: int = 128) -> None:
        super().__init__()
        self.n_samples = n_samples
        self.max_side = max_side
        self.per_image: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.n_images = 0
        self.seconds = 0.0
        self._start: float | None = None
        self._pending: Any = None
        self._host_maps: list[torch.Tensor | None] = []
        self._raw_scores: torch.Tensor | None = None
        self._post_processor: Any = None
        self.val_scores: list[torch.Tensor] = []  # raw validation image scores and labels, last validation epoch
        self.val_labels: list[torch.Tensor] = []
        self._final: list[tuple[torch.Tensor, torch.Tensor, str | None]] = []  # (map, mask, size bin or None)

    def _small(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().float().cpu().reshape(1, 1, *tensor.shape[-2:])
        scale = self.max_side / max(tensor.shape[-2:])
        if scale < 1:
            tensor = F.interpolate(tensor, scale_factor=scale, mode="bilinear", align_corners=False)
        return tensor[0, 0]

    def _flush(self) -> None:
        from anomalib_pixelrefine.data import size_bin
        from anomalib_pixelrefine.metrics import per_image_mask_stats

        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None
        batch, self._pending = self._pending, None
        if batch is None:
            return
        gt_mask = getattr(batch, "gt_mask", None)
        pred_mask = getattr(batch, "pred_mask", None)
        paths = getattr(batch, "image_path", None) or [""] * len(batch.image)
        labels = getattr(batch, "gt_label", None)
        self.n_images += len(batch.image)
        if gt_mask is None:
            return
        gt = gt_mask.detach().cpu().reshape(len(gt_mask), *gt_mask.shape[-2:]).bool()
        pred = None
        if pred_mask is not None:
            pred = pred_mask.detach().cpu().float().reshape(len(pred_mask), 1, *pred_mask.shape[-2:])
            if pred.shape[-2:] != gt.shape[-2:]:
                pred = F.interpolate(pred, size=gt.shape[-2:], mode="nearest")
            pred = pred[:, 0] > 0.5
        stats = per_image_mask_stats(pred if pred is not None else torch.zeros_like(gt), gt)
        # Masks before the decision rule's image gate (operating points): what the post-processor kept, else final.
        ungated = getattr(self._post_processor, "__dict__", {}).pop("ungated_mask", None)
        free = stats
        if ungated is not None and len(ungated) == len(gt):
            ungated = ungated.detach().cpu().float().reshape(len(gt), 1, *ungated.shape[-2:])
            ungated = F.interpolate(ungated, size=gt.shape[-2:], mode="nearest")[:, 0] > 0.5
            free = per_image_mask_stats(ungated, gt)
        scores = self._raw_scores
        maps = getattr(batch, "anomaly_map", None)
        if maps is not None:  # final (post-processed) maps at mask size, for the per-bin oracle
            maps = maps.detach().cpu().float().reshape(len(maps), 1, *maps.shape[-2:])
            maps = F.interpolate(maps, size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        for index in range(len(gt)):
            area = float(stats["gt_area"][index])
            label = int(labels[index]) if labels is not None else int(area > 0)
            record: dict[str, Any] = {
                "image_path": str(paths[index]),
                "defect": Path(str(paths[index])).parent.name,
                "gt_label": label,
                "area_fraction": area,
                "size_bin": size_bin(area),
                "dice": float(stats["dice"][index]) if pred is not None else math.nan,
                "iou": float(stats["iou"][index]) if pred is not None else math.nan,
                "pred_area_fraction": float(stats["pred_area"][index]) if pred is not None else math.nan,
                "raw_score": float(scores[index]) if scores is not None and index < len(scores) else math.nan,
                "ungated_dice": float(free["dice"][index]) if pred is not None else math.nan,
                "ungated_area_fraction": float(free["pred_area"][index]) if pred is not None else math.nan,
            }
            self.per_image.append(record)
            if maps is not None and (area > 0 or label == 0):  # defective with a mask, or good
                self._final.append((maps[index], gt[index], record["size_bin"] if area > 0 else None))
            host = self._host_maps[index] if index < len(self._host_maps) else None
            if host is not None and len(self.samples) < self.n_samples:
                host_map, host_mask = host
                sample = {
                    "image_path": str(paths[index]),
                    "gt_mask": self._small(gt[index]),
                    "host_map": host_map,
                    "host_mask": host_mask,
                    "pred_mask": self._small(pred[index]) if pred is not None else None,
                }
                self.samples.append(sample)
        self._host_maps = []

    def on_test_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """Finish the previous batch and start the clock."""
        del args, kwargs
        self._flush()
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:
        """Keep the raw host anomaly maps (and the host's own mask at its threshold) still needed for the grid."""
        del trainer, args, kwargs
        self._pending = outputs
        self._post_processor = getattr(pl_module, "post_processor", None)
        score = getattr(outputs, "pred_score", None)
        self._raw_scores = None if score is None else score.detach().float().cpu().reshape(-1)
        maps = getattr(outputs, "anomaly_map", None)
        labels = getattr(outputs, "gt_label", None)
        self._host_maps = []
        needed = self.n_samples - len(self.samples)
        if maps is None or labels is None:
            return
        threshold = host_pixel_threshold(getattr(pl_module, "post_processor", None))
        for index in range(len(maps)):
            keep = needed > 0 and bool(labels[index])
            host_mask = None if threshold is None else self._small((maps[index] > threshold).float()) > 0.5
            self._host_maps.append((self._small(maps[index]), host_mask) if keep else None)
            needed -= int(keep)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Keep the last validation epoch only."""
        del trainer, pl_module
        self.val_scores, self.val_labels = [], []

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:
        """Raw validation image scores and labels (before the post-processor; sanity checks excluded)."""
        del pl_module, args, kwargs
        score, label = getattr(outputs, "pred_score", None), getattr(outputs, "gt_label", None)
        if trainer.sanity_checking or score is None or label is None:
            return
        self.val_scores.append(score.detach().float().cpu().reshape(-1))
        self.val_labels.append(label.detach().cpu().reshape(-1).bool())

    def budget_thresholds(self, f1_threshold: float) -> dict[str, float]:
        """Raw image threshold of each :data:`OPERATING_BUDGETS` entry from the stored normal validation scores.

        No warning for too few normal images here (the table states the count: ``n_val_normal``).
        """
        from anomalib_pixelrefine.post_processing.decision import budget_image_threshold

        if not self.val_scores:
            return {}
        scores, labels = torch.cat(self.val_scores), torch.cat(self.val_labels)
        if not bool((~labels).any()):
            return {}
        normal, out = scores[~labels], {}
        for name, rate in OPERATING_BUDGETS.items():
            out[name] = f1_threshold if rate is None else budget_image_threshold(normal, rate, f1_threshold, warn=False)
        return {name: value for name, value in out.items() if math.isfinite(value)}

    def operating_points(self, thresholds: dict[str, float]) -> dict[str, float]:
        """Per budget: mean per-image Dice (defective test images) and share of good test images with a mask.

        The decision rule at threshold ``t``: an image keeps its (ungated) mask when its raw score is above ``t``,
        its mask is empty otherwise. Validation recall: share of synthetic-defect validation images above ``t``.
        """
        if not self.per_image or not thresholds:
            return {}
        score = torch.tensor([r["raw_score"] for r in self.per_image])
        dice = torch.tensor([r["ungated_dice"] for r in self.per_image])
        area = torch.tensor([r["ungated_area_fraction"] for r in self.per_image])
        good = torch.tensor([r["gt_label"] == 0 for r in self.per_image])
        defective = torch.isfinite(dice)
        val_scores = torch.cat(self.val_scores) if self.val_scores else torch.empty(0)
        val_defective = torch.cat(self.val_labels) if self.val_labels else torch.empty(0, dtype=torch.bool)
        out: dict[str, float] = {"n_val_normal": int((~val_defective).sum())}
        for name, threshold in thresholds.items():
            kept = score > threshold
            out[f"op_threshold_{name}"] = threshold
            out[f"op_dice_{name}"] = (
                float(torch.where(kept, dice, 0.0)[defective].mean()) if defective.any() else math.nan
            )
            flagged = kept & (area > 0)
            out[f"op_flagged_{name}"] = float(flagged[good].float().mean()) if good.any() else math.nan
            if val_defective.any():
                out[f"op_val_recall_{name}"] = float((val_scores[val_defective] > threshold).float().mean())
        return out

    def on_test_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Finish the last batch."""
        del args, kwargs
        self._flush()

    def metrics_by_size_bin(self) -> dict[str, float]:
        """Best Dice in hindsight and AUPRO per size bin: the bin's defective images pooled with every good test image.

        The good images stay in every pool, so a method that marks normal texture pays for it in every bin. Keys are
        ``oracle_dice_<bin>`` and ``aupro_<bin>`` with the bin names of :data:`~anomalib_pixelrefine.data.SIZE_BINS`
        (AUPRO: anomalib's, FPR limit 0.3; unlike pixel AUROC it weighs every defect region alike, so a refiner's
        re-scoring of its support cannot buy it with the large defects).
        """
        from anomalib.metrics.aupro import _AUPRO

        from anomalib_pixelrefine.metrics.functional import best_threshold_dice

        good = [(m, g) for m, g, size in self._final if size is None]
        out = {}
        for size in dict.fromkeys(size for _, _, size in self._final if size is not None):
            pool = [(m, g) for m, g, s in self._final if s == size] + good
            maps, masks = torch.stack([m for m, _ in pool]), torch.stack([g for _, g in pool])
            dice, _ = best_threshold_dice(maps, masks)
            out[f"oracle_dice_{size}"] = float(dice)
            aupro = _AUPRO()
            aupro.update(maps.float(), masks.int())
            out[f"aupro_{size}"] = float(aupro.compute())
        return out


# ------------------------------------------------------------------------------------------------------------- job
class PixelRefineBenchmarkJob(BenchmarkJob):
    """Fit and test one model x post-processor x data set x seed; return one result row.

    Failures do not stop the benchmark: a missing model/post-processor/data set gives ``status="skipped"`` and an
    exception during fit/test ``status="failed"``, both with the reason in ``reason``.

    Args:
        accelerator: ``"cpu"`` or ``"cuda"``.
        seed: Seed of the job.
        job_config: ``{"model", "post_processor", "data", "engine"}`` as expanded from the grid.
        image_size: Side given to the model's pre-processor (``None``: the model's default).
        output_dir: Where the job writes its qualitative grid (``<output_dir>/qualitative/<job_id>.png``).
        qualitative_samples: Defective test images shown in that grid (0: no grid).
        num_threads: Torch CPU threads (``None``: torch's default).
    """

    name = "benchmark"

    def __init__(
        self,
        accelerator: str,
        seed: int,
        job_config: dict[str, Any],
        image_size: int | None = None,
        output_dir: str | Path | None = None,
        qualitative_samples: int = 3,
        num_threads: int | None = None,
    ) -> None:
        # Not calling BenchmarkJob.__init__: it needs instantiated model/datamodule, which are built in ``run``.
        self.accelerator = accelerator
        self.seed = seed
        self.job_config = job_config
        self.image_size = image_size
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.qualitative_samples = qualitative_samples
        self.num_threads = num_threads
        self.flat_cfg = {"seed": seed, **job_config}

    @property
    def labels(self) -> dict[str, Any]:
        """Dataset, model, post-processor and seed labels of the job."""
        return {
            "dataset": data_name(self.job_config["data"]),
            "model": model_name(self.job_config["model"]),
            "post_processor": post_processor_name(self.job_config.get("post_processor")),
            "calibration": calibration_name(self.job_config["data"]),
            "seed": self.seed,
        }

    @property
    def job_id(self) -> str:
        """File-name-safe identifier ``<dataset>-<model>-<post_processor>[-<calibration>]-s<seed>``."""
        labels = self.labels
        calibration = "" if labels["calibration"] in {"synthetic", "datamodule"} else f"-{labels['calibration']}"
        text = f"{labels['dataset']}-{labels['model']}-{labels['post_processor']}{calibration}-s{labels['seed']}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)

    def _model_spec(self) -> dict[str, Any]:
        spec = self.job_config["model"]
        return {"class_path": spec} if isinstance(spec, str) else spec

    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """Run the job; never raises (the row carries ``status`` and ``reason``).

        Args:
            task_id: Worker index given by anomalib's ``ParallelRunner`` (used as the CUDA device index).

        Returns:
            The result row; key ``_per_image`` holds the per-image records.
        """
        row: dict[str, Any] = {"job_id": self.job_id, **self.labels, "status": "ok", "reason": ""}
        row.update(dict.fromkeys(METRIC_COLUMNS, math.nan))
        row["pre_trained"] = pretrained_label(self._model_spec().get("init_args") or {})
        row["_per_image"] = []
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            self._run(row, task_id)
        except ComponentUnavailableError as error:
            row.update(status="skipped", reason=str(error))
            logger.warning("Skipping %s: %s", self.job_id, error)
        except Exception as error:
            row.update(status="failed", reason=f"{type(error).__name__}: {error}")
            logger.exception("Benchmark job %s failed.", self.job_id)
        row["job_s"] = time.perf_counter() - started
        # CPU time of the job (all threads): comparable across runs on a shared machine, unlike the wall times.
        row["cpu_s"] = time.process_time() - cpu_started
        gc.collect()
        return row

    def _run(self, row: dict[str, Any], task_id: int | None) -> None:
        from anomalib.engine import Engine
        from anomalib.metrics import Evaluator

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        rss_method = reset_peak_rss()
        row["rss_start_mb"] = _status_mb("VmRSS") or math.nan
        seed_everything(self.seed, workers=True)
        model_spec = self._model_spec()
        install_offline_weights(model_spec.get("init_args") or {})
        prepare_texture_dirs(model_spec.get("init_args") or {})
        model_cls = resolve_model_class(model_spec["class_path"])
        post_processor = resolve_post_processor(self.job_config.get("post_processor"))
        datamodule = build_datamodule(self.job_config["data"], self.seed)
        metrics, missing = build_test_metrics(image_level=is_image_level(self.job_config["data"]))
        if missing:
            row["reason"] = "; ".join(f"{column}: {reason}" for column, reason in missing.items())
        init_args = model_init_args(model_cls, model_spec.get("init_args") or {}, self.seed)
        kwargs = dict(init_args)
        if self.image_size is not None:
            kwargs["pre_processor"] = model_cls.configure_pre_processor(image_size=(self.image_size, self.image_size))
        kwargs.update(post_processor=post_processor, evaluator=Evaluator(test_metrics=list(metrics.values())))
        kwargs["visualizer"] = False
        model = model_cls(**kwargs)

        devices: int | list[int] = [task_id] if self.accelerator == "cuda" and task_id is not None else 1
        engine_args = {**(self.job_config.get("engine") or {}), **(model_spec.get("engine") or {})}
        collector = TestOutputCollector(n_samples=self.qualitative_samples)
        with TemporaryDirectory() as temp_dir:
            engine = Engine(
                accelerator=self.accelerator,
                devices=devices,
                default_root_dir=temp_dir,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[collector],
                **engine_args,
            )
            start = time.perf_counter()
            engine.fit(model=model, datamodule=datamodule)
            row["train_s"] = time.perf_counter() - start
            thresholds = self._prepare_operating_points(model, collector)
            start = time.perf_counter()
            results = engine.test(model=model, datamodule=datamodule, verbose=False)
            row["test_s"] = time.perf_counter() - start
        values = results[0] if results else {}
        for column, metric in metrics.items():
            value = values.get(metric.name)
            row[column] = float(value) if value is not None else math.nan
        row["n_train"] = len(datamodule.train_data) if getattr(datamodule, "train_data", None) is not None else None
        row["n_test"] = collector.n_images
        row.update(collector.metrics_by_size_bin())
        row.update(collector.operating_points(thresholds))
        row["infer_ms_per_image"] = 1000 * collector.seconds / max(collector.n_images, 1)
        row["peak_rss_mb"] = peak_rss_mb(rss_method)
        row["rss_method"] = rss_method
        row["accelerator"] = self.accelerator
        row["image_size"] = self.image_size
        row["model_init_args"] = json.dumps(init_args, sort_keys=True, default=str)
        row["torch_threads"] = torch.get_num_threads()
        row["pid"] = os.getpid()
        row["_per_image"] = [{"job_id": self.job_id, **self.labels, **record} for record in collector.per_image]
        if self.output_dir is not None and collector.samples:
            from .report import plot_qualitative

            path = self.output_dir / "qualitative" / f"{self.job_id}.png"
            plot_qualitative(collector.samples, path, title=self.job_id)
            row["qualitative_png"] = str(path.relative_to(self.output_dir))

    @staticmethod
    def _prepare_operating_points(model: Any, collector: TestOutputCollector) -> dict[str, float]:
        """Budget thresholds from the stored validation scores, once; a refiner seeds masks down to the loosest.

        ``follow_image_decision`` seeds a mask on an image above the image threshold whose host mask is empty. With
        the seeding threshold at the loosest budget, one test pass gives every budget's masks (an image's refinement
        does not depend on the others); the deployed masks (gated at the job's own image threshold) are unchanged.
        """
        post = getattr(model, "post_processor", None)
        f1 = getattr(post, "f1_image_threshold", math.nan)
        if not math.isfinite(f1):  # anomalib's PostProcessor: its image threshold is the F1-adaptive one
            value = getattr(post, "_image_threshold", None)
            f1 = float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else math.nan
        thresholds = collector.budget_thresholds(f1)
        if thresholds and hasattr(post, "seed_threshold"):
            post.seed_threshold = min(thresholds.values())
        return thresholds

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> Any:
        """Gather the rows into a DataFrame; the per-image records go to ``frame.attrs["per_image"]``."""
        import pandas as pd

        per_image = [record for row in results for record in row.get("_per_image", [])]
        frame = pd.DataFrame([{key: value for key, value in row.items() if key != "_per_image"} for row in results])
        frame.attrs["per_image"] = pd.DataFrame(per_image)
        return frame

    @staticmethod
    def save(result: Any) -> None:
        """Print the table (the pipeline's bound job class writes the files; see ``pipeline.py``)."""
        from .report import markdown_table

        print(markdown_table(result))
