"""anomalib_pixelrefine.post_processing."""
