"""Deep image decomposition of PAEDID (Mou et al., eq. 3 and appendix B eq. 4).

Given a test image ``X`` and a deep image prior ``X̂`` (the background the patch autoencoder believes should be
there), the image is split into a background ``L`` and a sparse defect layer ``S``:

* noiseless (eq. 3): ``min_L ||L - X̂||_SSIM + λ ||X - L||_1`` and ``S = X - L``;
* noisy (eq. 4): ``min_{L,S} ||X - L - S||²₂ + λ ||S||_1 + λ₂ ||L - X̂||_SSIM``. For fixed ``L`` the optimal ``S`` is
  the soft-threshold of ``X - L`` at ``λ / 2``, so ``S`` is eliminated in closed form and only ``L`` is optimised
  (the objective becomes a Huber-like envelope, which is smooth and gives exactly sparse ``S``).

All norms are *means* over pixels and channels (not sums), so ``λ`` does not depend on the image size. Images of a
batch are decomposed independently (the objective is a sum over images and Adam's updates are element-wise), with
one vectorised Adam loop for the whole batch.

The functions work inside ``torch.inference_mode`` (Lightning's test/predict loops): they leave inference mode and
enable gradients locally.
"""

import torch
from kornia.metrics import ssim as kornia_ssim
from torch.nn import functional as F


def ssim_distance(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Per-image SSIM loss ``||x - y||_SSIM = mean((1 - SSIM(x, y)) / 2)``.

    Args:
        x: Images ``(B, C, H, W)`` in ``[0, 1]``.
        y: Images of the same shape.
        window_size: Side of the Gaussian SSIM window (odd).

    Returns:
        Tensor ``(B,)`` with values in ``[0, 1]``.
    """
    ssim_map = kornia_ssim(x, y, window_size, max_val=1.0, padding="same")
    return ((1.0 - ssim_map) / 2.0).flatten(1).mean(1)


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Element-wise soft-thresholding (proximal operator of ``threshold * |x|``)."""
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


def decomposition_objective(
    image: torch.Tensor,
    low_rank: torch.Tensor,
    prior: torch.Tensor,
    lam: float,
    noisy: bool = False,
    lam_ssim: float = 1.0,
    window_size: int = 11,
) -> torch.Tensor:
    """Per-image value of the PAEDID objective (eq. 3, or eq. 4 with ``S`` eliminated when ``noisy``).

    Args:
        image: Test images ``X`` ``(B, C, H, W)``.
        low_rank: Backgrounds ``L`` of the same shape.
        prior: Deep image priors ``X̂`` of the same shape.
        lam: Sparsity weight ``λ`` (``λ₁`` of eq. 4).
        noisy: Use the noisy formulation (eq. 4).
        lam_ssim: Weight ``λ₂`` of the SSIM term in eq. 4 (ignored for eq. 3).
        window_size: SSIM window size.

    Returns:
        Tensor ``(B,)`` with the objective of every image.
    """
    residual = image - low_rank
    if not noisy:
        return ssim_distance(low_rank, prior, window_size) + lam * residual.abs().flatten(1).mean(1)
    sparse = soft_threshold(residual, lam / 2.0)
    fit = (residual - sparse).pow(2).flatten(1).mean(1)
    return fit + lam * sparse.abs().flatten(1).mean(1) + lam_ssim * ssim_distance(low_rank, prior, window_size)


def decompose(
    image: torch.Tensor,
    prior: torch.Tensor,
    lam: float = 0.5,
    steps: int = 100,
    lr: float = 0.01,
    noisy: bool = False,
    lam_ssim: float = 1.0,
    window_size: int = 11,
    init: str = "image",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decompose images into background ``L`` and sparse defects ``S`` given a deep image prior (PAEDID eq. 3/4).

    Args:
        image: Test images ``X`` ``(B, C, H, W)`` in ``[0, 1]``.
        prior: Deep image priors ``X̂`` (e.g. :meth:`PaeModel.deep_prior`), same shape.
        lam: Sparsity weight ``λ`` (mean-normalised; larger -> sparser ``S``).
        steps: Adam iterations.
        lr: Adam learning rate.
        noisy: Solve the noisy formulation (appendix B, eq. 4) instead of eq. 3.
        lam_ssim: Weight ``λ₂`` of the SSIM term of eq. 4.
        window_size: SSIM window size.
        init: Initial background, ``"image"`` (``L = X``, ``S = 0``) or ``"prior"`` (``L = X̂``).

    Returns:
        ``(low_rank, sparse)``: background ``L`` and defect layer ``S`` (``X = L + S`` for eq. 3,
        ``X = L + S + e`` for eq. 4), both detached, shape of ``image``.

    Raises:
        ValueError: If shapes differ or a parameter is out of range.
    """
    if image.shape != prior.shape or image.dim() != 4:
        msg = (
            f"image and prior must have the same (B, C, H, W) shape, got {tuple(image.shape)} and {tuple(prior.shape)}"
        )
        raise ValueError(msg)
    if lam < 0:
        msg = f"lam must be >= 0, got {lam}"
        raise ValueError(msg)
    if steps < 0:
        msg = f"steps must be >= 0, got {steps}"
        raise ValueError(msg)
    if init not in {"image", "prior"}:
        msg = f"init must be 'image' or 'prior', got '{init}'"
        raise ValueError(msg)

    with torch.inference_mode(False), torch.enable_grad():
        # Clones leave inference mode (inference tensors cannot take part in autograd).
        image = image.detach().clone().float()
        prior = prior.detach().clone().float()
        low_rank = (image if init == "image" else prior).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([low_rank], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = decomposition_objective(image, low_rank, prior, lam, noisy, lam_ssim, window_size).sum()
            loss.backward()
            optimizer.step()
        low_rank = low_rank.detach()
    residual = image - low_rank
    sparse = soft_threshold(residual, lam / 2.0) if noisy else residual
    return low_rank, sparse


def sparse_to_anomaly_map(sparse: torch.Tensor) -> torch.Tensor:
    """Channel-reduced magnitude ``|S|`` (mean over channels) as an anomaly map ``(B, 1, H, W)``."""
    return sparse.abs().mean(dim=1, keepdim=True)


def image_score(anomaly_map: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Image score: maximum of the locally averaged anomaly map (robust to single noisy pixels).

    Args:
        anomaly_map: Maps ``(B, 1, H, W)``.
        kernel_size: Side of the averaging window (odd).

    Returns:
        Scores ``(B,)``.
    """
    smoothed = F.avg_pool2d(anomaly_map, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)
    return smoothed.flatten(1).amax(1)
