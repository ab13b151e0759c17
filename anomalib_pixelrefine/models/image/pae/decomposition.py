"""Deep image decomposition of PAEDID (Mou et al., eq. 3 and appendix B eq. 4).

Given a test image ``X`` and a deep image prior ``X̂`` (the background the patch autoencoder believes should be
there), the image is split into a background ``L`` and a sparse defect layer ``S``:

* noiseless (eq. 3): ``min_L ||L - X̂||_SSIM + λ ||X - L||_1`` and ``S = X - L`` (the L1 norm Huber-smoothed below
  ``|X - L| < 0.03``, see *Rounding*);
* noisy (eq. 4): ``min_{L,S} ||X - L - S||²₂ + λ ||S||_1 + λ₂ ||L - X̂||_SSIM``. For fixed ``L`` the optimal ``S`` is
  the soft-threshold of ``X - L`` at ``λ / 2``, so ``S`` is eliminated in closed form and only ``L`` is optimised
  (the objective becomes a Huber-like envelope, which is smooth and gives exactly sparse ``S``).

All norms are *means* over pixels and channels (not sums), so ``λ`` does not depend on the image size. Images of a
batch are decomposed independently (the objective is a sum over images and Adam's updates are element-wise), with
one vectorised Adam loop for the whole batch.

:func:`decompose` runs a fixed number of Adam steps with the objective's gradient in closed form
(:func:`decomposition_gradient`: the SSIM gradient through the Gaussian moments and the adjoint of the reflect-padded
blur, both as matrix products) instead of autograd. It is the same optimisation as ``torch.optim.Adam`` on
:func:`decomposition_objective` (checked against autograd in the tests), but a plain feed-forward graph: it runs under
``torch.inference_mode`` and ``torch.no_grad``, and exports to ONNX/OpenVINO (the steps are unrolled in the graph;
each step adds about 7 s to an ONNX export on one CPU core).

Rounding: the SSIM gradient is a sum of terms that cancel (``Bᵀ(∂S/∂μ) + 2 L Bᵀ(∂S/∂E[x²]) + X̂ Bᵀ(∂S/∂E[xy])``,
each up to ~1000x the result), so in float32 it is only known to ~1e-7 absolute, while ``torch.optim.Adam``'s step
``lr m̂ / (√v̂ + 1e-8)`` moves a pixel by about ``lr`` whatever the gradient's size, and ``sign(X - L)`` turns a
residual of either sign into a full ``±λ`` gradient. Two float32 implementations (torch, onnxruntime, OpenVINO, or
two BLAS libraries) therefore moved pixels whose gradient is at rounding level in opposite directions (measured,
30 steps: 3e-3 on anomaly maps). Two changes bound the effect of a gradient error ``δ`` on a step by ``lr δ / ε``:

* Adam's ``ε`` is ``1.5 / count``: gradients are means over the ``count`` values of an image, so ``1 / count`` is
  their scale; well-resolved gradients keep Adam's normalised steps, rounding-level ones take gradient-descent steps
  of ``lr / ε`` times their size (``3 / count`` was stabler but slowed the decomposition down);
* the L1 term is Huber-smoothed below ``|X - L| < 0.03``: the data gradient ``λ clamp(r / 0.03, -1, 1)`` is
  continuous.

Measured (32 px, 30 steps, the protocol test's model): float32 vs float64 4e-5 on anomaly maps (was 1.8e-3).
"""

import torch
from kornia.filters import get_gaussian_kernel1d
from kornia.metrics import ssim as kornia_ssim
from torch.nn import functional as F

_SSIM_SIGMA = 1.5  # kornia's SSIM window
_SSIM_C1 = 0.01**2  # kornia's constants for max_val = 1
_SSIM_C2 = 0.03**2
_SSIM_EPS = 1e-12
_ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults
_ADAM_EPS_SCALE = 1.5  # Adam's ε in units of the gradient scale 1 / count (see *Rounding* above)
_L1_SMOOTHING = 0.03  # Huber width of the noiseless L1 term (see *Rounding* above)


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


