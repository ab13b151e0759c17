"""Input gradients through frozen anomalib feature extractors (refiners differentiate feature maps w.r.t. pixels)."""

from collections.abc import Iterator
from contextlib import contextmanager

from anomalib.models.components import TimmFeatureExtractor
from torch import nn


@contextmanager
def input_gradients(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Let every ``TimmFeatureExtractor`` inside ``module`` pass gradients to their input while in the block.

    ``TimmFeatureExtractor.forward`` runs its backbone under ``no_grad`` unless ``requires_grad``; the flag is flipped
    temporarily instead of re-implementing its forward (parameters are not optimised, only the input gets gradients).

    Args:
        module: Module searched for extractors (an extractor itself included).
        enabled: ``False`` leaves the extractors as they are (the block is a no-op).
    """
    extractors = [m for m in module.modules() if isinstance(m, TimmFeatureExtractor)] if enabled else []
    previous = [extractor.requires_grad for extractor in extractors]
    for extractor in extractors:
        extractor.requires_grad = True
    try:
        yield
    finally:
        for extractor, flag in zip(extractors, previous, strict=True):
            extractor.requires_grad = flag
