"""Tuning-parameter selection of PAEDID (section 2.4): grid search of ``(l, k, α, λ)`` on annotated images.

With clean backgrounds ``B_i`` of the validation images (e.g. synthetic defects on known normal images) the paper's
criterion is used: ``min Σ_i ||B_i - L̂_i||_2`` (equivalently ``||X_i - L̂_i - S_i||_2``). With only pixel masks the
criterion is the best Dice of the anomaly maps over one global threshold (maximised).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from anomalib_pixelrefine.metrics.functional import best_threshold_dice

from .decomposition import sparse_to_anomaly_map
from .torch_model import PaeModel


@dataclass
class TuningResult:
    """Outcome of :func:`grid_search`.

    Attributes:
        best: Best parameters ``{"aggregation_length", "num_neighbors", "alpha", "lam"}`` and their ``"score"``.
        results: One dict per evaluated combination (parameters and ``"score"``).
        criterion: ``"background_l2"`` (lower is better) or ``"best_dice"`` (higher is better).
    """

    best: dict[str, float]
    results: list[dict[str, float]] = field(default_factory=list)
    criterion: str = "best_dice"


def best_dice(anomaly_maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Dice of the thresholded anomaly maps, maximised exactly over one global threshold (all pixels of all images).

    Exact: :func:`~anomalib_pixelrefine.metrics.functional.best_threshold_dice` over every distinct score.

    Args:
        anomaly_maps: ``(B, 1, H, W)`` maps.
        masks: ``(B, 1, H, W)`` binary ground truth.

    Returns:
        The best Dice in ``[0, 1]``.

    Raises:
        ValueError: If the shapes differ.
    """
    if anomaly_maps.shape != masks.shape:
        msg = f"anomaly_maps {tuple(anomaly_maps.shape)} and masks {tuple(masks.shape)} must have the same shape"
        raise ValueError(msg)
    return float(best_threshold_dice(anomaly_maps, masks)[0])


@torch.no_grad()
def grid_search(
    model: PaeModel,
    train_latents: torch.Tensor,
    images: torch.Tensor,
    masks: torch.Tensor,
    aggregation_lengths: Sequence[int] = (1, 3, 5),
    num_neighbors: Sequence[int] = (1, 5, 9),
    alphas: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
    lams: Sequence[float] = (0.1, 0.3, 1.0),
    backgrounds: torch.Tensor | None = None,
    coreset_sampling_ratio: float | None = None,
    apply_best: bool = True,
) -> TuningResult:
    """Grid search of the PAEDID tuning parameters ``(l, k, α, λ)`` (section 2.4).

    The autoencoder is fixed; for every ``l`` the memory bank is rebuilt from ``train_latents``, for every ``k`` the
    memory addressing is redone, for every ``α`` the deep prior is decoded and for every ``λ`` the decomposition is
    solved with the model's steps / learning rate. With ``model.decompose == False`` (the PAE ablation) the residual
    ``|X - X̂|`` is scored and ``λ`` is not searched (only ``lams[0]`` is reported).

    Args:
        model: A trained :class:`PaeModel`.
        train_latents: Latents of the normal training images ``(I, C, h, w)`` (``model.encode(train_images)``).
        images: Annotated validation images ``(B, C, H, W)``.
        masks: Their defect masks ``(B, 1, H, W)``.
        aggregation_lengths: Candidate ``l``.
        num_neighbors: Candidate ``k``.
        alphas: Candidate ``α``.
        lams: Candidate ``λ``.
        backgrounds: Clean backgrounds of ``images``; switches to the paper's background-L2 criterion.
        coreset_sampling_ratio: Coreset ratio used when rebuilding banks.
        apply_best: Set the best parameters on ``model`` and rebuild its memory bank with them.

    Returns:
        The :class:`TuningResult`.

    Raises:
        ValueError: If a grid is empty or shapes mismatch.
    """
    grids = {"aggregation_lengths": aggregation_lengths, "num_neighbors": num_neighbors, "alphas": alphas, "lams": lams}
    for name, values in grids.items():
        if len(values) == 0:
            msg = f"{name} must not be empty"
            raise ValueError(msg)
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        msg = f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}"
        raise ValueError(msg)
    if backgrounds is not None and backgrounds.shape != images.shape:
        msg = f"backgrounds {tuple(backgrounds.shape)} do not match images {tuple(images.shape)}"
        raise ValueError(msg)

    was_training = model.training
    model.eval()
    original = (model.aggregation_length, model.num_neighbors, model.alpha, model.lam)
    criterion = "best_dice" if backgrounds is None else "background_l2"
    query = model.encode(images)
    results: list[dict[str, float]] = []
    for length in aggregation_lengths:
        model.aggregation_length = int(length)
        model.build_memory_bank(train_latents, coreset_sampling_ratio=coreset_sampling_ratio)
        for k in num_neighbors:
            model.num_neighbors = int(k)
            retrieved, scores = model.retrieve(query)
            for alpha in alphas:
                replaced, _ = model.replace_top_patches(query, retrieved, scores, float(alpha))
                prior = model.decode(replaced)
                # Without decomposition (the PAE ablation) λ plays no role: one evaluation of the residual per α.
                for lam in lams if model.decompose else lams[:1]:
                    low_rank, sparse = model.split(images, prior, lam=float(lam))
                    if backgrounds is None:
                        score = best_dice(sparse_to_anomaly_map(sparse), masks)
                    else:
                        score = (backgrounds - low_rank).flatten(1).norm(dim=1).mean().item()
                    results.append(
                        {"aggregation_length": length, "num_neighbors": k, "alpha": alpha, "lam": lam, "score": score}
                    )

    pick = max if criterion == "best_dice" else min
    best = pick(results, key=lambda result: result["score"])
    model.aggregation_length, model.num_neighbors, model.alpha, model.lam = original
    if apply_best:
        model.aggregation_length = int(best["aggregation_length"])
        model.num_neighbors = int(best["num_neighbors"])
        model.alpha = float(best["alpha"])
        model.lam = float(best["lam"])
    model.build_memory_bank(train_latents, coreset_sampling_ratio=coreset_sampling_ratio)
    model.train(was_training)
    return TuningResult(best=dict(best), results=results, criterion=criterion)
