"""Tests for the memory-flat greedy coreset."""

import tracemalloc

import numpy as np
import pytest
import torch

from anomalib_pixelrefine.models.components import greedy_coreset, sparse_random_projection


def brute_force_k_center(points: torch.Tensor, n_samples: int, start: int) -> list[int]:
    """Textbook k-center greedy on a full pairwise distance matrix."""
    dist = torch.cdist(points.double(), points.double())
    selected = [start]
    min_dist = dist[start].clone()
    for _ in range(n_samples - 1):
        min_dist[selected] = -1.0
        nxt = int(torch.argmax(min_dist))
        selected.append(nxt)
        min_dist = torch.minimum(min_dist, dist[nxt])
    return selected


def test_unique_indices_and_prefix_property():
    feats = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    idx = greedy_coreset(feats, 60, projection_dim=None, seed=3)
    assert idx.dtype == torch.int64
    assert idx.shape == (60,)
    assert len(set(idx.tolist())) == 60
    small = greedy_coreset(feats, 10, projection_dim=None, seed=3)
    assert torch.equal(idx[:10], small)


def test_duplicates_never_selected_twice():
    feats = torch.zeros(20, 4)
    feats[:5] = 1.0
    idx = greedy_coreset(feats, 20, projection_dim=None, start_index=0)
    assert sorted(idx.tolist()) == list(range(20))


def test_agrees_with_brute_force_raw_features():
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    idx = greedy_coreset(feats, 40, projection_dim=None, start_index=7)
    assert idx.tolist() == brute_force_k_center(feats, 40, 7)


def test_agrees_with_brute_force_after_projection():
    feats = torch.randn(400, 64, generator=torch.Generator().manual_seed(2))
    matrix = torch.from_numpy(sparse_random_projection(64, 16, seed=5))
    idx = greedy_coreset(feats, 30, projection_dim=16, seed=5, start_index=11)
    assert idx.tolist() == brute_force_k_center(feats @ matrix, 30, 11)


def test_coreset_covers_clusters():
    # 5 well separated clusters: the first 5 greedy picks must hit 5 different clusters.
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(5) * 100
    labels = torch.arange(500) % 5
    feats = centres[labels] + torch.randn(500, 5, generator=gen)
    idx = greedy_coreset(feats, 5, projection_dim=None)
    assert len(set(labels[idx].tolist())) == 5


def _peak_bytes(feats: np.ndarray, n_samples: int) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    greedy_coreset(feats, n_samples, projection_dim=32, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_peak_memory_is_linear_in_n_and_flat_in_steps():
    n, d, k = 20_000, 64, 32
    feats = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    peak_few = _peak_bytes(feats, 20)
    peak_many = _peak_bytes(feats, 400)
    # Projected copy N*k floats + min-distance N floats + scratch chunk; an N x N matrix would be 1.6 GB.
    bound = n * k * 4 + n * 4 + 8192 * (k + 1) * 4 + 2**20
    assert peak_many < bound, f"peak {peak_many} B exceeds O(N) bound {bound} B"
    # More greedy steps must not grow memory beyond the index array itself.
    assert peak_many - peak_few < 400 * 8 + 64 * 1024


def test_torch_and_numpy_inputs_agree():
    feats = torch.randn(200, 40, generator=torch.Generator().manual_seed(4))
    assert torch.equal(greedy_coreset(feats, 20, seed=1), greedy_coreset(feats.numpy(), 20, seed=1))


@pytest.mark.parametrize(
    ("shape", "n_samples", "match"),
    [((10,), 2, "2-D"), ((0, 4), 1, "2-D"), ((10, 4), 0, "n_samples"), ((10, 4), 11, "n_samples")],
)
def test_bad_input(shape, n_samples, match):
    with pytest.raises(ValueError, match=match):
        greedy_coreset(torch.zeros(shape), n_samples)


def test_bad_values():
    feats = torch.randn(10, 3)
    with pytest.raises(ValueError, match="start_index"):
        greedy_coreset(feats, 2, start_index=10)
    feats[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        greedy_coreset(feats, 2)
    with pytest.raises(ValueError, match="projection_dim"):
        greedy_coreset(torch.randn(10, 3), 2, projection_dim=0)
