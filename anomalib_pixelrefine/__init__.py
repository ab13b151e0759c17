"""anomalib-pixelrefine: pixel-precise anomaly segmentation models and refiners for anomalib."""

__version__ = "0.1.0"
