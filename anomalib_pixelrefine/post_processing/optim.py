"""F2PAD building blocks: loss terms, gradient sharing, per-pixel Adan, MoG fitting and inpainting.

Loss terms (eq. 8, 10, 11), bilateral gradient sharing (eq. 13–14), Adan with per-pixel steps (eq. 15), MoG fitting
and classical inpainting for ``n0``.

All functions work on batches ``(B, 3, H, W)`` of pixels in ``[0, 1]`` and are vectorised (no loops over pixels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def mog_prior(n: torch.Tensor, means: torch.Tensor, inv_covs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. (10): ``sum_ij w_ij min_q (n_ij - mu_q)^T Λ_q^-1 (n_ij - mu_q)`` (equal component priors).

    Args:
        n: Images ``(B, 3, H, W)``.
        means: Component means ``(Q, 3)``.
        inv_covs: Inverse covariances ``(Q, 3, 3)``.
        weight: Pixel weights ``(B, 1, H, W)`` (e.g. the optimised region).

    Returns:
        ``(B,)``.
    """
    # Λ_q^-1 = L_q L_qᵀ: (n - μ_q)ᵀ Λ_q^-1 (n - μ_q) = ||L_qᵀ n - L_qᵀ μ_q||², all components in one 1x1 conv.
    b, _, h, w = n.shape
    q = means.shape[0]
    chol_t = torch.linalg.cholesky(inv_covs).transpose(1, 2)  # (Q, 3, 3): L_qᵀ
    bias = -torch.einsum("qdc,qc->qd", chol_t, means).reshape(-1)
    z = F.conv2d(n, chol_t.reshape(3 * q, 3, 1, 1), bias)  # (B, 3Q, H, W)
    maha = z.view(b, q, 3, h, w).pow(2).sum(2)  # (B, Q, H, W)
    return (maha.amin(1) * weight[:, 0]).flatten(1).sum(1)


