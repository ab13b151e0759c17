"""Shared model components (memory-flat coreset sampling)."""

from .sampling import greedy_coreset, sparse_random_projection

__all__ = ["greedy_coreset", "sparse_random_projection"]
