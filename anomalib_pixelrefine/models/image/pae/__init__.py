"""PAE / PAEDID: patch autoencoder with latent memory bank and deep image decomposition.

Reference: Mou et al., "PAEDID: Patch Autoencoder Based Deep Image Decomposition For Pixel-level Defective Region
Segmentation".
"""

from .decomposition import decompose, decomposition_objective, sparse_to_anomaly_map
from .lightning_model import Pae
from .torch_model import PaeModel
from .training import autoencoder_loss, pae_input, train_pae

__all__ = [
    "Pae",
    "PaeModel",
    "autoencoder_loss",
    "decompose",
    "decomposition_objective",
    "pae_input",
    "sparse_to_anomaly_map",
    "train_pae",
]
