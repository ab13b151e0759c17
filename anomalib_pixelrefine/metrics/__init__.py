"""anomalib_pixelrefine.metrics."""
