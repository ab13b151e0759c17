"""Benchmark suite: models x post-processors x data sets x seeds through anomalib's Engine and benchmark pipeline.

Run it with ``pixelrefine benchmark --quick`` / ``pixelrefine benchmark --config benchmarks/configs/full.yaml`` or
from Python with :func:`run_benchmark`. See :mod:`anomalib_pixelrefine.benchmark.config` for the format.
"""

from .config import (
    FULL_PROFILE,
    QUICK_PROFILE,
    REALISTIC_PROFILE,
    BenchmarkConfigError,
    expand_grid,
    load_config,
    validate_config,
)
from .job import ComponentUnavailableError, PixelRefineBenchmarkJob, TestOutputCollector
from .pipeline import (
    FreshProcessRunner,
    PixelRefineBenchmark,
    PixelRefineBenchmarkJobGenerator,
    pixelrefine_pipelines,
    run_benchmark,
)
from .report import markdown_table, plot_bars, plot_dice_vs_size, plot_qualitative, write_results

__all__ = [
    "FULL_PROFILE",
    "QUICK_PROFILE",
    "REALISTIC_PROFILE",
    "BenchmarkConfigError",
    "ComponentUnavailableError",
    "FreshProcessRunner",
    "PixelRefineBenchmark",
    "PixelRefineBenchmarkJob",
    "PixelRefineBenchmarkJobGenerator",
    "TestOutputCollector",
    "expand_grid",
    "load_config",
    "markdown_table",
    "pixelrefine_pipelines",
    "plot_bars",
    "plot_dice_vs_size",
    "plot_qualitative",
    "run_benchmark",
    "validate_config",
    "write_results",
]
