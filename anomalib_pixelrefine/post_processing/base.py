"""Base class of the refining post-processors: an anomalib ``PostProcessor`` that re-segments each image at test time.

The refiner is a Lightning callback (as anomalib's ``PostProcessor``), so it sees the input images and the host model:

- training batches (``on_train_batch_end``): a sample of training images is kept to fit the pixel prior (MoG) or a
  PAE deep prior (``fit_prior``, run once before validation / at the end of the training epoch);
- validation (``on_validation_*``): host image scores feed the image threshold; the host's pixel threshold gives the
  initial masks ``m0``; the validation images are then refined and the *refined* maps calibrate the pixel threshold;
- test/predict (``on_test_batch_end``/``on_predict_batch_end``): each batch is refined (so ``strategy="ddp"`` splits
  images across devices), then normalised/thresholded; the image scores stay the host's;
- ``forward`` (``model(images)``, export, ``TorchInferencer``): a forward pre-hook on the host torch model captures its
  input images so the whole ``AnomalibModule`` and its pickled (``export_type="torch"``) copy refine too. The hook is
  installed whenever a refiner and a host model meet in one ``AnomalibModule`` (a torch module-registration hook:
  construction, ``load_from_checkpoint``, assigning ``model.post_processor`` later), not only by ``Engine`` setup.
  ONNX/OpenVINO cannot express the iterative, autograd-based refinement: export raises a one-line error up front.
- checkpoints: the refiner records its class and constructor arguments in the checkpoint's hyper-parameters (with
  Lightning's ``instantiate_module``), so ``Host.load_from_checkpoint(ckpt)`` rebuilds host *and* refiner without
  arguments (also ``Engine.export(..., ckpt_path=...)`` and ``anomalib export``). A refiner passed explicitly
  (``post_processor=F2PAD()``) takes its fitted buffers from the checkpoint whatever their shapes.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from kornia.morphology import opening
from lightning import LightningModule, Trainer
from torch import nn
from torchvision.transforms.v2 import Normalize

from anomalib_pixelrefine.checks import check_choice, check_finite, check_number, check_seed
from anomalib_pixelrefine.errors import PixelRefineError
from anomalib_pixelrefine.models.components import is_exporting
from anomalib_pixelrefine.seeding import seeded_module

from .decision import DEFAULT_MAX_FALSE_ALARM_RATE, DecisionPostProcessorMixin

__all__ = [
    "EXPORT_MESSAGE",
    "OUTPUTS",
    "ExportRefusedError",
    "RefiningPostProcessor",
    "dilate",
    "reconstruct",
    "seeded_module",
]

#: Refined map units: the host's score units (default) or the method's own pixel-space map (paper).
OUTPUTS = ("host", "pixel")

logger = logging.getLogger(__name__)

EXPORT_MESSAGE = (
    "{name} refines anomaly maps by iterative gradient-based optimisation through the host's feature extractor "
    "(autograd + data-dependent stopping), which ONNX/OpenVINO graphs cannot express. Export with export_type='torch' "
    "(TorchInferencer runs the refinement), or export the host alone with post_processor=PostProcessor()."
)
# Lightning's allow-listed instantiator: rebuilds the host with its post-processor from ``class_path``/``init_args``.
_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def _find_normalize(module: nn.Module | None) -> Normalize | None:
    """First torchvision ``Normalize`` inside a pre-processor's transforms (searched recursively)."""
    if module is None:
        return None
    stack: list[Any] = [getattr(module, "transform", None), getattr(module, "export_transform", None)]
    while stack:
        item = stack.pop()
        if isinstance(item, Normalize):
            return item
        if item is not None and hasattr(item, "transforms"):
            stack.extend(item.transforms)
    return None


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(B, 1, H, W)`` masks with a square of side ``2 radius + 1`` (max pooling)."""
    if radius <= 0:
        return mask.bool()
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def reconstruct(seed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixels of ``mask`` connected (8-neighbourhood) to ``seed``: morphological reconstruction by dilation.

    ``(B, 1, H, W)`` bool. Geodesic dilation to convergence on the whole batch (scipy's ``binary_propagation`` works on
    one image and on the CPU only; kornia has no reconstruction).
    """
    grown = seed & mask
    while True:
        nxt = dilate(grown, 1) & mask
        if torch.equal(nxt, grown):
            return grown
        grown = nxt


