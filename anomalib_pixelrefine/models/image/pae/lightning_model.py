"""Lightning wrapper of PAE / PAEDID for anomalib's Engine.

Training runs the autoencoder for ``max_epochs`` epochs (reconstruction loss; VAE adds KL; AAE alternates a
Wasserstein critic step and an autoencoder step with manual optimisation). The latent memory bank is built once,
from all training images, before the validation of the last epoch (so the post-processor's thresholds are computed
with the final model and the bank is in the last checkpoint), through anomalib's ``MemoryBankMixin`` restricted to the
last epoch. Earlier validations only log ``val_loss``.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_pixelrefine.models.image.pae import Pae
    >>> model = Pae(pre_processor=Pae.configure_pre_processor(image_size=(128, 128)))
    >>> engine = Engine(max_epochs=20)
    >>> engine.fit(model, datamodule=MVTecAD(category="carpet"))  # doctest: +SKIP
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torchvision.transforms.v2 import Compose, Resize

from anomalib_pixelrefine.checks import FiniteInputMixin, check_choice, check_number, check_seed, check_widths
from anomalib_pixelrefine.models.components.checkpoint import CheckpointClassMixin
from anomalib_pixelrefine.models.components.decision import DecisionModelMixin
from anomalib_pixelrefine.seeding import seeded_module

from .loss import PaeLoss, critic_loss, generator_adversarial_loss
from .torch_model import PaeModel
from .training import autoencoder_loss

logger = logging.getLogger(__name__)

#: Epochs trained when the trainer is given none (the configs' and the benchmark's setting).
DEFAULT_MAX_EPOCHS = 20
_LIGHTNING_DEFAULT_EPOCHS = 1000  # Lightning's max_epochs when neither max_epochs nor max_steps is set
_LONG_TRAINING_S = 300  # estimated training time from which the estimate is logged


def _check_arguments(args: dict[str, Any]) -> None:
    """One-line ``ValueError`` naming the first invalid argument of :class:`Pae` (see its docstring for ranges)."""
    check_widths("Pae", "channels", args["channels"])
    check_number("Pae", "latent_channels", args["latent_channels"], 1, integer=True, optional=True)
    check_choice("Pae", "ae_type", args["ae_type"], ("cae", "vae", "aae"))
    check_choice("Pae", "reconstruction_loss", args["reconstruction_loss"], ("mse", "ssim"))
    for name in ("learning_rate", "critic_learning_rate", "critic_clip", "decomposition_lr"):
        check_number("Pae", name, args[name], 0, low_open=True)
    for name in ("kl_weight", "adversarial_weight", "lam", "lam_ssim"):
        check_number("Pae", name, args[name], 0)
    for name in ("aggregation_length", "num_neighbors"):
        check_number("Pae", name, args[name], 1, integer=True)
    check_number("Pae", "decomposition_steps", args["decomposition_steps"], 0, integer=True)
    check_number("Pae", "alpha", args["alpha"], 0, 1)
    check_number("Pae", "coreset_sampling_ratio", args["coreset_sampling_ratio"], 0, 1, low_open=True, optional=True)
    check_seed("Pae", args["seed"])


class Pae(DecisionModelMixin, CheckpointClassMixin, FiniteInputMixin, MemoryBankMixin, AnomalibModule):
    """PAEDID: patch autoencoder + latent memory bank + deep image decomposition (one-class).

    Args:
        channels: Encoder stage widths; each stage is conv3x3 + maxpool, so the latent has stride
            ``2 ** len(channels)`` (the paper's ``(64, 128)`` -> 32x32x128 latent at 128 px).
        latent_channels: Latent channels (default ``channels[-1]``).
        ae_type: ``"cae"``, ``"vae"`` or ``"aae"``.
        reconstruction_loss: ``"mse"`` or ``"ssim"``.
        learning_rate: Adam learning rate of the autoencoder.
        kl_weight: KL weight (VAE).
        adversarial_weight: Weight of the encoder's adversarial loss (AAE).
        critic_learning_rate: RMSprop learning rate of the critic (AAE).
        critic_clip: Weight clipping of the critic (AAE).
        aggregation_length: Neighbourhood side ``l`` of aggregated latents.
        num_neighbors: ``k`` of the kNN memory addressing.
        alpha: Fraction of latent patches replaced by memory-bank latents.
        aligned: Search the memory bank only at the same latent position (aligned images).
        coreset_sampling_ratio: Greedy-coreset fraction of the (non-aligned) memory bank; ``None`` keeps all.
        decompose: Run the deep image decomposition; ``False`` gives the PAE residual map.
        lam: Sparsity weight ``λ`` of the decomposition (mean-normalised).
        decomposition_steps: Adam steps of the decomposition.
        decomposition_lr: Adam learning rate of the decomposition.
        noisy: Use the noisy decomposition (appendix B).
        lam_ssim: SSIM weight of the noisy decomposition.
        seed: Seed of the initial weights and the coreset projection (same seed, same model, whatever the global
            random state).
        pre_processor: Pre-processor or flag (default: resize only, no normalisation).
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag.
        visualizer: Visualizer or flag.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128),
        latent_channels: int | None = None,
        ae_type: str = "cae",
        reconstruction_loss: str = "mse",
        learning_rate: float = 1e-3,
        kl_weight: float = 1e-3,
        adversarial_weight: float = 1e-3,
        critic_learning_rate: float = 5e-4,
        critic_clip: float = 0.01,
        aggregation_length: int = 3,
        num_neighbors: int = 9,
        alpha: float = 0.1,
        aligned: bool = False,
        coreset_sampling_ratio: float | None = 0.1,
        decompose: bool = True,
        lam: float = 1.0,
        decomposition_steps: int = 30,
        decomposition_lr: float = 0.05,
        noisy: bool = False,
        lam_ssim: float = 1.0,
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
        self.model = seeded_module(
            seed,
            lambda: PaeModel(
                in_channels=3,
                channels=channels,
                latent_channels=latent_channels,
                ae_type=ae_type,
                aggregation_length=aggregation_length,
                num_neighbors=num_neighbors,
                alpha=alpha,
                aligned=aligned,
                decompose=decompose,
                lam=lam,
                decomposition_steps=decomposition_steps,
                decomposition_lr=decomposition_lr,
                noisy=noisy,
                lam_ssim=lam_ssim,
            ),
        )
        if coreset_sampling_ratio is not None and not 0.0 < coreset_sampling_ratio <= 1.0:
            msg = f"coreset_sampling_ratio must be in (0, 1] or None, got {coreset_sampling_ratio}"
            raise ValueError(msg)
        self.loss = PaeLoss(reconstruction_loss, kl_weight=kl_weight)
        self.ae_type = ae_type
        self.learning_rate = learning_rate
        self.adversarial_weight = adversarial_weight
        self.critic_learning_rate = critic_learning_rate
        self.critic_clip = critic_clip
        self.coreset_sampling_ratio = coreset_sampling_ratio
        self.seed = seed
        # The AAE alternates critic and autoencoder updates.
        self.automatic_optimization = ae_type != "aae"

    # ------------------------------------------------------------------ configuration
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: the autoencoder reconstructs pixels in ``[0, 1]`` (no ImageNet normalisation).

        Args:
            image_size: Target size, default ``(128, 128)`` (must be divisible by ``2 ** len(channels)``).

        Returns:
            The pre-processor.
        """
        return PreProcessor(transform=Compose([Resize(image_size or (128, 128), antialias=True)]))

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        """Adam for the autoencoder; RMSprop for the AAE critic (as in WGAN)."""
        optimizer = torch.optim.Adam(self.model.autoencoder_parameters(), lr=self.learning_rate)
        if self.model.critic is None:
            return optimizer
        return [optimizer, torch.optim.RMSprop(self.model.critic.parameters(), lr=self.critic_learning_rate)]

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation (the memory bank does not exist yet)."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """PAE learns from normal images only."""
        return LearningType.ONE_CLASS

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Train :data:`DEFAULT_MAX_EPOCHS` epochs when the trainer was given no length (Lightning's 1000: hours)."""
        trainer = self.trainer
        if trainer.max_epochs == _LIGHTNING_DEFAULT_EPOCHS and trainer.max_steps == -1:
            trainer.fit_loop.max_epochs = DEFAULT_MAX_EPOCHS
            logger.warning(
                "Pae: no trainer.max_epochs given (Lightning's default is %d epochs, hours on a CPU): training %d "
                "epochs; set it with --trainer.max_epochs N or Engine(max_epochs=N).",
                _LIGHTNING_DEFAULT_EPOCHS,
                DEFAULT_MAX_EPOCHS,
            )

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One autoencoder step (plus one critic step for the AAE); returns the loss."""
        del args, kwargs
        self._is_fitted.fill_(False)  # the autoencoder changes: the memory bank must be rebuilt
        image = batch.image
        loss = (
            self._adversarial_step(image) if self.ae_type == "aae" else autoencoder_loss(self.model, self.loss, image)
        )
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(image))
        return {"loss": loss}

    def _adversarial_step(self, image: torch.Tensor) -> torch.Tensor:
        """AAE: critic step on prior vs encoded latents (weight clipping), then reconstruction + adversarial step."""
        ae_optimizer, critic_optimizer = self.optimizers()
        critic = self.model.critic
        with torch.no_grad():
            z_encoded = self.model.encode(image)
        loss_critic = critic_loss(critic(z_encoded), critic(torch.randn_like(z_encoded)))
        critic_optimizer.zero_grad()
        self.manual_backward(loss_critic)
        critic_optimizer.step()
        critic.clip_weights(self.critic_clip)

        reconstruction, z, _, _ = self.model(image)
        loss = self.loss(image, reconstruction) + self.adversarial_weight * generator_adversarial_loss(critic(z))
        ae_optimizer.zero_grad()
        self.manual_backward(loss)
        ae_optimizer.step()
        self.log("critic_loss", loss_critic.detach(), on_step=False, on_epoch=True, batch_size=len(image))
        return loss.detach()

    # ------------------------------------------------------------------ memory bank
    def _is_final_epoch(self) -> bool:
        trainer = self.trainer
        max_epochs = trainer.max_epochs
        return bool(trainer.should_stop) or max_epochs in {None, -1} or trainer.current_epoch >= max_epochs - 1

    @torch.no_grad()
    def fit(self) -> None:
        """Encode all training images and build the memory bank (with optional coreset; ``MemoryBankMixin``)."""
        trainer = self.trainer
        loader = trainer.datamodule.train_dataloader() if trainer.datamodule is not None else trainer.train_dataloader
        images = (batch.image.to(self.device) for batch in loader)
        if self.pre_processor:
            images = (self.pre_processor(image) for image in images)
        self.model.fit_memory_bank(images, coreset_sampling_ratio=self.coreset_sampling_ratio, seed=self.seed)

    # ``MemoryBankMixin`` fits once, at the first validation (or epoch end); the autoencoder trains for several epochs,
    # so the bank is built in the last one only (``training_step`` marks it stale; Lightning validates the last epoch
    # before ``on_train_epoch_end``).
    def on_validation_start(self) -> None:
        """Build the memory bank before the last validation (``MemoryBankMixin``)."""
        if not self.trainer.sanity_checking and self._is_final_epoch():
            super().on_validation_start()

    def on_train_epoch_start(self) -> None:
        """Start the clock of the first epoch (the training-time estimate)."""
        if self.trainer.current_epoch == 0:
            self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        """Say once what the whole training will cost; build the memory bank after the last epoch (no validation)."""
        started = getattr(self, "_epoch_started", None)
        if self.trainer.current_epoch == 0 and started is not None and self.trainer.max_epochs:
            total = (time.perf_counter() - started) * self.trainer.max_epochs
            if total > _LONG_TRAINING_S:
                logger.warning(
                    "Pae: the first epoch took %.0f s: %d epochs will take about %.0f min (--trainer.max_epochs).",
                    total / self.trainer.max_epochs,
                    self.trainer.max_epochs,
                    total / 60,
                )
        if self._is_final_epoch():
            super().on_train_epoch_end()

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Log ``val_loss``; once the memory bank is built, also predict (for the post-processor's thresholds)."""
        del args, kwargs
        reconstruction, _, _, _ = self.model.reconstruct(batch.image)
        self.log(
            "val_loss",
            self.loss.reconstruction(batch.image, reconstruction),
            prog_bar=True,
            batch_size=len(batch.image),
        )
        if not self._is_fitted:
            return batch
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints saved before ``MemoryBankMixin`` have no ``_is_fitted``: their bank is fitted when not empty."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if "_is_fitted" not in state and "model.memory_bank_raw" in state:
            state["_is_fitted"] = torch.tensor([state["model.memory_bank_raw"].numel() > 0])
