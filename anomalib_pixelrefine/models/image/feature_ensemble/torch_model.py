"""PyTorch model of the feature ensemble.

Members (timm backbones, feature extractors of trained anomalib models or plain modules) produce feature maps that
are locally aggregated (3x3 average with zero padding, exactly PatchCore's locally aware patch features) and resized
bilinearly to one grid (the finest member grid). A transformation block scales and optionally reduces the channels,
fitted on the training features (Heller et al. 2023; Saghir 2024, sec. 2.1/4.4):

* ``block="none"`` (default) - each member centred and scaled to unit mean channel variance (so that no member
  dominates by magnitude), then concatenated;
* ``block="global"`` - concatenate all members (each scaled as above), then one PCA to ``n_components``;
* ``block="individual"`` - one PCA per member (``n_components`` each), then concatenate.

Two heads score the ensembled features (``head``):

* ``"memory"`` (default) - PatchCore's nearest-neighbour memory bank: a k-center greedy coreset (``coreset_ratio``)
  of the training locations; the anomaly score of a location is its Euclidean distance to the nearest bank entry.
* ``"discriminator"`` - SimpleNet (Liu et al. 2023): optional linear feature adaptor, a 2-layer MLP discriminator
  trained to separate the (adapted) features (score > ``margin``) from Gaussian-noise perturbed copies
  (score < ``-margin``) with the truncated L1 loss; anomaly score = ``-score``.

The map is upsampled and Gaussian smoothed; image score = map maximum.

``mode="output"`` is the classic output-level baseline: each member gets its own transform and head, each member's map
is standardised with the mean/std of its scores on the (clean) training features, and the calibrated maps are averaged.
"""

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin, GaussianBlur2d
from anomalib.models.image.glass.components import Discriminator
from anomalib.models.image.supersimplenet.torch_model import FeatureAdapter
from torch import nn

from anomalib_pixelrefine.models.components import greedy_coreset
from anomalib_pixelrefine.models.image.pni.torch_model import nearest_neighbour

from .loss import SimpleNetLoss
from .members import build_member
from .pca import ChannelPCA, validate_n_components

MODES = ("feature", "output")
BLOCKS = ("global", "individual", "none")
HEADS = ("memory", "discriminator")


