"""Shared model components (memory-flat coreset sampling, export helpers)."""

from .export import is_exporting
from .sampling import greedy_coreset, sparse_random_projection

__all__ = ["greedy_coreset", "is_exporting", "sparse_random_projection"]
