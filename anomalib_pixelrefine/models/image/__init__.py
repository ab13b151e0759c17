"""Image anomaly models provided by anomalib-pixelrefine."""
