"""Models provided by anomalib-pixelrefine.

Importing this module registers the models as ``AnomalibModule`` subclasses, so anomalib's CLI resolves their short
names (``--model Pni``) once the package is imported (the ``pixelrefine`` command does that), and plain anomalib
accepts the full class path (``anomalib train --model anomalib_pixelrefine.models.Pni``).
"""

from .image import FeatureEnsemble, Pae, Pni

__all__ = ["FeatureEnsemble", "Pae", "Pni"]
