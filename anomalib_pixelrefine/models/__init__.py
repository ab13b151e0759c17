"""Models provided by anomalib-pixelrefine."""
