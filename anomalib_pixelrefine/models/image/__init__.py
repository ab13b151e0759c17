"""Image anomaly models provided by anomalib-pixelrefine.

Each model follows anomalib's layout: ``<name>/torch_model.py`` (plain ``nn.Module``), ``<name>/lightning_model.py``
(the ``AnomalibModule``), ``<name>/loss.py`` and ``<name>/README.md``.
"""

from .feature_ensemble import FeatureEnsemble
from .pae import Pae
from .pni import Pni

__all__ = ["FeatureEnsemble", "Pae", "Pni"]
