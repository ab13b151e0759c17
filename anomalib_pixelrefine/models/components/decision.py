"""Default post-processor of this package's models: the decision rule with the default false-alarm budget."""

from __future__ import annotations

from anomalib.post_processing import PostProcessor

__all__ = ["DecisionModelMixin"]


class DecisionModelMixin:
    """``AnomalibModule`` mixin: :class:`~anomalib_pixelrefine.post_processing.DecisionPostProcessor` by default."""

    @classmethod
    def configure_post_processor(cls) -> PostProcessor:
        """The decision rule (label = mask non-empty) with the default false-alarm budget."""
        from anomalib_pixelrefine.post_processing.decision import DecisionPostProcessor  # models load first

        return DecisionPostProcessor()
