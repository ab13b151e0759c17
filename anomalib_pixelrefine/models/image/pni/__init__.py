"""PNI: industrial anomaly detection using position and neighbourhood information, with pixelwise refinement.

Reference: Bae, Lee, Kim, "PNI: Industrial Anomaly Detection using Position and Neighborhood Information",
ICCV 2023.
"""

from .lightning_model import Pni
from .loss import RefinementLoss, refinement_loss
from .refinement import RefinementNet
from .torch_model import NeighbourhoodMLP, PniModel, PniScorer, nearest_neighbour, position_histogram

__all__ = [
    "NeighbourhoodMLP",
    "Pni",
    "PniModel",
    "PniScorer",
    "RefinementLoss",
    "RefinementNet",
    "nearest_neighbour",
    "position_histogram",
    "refinement_loss",
]
