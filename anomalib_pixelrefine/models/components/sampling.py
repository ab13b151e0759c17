"""Memory-flat k-center greedy coreset selection.

Why not anomalib's ``KCenterGreedy`` (``anomalib/models/components/sampling/k_center_greedy.py``)? It is the same
algorithm, but on CPU its memory is not bounded by the data size:

* every greedy step evaluates ``torch.linalg.norm(self.features - center, ...)``, which allocates a fresh ``[N, k]``
  temporary per step; glibc raises its mmap threshold after the first such free and keeps the freed blocks in the
  heap, so RSS climbs step after step (observed here: anomalib ``Patchcore`` grew to 24 GB during coreset selection
  unless ``MALLOC_MMAP_THRESHOLD_`` was set);
* selected indices are kept as a growing Python list of 0-d tensors, and the start point comes from the global torch
  RNG (not reproducible from an argument).

``greedy_coreset`` below keeps one running minimum-distance vector ``[N]``, a preallocated ``[chunk, k]`` scratch
buffer and a preallocated index array, and updates the minimum distances chunk by chunk with ``out=`` arguments, so
no allocation happens inside the greedy loop and peak memory is ``O(N * k)`` for the projected features plus ``O(N)``.
The loop runs on NumPy arrays, whose buffers are reported to ``tracemalloc`` (torch's CPU allocator is not), so the
memory bound is testable.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

_CHUNK_ROWS = 8192
_PROGRESS_MIN = 500  # coresets of fewer points take well under a second: no bar


def sparse_random_projection(n_features: int, projection_dim: int, seed: int = 0) -> np.ndarray:
    """Sparse random projection matrix (Li et al. 2006, density ``1/sqrt(n_features)``), as in scikit-learn.

    Args:
        n_features: Input dimension ``D``.
        projection_dim: Output dimension ``k``.
        seed: Random seed.

    Returns:
        ``float32`` array ``[D, k]`` with entries ``0`` or ``±sqrt(1 / density) / sqrt(k)``.
    """
    rng = np.random.default_rng(seed)
    density = 1.0 / np.sqrt(n_features)
    scale = np.sqrt(1.0 / density) / np.sqrt(projection_dim)
    nonzero = rng.random((n_features, projection_dim)) < density
    signs = np.where(rng.random((n_features, projection_dim)) < 0.5, -scale, scale)
    return (nonzero * signs).astype(np.float32)


def _as_float32_numpy(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(features, dtype=np.float32)


def greedy_coreset(
    features: torch.Tensor | np.ndarray,
    n_samples: int,
    projection_dim: int | None = 128,
    seed: int = 0,
    start_index: int | None = None,
) -> torch.Tensor:
    """Select a k-center greedy coreset with flat memory.

    Features are first reduced with a sparse random projection to ``projection_dim`` (skipped when ``projection_dim``
    is ``None`` or not smaller than ``D``). Starting from one point, each step adds the point farthest from the
    selected set (Sener & Savarese 2018). Indices are returned in greedy order, so every prefix ``[:m]`` is itself the
    ``m``-point greedy coreset (used for PNI's distribution coreset).

    Args:
        features: ``[N, D]`` features (torch tensor or NumPy array).
        n_samples: Number of points to select, ``1 <= n_samples <= N``.
        projection_dim: Dimension of the random projection, or ``None`` to use the raw features.
        seed: Seed for the projection and for the random start point.
        start_index: First selected point; drawn from ``seed`` when ``None``.

    Returns:
        ``LongTensor [n_samples]`` of unique row indices in selection order.

    Raises:
        ValueError: On a non-2-D or empty input, non-finite values, or an ``n_samples``/``start_index`` out of range.
    """
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        msg = f"greedy_coreset expects a non-empty 2-D feature matrix [N, D], got shape {tuple(features.shape)}."
        raise ValueError(msg)
    n_points, n_dims = int(features.shape[0]), int(features.shape[1])
    if not 1 <= int(n_samples) <= n_points:
        msg = f"n_samples must be in [1, N={n_points}], got {n_samples}."
        raise ValueError(msg)
    if projection_dim is not None and projection_dim < 1:
        msg = f"projection_dim must be a positive integer or None, got {projection_dim}."
        raise ValueError(msg)
    data = _as_float32_numpy(features)
    if not np.isfinite(data).all():
        msg = "greedy_coreset got non-finite feature values (NaN or inf)."
        raise ValueError(msg)

    if projection_dim is not None and projection_dim < n_dims:
        matrix = sparse_random_projection(n_dims, projection_dim, seed)
        projected = np.empty((n_points, projection_dim), dtype=np.float32)
        for start in range(0, n_points, _CHUNK_ROWS):
            np.matmul(data[start : start + _CHUNK_ROWS], matrix, out=projected[start : start + _CHUNK_ROWS])
        data = projected

    rng = np.random.default_rng(seed)
    current = int(rng.integers(n_points)) if start_index is None else int(start_index)
    if not 0 <= current < n_points:
        msg = f"start_index must be in [0, N={n_points}), got {start_index}."
        raise ValueError(msg)

    n_samples = int(n_samples)
    selected = np.empty(n_samples, dtype=np.int64)
    min_dist = np.full(n_points, np.inf, dtype=np.float32)  # squared distance to the nearest selected centre
    dist = np.empty(min(_CHUNK_ROWS, n_points), dtype=np.float32)
    diff = np.empty((min(_CHUNK_ROWS, n_points), data.shape[1]), dtype=np.float32)
    # A progress bar as anomalib's own coreset ("Selecting Coreset Indices"): the selection is the slow part of a fit.
    steps = tqdm(range(n_samples), desc="Selecting coreset indices", disable=n_samples < _PROGRESS_MIN, leave=False)
    for step in steps:
        selected[step] = current
        if step == n_samples - 1:
            break
        centre = data[current]
        for start in range(0, n_points, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, n_points)
            rows = stop - start
            np.subtract(data[start:stop], centre, out=diff[:rows])
            np.einsum("ij,ij->i", diff[:rows], diff[:rows], out=dist[:rows])
            np.minimum(min_dist[start:stop], dist[:rows], out=min_dist[start:stop])
        min_dist[current] = -1.0  # selected points stay below every distance, so duplicates never repeat
        current = int(np.argmax(min_dist))
    return torch.from_numpy(selected)
