"""anomalib_pixelrefine.benchmark."""