class MemoryBankHead(DynamicBufferMixin, nn.Module):
    """Nearest-neighbour memory bank over ensembled features (PatchCore's scoring).

    The bank is a k-center greedy coreset of the training locations (memory-flat greedy selection on a random
    projection, :func:`~anomalib_pixelrefine.models.components.greedy_coreset`), built once by :meth:`fit`.

    Args:
        in_channels: Feature channels.
        coreset_ratio: Share of the training locations kept in the bank, in ``(0, 1]``.
        seed: Seed of the coreset's random projection and start point.
    """

    def __init__(self, in_channels: int, coreset_ratio: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.coreset_ratio = coreset_ratio
        self.seed = seed
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", torch.empty(0, in_channels))

    @property
    def is_fitted(self) -> bool:
        """Whether the bank holds entries."""
        return self.memory_bank.shape[0] > 0

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Build the bank from training feature maps ``(N, C, H, W)`` (every location is one sample)."""
        flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        n_keep = max(1, round(flat.shape[0] * self.coreset_ratio))
        if n_keep < flat.shape[0]:
            flat = flat[greedy_coreset(flat, n_keep, seed=self.seed).to(flat.device)]
        self.memory_bank = flat.contiguous()

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Distance to the nearest bank entry (anomaly, high = abnormal): ``(B, C, H, W)`` -> ``(B, 1, H, W)``."""
        b, c, h, w = features.shape
        distance, _ = nearest_neighbour(features.permute(0, 2, 3, 1).reshape(-1, c), self.memory_bank)
        return distance.view(b, 1, h, w)


class SimpleNetHead(nn.Module):
    """Feature adaptor + discriminator of SimpleNet.

    Reuses anomalib's SuperSimpleNet ``FeatureAdapter`` (1x1 conv = SimpleNet's linear adaptor) and GLASS's
    ``Discriminator`` (SimpleNet's MLP: Linear-BN-LeakyReLU then a bias-free Linear). GLASS ends the discriminator
    with a sigmoid; SimpleNet's truncated L1 loss works on the raw score, so the sigmoid is dropped here.

    Args:
        in_channels: Feature channels.
        adaptor: Use the feature adaptor.
        hidden: Hidden width of the discriminator.
    """

    def __init__(self, in_channels: int, adaptor: bool = True, hidden: int = 1024) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.adaptor = FeatureAdapter(in_channels) if adaptor else nn.Identity()
        self.discriminator = Discriminator(in_channels, n_layers=2, hidden=hidden)
        self.discriminator.tail = self.discriminator.tail[0]  # raw score, no sigmoid (SimpleNet)

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """Adapted features ``(B, C, H, W)``."""
        return self.adaptor(features)

    def score(self, adapted: torch.Tensor) -> torch.Tensor:
        """Discriminator score (normality, high = normal) per location: ``(B, C, H, W)`` -> ``(B, 1, H, W)``."""
        b, c, h, w = adapted.shape
        flat = adapted.permute(0, 2, 3, 1).reshape(-1, c)
        return self.discriminator(flat).view(b, h, w, 1).permute(0, 3, 1, 2)


class FeatureEnsembleModel(nn.Module):
    """Feature-level ensemble with a transformation block and a memory-bank or SimpleNet discriminator head.

    Args:
        members: Member specs (plain dicts, see :mod:`.members`) and/or ``nn.Module`` feature extractors.
        mode: ``"feature"`` (ensemble of feature maps, one head) or ``"output"`` (one head per member, calibrated maps
            averaged).
        block: Transformation block: ``"none"`` (per-member scaling only), ``"global"`` or ``"individual"``.
            ``"output"`` mode allows ``"individual"`` (per-member PCA) or ``"none"``.
        n_components: PCA size: ``int`` number of maps or ``float`` explained-variance share in ``(0, 1]``; per member
            for the individual block.
        patch_size: Local neighbourhood averaged before resizing (1 disables).
        zero_pad: Average the border neighbourhoods with zero padding (PatchCore's ``AvgPool2d(3, 1, 1)``). ``False``
            averages the in-image values only: measured lower mean image and pixel AUROC (README).
        head: ``"memory"`` (nearest-neighbour memory bank) or ``"discriminator"`` (SimpleNet).
        coreset_ratio: Memory head: share of the training locations kept in the bank.
        adaptor: Use SimpleNet's feature adaptor.
        hidden: Discriminator hidden width.
        noise_std: Std of the Gaussian noise added to adapted features to make fake anomalies (features are scaled to
            unit mean channel variance by the transformation block). ``0.1`` left the head almost untrained in the
            realistic benchmark (inverted maps); ``1.0`` is the measured default.
        margin: Truncation threshold of SimpleNet's loss (``th``): normal scores pushed above ``margin``, noisy ones
            below ``-margin``.
        sigma: Std of the Gaussian smoothing of the upsampled anomaly map (SimpleNet: 4).

    Raises:
        ValueError: On invalid arguments.
    """

    def __init__(
        self,
        members: Sequence[dict[str, Any] | nn.Module],
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
    ) -> None:
        super().__init__()
        if not members:
            msg = "FeatureEnsembleModel needs at least one member"
            raise ValueError(msg)
        if mode not in MODES:
            msg = f"mode must be one of {MODES}, got '{mode}'"
            raise ValueError(msg)
        if block not in BLOCKS:
            msg = f"block must be one of {BLOCKS}, got '{block}'"
            raise ValueError(msg)
        if head not in HEADS:
            msg = f"head must be one of {HEADS}, got '{head}'"
            raise ValueError(msg)
        if not 0.0 < coreset_ratio <= 1.0:
            msg = f"coreset_ratio must be in (0, 1], got {coreset_ratio}"
            raise ValueError(msg)
        if mode == "output" and block == "global":
            msg = "block='global' concatenates members, which mode='output' does not; use 'individual' or 'none'"
            raise ValueError(msg)
        validate_n_components(n_components)
        for name, value in (("patch_size", patch_size), ("hidden", hidden)):
            if value < 1:
                msg = f"{name} must be >= 1, got {value}"
                raise ValueError(msg)
        if noise_std <= 0 or margin < 0 or sigma < 0:
            msg = f"noise_std must be > 0, margin and sigma >= 0; got {noise_std}, {margin}, {sigma}"
            raise ValueError(msg)
        self.mode = mode
        self.block = block
        self.n_components = n_components
        self.patch_size = patch_size
        self.head = head
        self.coreset_ratio = coreset_ratio
        self.use_adaptor = adaptor
        self.hidden = hidden
        self.noise_std = noise_std
        self.margin = margin
        self.loss = SimpleNetLoss(margin)

        self.members = nn.ModuleList([build_member(m) for m in members])
        num_transforms = 1 if block == "global" else len(self.members)
        self.transforms = nn.ModuleList(
            [ChannelPCA(n_components, reduce=block != "none") for _ in range(num_transforms)],
        )
        self.heads = nn.ModuleList()  # built by fit_transforms() / at state-dict loading (size depends on the PCA)
        self.pool = (
            nn.AvgPool2d(patch_size, stride=1, padding=patch_size // 2, count_include_pad=zero_pad)
            if patch_size > 1
            else nn.Identity()
        )
        self.smoothing = GaussianBlur2d(sigma=sigma, kernel_size=2 * math.ceil(3 * sigma) + 1) if sigma > 0 else None
        self.register_buffer("calibration_mean", torch.zeros(len(self.members)))
        self.register_buffer("calibration_std", torch.ones(len(self.members)))

    # ------------------------------------------------------------------ features
    @property
    def num_heads(self) -> int:
        """One head for the feature ensemble, one per member for the output ensemble."""
        return 1 if self.mode == "feature" else len(self.members)

    def member_features(self, images: torch.Tensor, differentiable: bool = False) -> list[torch.Tensor]:
        """Per-member feature maps on the common (finest) grid: list of ``(B, C_m, H, W)``.

        ``differentiable`` keeps the graph back to ``images`` (see :meth:`feature_map`).
        """
        per_member = [member(images, differentiable) for member in self.members]
        height = max(m.shape[-2] for maps in per_member for m in maps)
        width = max(m.shape[-1] for maps in per_member for m in maps)
        out = []
        for maps in per_member:
            resized = [
                F.interpolate(self.pool(m), size=(height, width), mode="bilinear", align_corners=False)
                if m.shape[-2:] != (height, width)
                else self.pool(m)
                for m in maps
            ]
            out.append(torch.cat(resized, dim=1))
        return out

    def transformed_features(self, images: torch.Tensor, differentiable: bool = False) -> list[torch.Tensor]:
        """Transformation-block output per head: list of ``(B, k, H, W)`` (one entry in ``"feature"`` mode)."""
        maps = self.member_features(images, differentiable)
        if self.block == "global":
            return [self.transforms[0](torch.cat(maps, dim=1))]
        reduced = [transform(m) for transform, m in zip(self.transforms, maps, strict=True)]
        return [torch.cat(reduced, dim=1)] if self.mode == "feature" else reduced

    @torch.no_grad()
    def fit_transforms(self, batches: Any) -> None:
        """Fit the PCA block(s) on training images and (re)build the heads to the resulting sizes.

        Args:
            batches: Iterable of image tensors ``(B, 3, H, W)`` in ``[0, 1]`` (e.g. ``b.image for b in loader``).
        """
        for transform in self.transforms:
            transform.reset_statistics()
        seen = False
        for images in batches:
            maps = self.member_features(images)
            if self.block == "global":
                self.transforms[0].groups = [m.shape[1] for m in maps]  # balance the members' magnitudes
                self.transforms[0].update(torch.cat(maps, dim=1))
            else:
                for transform, m in zip(self.transforms, maps, strict=True):
                    transform.update(m)
            seen = True
        if not seen:
            msg = "fit_transforms() got no training batches"
            raise ValueError(msg)
        for transform in self.transforms:
            transform.fit()
        self.heads = self._build_heads(self.head_channels())

    def _build_heads(self, channels: list[int]) -> nn.ModuleList:
        """Unfitted heads of the configured kind for the given input channels."""
        if self.head == "memory":
            heads = [MemoryBankHead(c, self.coreset_ratio) for c in channels]
        else:
            heads = [SimpleNetHead(c, adaptor=self.use_adaptor, hidden=self.hidden) for c in channels]
        return nn.ModuleList(heads).to(self.calibration_mean.device)

    @torch.no_grad()
    def fit_memory(self, features: list[torch.Tensor]) -> None:
        """Memory head: build each head's bank from its transformed training features ``(N, C, H, W)``."""
        if self.head != "memory":
            msg = "fit_memory() is for head='memory'"
            raise RuntimeError(msg)
        for head, feats in zip(self.heads, features, strict=True):
            head.fit(feats)

    def head_channels(self) -> list[int]:
        """Input channels of each head (requires fitted transforms)."""
        sizes = [t.out_channels for t in self.transforms]
        return [sum(sizes)] if self.mode == "feature" else sizes

    @property
    def is_fitted(self) -> bool:
        """Whether the transformation block is fitted and the heads exist (memory heads: with their banks)."""
        heads_ready = all(getattr(h, "is_fitted", True) for h in self.heads)
        return len(self.heads) == self.num_heads and heads_ready and all(t.is_fitted for t in self.transforms)

    # ------------------------------------------------------------------ training
    def compute_loss(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """SimpleNet loss (summed over discriminator heads) of transformed training features, fresh noise every call.

        Args:
            features: Output of :meth:`transformed_features` for a batch of normal images.

        Returns:
            Loss and logging scalars: share of true locations scored ``>= margin`` and fake ones ``< -margin``.
        """
        total = features[0].new_zeros(())
        p_true, p_fake = [], []
        for head, feats in zip(self.heads, features, strict=True):
            true = head.adapt(feats)
            fake = true + torch.randn_like(true) * self.noise_std
            scores = head.score(torch.cat([true, fake]))
            true_scores, fake_scores = scores.split(true.shape[0])
            total = total + self.loss(true_scores, fake_scores)
            p_true.append((true_scores.detach() >= self.margin).float().mean())
            p_fake.append((fake_scores.detach() < -self.margin).float().mean())
        stats = {"p_true": torch.stack(p_true).mean().item(), "p_fake": torch.stack(p_fake).mean().item()}
        return total, stats

    # ------------------------------------------------------------------ inference
    def raw_maps(self, images: torch.Tensor, differentiable: bool = False) -> list[torch.Tensor]:
        """Per-head anomaly maps on the feature grid (high = abnormal): list of ``(B, 1, H, W)``.

        Memory head: distance to the nearest bank entry. Discriminator: ``-score``.
        """
        features = self.transformed_features(images, differentiable)
        if self.head == "memory":
            return [head.score(f) for head, f in zip(self.heads, features, strict=True)]
        return [-head.score(head.adapt(f)) for head, f in zip(self.heads, features, strict=True)]

    @torch.no_grad()
    def calibrate(self, batches: Any) -> None:
        """Output mode: store mean/std of each member's map over clean training images (for standardisation)."""
        sums = torch.zeros(self.num_heads, dtype=torch.float64, device=self.calibration_mean.device)
        squares = torch.zeros_like(sums)
        count = 0
        for images in batches:
            maps = torch.cat(self.raw_maps(images), dim=1).double()  # (B, heads, H, W)
            sums += maps.sum(dim=(0, 2, 3))
            squares += maps.square().sum(dim=(0, 2, 3))
            count += maps.shape[0] * maps.shape[2] * maps.shape[3]
        if count < 2:
            msg = "calibrate() got no training batches"
            raise ValueError(msg)
        mean = sums / count
        std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
        self.calibration_mean.copy_(mean.to(self.calibration_mean.dtype))
        self.calibration_std.copy_(std.to(self.calibration_std.dtype))

    def feature_map(self, images: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """Anomaly map on the feature grid ``(B, h, w)``; output mode: the calibrated member maps averaged.

        This is the map a refiner differentiates (F2PAD's ``s(n)``); :meth:`forward` upsamples and smooths it.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            differentiable: Let gradients flow from the map back to ``images`` (the members stay frozen).

        Returns:
            ``(B, h, w)`` map.

        Raises:
            RuntimeError: If the model is not fitted.
        """
        if not self.is_fitted:
            msg = "FeatureEnsembleModel is not fitted; train it (fit_transforms + head training) or load a state dict"
            raise RuntimeError(msg)
        maps = self.raw_maps(images, differentiable)
        if self.mode == "output":
            stacked = torch.cat(maps, dim=1)
            mean = self.calibration_mean.view(1, -1, 1, 1)
            std = self.calibration_std.view(1, -1, 1, 1)
            return ((stacked - mean) / std).mean(dim=1)
        return maps[0][:, 0]

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly map (upsampled, smoothed) and image score (map maximum).

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``InferenceBatch(pred_score, anomaly_map)``.
        """
        anomaly_map = self.feature_map(images)[:, None]
        anomaly_map = F.interpolate(anomaly_map, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.smoothing is not None:
            anomaly_map = self.smoothing(anomaly_map)
        pred_score = anomaly_map.flatten(1).amax(dim=1)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Build the heads to the sizes stored in ``state_dict`` before loading (their size depends on the PCA)."""
        if self.head == "memory":
            pattern = re.compile(rf"^{re.escape(prefix)}heads\.(\d+)\.memory_bank$")
        else:
            pattern = re.compile(rf"^{re.escape(prefix)}heads\.(\d+)\.discriminator\.body\.block1\.0\.weight$")
        shapes = {int(m.group(1)): state_dict[k].shape for k in state_dict if (m := pattern.match(k))}
        if shapes:
            channels = [shapes[i][1] for i in sorted(shapes)]
            if [h.in_channels for h in self.heads] != channels:
                self.heads = self._build_heads(channels)
        super()._load_from_state_dict(state_dict, prefix, *args)
