"""FeatureEnsemble: feature-level ensemble of backbones / anomalib feature extractors, memory-bank or SimpleNet head.

Training (one-class, normal images only):

1. ``setup("fit")`` fits the transformation block on the training features (one pass, batched statistics) and
   builds the head(s) to the resulting size, before the optimizer is created.
2. ``head="memory"`` (default; anomalib's ``MemoryBankMixin`` flow, one epoch as PatchCore): the transformed features
   of every training batch are collected; at the end of the epoch each head keeps a k-center greedy coreset of them.
   ``head="discriminator"``: each training batch's features are extracted once, then the head is trained for
   ``steps_per_batch`` Adam steps against fresh Gaussian-noise fakes (SimpleNet's truncated L1 loss).
3. ``mode="output"``: before each validation (and at the end of training) the per-member maps are calibrated on the
   clean training images.

Example:
    >>> from anomalib.engine import Engine
from anomalib_pixelrefine.models.image.feature_ensemble import FeatureEnsemble
    >>> model = FeatureEnsemble(members=[
    ...     {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.2", "blocks.4"]},
    ...     {"backbone": "tf_efficientnet_lite1", "layers": ["blocks.2", "blocks.4"]},
    ... ], head="memory")
    >>> Engine().fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torchvision.transforms.v2 import Compose, Resize

from anomalib_pixelrefine.checks import FiniteInputMixin, check_number, non_default, warn_no_effect
from anomalib_pixelrefine.models.components.checkpoint import CheckpointClassMixin
from anomalib_pixelrefine.models.components.decision import DecisionModelMixin

from .torch_model import FeatureEnsembleModel

logger = logging.getLogger(__name__)

#: Pretrained EfficientNet-Lite0 and -Lite1 (ImageNet weights offline: ``pixelrefine weights``), strides 8 and 16.
DEFAULT_MEMBERS: list[dict[str, Any]] = [
    {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.2", "blocks.4"]},
    {"backbone": "tf_efficientnet_lite1", "layers": ["blocks.2", "blocks.4"]},
]


class FeatureEnsemble(DecisionModelMixin, CheckpointClassMixin, FiniteInputMixin, MemoryBankMixin, AnomalibModule):
    """Feature-level ensemble anomaly model (transformation block + memory-bank or SimpleNet discriminator head).

    Args:
        members: Ensemble members as plain dicts (CLI/checkpoint friendly):
            ``{"backbone": <timm name>, "layers": [...], "pre_trained": True, "weights": <local file> | None}`` or
            ``{"checkpoint": <path.ckpt>, "model": "Patchcore" | "Padim" | "Pae" | <import path>, "layers": None}``.
            Programmatically also ``nn.Module`` feature extractors (returning a tensor, list or dict of
            ``(B, C, h, w)`` maps); those are not stored in the checkpoint hyper-parameters, so pass ``members=`` again
            to ``load_from_checkpoint``. Default: pretrained tf_efficientnet_lite0 + tf_efficientnet_lite1
            (blocks.2, blocks.4).
        mode: ``"feature"`` (feature-level ensemble) or ``"output"`` (baseline: one head per member, calibrated maps
            averaged).
        block: Transformation block ``"none"`` (each member scaled to unit mean channel variance, then concat;
            default), ``"global"`` (concat then PCA) or ``"individual"`` (PCA per member then concat).
        n_components: PCA size: int number of maps or float explained-variance share in ``(0, 1]``.
        patch_size: Local average over ``patch_size x patch_size`` feature neighbourhoods (1 disables).
        zero_pad: Zero-padded border averages, as PatchCore (measured higher mean image and pixel AUROC, README).
        head: ``"memory"`` (PatchCore-like nearest-neighbour memory bank; default) or ``"discriminator"``
            (SimpleNet).
        coreset_ratio: Memory head: share of the training locations kept (k-center greedy coreset).
        adaptor: Discriminator: use SimpleNet's feature adaptor (off by default: measured no better).
        hidden: Discriminator hidden width.
        noise_std: Discriminator: std of the Gaussian feature noise. The block scales features to unit mean channel
            variance, so this is relative to the feature spread (``0.1`` left the head almost untrained in a CPU
            budget and inverted maps; SimpleNet's 0.015 refers to unscaled features).
        margin: SimpleNet's truncation threshold ``th``.
        sigma: Gaussian smoothing of the upsampled anomaly map.
        lr: Adam learning rate of the discriminator (SimpleNet: 2e-4 over 160 epochs; the larger default converges
            in the few epochs a CPU budget allows).
        adaptor_lr: Adam learning rate of the adaptor (SimpleNet: 1e-4).
        weight_decay: Discriminator weight decay (SimpleNet: 1e-5).
        steps_per_batch: Discriminator updates per batch, each with fresh noise (features extracted once, so extra
            steps are cheap).
        pre_processor: Pre-processor (default: resize to 256x256; members normalise themselves).
        post_processor: Post-processor (default: ``DecisionPostProcessor``: anomalib's with the decision rule and the
            default false-alarm budget).
        evaluator: Evaluator (default: image/pixel AUROC and F1).
        visualizer: Visualizer.
    """

    def __init__(
        self,
        members: Sequence[dict[str, Any] | nn.Module] | None = None,
        mode: str = "feature",
        block: str = "none",
        n_components: int | float = 0.95,
        patch_size: int = 3,
        zero_pad: bool = True,
        head: str = "memory",
        coreset_ratio: float = 0.1,
        adaptor: bool = False,
        hidden: int = 1024,
        noise_std: float = 1.0,
        margin: float = 0.5,
        sigma: float = 4.0,
        lr: float = 1e-3,
        adaptor_lr: float = 5e-4,
        weight_decay: float = 1e-5,
        steps_per_batch: int = 10,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        members = list(DEFAULT_MEMBERS if members is None else members)
        owner = "FeatureEnsemble"
        for name, value in (("patch_size", patch_size), ("hidden", hidden), ("steps_per_batch", steps_per_batch)):
            check_number(owner, name, value, 1, integer=True)
        for name, value in (("noise_std", noise_std), ("lr", lr), ("adaptor_lr", adaptor_lr)):
            check_number(owner, name, value, 0, low_open=True)
        for name, value in (("margin", margin), ("sigma", sigma), ("weight_decay", weight_decay)):
            check_number(owner, name, value, 0)
        # Options of the other head (or block) do nothing: warn once when one is set to a non-default value.
        discriminator = {"adaptor": adaptor, "hidden": hidden, "noise_std": noise_std, "margin": margin, "lr": lr}
        discriminator |= {"adaptor_lr": adaptor_lr, "weight_decay": weight_decay, "steps_per_batch": steps_per_batch}
        unused = non_default(FeatureEnsemble.__init__, discriminator) if head == "memory" else []
        unused += non_default(FeatureEnsemble.__init__, {"coreset_ratio": coreset_ratio}) if head != "memory" else []
        warn_no_effect(owner, unused, f'with head="{head}"')
        pca = non_default(FeatureEnsemble.__init__, {"n_components": n_components}) if block == "none" else []
        warn_no_effect(owner, pca, 'with block="none" (no PCA)')
        if any(isinstance(m, nn.Module) for m in members):
            # Live modules are not checkpoint-safe hyper-parameters: keep a placeholder naming the class.
            self.hparams["members"] = [{"module": type(m).__name__} if isinstance(m, nn.Module) else m for m in members]
        self.model = FeatureEnsembleModel(
            members=members,
            mode=mode,
            block=block,
            n_components=n_components,
            patch_size=patch_size,
            zero_pad=zero_pad,
            head=head,
            coreset_ratio=coreset_ratio,
            adaptor=adaptor,
            hidden=hidden,
            noise_std=noise_std,
            margin=margin,
            sigma=sigma,
        )
        self.lr = lr
        self.adaptor_lr = adaptor_lr
        self.weight_decay = weight_decay
        self.steps_per_batch = steps_per_batch
        # Discriminator: several steps per extracted batch (SimpleNet, manual optimisation). Memory head: no optimiser;
        # Lightning's automatic loop with a dummy loss counts the steps (checkpointing), as anomalib's PatchCore.
        self.automatic_optimization = head == "memory"
        self._calibration_stale = False
        self._embeddings: list[list[torch.Tensor]] = []  # memory head: transformed training features per batch

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only; every member applies its own input normalisation.

        Args:
            image_size: Target ``(height, width)``; default ``(256, 256)``.
        """
        image_size = image_size or (256, 256)
        return PreProcessor(transform=Compose([Resize(image_size, antialias=True)]))

    # ------------------------------------------------------------------ fitting the transformation block
    def _train_images(self) -> Iterator[torch.Tensor]:
        """Pre-processed training images on the model device (one pass over the training dataloader)."""
        trainer = self.trainer
        if trainer.datamodule is not None:
            loader = trainer.datamodule.train_dataloader()
        elif trainer.train_dataloader is not None:
            loader = trainer.train_dataloader
        else:
            # Lightning keeps dataloaders passed to fit() here until the fit loop sets them up.
            loader = trainer.fit_loop._data_source.dataloader()
        transform = self.pre_processor.transform if self.pre_processor is not None else None
        for batch in loader:
            images = batch.image.to(self.device)
            yield transform(images) if transform is not None else images

    def setup(self, stage: str) -> None:
        """Before the optimizer exists: fit the PCA block on the training features and build the heads."""
        if stage != "fit" or self.model.is_fitted:
            return
        self.to(self.trainer.strategy.root_device)
        self.model.fit_transforms(self._train_images())
        logger.info("FeatureEnsemble transformation block fitted: head input channels %s", self.model.head_channels())

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        """Adam over the discriminators (SimpleNet lr / weight decay) and the adaptors (own lr); none for memory."""
        if self.model.head == "memory":
            return None
        if not self.model.heads:
            msg = "FeatureEnsemble heads are built in setup('fit'); train it with Engine.fit / Trainer.fit"
            raise RuntimeError(msg)
        discriminators = [p for head in self.model.heads for p in head.discriminator.parameters()]
        adaptors = [p for head in self.model.heads for p in head.adaptor.parameters()]
        groups = [{"params": discriminators, "lr": self.lr, "weight_decay": self.weight_decay}]
        if adaptors:
            groups.append({"params": adaptors, "lr": self.adaptor_lr, "weight_decay": 0.0})
        return torch.optim.Adam(groups)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Memory head: collect the transformed features. Discriminator: ``steps_per_batch`` updates, fresh noise."""
        del args, kwargs
        if self.model.head == "memory":
            with torch.no_grad():
                self._embeddings.append([f.detach() for f in self.model.transformed_features(batch.image)])
            self._calibration_stale = self.model.mode == "output"
            return torch.tensor(0.0, requires_grad=True, device=self.device)  # dummy loss (PatchCore)
        optimizer = self.optimizers()
        with torch.no_grad():
            features = self.model.transformed_features(batch.image)
        for _ in range(self.steps_per_batch):
            loss, stats = self.model.compute_loss(features)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self._calibration_stale = self.model.mode == "output"
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, logger=True)
        self.log_dict({f"train_{k}": v for k, v in stats.items()}, on_epoch=True, logger=True)
        return {"loss": loss.detach()}

    def fit(self) -> None:
        """Memory head: build each head's coreset bank from the collected features (``MemoryBankMixin``)."""
        if self.model.head != "memory":
            return
        if not self._embeddings:
            msg = "FeatureEnsemble got no training batches to build its memory bank"
            raise RuntimeError(msg)
        per_head = [torch.cat(parts) for parts in zip(*self._embeddings, strict=True)]
        self._embeddings = []
        self.model.fit_memory(per_head)
        logger.info("FeatureEnsemble memory banks: %s entries", [h.memory_bank.shape[0] for h in self.model.heads])

    def _calibrate_if_needed(self) -> None:
        if self._calibration_stale:
            was_training = self.model.training
            self.model.eval()
            self.model.calibrate(self._train_images())
            self.model.train(was_training)
            self._calibration_stale = False

    def on_validation_start(self) -> None:
        """Build the memory bank if needed (``MemoryBankMixin``), then, output mode: calibrate the member maps."""
        super().on_validation_start()
        self._calibrate_if_needed()

    def on_train_end(self) -> None:
        """Output mode: calibrate after the last epoch (e.g. when validation is disabled)."""
        self._calibrate_if_needed()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict anomaly map and score for a validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def on_fit_start(self) -> None:
        """Memory head: refuse a trainer that asks for more than the one epoch that builds the bank.

        ``Engine`` sets ``max_epochs=1`` from :attr:`trainer_arguments` (logged by anomalib); a plain Lightning
        ``Trainer`` does not, and a second epoch would find the collected features already spent.
        """
        if self.model.head == "memory" and (self.trainer.max_epochs or 1) > 1:
            msg = (
                f'FeatureEnsemble(head="memory") builds its memory bank in one epoch, got max_epochs='
                f"{self.trainer.max_epochs}: use anomalib's Engine (it sets 1) or Trainer(max_epochs=1)."
            )
            raise ValueError(msg)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (manual optimisation), no sanity validation before the block is fit; memory: 1 epoch."""
        arguments: dict[str, Any] = {"gradient_clip_val": 0, "num_sanity_val_steps": 0}
        if self.model.head == "memory":
            arguments["max_epochs"] = 1
        return arguments

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS
