"""Refining post-processors: F2PAD and PAEDID test-time optimisation over feature-based anomalib models.

Usage: ``Patchcore(post_processor=F2PAD())``; CLI ``--model.post_processor anomalib_pixelrefine.post_processing.F2PAD``.
See ``README.md`` in this folder.
"""

from .base import RefiningPostProcessor
from .decision import DecisionPostProcessor
from .f2pad import F2PAD
from .mebin import FastMEBinPostProcessor
from .paedid import PaedidRefiner
from .scorers import (
    CflowScorer,
    FeatureEnsembleScorer,
    FeatureMapScorer,
    FeatureScorer,
    PadimScorer,
    PatchcoreScorer,
    PniF2padScorer,
    available_scorers,
    get_scorer,
    register_scorer,
)

__all__ = [
    "F2PAD",
    "CflowScorer",
    "DecisionPostProcessor",
    "FastMEBinPostProcessor",
    "FeatureEnsembleScorer",
    "FeatureMapScorer",
    "FeatureScorer",
    "PadimScorer",
    "PaedidRefiner",
    "PatchcoreScorer",
    "PniF2padScorer",
    "RefiningPostProcessor",
    "available_scorers",
    "get_scorer",
    "register_scorer",
]
