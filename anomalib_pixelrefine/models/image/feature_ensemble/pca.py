"""Channel PCA for feature maps, fitted by batched covariance accumulation.

The transformation blocks of the feature ensemble reduce the channel dimension of stacked feature maps with a PCA
fitted on the training features. The statistics (``Σx``, ``Σxxᵀ``, count) are accumulated batch by batch in float64,
so memory stays flat (``C × C``) however many training locations there are; the components come from one
``torch.linalg.eigh`` of the covariance at the end. anomalib has no streaming PCA (``anomalib.models.components.PCA``
needs all samples in one tensor), hence this small module.
"""

import torch
from anomalib.models.components.base import DynamicBufferMixin
from torch import nn


class ChannelPCA(DynamicBufferMixin, nn.Module):
    """PCA along the channel axis of ``(B, C, H, W)`` feature maps.

    Every spatial location is one sample. After :meth:`fit` the module maps ``(B, C, H, W)`` to ``(B, k, H, W)``:
    centred, projected on the top ``k`` principal axes and divided by one global scale so that the kept channels have
    unit mean variance (keeps the relative spectrum; makes the noise level of the discriminator head independent of
    the backbone's feature magnitude).

    Args:
        n_components: ``int >= 1``: number of kept components (capped at ``C``); ``float`` in ``(0, 1]``: smallest
            number of components whose explained-variance share reaches this value.
        reduce: ``False`` keeps all channels unrotated (centring and scaling only), used by ``block="none"``.
        groups: Optional channel counts of consecutive channel groups (the members of the global block). Each group is
            scaled to unit mean channel variance before the PCA, so that no member dominates the components by its
            feature magnitude alone (a PCA on member-balanced covariance; the scales are derived from the accumulated
            covariance, no extra pass).

    Raises:
        ValueError: If ``n_components`` is not a positive int or a float in ``(0, 1]``.
    """

    def __init__(self, n_components: int | float = 0.95, reduce: bool = True, groups: list[int] | None = None) -> None:
        super().__init__()
        validate_n_components(n_components)
        self.n_components = n_components
        self.reduce = reduce
        self.groups = list(groups) if groups else None
        self.channel_scale: torch.Tensor
        self.register_buffer("channel_scale", torch.empty(0))
        self.mean: torch.Tensor
        self.components: torch.Tensor
        self.explained_variance: torch.Tensor
        self.total_variance: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("components", torch.empty(0))
        self.register_buffer("explained_variance", torch.empty(0))
        self.register_buffer("total_variance", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.reset_statistics()

    # ------------------------------------------------------------------ fitting
    def reset_statistics(self) -> None:
        """Drop the accumulated sums (not part of the state dict)."""
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._count = 0

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Accumulate ``Σx`` and ``Σxxᵀ`` of a batch of feature maps ``(B, C, H, W)``."""
        if features.dim() != 4:
            msg = f"ChannelPCA expects feature maps (B, C, H, W), got shape {tuple(features.shape)}"
            raise ValueError(msg)
        x = features.detach().transpose(0, 1).reshape(features.shape[1], -1).double()  # (C, N)
        if self._sum is None:
            self._sum = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            self._outer = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
        elif self._sum.shape[0] != x.shape[0]:
            msg = f"ChannelPCA got {x.shape[0]} channels, earlier batches had {self._sum.shape[0]}"
            raise ValueError(msg)
        self._sum += x.sum(dim=1)
        self._outer += x @ x.T
        self._count += x.shape[1]

    @torch.no_grad()
    def fit(self) -> None:
        """Compute mean, components and scale from the accumulated statistics, then drop the sums.

        Raises:
            RuntimeError: If :meth:`update` was never called (or only with 0 locations).
        """
        if self._sum is None or self._outer is None or self._count < 2:
            msg = "ChannelPCA.fit() needs statistics of >= 2 locations; call update() with training features first"
            raise RuntimeError(msg)
        mean = self._sum / self._count
        cov = (self._outer - self._count * torch.outer(mean, mean)) / (self._count - 1)
        cov = 0.5 * (cov + cov.T)
        channel_scale = torch.ones_like(mean)
        if self.groups is not None:
            if sum(self.groups) != mean.numel():
                msg = f"ChannelPCA groups {self.groups} do not add up to the {mean.numel()} channels"
                raise ValueError(msg)
            variances = torch.diagonal(cov).split(self.groups)
            channel_scale = torch.cat([v.mean().clamp_min(1e-12).rsqrt().expand(v.numel()) for v in variances])
            cov = cov * channel_scale[:, None] * channel_scale[None, :]
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals = eigvals.flip(0).clamp_min(0.0)
        eigvecs = eigvecs.flip(1)
        total = eigvals.sum()
        if self.reduce:
            k = self.num_components_for(eigvals)
            components = eigvecs[:, :k].T.contiguous()  # (k, C)
            kept = eigvals[:k]
        else:
            components = torch.empty(0, dtype=torch.float64, device=mean.device)
            kept = torch.diagonal(cov).clamp_min(0.0)
        dtype = self.scale.dtype
        self.mean = mean.to(dtype)
        self.channel_scale = channel_scale.to(dtype)
        self.components = components.to(dtype)
        self.explained_variance = kept.to(dtype)
        self.total_variance = total.to(dtype)
        self.scale = kept.mean().clamp_min(1e-12).sqrt().to(dtype)
        self.reset_statistics()

    def num_components_for(self, eigvals: torch.Tensor) -> int:
        """Number of kept components for descending eigenvalues ``eigvals``."""
        if isinstance(self.n_components, int):
            return min(self.n_components, eigvals.numel())
        share = torch.cumsum(eigvals, 0) / eigvals.sum().clamp_min(1e-12)
        # first index where the cumulative share reaches the target (tolerate float rounding at 1.0)
        k = int(torch.searchsorted(share, torch.tensor(self.n_components - 1e-9, dtype=share.dtype)).item()) + 1
        return min(k, eigvals.numel())

    # ------------------------------------------------------------------ inference
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called (or a fitted state dict loaded)."""
        return self.mean.numel() > 0

    @property
    def out_channels(self) -> int:
        """Output channels ``k`` (requires a fitted module)."""
        return self.components.shape[0] if self.reduce else self.mean.shape[0]

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """Variance share of each kept component (sums to <= 1)."""
        return self.explained_variance / self.total_variance.clamp_min(1e-12)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``(B, C, H, W)`` to ``(B, k, H, W)``."""
        if not self.is_fitted:
            msg = "ChannelPCA is not fitted; call update() on training features and fit() first"
            raise RuntimeError(msg)
        centred = (features - self.mean.view(1, -1, 1, 1)) * self.channel_scale.view(1, -1, 1, 1)
        if self.reduce:
            centred = torch.einsum("kc,bchw->bkhw", self.components, centred)
        return centred / self.scale


def validate_n_components(n_components: int | float) -> None:
    """Raise ``ValueError`` unless ``n_components`` is an int >= 1 or a float in ``(0, 1]``."""
    if isinstance(n_components, bool) or not isinstance(n_components, int | float):
        msg = f"n_components must be an int >= 1 or a float in (0, 1], got {n_components!r}"
        raise ValueError(msg)
    if isinstance(n_components, int) and n_components < 1:
        msg = f"n_components as int must be >= 1, got {n_components}"
        raise ValueError(msg)
    if isinstance(n_components, float) and not 0.0 < n_components <= 1.0:
        msg = f"n_components as float (explained-variance share) must be in (0, 1], got {n_components}"
        raise ValueError(msg)
