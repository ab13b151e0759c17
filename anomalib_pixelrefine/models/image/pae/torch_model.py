"""PyTorch model of PAE / PAEDID: patch autoencoder, latent memory bank and deep image decomposition.

Paper: Mou et al., "PAEDID: Patch Autoencoder Based Deep Image Decomposition For Pixel-level Defective Region
Segmentation". Autoencoder variants (CAE / VAE / AAE with a Wasserstein critic) follow Schneider et al., "Analysis
of the Future Potential of Autoencoders in Industrial Defect Detection".

Pipeline at inference (eval mode, :meth:`PaeModel.forward`):

1. ``M̂ = E(X)``: a large spatial latent (e.g. ``32x32xC`` at 128 px).
2. Memory addressing: each latent patch's ``l x l`` neighbourhood (aggregated latent) is compared by cosine
   distance with the aggregated memory bank; the mean distance to the ``k`` nearest is the patch score ``s``, the
   mean of the corresponding ``k`` *raw* latents is the retrieved latent ``M̂'``.
3. The top-``α`` fraction of patches by ``s`` is replaced by ``M̂'``; ``X̂ = D(M̂'')`` is the deep image prior.
4. Decomposition ``X = L + S`` (:func:`~.decomposition.decompose`); anomaly map ``|S|``.

Public building blocks reused by the refining post-processors (PAEDID refiner, F2PAD): :meth:`PaeModel.encode`,
:meth:`PaeModel.decode`, :meth:`PaeModel.deep_prior`, :meth:`PaeModel.fit_memory_bank`, :meth:`PaeModel.retrieve`,
:meth:`PaeModel.split` (the decomposition with the model's settings) and :func:`~.training.train_pae`.
"""

import logging
import math
from collections.abc import Iterable, Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn
from torch.nn import functional as F

from anomalib_pixelrefine.models.components import is_exporting
from anomalib_pixelrefine.models.components.sampling import greedy_coreset

from .decomposition import decompose, image_score, sparse_to_anomaly_map

logger = logging.getLogger(__name__)

AE_TYPES = ("cae", "vae", "aae")

# Upper bound on the elements of one query-vs-bank similarity block (keeps kNN memory flat, ~64 MB in float32).
_MAX_BLOCK_ELEMENTS = 2**24


class PaeEncoder(nn.Module):
    """VGG-like convolutional encoder: ``[conv3x3 -> LeakyReLU -> maxpool2]`` per stage, then a 1x1 latent head.

    Args:
        in_channels: Image channels.
        channels: Output channels of each stage; the latent has stride ``2 ** len(channels)``.
        latent_channels: Channels of the latent; the head outputs twice as many (mean and log-variance) for a VAE.
        variational: Whether the head predicts a Gaussian (VAE).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], latent_channels: int, variational: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(previous, latent_channels * (2 if variational else 1), 1)
        self.variational = variational

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(mean, log_variance)`` (``log_variance`` is ``None`` unless variational)."""
        out = self.head(self.features(x))
        if self.variational:
            mean, log_var = out.chunk(2, dim=1)
            return mean, log_var.clamp(-10.0, 10.0)
        return out, None


class PaeDecoder(nn.Module):
    """Mirror of :class:`PaeEncoder`: 1x1 conv, ``[upsample2 -> conv3x3 -> LeakyReLU]`` per stage, sigmoid output."""

    def __init__(self, out_channels: int, channels: Sequence[int], latent_channels: int) -> None:
        super().__init__()
        widths = list(reversed(channels))
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 1), nn.LeakyReLU(0.2, inplace=True)]
        for i, width in enumerate(widths):
            nxt = widths[i + 1] if i + 1 < len(widths) else width
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, nxt, 3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Conv2d(widths[-1], out_channels, 3, padding=1), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents ``(B, C_z, h, w)`` into images ``(B, C, h * s, w * s)`` in ``[0, 1]``."""
        return self.layers(z)


class LatentCritic(nn.Module):
    """Wasserstein critic of the AAE, applied to every latent vector (1x1 convolutions, as Table 4 of the AE paper)."""

    def __init__(self, latent_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Critic value of every latent position ``(B, 1, h, w)``."""
        return self.layers(z)

    def clip_weights(self, clip_value: float) -> None:
        """Clip all weights to ``[-clip_value, clip_value]`` (WGAN Lipschitz constraint)."""
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.clamp_(-clip_value, clip_value)


