"""anomalib_pixelrefine.data."""
