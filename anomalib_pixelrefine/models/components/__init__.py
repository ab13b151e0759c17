"""Shared model components (memory-flat coreset sampling, export helpers, input gradients)."""

from .export import is_exporting
from .gradients import input_gradients
from .sampling import greedy_coreset, sparse_random_projection

__all__ = ["greedy_coreset", "input_gradients", "is_exporting", "sparse_random_projection"]