def total_variation(n: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (11): anisotropic TV ``sum |n_{i+1,j} - n_ij| + |n_{i,j+1} - n_ij|``, smoothed ``sqrt(d^2 + eps)``.

    Differences are weighted by the larger weight of their two pixels (so the ROI border is included).
    """
    dy = n[..., 1:, :] - n[..., :-1, :]
    dx = n[..., :, 1:] - n[..., :, :-1]
    wy = torch.maximum(weight[..., 1:, :], weight[..., :-1, :])
    wx = torch.maximum(weight[..., :, 1:], weight[..., :, :-1])
    tv_y = ((dy.pow(2) + eps).sqrt() * wy).flatten(1).sum(1)
    tv_x = ((dx.pow(2) + eps).sqrt() * wx).flatten(1).sum(1)
    return tv_y + tv_x


def log_sparsity(a: torch.Tensor, weight: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Eq. (8): LOG penalty ``sum_ij log(sqrt(||a_ij||^2 + eps) + ||a_ij||)`` (constant removed).

    ``log(sqrt(s + eps) + sqrt(s)) - log(sqrt(eps)) = asinh(sqrt(s / eps))``, evaluated (stable, 0 at 0).
    """
    norm = (a.pow(2).sum(1, keepdim=True) + 1e-12).sqrt()
    return (torch.asinh(norm / math.sqrt(eps)) * weight).flatten(1).sum(1)


def range_penalty(n: torch.Tensor) -> torch.Tensor:
    """Penalty keeping pixels in ``[0, 1]``: ``sum relu(n - 1)^2 + relu(-n)^2`` ``(B,)``."""
    return (F.relu(n - 1).pow(2) + F.relu(-n).pow(2)).flatten(1).sum(1)


def bilateral_weights(x: torch.Tensor, ks: int, sigma0: float, sigma1: float) -> torch.Tensor:
    """Eq. (14): normalised bilateral weights of the ``(2 ks + 1)^2`` neighbours of every pixel, from ``x``.

    Returns:
        ``(B, 1, K, H*W)`` with ``K = (2 ks + 1)^2``, summing to 1 over ``K``.
    """
    b, c, h, w = x.shape
    k = 2 * ks + 1
    patches = F.unfold(F.pad(x, (ks, ks, ks, ks), mode="replicate"), k).view(b, c, k * k, h * w)
    colour = (patches - x.view(b, c, 1, h * w)).pow(2).sum(1, keepdim=True)
    offsets = torch.arange(-ks, ks + 1, device=x.device, dtype=x.dtype)
    spatial = (offsets.view(-1, 1).pow(2) + offsets.view(1, -1).pow(2)).view(1, 1, k * k, 1)
    logits = -spatial / sigma0**2 - colour / sigma1**2
    return torch.softmax(logits, dim=2)


def share_gradients(grad: torch.Tensor, weights: torch.Tensor, ks: int) -> torch.Tensor:
    """Eq. (13): ``g_ij = sum_{i',j'} w_{i'j'} ∇_{n_{i+i',j+j'}} F`` with weights from :func:`bilateral_weights`."""
    b, c, h, w = grad.shape
    k = 2 * ks + 1
    patches = F.unfold(F.pad(grad, (ks, ks, ks, ks)), k).view(b, c, k * k, h * w)
    return (patches * weights).sum(2).view(b, c, h, w)


class PixelAdan:
    """Adan (Xie et al. 2022) with element-wise learning rates, as needed by F2PAD's adaptive steps (eq. 15).

    ``timm.optim.Adan`` only accepts a scalar learning rate per parameter group and updates ``p.grad``; F2PAD needs a
    per-pixel step ``γ_ij`` and a custom (shared, clipped) direction, hence this minimal functional version.
    Betas follow timm/paper defaults ``(0.98, 0.92, 0.99)``, bias-corrected, no weight decay, no restart.
    """

    def __init__(
        self, shape: torch.Size, device: torch.device, dtype: torch.dtype, betas: tuple = (0.98, 0.92, 0.99)
    ) -> None:
        self.b1, self.b2, self.b3 = betas
        self.m = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.m)
        self.n = torch.zeros_like(self.m)
        self.prev: torch.Tensor | None = None
        self.t = 0

    def step(self, g: torch.Tensor, lr: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """Return the update ``Δ`` (to subtract) for direction ``g`` and element-wise ``lr``."""
        self.t += 1
        diff = torch.zeros_like(g) if self.prev is None else g - self.prev
        self.prev = g.clone()
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.v.mul_(self.b2).add_(diff, alpha=1 - self.b2)
        self.n.mul_(self.b3).add_((g + self.b2 * diff).pow(2), alpha=1 - self.b3)
        c1, c2, c3 = 1 - self.b1**self.t, 1 - self.b2**self.t, 1 - self.b3**self.t
        denom = (self.n / c3).sqrt() + eps
        return lr * (self.m / c1 + self.b2 * self.v / c2) / denom


@torch.no_grad()
def fit_mog(pixels: torch.Tensor, n_components: int, seed: int = 0, reg: float = 1e-4) -> tuple[torch.Tensor, ...]:
    """Fit a mixture of Gaussians to pixels ``(N, 3)`` (EM, scikit-learn) -> ``(means, inv_covs)`` float32."""
    from sklearn.mixture import GaussianMixture

    data = pixels.detach().cpu().double().numpy()
    n_components = max(1, min(n_components, len(data)))
    gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=reg, random_state=seed, max_iter=200)
    gmm.fit(data)
    means = torch.from_numpy(gmm.means_).float()
    inv = torch.from_numpy(np.linalg.inv(gmm.covariances_)).float()
    return means, inv