def smooth_l1(x: torch.Tensor, width: float = _L1_SMOOTHING) -> torch.Tensor:
    """Huber-smoothed ``|x|``: ``x² / (2 width)`` below ``width``, ``|x| - width / 2`` above (gradient ``clamp``)."""
    magnitude = x.abs()
    return torch.where(magnitude < width, magnitude * magnitude / (2.0 * width), magnitude - width / 2.0)


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
    """Per-image value of the PAEDID objective (eq. 3 with a Huber-smoothed L1, or eq. 4 with ``S`` eliminated).

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
        return ssim_distance(low_rank, prior, window_size) + lam * smooth_l1(residual).flatten(1).mean(1)
    sparse = soft_threshold(residual, lam / 2.0)
    fit = (residual - sparse).pow(2).flatten(1).mean(1)
    return fit + lam * sparse.abs().flatten(1).mean(1) + lam_ssim * ssim_distance(low_rank, prior, window_size)


def _blur_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """``(size, size)`` matrix of a 1-D ``same`` convolution with reflect padding (kornia's border handling).

    Row ``i`` holds the kernel weights of the (reflected) source pixels of output pixel ``i``. Built from comparisons
    only, so it also exports with a symbolic ``size``.
    """
    radius = kernel.shape[0] // 2
    positions = torch.arange(size, device=kernel.device)
    source = (positions.unsqueeze(1) + torch.arange(kernel.shape[0], device=kernel.device) - radius).abs()
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # (size, k) reflected sources
    one_hot = (source.unsqueeze(-1) == positions).to(kernel.dtype)  # (size, k, size)
    return (one_hot * kernel.view(1, -1, 1)).sum(1)


class _GaussianBlur:
    """kornia's SSIM blur (separable Gaussian, reflect padding, ``same`` size) as ``M_H x M_Wᵀ``, and its adjoint.

    Two matrix products per blur and per adjoint keep the unrolled (exported) decomposition graph small.
    """

    def __init__(self, window_size: int, height: int, width: int, reference: torch.Tensor) -> None:
        kernel = get_gaussian_kernel1d(window_size, _SSIM_SIGMA, device=reference.device, dtype=reference.dtype)
        kernel = kernel.reshape(-1)
        self.rows = _blur_matrix(kernel, height)
        self.cols_t = _blur_matrix(kernel, width).T

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols_t

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        return self.rows.T @ g @ self.cols_t.T


def decomposition_gradient(
    image: torch.Tensor,
    low_rank: torch.Tensor,
    prior: torch.Tensor,
    lam: float,
    noisy: bool = False,
    lam_ssim: float = 1.0,
    window_size: int = 11,
    blur: _GaussianBlur | None = None,
    prior_moments: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Closed-form gradient of ``decomposition_objective(...).sum()`` with respect to ``low_rank``.

    With ``S = A1 A2 / D`` the SSIM map of ``x = L`` and ``y = X̂`` (``A1 = 2 μx μy + C1``,
    ``A2 = 2 (E[xy] - μx μy) + C2``, ``D = (μx² + μy² + C1)(σx² + σy² + C2) + ε``), the gradient of ``Σ w S`` is
    ``Bᵀ(w ∂S/∂μx) + 2 x Bᵀ(w ∂S/∂E[x²]) + y Bᵀ(w ∂S/∂E[xy])``, ``B`` the Gaussian blur (reflect padding) and
    ``Bᵀ`` its adjoint. The data terms are element-wise (``λ clamp(r / 0.03, -1, 1)``; eq. 4: ``2 r`` inside the soft
    threshold).

    Args:
        image: Images ``X`` ``(B, C, H, W)``.
        low_rank: Current backgrounds ``L``.
        prior: Deep image priors ``X̂``.
        lam: Sparsity weight ``λ``.
        noisy: Noisy formulation (eq. 4).
        lam_ssim: SSIM weight of eq. 4.
        window_size: SSIM window size.
        blur: Precomputed blur (inside :func:`decompose`'s loop).
        prior_moments: Precomputed ``(B(y), B(y²))``.

    Returns:
        Gradient of the shape of ``low_rank``.
    """
    count = low_rank[0].numel()
    blur = blur or _GaussianBlur(window_size, low_rank.shape[-2], low_rank.shape[-1], low_rank)
    mu_y, e_yy = prior_moments if prior_moments is not None else blur(torch.stack([prior, prior * prior])).unbind(0)
    mu_x, e_xx, e_xy = blur(torch.stack([low_rank, low_rank * low_rank, low_rank * prior])).unbind(0)
    mu_xy = mu_x * mu_y
    a1 = 2.0 * mu_xy + _SSIM_C1
    a2 = 2.0 * (e_xy - mu_xy) + _SSIM_C2
    b1 = mu_x * mu_x + mu_y * mu_y + _SSIM_C1
    b2 = (e_xx - mu_x * mu_x) + (e_yy - mu_y * mu_y) + _SSIM_C2
    den = b1 * b2 + _SSIM_EPS
    ssim_map = a1 * a2 / den
    # d mean((1 - S) / 2) / dS, times the SSIM weight.
    weight = -(lam_ssim if noisy else 1.0) / (2.0 * count)
    d_mu = weight * (2.0 * mu_y * (a2 - a1) - 2.0 * mu_x * ssim_map * (b2 - b1)) / den
    d_xx = weight * (-ssim_map * b1 / den)
    d_xy = weight * (2.0 * a1 / den)
    g_mu, g_xx, g_xy = blur.adjoint(torch.stack([d_mu, d_xx, d_xy])).unbind(0)
    grad = g_mu + 2.0 * low_rank * g_xx + prior * g_xy
    residual = image - low_rank
    if noisy:
        threshold = lam / 2.0
        data = torch.where(residual.abs() <= threshold, 2.0 * residual, lam * torch.sign(residual))
    else:
        data = lam * torch.clamp(residual * (1.0 / _L1_SMOOTHING), -1.0, 1.0)
    return grad - data / count


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

    ``steps`` Adam iterations (``torch.optim.Adam``'s update with default betas and ``eps = 1.5 / count``, ``count``
    the pixels times channels of one image) on the closed-form gradient (:func:`decomposition_gradient`); no
    autograd, so it is exportable and runs in any grad mode.

    Args:
        image: Test images ``X`` ``(B, C, H, W)`` in ``[0, 1]``.
        prior: Deep image priors ``X̂`` (e.g. :meth:`PaeModel.deep_prior`), same shape.
        lam: Sparsity weight ``λ`` (mean-normalised; larger -> sparser ``S``).
        steps: Adam iterations (unrolled when exported).
        lr: Adam learning rate.
        noisy: Solve the noisy formulation (appendix B, eq. 4) instead of eq. 3.
        lam_ssim: Weight ``λ₂`` of the SSIM term of eq. 4.
        window_size: SSIM window size.
        init: Initial background, ``"image"`` (``L = X``, ``S = 0``) or ``"prior"`` (``L = X̂``).

    Returns:
        ``(low_rank, sparse)``: background ``L`` and defect layer ``S`` (``X = L + S`` for eq. 3,
        ``X = L + S + e`` for eq. 4), shape of ``image``.

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

    dtype = torch.promote_types(image.dtype, torch.float32)  # float32, or float64 when given
    image, prior = image.to(dtype), prior.to(dtype)
    blur = _GaussianBlur(window_size, image.shape[-2], image.shape[-1], image)
    prior_moments = blur(torch.stack([prior, prior * prior])).unbind(0)
    low_rank = image if init == "image" else prior
    eps = _ADAM_EPS_SCALE / image[0].numel()
    beta1, beta2 = _ADAM_BETAS
    exp_avg = torch.zeros_like(low_rank)
    exp_avg_sq = torch.zeros_like(low_rank)
    for step in range(1, steps + 1):
        grad = decomposition_gradient(
            image, low_rank, prior, lam, noisy, lam_ssim, window_size, blur=blur, prior_moments=prior_moments
        )
        exp_avg = exp_avg + (grad - exp_avg) * (1.0 - beta1)
        exp_avg_sq = exp_avg_sq * beta2 + grad * grad * (1.0 - beta2)
        # torch.optim.Adam's m̂ / (sqrt(v̂) + ε), scaled by 1 / ε (an added constant below 1e-8 would be dropped by
        # the ONNX optimiser; ε is larger now, the form stays).
        step_size = lr / (1.0 - beta1**step)
        denominator = exp_avg_sq.sqrt() * (1.0 / (eps * (1.0 - beta2**step) ** 0.5)) + 1.0
        low_rank = low_rank - step_size * (exp_avg * (1.0 / eps)) / denominator
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
