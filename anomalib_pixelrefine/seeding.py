"""Seeded construction of modules without touching the global random stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["seeded_module"]

T = TypeVar("T")


def seeded_module(seed: int, factory: Callable[[], T]) -> T:
    """Build a module with seeded initial weights, leaving the global random stream untouched.

    Same seed, same initial weights, whatever the global random state (randomly initialised backbones with
    ``pre_trained=False`` included). A module built before or with another one must not consume the global stream:
    that would change the weights of a randomly initialised module built afterwards.

    Args:
        seed: Seed of the construction.
        factory: Builds the module.

    Returns:
        What ``factory`` returns.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