class PaeModel(DynamicBufferMixin, nn.Module):
    """Patch autoencoder with latent memory bank and deep image decomposition (PAEDID).

    Args:
        in_channels: Image channels.
        channels: Encoder stage widths (each stage halves the resolution).
            Paper: ``(64, 128)`` -> 32x32 latent at 128 px.
        latent_channels: Latent channels; defaults to ``channels[-1]``.
        ae_type: ``"cae"`` (plain), ``"vae"`` (reparametrisation + KL) or ``"aae"`` (Wasserstein critic on the latent).
        aggregation_length: Neighbourhood side ``l`` of the aggregated latents (odd is natural; ``l // 2`` each side).
        num_neighbors: ``k`` nearest aggregated latents used for score and retrieval.
        alpha: Fraction of latent patches replaced by their retrieved latents (top ``α`` by score).
        aligned: Search the memory bank only at the same spatial location (aligned images).
        decompose: Solve the PAEDID decomposition; ``False`` gives the PAE residual ``|X - X̂|`` (ablation).
        lam: Sparsity weight ``λ`` of the decomposition.
        decomposition_steps: Adam iterations of the decomposition.
        decomposition_lr: Adam learning rate of the decomposition.
        noisy: Use the noisy decomposition (eq. 4).
        lam_ssim: SSIM weight ``λ₂`` of eq. 4.
        ssim_window: SSIM window size of the decomposition.

    Raises:
        ValueError: On invalid arguments.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64),
        latent_channels: int | None = None,
        ae_type: str = "cae",
        aggregation_length: int = 3,
        num_neighbors: int = 9,
        alpha: float = 0.1,
        aligned: bool = False,
        decompose: bool = True,
        lam: float = 1.0,
        decomposition_steps: int = 30,
        decomposition_lr: float = 0.05,
        noisy: bool = False,
        lam_ssim: float = 1.0,
        ssim_window: int = 11,
    ) -> None:
        super().__init__()
        if ae_type not in AE_TYPES:
            msg = f"ae_type must be one of {AE_TYPES}, got '{ae_type}'"
            raise ValueError(msg)
        if len(channels) == 0 or any(int(c) <= 0 for c in channels):
            msg = f"channels must be a non-empty sequence of positive ints, got {channels}"
            raise ValueError(msg)
        if aggregation_length < 1:
            msg = f"aggregation_length must be >= 1, got {aggregation_length}"
            raise ValueError(msg)
        if num_neighbors < 1:
            msg = f"num_neighbors must be >= 1, got {num_neighbors}"
            raise ValueError(msg)
        if not 0.0 <= alpha <= 1.0:
            msg = f"alpha must be in [0, 1], got {alpha}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)
        self.latent_channels = int(latent_channels or self.channels[-1])
        self.ae_type = ae_type
        self.aggregation_length = aggregation_length
        self.num_neighbors = num_neighbors
        self.alpha = alpha
        self.aligned = aligned
        self.decompose = decompose
        self.lam = lam
        self.decomposition_steps = decomposition_steps
        self.decomposition_lr = decomposition_lr
        self.noisy = noisy
        self.lam_ssim = lam_ssim
        self.ssim_window = ssim_window

        self.encoder = PaeEncoder(in_channels, self.channels, self.latent_channels, variational=ae_type == "vae")
        self.decoder = PaeDecoder(in_channels, self.channels, self.latent_channels)
        self.critic = LatentCritic(self.latent_channels) if ae_type == "aae" else None

        # Memory banks. Non-aligned: raw (N, C), aggregated (N, C*l*l). Aligned: raw (P, I, C), aggregated (P, I, C*l*l)
        # with P = h*w latent positions and I training images. Aggregated latents are stored L2-normalised.
        self.memory_bank_raw: torch.Tensor
        self.memory_bank_agg: torch.Tensor
        self.register_buffer("memory_bank_raw", torch.empty(0))
        self.register_buffer("memory_bank_agg", torch.empty(0))

    # ------------------------------------------------------------------ autoencoder
    @property
    def stride(self) -> int:
        """Downsampling factor between image and latent."""
        return 2 ** len(self.channels)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            msg = f"Expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            raise ValueError(msg)
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            msg = (
                f"Image height and width must be divisible by {self.stride} (2 ** len(channels)), "
                f"got {tuple(x.shape[-2:])}"
            )
            raise ValueError(msg)

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder output ``(mean, log_variance)``; ``log_variance`` is ``None`` except for the VAE."""
        self._check_input(x)
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent map ``M = E(X)`` ``(B, C_z, H / s, W / s)`` (the mean for a VAE)."""
        return self.encode_distribution(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents into images in ``[0, 1]``."""
        return self.decoder(z)

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder and decoder (optimised by the reconstruction loss; not the AAE's critic)."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def reconstruct(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Training pass: ``(reconstruction, latent, mean, log_variance)``; the VAE samples ``z = μ + σ ε``."""
        mean, log_var = self.encode_distribution(x)
        z = mean
        if log_var is not None and self.training:
            z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        return self.decode(z), z, mean, log_var

    # ------------------------------------------------------------------ memory bank
    def aggregate(self, z: torch.Tensor) -> torch.Tensor:
        """Aggregated latents: the flattened ``l x l`` neighbourhood of every position (replicate-padded borders).

        Args:
            z: Latents ``(B, C, h, w)``.

        Returns:
            Tensor ``(B, h * w, C * l * l)``.
        """
        length = self.aggregation_length
        if length == 1:
            return z.flatten(2).transpose(1, 2)
        before, after = (length - 1) // 2, length // 2
        padded = F.pad(z, (before, after, before, after), mode="replicate")
        return F.unfold(padded, kernel_size=length).transpose(1, 2)

    @property
    def is_fitted(self) -> bool:
        """Whether the memory bank has been built."""
        return self.memory_bank_raw.numel() > 0

    @torch.no_grad()
    def build_memory_bank(
        self,
        latents: torch.Tensor,
        coreset_sampling_ratio: float | None = None,
        seed: int = 0,
        chunk_size: int = 64,
    ) -> None:
        """Build raw and aggregated memory banks from training latents (PAEDID 2.1.2, appendix C).

        Args:
            latents: Training latents ``(I, C, h, w)`` from :meth:`encode`.
            coreset_sampling_ratio: Keep this fraction of the bank via greedy coreset on a 128-d random projection
                of the aggregated latents (non-aligned mode only; ignored when ``aligned``). ``None`` keeps all.
            seed: Seed of the coreset's random projection.
            chunk_size: Images aggregated at once (bounds peak memory).

        Raises:
            ValueError: If ``latents`` has the wrong shape or the ratio is out of range.
        """
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            msg = f"latents must have shape (I, {self.latent_channels}, h, w), got {tuple(latents.shape)}"
            raise ValueError(msg)
        if coreset_sampling_ratio is not None and not 0.0 < coreset_sampling_ratio <= 1.0:
            msg = f"coreset_sampling_ratio must be in (0, 1] or None, got {coreset_sampling_ratio}"
            raise ValueError(msg)
        num_images, channels, height, width = latents.shape
        positions = height * width
        agg_dim = channels * self.aggregation_length**2
        latents = latents.float()
        # Preallocated output, filled chunk by chunk: peak memory ~ bank size + one chunk.
        agg = torch.empty(num_images, positions, agg_dim, dtype=torch.float32, device=latents.device)
        for start in range(0, num_images, chunk_size):
            agg[start : start + chunk_size] = F.normalize(self.aggregate(latents[start : start + chunk_size]), dim=-1)
        raw = latents.flatten(2).transpose(1, 2)  # (I, P, C)
        if self.aligned:
            if coreset_sampling_ratio is not None and coreset_sampling_ratio < 1.0:
                logger.info("Coreset subsampling is not used in aligned mode (one bank per latent position).")
            self.memory_bank_raw = raw.transpose(0, 1).contiguous()
            self.memory_bank_agg = agg.transpose(0, 1).contiguous()
            return
        raw = raw.reshape(-1, channels)
        agg = agg.reshape(-1, agg_dim)
        if coreset_sampling_ratio is not None and coreset_sampling_ratio < 1.0:
            indices = _coreset_indices(agg, coreset_sampling_ratio, seed)
            raw, agg = raw[indices], agg[indices]
        self.memory_bank_raw = raw.contiguous()
        self.memory_bank_agg = agg.contiguous()

    @torch.no_grad()
    def fit_memory_bank(
        self,
        images: Iterable[torch.Tensor],
        coreset_sampling_ratio: float | None = None,
        seed: int = 0,
    ) -> None:
        """Encode training images (eval mode, batch by batch) and build the memory bank from their latents.

        Args:
            images: Batches of training images ``(B, C, H, W)`` in ``[0, 1]`` (moved to the model's device).
            coreset_sampling_ratio: See :meth:`build_memory_bank`.
            seed: See :meth:`build_memory_bank`.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        latents = torch.cat([self.encode(batch.to(device)).cpu() for batch in images])
        logger.info("Building the PAE memory bank from %d training images.", len(latents))
        self.build_memory_bank(latents.to(device), coreset_sampling_ratio=coreset_sampling_ratio, seed=seed)
        self.train(was_training)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            msg = "The PAE memory bank is empty: train the model (or call build_memory_bank) before inference."
            raise RuntimeError(msg)

    @torch.no_grad()
    def retrieve(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory addressing (Algorithm 1, step 3): kNN by cosine distance on aggregated latents.

        Args:
            z: Query latents ``(B, C, h, w)``.

        Returns:
            ``(retrieved, scores)``: mean of the ``k`` nearest raw latents ``(B, C, h, w)`` and the mean cosine
            distance to the ``k`` nearest aggregated latents ``(B, 1, h, w)``.
        """
        self._check_fitted()
        batch, channels, height, width = z.shape
        query = F.normalize(self.aggregate(z.float()), dim=-1)  # (B, P, D)
        if self.aligned:
            distances, raw = self._knn_aligned(query, height * width)
        else:
            distances, raw = self._knn_global(query.reshape(-1, query.shape[-1]))
            distances = distances.reshape(batch, height * width, -1)
            raw = raw.reshape(batch, height * width, -1, channels)
        scores = distances.mean(-1).reshape(batch, 1, height, width)
        retrieved = raw.mean(2).transpose(1, 2).reshape(batch, channels, height, width)
        return retrieved.to(z.dtype), scores

    def _knn_global(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K smallest cosine distances ``(Q, k)`` and the matching raw latents ``(Q, k, C)``, chunked over queries."""
        bank = self.memory_bank_agg
        k = min(self.num_neighbors, bank.shape[0])
        if is_exporting():  # static graph: one block (the query count is symbolic)
            top, index = (query @ bank.T).topk(k, dim=1)
            return 1.0 - top, self.memory_bank_raw[index]
        chunk = max(1, _MAX_BLOCK_ELEMENTS // bank.shape[0])
        distances, indices = [], []
        for start in range(0, query.shape[0], chunk):
            similarity = query[start : start + chunk] @ bank.T
            top, index = similarity.topk(k, dim=1)
            distances.append(1.0 - top)
            indices.append(index)
        index = torch.cat(indices)
        return torch.cat(distances), self.memory_bank_raw[index]

    def _knn_aligned(self, query: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned search: each position only against the bank of that position -> ``(B, P, k)``, ``(B, P, k, C)``."""
        if self.memory_bank_agg.shape[0] != positions or self.memory_bank_agg.shape[-1] != query.shape[-1]:
            msg = (
                f"Aligned memory bank was built for {self.memory_bank_agg.shape[0]} latent positions, "
                f"the query has {positions}: use the training image size."
            )
            raise ValueError(msg)
        k = min(self.num_neighbors, self.memory_bank_agg.shape[1])
        similarity = torch.bmm(query.transpose(0, 1), self.memory_bank_agg.transpose(1, 2))  # (P, B, I)
        top, index = similarity.topk(k, dim=2)
        raw = torch.gather(
            self.memory_bank_raw.unsqueeze(1).expand(-1, index.shape[1], -1, -1),
            2,
            index.unsqueeze(-1).expand(-1, -1, -1, self.memory_bank_raw.shape[-1]),
        )  # (P, B, k, C)
        return (1.0 - top).transpose(0, 1), raw.transpose(0, 1)

    @staticmethod
    def replace_top_patches(
        z: torch.Tensor,
        retrieved: torch.Tensor,
        scores: torch.Tensor,
        alpha: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the top-``α`` fraction of latent patches (by score) with the retrieved latents (Algorithm 1, step 4).

        Args:
            z: Query latents ``(B, C, h, w)``.
            retrieved: Retrieved latents ``(B, C, h, w)``.
            scores: Patch scores ``(B, 1, h, w)``.
            alpha: Fraction in ``[0, 1]``; exactly ``round(α h w)`` patches per image are replaced.

        Returns:
            ``(z_replaced, mask)``, ``mask`` ``(B, 1, h, w)`` bool marking the replaced patches.
        """
        batch = z.shape[0]
        flat = scores.reshape(batch, -1)
        count = round(alpha * flat.shape[1])
        mask = torch.zeros_like(flat, dtype=torch.bool)
        if count > 0:
            mask.scatter_(1, flat.topk(count, dim=1).indices, value=True)
        mask = mask.reshape(scores.shape)
        return torch.where(mask, retrieved, z), mask

    def _patch_scores_from(self, patch_scores: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """Bring external scores (latent-sized or a full-resolution anomaly map) to the latent grid (max pooling)."""
        if patch_scores.dim() == 3:
            patch_scores = patch_scores.unsqueeze(1)
        if patch_scores.dim() != 4 or patch_scores.shape[1] != 1:
            msg = f"patch_scores must have shape (B, 1, h, w), got {tuple(patch_scores.shape)}"
            raise ValueError(msg)
        if tuple(patch_scores.shape[-2:]) == latent_size:
            return patch_scores
        return F.adaptive_max_pool2d(patch_scores.float(), latent_size)

    @torch.no_grad()
    def deep_prior_with_scores(
        self,
        x: torch.Tensor,
        patch_scores: torch.Tensor | None = None,
        alpha: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deep image prior ``X̂ = D(M̂'')`` and the kNN patch scores ``s`` ``(B, 1, h, w)``.

        Args:
            x: Images ``(B, C, H, W)`` in ``[0, 1]``.
            patch_scores: Optional external scores choosing the replaced patches (latent-sized ``(B, 1, h, w)`` or a
                full-resolution anomaly map, max-pooled to the latent grid) instead of the kNN score.
            alpha: Overrides ``self.alpha``.

        Returns:
            ``(prior, knn_scores)``.
        """
        z = self.encode(x)
        retrieved, scores = self.retrieve(z)
        selector = scores if patch_scores is None else self._patch_scores_from(patch_scores, tuple(z.shape[-2:]))
        z_replaced, _ = self.replace_top_patches(z, retrieved, selector, self.alpha if alpha is None else alpha)
        return self.decode(z_replaced), scores

    @torch.no_grad()
    def deep_prior(
        self, x: torch.Tensor, patch_scores: torch.Tensor | None = None, alpha: float | None = None
    ) -> torch.Tensor:
        """Deep image prior ``X̂`` (see :meth:`deep_prior_with_scores`).

        With external ``patch_scores`` (the refiner's case) only the replaced patches are searched in the memory
        bank: the same prior for ``α`` of the kNN cost (the search dominates the prior's time).
        """
        if patch_scores is None or self.aligned or is_exporting():
            return self.deep_prior_with_scores(x, patch_scores, alpha)[0]
        self._check_fitted()
        z = self.encode(x)
        batch, channels, height, width = z.shape
        selector = self._patch_scores_from(patch_scores, (height, width))
        _, mask = self.replace_top_patches(z, z, selector, self.alpha if alpha is None else alpha)
        picked = mask.flatten(1)  # (B, P)
        query = F.normalize(self.aggregate(z.float())[picked], dim=-1)  # (N, D), selected positions only
        retrieved = torch.zeros(batch, height * width, channels, dtype=torch.float32, device=z.device)
        if len(query) > 0:
            retrieved[picked] = self._knn_global(query)[1].mean(1)
        retrieved = retrieved.transpose(1, 2).reshape(batch, channels, height, width).to(z.dtype)
        return self.decode(torch.where(mask, retrieved, z))

    # ------------------------------------------------------------------ inference
    def split(
        self, x: torch.Tensor, prior: torch.Tensor, lam: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Split images into background ``L`` and defect layer ``S`` with this model's settings.

        With ``decompose`` the deep image decomposition (eq. 3, or eq. 4 when ``noisy``) with the model's ``λ``,
        steps, learning rate, ``λ_SSIM`` and SSIM window; without it the plain PAE residual ``(X̂, X - X̂)``.

        Args:
            x: Images ``(B, C, H, W)`` in ``[0, 1]``.
            prior: Their deep image priors ``X̂`` (:meth:`deep_prior`).
            lam: Overrides ``self.lam`` (tuning).

        Returns:
            ``(low_rank, sparse)``: ``X = L + S`` (eq. 3, residual), ``X = L + S + e`` (eq. 4).
        """
        if not self.decompose:
            return prior, x - prior
        return decompose(
            x,
            prior,
            lam=self.lam if lam is None else lam,
            steps=self.decomposition_steps,
            lr=self.decomposition_lr,
            noisy=self.noisy,
            lam_ssim=self.lam_ssim,
            window_size=self.ssim_window,
        )

    def forward(
        self,
        x: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None] | InferenceBatch:
        """Training: :meth:`reconstruct` outputs. Eval: ``InferenceBatch(pred_score, anomaly_map)``.

        Args:
            x: Images ``(B, C, H, W)`` in ``[0, 1]``.

        Returns:
            Training tuple or :class:`anomalib.data.InferenceBatch`.
        """
        if self.training:
            return self.reconstruct(x)
        prior, _ = self.deep_prior_with_scores(x)
        _, sparse = self.split(x, prior)
        anomaly_map = sparse_to_anomaly_map(sparse)
        return InferenceBatch(pred_score=image_score(anomaly_map), anomaly_map=anomaly_map)


def _coreset_indices(features: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Greedy k-center coreset indices (appendix C) on a 128-d random projection of ``features``.

    Uses the project's memory-flat :func:`~anomalib_pixelrefine.models.components.sampling.greedy_coreset` rather
    than anomalib's ``KCenterGreedy`` (which keeps an ``N x N``-sized working set on large banks).
    """
    n_samples = max(1, math.ceil(ratio * features.shape[0]))
    return greedy_coreset(features, n_samples, projection_dim=128, seed=seed).long()
