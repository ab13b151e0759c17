"""anomalib-pixelrefine: pixel-precise anomaly segmentation models and refiners for anomalib.

Public classes are importable from the top level, e.g. ``from anomalib_pixelrefine import Pni, F2PAD, Dice``.
They are loaded on first access (PEP 562) so that ``import anomalib_pixelrefine.data`` stays light and the
subpackages, which import each other, never form an import cycle through this module.
"""

import importlib
from typing import Any

from anomalib_pixelrefine.allocator import configure_allocator

# Stable peak memory of anomalib's CPU coreset from plain Python too (glibc only; see ``allocator`` for the opt-out).
configure_allocator()

__version__ = "0.1.0"

# Public name -> subpackage that defines it.
_EXPORTS: dict[str, str] = {
    # models
    "Pae": "anomalib_pixelrefine.models",
    "Pni": "anomalib_pixelrefine.models",
    "FeatureEnsemble": "anomalib_pixelrefine.models",
    # refining post-processors
    "RefiningPostProcessor": "anomalib_pixelrefine.post_processing",
    "F2PAD": "anomalib_pixelrefine.post_processing",
    "PaedidRefiner": "anomalib_pixelrefine.post_processing",
    # metrics
    "Dice": "anomalib_pixelrefine.metrics",
    "IoU": "anomalib_pixelrefine.metrics",
    "BestDice": "anomalib_pixelrefine.metrics",
    "BestIoU": "anomalib_pixelrefine.metrics",
    "SPRO": "anomalib_pixelrefine.metrics",
    # synthetic defects and data
    "CutPaste": "anomalib_pixelrefine.data",
    "CutPasteScar": "anomalib_pixelrefine.data",
    "PerlinDefect": "anomalib_pixelrefine.data",
    "HandDrawnDefect": "anomalib_pixelrefine.data",
    "CrackDefect": "anomalib_pixelrefine.data",
    "MixedDefect": "anomalib_pixelrefine.data",
    "SyntheticDefectDataset": "anomalib_pixelrefine.data",
    "build_default_benchmark": "anomalib_pixelrefine.data",
    "default_datamodule": "anomalib_pixelrefine.data",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name from its subpackage on first access."""
    if name not in _EXPORTS:
        msg = f"module 'anomalib_pixelrefine' has no attribute '{name}'"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes including the lazily loaded public names."""
    return sorted(set(globals()) | set(_EXPORTS))