def image_range(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image minimum and maximum of ``(B, 1, H, W)`` maps, each ``(B, 1, 1, 1)``."""
    flat = maps.flatten(1)
    return flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)


def _at_size(maps: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """``(B, 1, h, w)`` maps resized (bilinear) to ``size`` when they differ."""
    if maps.shape[-2:] == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class ExportRefusedError(PixelRefineError, RuntimeError):
    """ONNX/OpenVINO export of a host whose refining post-processor is enabled (the refinement is not a graph)."""


def _graph_export(host: AnomalibModule, method: str, *args: Any, **kwargs: Any) -> Any:
    """The host's ``to_onnx``/``to_openvino``, refused at once while its refinement is enabled (before any tracing)."""
    refiner = host._modules.get("post_processor")
    if isinstance(refiner, RefiningPostProcessor) and refiner.enable_refinement:
        raise ExportRefusedError(EXPORT_MESSAGE.format(name=type(refiner).__name__))
    return getattr(type(host), method)(host, *args, **kwargs)


def _wire_refiner(parent: nn.Module, name: str, submodule: nn.Module | None) -> None:
    """Global module-registration hook: hook a refiner onto its host model when both sit in one AnomalibModule.

    The host's ``to_onnx``/``to_openvino`` (``to_openvino`` exports through ``to_onnx``) are guarded on the instance,
    so an export with the refinement enabled fails at once with :data:`EXPORT_MESSAGE` instead of after tracing.
    """
    if not isinstance(parent, AnomalibModule) or name not in {"model", "post_processor"}:
        return
    refiner = submodule if name == "post_processor" else parent._modules.get("post_processor")
    host = submodule if name == "model" else parent._modules.get("model")
    if isinstance(refiner, RefiningPostProcessor):
        for method in ("to_onnx", "to_openvino"):
            parent.__dict__.setdefault(method, functools.partial(_graph_export, parent, method))
    if isinstance(refiner, RefiningPostProcessor) and isinstance(host, nn.Module):
        refiner.hook_host(host)


class RefiningPostProcessor(DecisionPostProcessorMixin, PostProcessor):
    """anomalib ``PostProcessor`` refining the host's anomaly maps with the input images (abstract).

    Subclasses implement :meth:`fit_prior` (training images in ``[0, 1]``) and :meth:`refine_maps`.

    Args:
        enable_refinement: ``False`` makes this a plain anomalib ``PostProcessor`` (ablation / speed).
        initial_threshold: Host pixel threshold for ``m0`` (raw host map units) when no validation calibrated one.
            ``None``: per-image fallback ``min + 0.5 (max - min)`` with a warning.
        mask_threshold: Threshold on the refined map when validation did not calibrate one (``"host"`` output: only
            when the host's pixel threshold is unknown too).
        opening_size: Side of the final morphological opening of the binary mask (paper: 3; 0 disables: a 3 px
            opening deletes 1-2 px scratches and cracks).
        output: ``"host"``: the refined map in the host's score units (see :meth:`host_unit_maps`), so one deployed
            threshold serves faint and strong defects: the host's own, calibrated on the host's validation maps
            (no refinement during validation); ``"pixel"``: the method's own pixel-space map (paper), calibrated on
            refined validation maps.
        support_ratio: ``"host"`` output: a pixel belongs to the refined support when its refined anomaly
            ``||x - n||`` exceeds this fraction of the image's largest one inside the ROI (scale-free).
        extent_contrast: ``"host"`` output: the faint extent of a defect whose core the support found (a burn's
            tinted halo, a stain's soft rim) keeps the host's evidence: the host's above-threshold region around a
            compact support is kept when its mean refined anomaly exceeds the host-normal ROI pixels' by this many of
            their standard deviations (:meth:`faint_extent`). ``None``: off.
        roi_dilation: Dilation radius (px) of the initial mask ``m0`` giving the refined region (ROI).
        follow_image_decision: ``"host"`` output: an image whose host score is above the calibrated image threshold
            but whose map has no pixel above the host's pixel threshold (an anomalous image with an empty mask) gets
            ``m0`` from its own range (``min + flagged_seed_ratio (max - min)``: the host's peak region) and its
            refined support just above the pixel threshold, so the mask agrees with the image label.
        flagged_seed_ratio: See ``follow_image_decision``.
        max_train_images: Training images kept to fit the prior.
        seed: Random seed of the prior fitting.
        max_false_alarm_rate: Share of held-back normal images allowed above the image threshold (see
            :mod:`~anomalib_pixelrefine.post_processing.decision`; ``None``: anomalib's F1-adaptive threshold). The
            final masks follow the decision rule: no mask pixel on an image below the image threshold, and
            ``pred_label`` is True exactly when ``pred_mask`` is non-empty.
        max_false_alarm_area: Mean predicted area allowed on held-back normal images (host maps; ``None``: none).
        **kwargs: anomalib ``PostProcessor`` arguments (``enable_normalization``, ``image_sensitivity``, ...).
    """

    def __init__(
        self,
        enable_refinement: bool = True,
        initial_threshold: float | None = None,
        mask_threshold: float = 0.1,
        opening_size: int = 0,
        output: str = "host",
        support_ratio: float = 0.3,
        extent_contrast: float | None = 0.5,
        roi_dilation: int = 6,
        follow_image_decision: bool = True,
        flagged_seed_ratio: float = 0.9,
        max_train_images: int = 64,
        seed: int = 0,
        max_false_alarm_rate: float | None = DEFAULT_MAX_FALSE_ALARM_RATE,
        max_false_alarm_area: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_budget(max_false_alarm_rate, max_false_alarm_area)
        owner = type(self).__name__
        check_number(owner, "initial_threshold", initial_threshold, optional=True)
        check_number(owner, "mask_threshold", mask_threshold)
        check_number(owner, "opening_size", opening_size, 0, integer=True)
        check_choice(owner, "output", output, OUTPUTS)
        check_number(owner, "support_ratio", support_ratio, 0, 1)
        check_number(owner, "extent_contrast", extent_contrast, 0, optional=True)
        check_number(owner, "roi_dilation", roi_dilation, 0, integer=True)
        check_number(owner, "flagged_seed_ratio", flagged_seed_ratio, 0, 1)
        check_number(owner, "max_train_images", max_train_images, 1, integer=True)
        check_seed(owner, seed)
        self.enable_refinement = enable_refinement
        self.initial_threshold = initial_threshold
        self.mask_threshold = mask_threshold
        self.opening_size = opening_size
        self.output = output
        self.support_ratio = support_ratio
        self.extent_contrast = extent_contrast
        self.roi_dilation = roi_dilation
        self.follow_image_decision = bool(follow_image_decision)
        self.flagged_seed_ratio = flagged_seed_ratio
        self.max_train_images = max_train_images
        self.seed = seed
        self.register_buffer("pixel_mean", torch.zeros(3))
        self.register_buffer("pixel_std", torch.ones(3))
        self.register_buffer("host_pixel_threshold", torch.tensor(float("nan")))
        self.register_buffer("prior_fitted", torch.tensor(False))
        self.pixel_mean: torch.Tensor
        self.pixel_std: torch.Tensor
        self.host_pixel_threshold: torch.Tensor
        self.prior_fitted: torch.Tensor
        self._train_images: list[torch.Tensor] = []
        self._val_batches: list[Batch] = []
        self._warned_threshold = False
        self.last_info: dict[str, Any] = {}
        self.refined_images = 0  # images refined by this process (diagnostics, e.g. DDP sharding)
        #: Raw image score above which ``follow_image_decision`` seeds masks (``None``: the image threshold). The
        #: benchmark lowers it to its loosest budget so that every budget's masks come from one test pass.
        self.seed_threshold: float | None = None

    # ------------------------------------------------------------------ config persisted in checkpoints
    def init_args(self) -> dict[str, Any]:
        """Current values of every constructor argument (this class and its bases), as plain data."""
        names: list[str] = []
        for cls in type(self).__mro__:
            if not issubclass(cls, PostProcessor):  # nn.Module, Callback: no configuration
                continue
            for param in inspect.signature(cls.__init__).parameters.values():
                if param.kind in {param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY} and param.name != "self":
                    names.append(param.name)
        args = {name: getattr(self, name) for name in dict.fromkeys(names) if hasattr(self, name)}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in args.items()}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Record this refiner (class path + constructor arguments) in the host's checkpoint hyper-parameters.

        ``Host.load_from_checkpoint(ckpt)`` then rebuilds the host with this refiner through Lightning's
        ``instantiate_module`` (the checkpoint of a plain host is unchanged).
        """
        del trainer, pl_module
        hparams = checkpoint.setdefault("hyper_parameters", {})
        hparams["post_processor"] = {"class_path": f"{type(self).__module__}.{type(self).__name__}"}
        hparams["post_processor"]["init_args"] = self.init_args()
        hparams["_instantiator"] = _INSTANTIATOR

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the checkpoint's buffer shapes (fitted priors), so a freshly built refiner loads any checkpoint."""
        for name, buffer in self._buffers.items():
            key = prefix + name
            if buffer is not None and key in state_dict and state_dict[key].shape != buffer.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (
            *super()._checkpoint_config_keys,
            "enable_refinement",
            "initial_threshold",
            "mask_threshold",
            "opening_size",
            "output",
            "follow_image_decision",
            "flagged_seed_ratio",
            "support_ratio",
            "extent_contrast",
            "roi_dilation",
            "max_train_images",
            "seed",
            "max_false_alarm_rate",
            "max_false_alarm_area",
        )

    # ------------------------------------------------------------------ abstract
    def fit_prior(self, images: torch.Tensor) -> None:
        """Fit the refiner's prior on training images ``(N, 3, H, W)`` in ``[0, 1]``."""
        raise NotImplementedError

    def refine_maps(
        self,
        pixels: torch.Tensor,
        host_maps: torch.Tensor,
        initial_masks: torch.Tensor,
        host_model: nn.Module,
    ) -> torch.Tensor:
        """Refined continuous anomaly maps ``(B, 1, H, W)``.

        Args:
            pixels: Images in ``[0, 1]`` ``(B, 3, H, W)``.
            host_maps: Raw host anomaly maps ``(B, 1, H, W)``.
            initial_masks: Host binary masks ``m0`` ``(B, 1, H, W)`` bool.
            host_model: Host torch model (``pl_module.model``).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ pixel space
    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Host input space -> ``[0, 1]`` pixels (undo the pre-processor's ``Normalize``)."""
        return x * self.pixel_std.view(1, -1, 1, 1).to(x) + self.pixel_mean.view(1, -1, 1, 1).to(x)

    def to_input(self, n: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` pixels -> host input space."""
        return (n - self.pixel_mean.view(1, -1, 1, 1).to(n)) / self.pixel_std.view(1, -1, 1, 1).to(n)

    # ------------------------------------------------------------------ host wiring
    def attach(self, pl_module: LightningModule) -> None:
        """Read the host's input normalisation and hook its torch model (for ``forward``/export). Idempotent."""
        norm = _find_normalize(getattr(pl_module, "pre_processor", None))
        if norm is not None:
            self.pixel_mean.copy_(torch.as_tensor(norm.mean, dtype=torch.float32))
            self.pixel_std.copy_(torch.as_tensor(norm.std, dtype=torch.float32))
        host = getattr(pl_module, "model", None)
        if isinstance(host, nn.Module):
            self.hook_host(host)

    def hook_host(self, host: nn.Module) -> None:
        """Register the input-capturing forward pre-hook on the host torch model (idempotent)."""
        if not any(getattr(h, "__self__", None) is self for h in host._forward_pre_hooks.values()):
            host.register_forward_pre_hook(self._capture_input)

    def _capture_input(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the host torch model: remember its input images for :meth:`forward`."""
        if args and isinstance(args[0], torch.Tensor) and not module.training:
            self.__dict__["_captured"] = (module, args[0])

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Lightning hook: attach to the host."""
        del trainer, stage
        self.attach(pl_module)

    # ------------------------------------------------------------------ prior fitting during the host's fit
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Batch, *args: Any
    ) -> None:
        """Keep up to ``max_train_images`` training images (pixel space, CPU)."""
        del trainer, pl_module, outputs, args
        if not self.enable_refinement or bool(self.prior_fitted):
            return
        kept = sum(len(x) for x in self._train_images)
        if kept < self.max_train_images:
            self._train_images.append(self.to_pixels(batch.image[: self.max_train_images - kept].detach()).cpu())

    # Callback hooks, not the models' FitBeforeValidationMixin: a refiner is a Callback on any host (anomalib's too).
    def _maybe_fit_prior(self) -> None:
        if self._train_images and not bool(self.prior_fitted):
            images = torch.cat(self._train_images).clamp(0, 1)
            self._train_images = []
            # Forked RNG: the prior's seeded fitting must not reset the host's random stream mid-training.
            with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
                self.fit_prior(images.clone())
            self.prior_fitted.fill_(True)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fit the prior before the first validation (Lightning validates before ``on_train_epoch_end``)."""
        del trainer, pl_module
        self._maybe_fit_prior()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fit the prior if no validation ran."""
        del trainer, pl_module
        self._maybe_fit_prior()

    # ------------------------------------------------------------------ validation: calibrate on refined maps
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any, **kwargs: Any
    ) -> None:
        """Host image scores -> image threshold/min-max now; keep the batch to refine at epoch end."""
        del args, kwargs, pl_module
        self.__dict__.pop("_captured", None)  # do not keep (or pickle on export) the last validation batch
        if trainer.sanity_checking:
            return
        if self.enable_thresholding:
            self.collect_normals(outputs)
            self._image_threshold_metric.update(outputs)
        if self.enable_normalization:
            self._image_min_max_metric.update(outputs)
        if not self.enable_refinement:
            if self.enable_thresholding:
                self._pixel_threshold_metric.update(outputs)
            if self.enable_normalization:
                self._pixel_min_max_metric.update(outputs)
            return
        if outputs.anomaly_map is not None:
            self._val_batches.append(outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Host pixel threshold (-> ``m0``) from raw maps; ``output="pixel"``: refine and calibrate on refined maps."""
        if self._val_batches and not trainer.sanity_checking:
            batches, self._val_batches = self._val_batches, []
            has_masks = all(b.gt_mask is not None for b in batches)
            if has_masks:
                host_metric = F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False).to(
                    batches[0].anomaly_map.device,
                )
                for batch in batches:
                    host_metric.update(batch)
                self.host_pixel_threshold.copy_(host_metric.compute())
            for batch in batches:
                # Host-unit maps keep the host's scale (support pixels take the image's peak host score), so the
                # host's own threshold and range serve them: validation needs no refinement. Measured on the
                # realistic benchmark, re-calibrating on refined maps only moved the threshold above weak detections.
                if self.output == "pixel":
                    batch.anomaly_map = self.refine_batch(batch.image, batch.anomaly_map, pl_module.model)
                if self.enable_thresholding:
                    self._pixel_threshold_metric.update(batch)
                if self.enable_normalization:
                    self._pixel_min_max_metric.update(batch)
        self._val_batches = []
        super().on_validation_epoch_end(trainer, pl_module)
        if self.enable_thresholding and not trainer.sanity_checking:
            self.apply_budget()

    # ------------------------------------------------------------------ test / predict
    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any, **kwargs: Any
    ) -> None:
        """Refine, then normalise and threshold (image scores stay the host's)."""
        del trainer, args, kwargs
        self.__dict__.pop("_captured", None)
        self._refine_and_finalise(outputs, pl_module.model)

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any, **kwargs: Any
    ) -> None:
        """Same as :meth:`on_test_batch_end`."""
        del trainer, args, kwargs
        self.__dict__.pop("_captured", None)
        self._refine_and_finalise(outputs, pl_module.model)

    def _refine_and_finalise(self, batch: Batch, host_model: nn.Module) -> None:
        if self.enable_refinement and batch.anomaly_map is not None:
            batch.anomaly_map = self.refine_batch(batch.image, batch.anomaly_map, host_model, batch.pred_score)
        out = self.finalise(batch.pred_score, batch.anomaly_map)
        batch.anomaly_map, batch.pred_score = out.anomaly_map, out.pred_score
        if self.enable_thresholding:
            batch.pred_label, batch.pred_mask = out.pred_label, out.pred_mask

    # ------------------------------------------------------------------ core
    def initial_masks(self, host_maps: torch.Tensor) -> torch.Tensor:
        """``m0``: host map above the host's calibrated pixel threshold (fallbacks documented in the class)."""
        threshold = self.host_pixel_threshold
        if torch.isnan(threshold):
            if self.initial_threshold is not None:
                return host_maps > self.initial_threshold
            if not self._warned_threshold:
                logger.warning(
                    "%s: no calibrated host pixel threshold (no validation with masks) and initial_threshold=None; "
                    "using per-image min + 0.5 (max - min) for the initial masks.",
                    type(self).__name__,
                )
                self._warned_threshold = True
            low, high = image_range(host_maps)
            return host_maps > low + 0.5 * (high - low)
        return host_maps > threshold.to(host_maps)

    def _initial_masks_and_flags(
        self, host_maps: torch.Tensor, host_scores: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``m0`` and the anomalous-by-score images with an empty ``m0`` (``follow_image_decision``), or ``None``."""
        initial = self.initial_masks(host_maps)
        threshold = self._image_threshold if self.seed_threshold is None else torch.tensor(float(self.seed_threshold))
        ready = self.follow_image_decision and self.output == "host" and host_scores is not None
        if not ready or torch.isnan(threshold) or torch.isnan(self.host_pixel_threshold):
            return initial, None
        scores = host_scores.detach().reshape(-1).to(host_maps)
        flagged = (scores > threshold.to(scores)) & ~initial.flatten(1).any(1)
        if not bool(flagged.any()):
            return initial, None
        low, high = image_range(host_maps)
        own = (host_maps > low + self.flagged_seed_ratio * (high - low)) & flagged.view(-1, 1, 1, 1)
        return initial | own, flagged

    def _lift_flagged(self, refined: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
        """Support pixels of flagged images go just above the host's pixel threshold (they were below it)."""
        support = self.last_info.get("support") if isinstance(self.last_info, dict) else None
        if support is None:
            return refined
        threshold = self.host_pixel_threshold.to(refined)
        above = threshold + 1e-3 * threshold.abs().clamp_min(1.0)  # survives min-max normalisation in float32
        lift = support & flagged.view(-1, 1, 1, 1)
        self.last_info["lifted"] = flagged
        return torch.where(lift, torch.maximum(refined, above), refined)

    def host_maps_of(self, host_model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """Raw host anomaly maps ``(B, 1, H, W)`` of images ``pixels`` in ``[0, 1]`` (one batched forward)."""
        with torch.no_grad():
            maps = host_model(self.to_input(pixels)).anomaly_map
        return _at_size(maps.reshape(len(pixels), 1, *maps.shape[-2:]).float(), pixels.shape[-2:])

    def host_unit_maps(
        self,
        pixels: torch.Tensor,
        background: torch.Tensor,
        host_maps: torch.Tensor,
        roi: torch.Tensor,
        host_model: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined maps in the host's score units: the host map sharpened by the refined support.

        The refined anomaly ``a = ||x - n||`` (``n`` the refined background) is in pixel-contrast units: a faint
        stain and a dark scratch land on different scales, so no single threshold on ``a`` serves both. Here
        ``a`` only decides *where* (support ``s``: ``a > support_ratio * max_ROI a`` per image) and the host
        decides *how anomalous*:

        - support pixels get ``max(h, max_ROI h)``: the image's peak host score inside its ROI;
        - other ROI pixels get ``min(h, h')``, with ``h'`` the host map of the image whose support pixels were
          replaced by the background: the host evidence the support does not explain stays (e.g. the interior of
          a large texture defect whose pixels look normal one by one), the rest drops;
        - the host's above-threshold region around a compact support keeps ``h`` when it holds the faint extent of
          the same defect (a burn's halo, a stain's rim: :meth:`faint_extent`);
        - outside the ROI the host map is unchanged (its ranking, hence pixel AUROC there, is kept).

        Args:
            pixels: Images in ``[0, 1]`` ``(B, 3, H, W)``.
            background: Refined backgrounds ``n`` in ``[0, 1]`` ``(B, 3, H, W)``.
            host_maps: Raw host anomaly maps ``(B, 1, H, W)``.
            roi: Refined region ``(B, 1, H, W)`` bool.
            host_model: Host torch model (re-scores the partly cleaned images).

        Returns:
            ``(maps (B, 1, H, W), support (B, 1, H, W) bool)``.
        """
        residual = (pixels - background).pow(2).sum(1, keepdim=True).sqrt() * roi
        peak_residual = residual.flatten(1).amax(1).view(-1, 1, 1, 1)
        support = roi & (residual > self.support_ratio * peak_residual) & (peak_residual > 0)
        extent = self.faint_extent(support, residual, host_maps, roi)
        maps = host_maps.clone()
        todo = support.flatten(1).any(1)
        if bool(todo.any()):
            cleaned = torch.where(support[todo], background[todo], pixels[todo])
            unexplained = torch.minimum(host_maps[todo], self.host_maps_of(host_model, cleaned))
            unexplained = torch.where(extent[todo], host_maps[todo], unexplained)
            roi_t, h = roi[todo], host_maps[todo]
            peak = torch.where(roi_t, h, torch.full_like(h, -torch.inf)).flatten(1).amax(1).view(-1, 1, 1, 1)
            inside = torch.where(support[todo], torch.maximum(h, peak), unexplained)
            maps[todo] = torch.where(roi_t, inside, h)
        return maps, support

    def faint_extent(
        self,
        support: torch.Tensor,
        residual: torch.Tensor,
        host_maps: torch.Tensor,
        roi: torch.Tensor,
    ) -> torch.Tensor:
        """The host's region around a compact support when it holds the same defect's faint extent (else empty).

        Candidate: the ROI pixels above the host's pixel threshold connected to a compact part of the support (one
        holding a 5 x 5 square: thin cracks and scratches keep their width). One pixel of a faint halo is no more
        anomalous than the background mismatch of the refinement, but the whole region is: the candidate is kept
        when its mean refined anomaly exceeds that of the ROI pixels the host calls normal by ``extent_contrast`` of
        their standard deviation (the blurred rim of a sharp defect is mismatch only and stays out).
        """
        contrast, threshold = self.extent_contrast, self.host_pixel_threshold
        if contrast is None or torch.isnan(threshold):
            return torch.zeros_like(support)
        above = roi & (host_maps > threshold.to(host_maps))
        compact = reconstruct(opening(support.float(), support.new_ones(5, 5, dtype=torch.float)) > 0.5, support)
        candidate = reconstruct(compact, above | compact) & ~support
        normal = roi & ~above & ~support

        def mean_std(region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            count = region.flatten(1).sum(1).clamp_min(1)
            values = torch.where(region, residual, 0).flatten(1)
            mean = values.sum(1) / count
            var = torch.where(region.flatten(1), (residual.flatten(1) - mean[:, None]) ** 2, 0).sum(1) / count
            return mean, var.sqrt()

        (extent_mean, _), (normal_mean, normal_std) = mean_std(candidate), mean_std(normal)
        enough = (candidate.flatten(1).sum(1) > 0) & (normal.flatten(1).sum(1) >= 16)
        keep = enough & (extent_mean > normal_mean + contrast * normal_std)
        return candidate & keep.view(-1, 1, 1, 1)

    def refine_batch(
        self,
        images: torch.Tensor,
        host_maps: torch.Tensor,
        host_model: nn.Module,
        host_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Refine a batch: ``images`` in host input space, raw ``host_maps`` -> refined raw maps ``(B, 1, H, W)``.

        ``host_scores`` (raw image scores) enable ``follow_image_decision``.

        Raises:
            RuntimeError: If the prior was not fitted.
            ValueError: If the images or the host maps hold NaN/inf (the refined maps would be NaN).
        """
        check_finite(type(self).__name__, "input image", images)
        check_finite(type(self).__name__, "host anomaly map", host_maps)
        if not bool(self.prior_fitted):
            msg = (
                f"{type(self).__name__} has no fitted prior: train the host with this post-processor attached "
                "(Engine.fit), or load a checkpoint saved with it."
            )
            raise RuntimeError(msg)
        input_shape = host_maps.shape
        if host_maps.dim() == 3:
            host_maps = host_maps.unsqueeze(1)
        with torch.inference_mode(False), torch.enable_grad():
            # Clones leave inference mode (inference tensors cannot be saved for backward).
            images = images.detach().clone().float()
            maps = _at_size(host_maps.detach().clone().float(), images.shape[-2:])
            was_training = host_model.training
            host_model.eval()
            try:
                initial, flagged = self._initial_masks_and_flags(maps, host_scores)
                refined = self.refine_maps(self.to_pixels(images).clamp(0, 1), maps, initial, host_model)
                if flagged is not None:
                    refined = self._lift_flagged(refined, flagged)
            finally:
                host_model.train(was_training)
                self.__dict__.pop("_captured", None)  # the scorer's own host calls are not inputs to refine
        self.refined_images += len(refined)
        refined = _at_size(refined, input_shape[-2:])
        return refined.detach().reshape(input_shape)

    def binarise(self, refined: torch.Tensor) -> torch.Tensor:
        """Binary mask from raw refined maps: calibrated (or fallback) threshold, then opening.

        Without a calibrated threshold: ``"host"`` output (host units) uses the host's pixel threshold (calibrated,
        else ``initial_threshold``), ``"pixel"`` output and the last resort use ``mask_threshold``.
        """
        threshold = self._pixel_threshold
        fallback = torch.tensor(self.mask_threshold)
        if self.output == "host" and not torch.isnan(self.host_pixel_threshold):
            fallback = self.host_pixel_threshold
        elif self.output == "host" and self.initial_threshold is not None:
            fallback = torch.tensor(self.initial_threshold)
        threshold = torch.where(torch.isnan(threshold), fallback.to(threshold), threshold)
        mask = (refined > threshold.to(refined)).float()
        if self.opening_size > 1:
            kernel = torch.ones(self.opening_size, self.opening_size, device=mask.device)
            mask = opening(mask.unsqueeze(1), kernel).squeeze(1) if mask.dim() == 3 else opening(mask, kernel)
        return mask > 0.5

    def finalise(self, pred_score: torch.Tensor | None, refined: torch.Tensor | None) -> InferenceBatch:
        """Normalise host scores and refined maps (validation statistics), threshold them, apply the decision rule.

        The rule (:func:`~anomalib_pixelrefine.post_processing.decision.agree`): no mask pixel on an image below the
        image threshold, and ``pred_label`` is True exactly when ``pred_mask`` is non-empty.
        """
        pred_mask = self.binarise(refined) if (refined is not None and self.enable_thresholding) else None
        base = PostProcessor.forward(self, InferenceBatch(pred_score=pred_score, anomaly_map=refined))
        label, mask = base.pred_label, pred_mask if pred_mask is not None else base.pred_mask
        if self.enable_thresholding:
            label, mask = self.agree(label, mask)
        return InferenceBatch(
            pred_score=base.pred_score, pred_label=label, anomaly_map=base.anomaly_map, pred_mask=mask
        )

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """Graph-side post-processing (export/inference): refine with the images captured from the host's input.

        Raises:
            RuntimeError: When traced/exported to ONNX/OpenVINO (the refinement is not a static graph).
        """
        captured = self.__dict__.pop("_captured", None)
        if not self.enable_refinement:
            return self.finalise(predictions.pred_score, predictions.anomaly_map)
        if is_exporting():
            raise ExportRefusedError(EXPORT_MESSAGE.format(name=type(self).__name__))
        if captured is None:
            msg = (
                f"{type(self).__name__}.forward needs the host's input images; call the whole AnomalibModule "
                "(model(images)), not the post-processor alone."
            )
            raise RuntimeError(msg)
        host_model, images = captured
        refined = self.refine_batch(images, predictions.anomaly_map, host_model, predictions.pred_score)
        return self.finalise(predictions.pred_score, refined)


# Installed once: wires refiners to their hosts however the AnomalibModule is built or loaded.
torch.nn.modules.module.register_module_module_registration_hook(_wire_refiner)
