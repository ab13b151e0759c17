"""Feature-level ensemble of backbones and anomalib feature extractors with a SimpleNet discriminator head.

See ``README.md`` in this folder.
"""

from .lightning_model import FeatureEnsemble
from .loss import SimpleNetLoss
from .members import AnomalibCheckpointMember, ModuleMember, TimmMember, build_member
from .pca import ChannelPCA
from .torch_model import FeatureEnsembleModel, SimpleNetHead

__all__ = [
    "AnomalibCheckpointMember",
    "ChannelPCA",
    "FeatureEnsemble",
    "FeatureEnsembleModel",
    "ModuleMember",
    "SimpleNetHead",
    "SimpleNetLoss",
    "TimmMember",
    "build_member",
]