def inpaint(x: torch.Tensor, mask: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Classical inpainting of ``mask`` (OpenCV Telea, one image at a time) for ``n0`` (F2PAD III-E1 without MAE).

    Args:
        x: Images ``(B, 3, H, W)`` in ``[0, 1]``.
        mask: ``(B, 1, H, W)`` bool, pixels to fill.
        radius: Telea neighbourhood radius.

    Returns:
        Inpainted images, same shape/dtype/device as ``x``.
    """
    import cv2

    out = x.detach().clone()
    images = (x.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    masks = mask.detach()[:, 0].byte().cpu().numpy()
    for i in range(x.shape[0]):  # per image: cv2.inpaint is single-image
        if masks[i].any():
            filled = cv2.inpaint(np.ascontiguousarray(images[i]), masks[i], radius, cv2.INPAINT_TELEA)
            filled_t = torch.from_numpy(filled).to(x.device, x.dtype).permute(2, 0, 1) / 255.0
            out[i] = torch.where(mask[i].bool(), filled_t, x[i])
    return out


def _masked_ssd(bank: torch.Tensor, template: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``sum_known ||template - bank_window||²`` at every window position, as two correlations -> ``(K, h', w')``."""
    weighted = (known * template).unsqueeze(0)  # (1, 3, th, tw)
    cross = F.conv2d(bank, weighted)[:, 0]
    energy = F.conv2d(bank.pow(2).sum(1, keepdim=True), known.view(1, 1, *known.shape[-2:]))[:, 0]
    return energy - 2 * cross + (known * template.pow(2)).sum()


@torch.no_grad()
def exemplar_fill(
    x: torch.Tensor,
    mask: torch.Tensor,
    bank: torch.Tensor,
    ring: int = 8,
    search_scale: int = 2,
    windows: int = 1,
) -> torch.Tensor:
    """Fill ``mask`` with the best-matching windows of normal training images (exemplar inpainting for ``n0``).

    For each image, the mask's bounding box plus ``ring`` pixels is the template; its known (unmasked) pixels are
    matched against every window of every bank image (masked SSD as correlations, coarse search at
    ``1/search_scale`` then a ±``search_scale`` full-resolution refinement). The best window's pixels fill the mask,
    shifted by the per-channel mean difference over the known pixels. Unlike Telea (a smooth diffusion of the
    border), this puts normal texture and structure into large regions. With ``windows > 1`` the best window of
    each of the ``windows`` best-matching bank images is kept and every pixel takes the one closest to ``x``: a
    pixel then counts as changed only if no plausible normal window explains it (e.g. a mortar line that one
    window misplaces).

    Args:
        x: Images ``(B, 3, H, W)`` in ``[0, 1]``.
        mask: ``(B, 1, H, W)`` bool, pixels to fill.
        bank: Normal images ``(K, 3, H, W)`` in ``[0, 1]`` (resized to ``x`` if needed).
        ring: Known context around the mask's bounding box.
        search_scale: Down-sampling of the coarse search (at least ``ceil(max(H, W) / 128)``).
        windows: Number of windows (from different bank images) combined per pixel.

    Returns:
        Filled images, same shape/dtype/device as ``x``; images whose box has no known pixel fall back to
        :func:`inpaint`.
    """
    if bank.shape[-2:] != x.shape[-2:]:
        bank = F.interpolate(bank, size=x.shape[-2:], mode="bilinear", align_corners=False)
    bank = bank.to(x)
    out = x.detach().clone()
    h, w = x.shape[-2:]
    # The coarse search runs on at most ~128 px (its cost grows with the image area times the box area).
    s = max(1, int(search_scale), math.ceil(max(h, w) / 128))
    coarse_bank = F.avg_pool2d(bank, s) if s > 1 else bank
    windows = max(1, min(int(windows), len(bank)))
    fallback = []
    for i in range(x.shape[0]):  # per image: each has its own template (box size and known pixels)
        m = mask[i, 0]
        if not bool(m.any()):
            continue
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        y0, y1 = max(int(rows[0]) - ring, 0), min(int(rows[-1]) + 1 + ring, h)
        x0, x1 = max(int(cols[0]) - ring, 0), min(int(cols[-1]) + 1 + ring, w)
        template, known = x[i, :, y0:y1, x0:x1], (~m[y0:y1, x0:x1]).to(x.dtype)
        if float(known.sum()) < 1:
            fallback.append(i)
            continue
        th, tw = y1 - y0, x1 - x0
        coarse = s > 1 and th >= 2 * s and tw >= 2 * s
        if coarse:  # coarse search over all windows of all bank images
            ct, ck = F.avg_pool2d(template[None], s)[0], F.avg_pool2d(known[None, None], s)[0, 0]
            ssd = _masked_ssd(coarse_bank, ct, ck)
        else:  # small boxes: full-resolution search everywhere
            ssd = _masked_ssd(bank, template, known)
        width = ssd.shape[2]
        best, where = ssd.flatten(1).min(1)
        fills = []
        for k in best.topk(windows, largest=False).indices.tolist():  # best window of each of the best images
            cy, cx = divmod(int(where[k]), width)
            if coarse:  # full-resolution refinement around the coarse match
                ys, xs = max(cy * s - s, 0), max(cx * s - s, 0)
                ye, xe = min(cy * s + s + th, h), min(cx * s + s + tw, w)
                fine = _masked_ssd(bank[k : k + 1, :, ys:ye, xs:xe], template, known)
                dy, dx = divmod(int(fine.flatten().argmin()), fine.shape[2])
                cy, cx = ys + dy, xs + dx
            window = bank[k, :, cy : cy + th, cx : cx + tw]
            shift = ((template - window) * known).flatten(1).sum(1) / known.sum()
            fills.append((window + shift.view(3, 1, 1)).clamp(0, 1))
        filled = torch.stack(fills)
        if windows > 1:  # per pixel, the window closest to the image
            pick = (filled - template).pow(2).sum(1, keepdim=True).argmin(0, keepdim=True)
            filled = filled.gather(0, pick.expand(1, 3, th, tw))
        out[i, :, y0:y1, x0:x1] = torch.where(m[y0:y1, x0:x1], filled[0], template)
    if fallback:
        out[fallback] = inpaint(x[fallback], mask[fallback])
    return out
