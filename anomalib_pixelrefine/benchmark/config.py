"""Benchmark configuration: format, loading, validation and grid expansion (the named profiles: ``profiles.py``).

The format is anomalib's benchmark format (``accelerator`` + a ``benchmark`` section whose values may be
``{"grid": [...]}``, expanded by :func:`anomalib.pipelines.components.utils.get_iterator_from_grid_dict`) with a few
additions, all optional::

    accelerator: cpu            # or cuda, or a list of both
    n_jobs: 1                   # job processes at once (cuda: default = number of GPUs)
    isolation: process          # "process": every job in a fresh process (exact peak RSS); "none": in this process
    output_dir: ./results/benchmark/quick
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
          - {class_path: Pae, name: Pae_no_decomposition, init_args: {decompose: false}}  # a named variant
      post_processor:
        grid: [default, f2pad, {class_path: f2pad, name: f2pad_paper, init_args: {init: inpaint, max_iters: 50}}]
      data:                     # "default" = embedded benchmark; else any anomalib datamodule class
        class_path: default
        init_args: {category: {grid: [gravel, brick]}, image_size: 64}
      engine: {max_epochs: 1}   # anomalib Engine arguments for every job
    exclude:                    # grid points not to run: every given label must match (a list matches any item)
      - {model: [Pae, Pni], post_processor: [f2pad, paedid]}

A model or post-processor entry may carry a ``name``: its label in the tables, job ids and ``exclude`` rules (default:
the class name), so several variants of one class (ablations, capacities) sit side by side in one grid. Models with
a ``seed`` argument (``Pae``, ``Pni``) get the job's seed unless ``init_args`` sets one.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict

from anomalib_pixelrefine.errors import PixelRefineError

from .profiles import FULL_PROFILE, PROFILES, QUICK_PROFILE, REALISTIC_PROFILE, REALISTIC_REFINERS_PROFILE

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


class BenchmarkConfigError(PixelRefineError, ValueError):
    """A benchmark configuration that cannot be run (the message names the offending key)."""


def load_config(config: str | Path | dict[str, Any] | None = None, quick: bool = False) -> dict[str, Any]:
    """Load and validate a benchmark configuration.

    Args:
        config: A YAML file path, a profile name (a key of :data:`~.profiles.PROFILES`) or a loaded dictionary.
        quick: Use the quick profile; when ``config`` is also given, its values override the profile's.

    Returns:
        The validated configuration (a deep copy; defaults filled in).

    Raises:
        BenchmarkConfigError: If neither is given, the file is missing/unreadable, or the content is invalid.
    """
    base: dict[str, Any] = copy.deepcopy(QUICK_PROFILE) if quick else {}
    if config is None and not quick:
        msg = f"Give a benchmark configuration (--config FILE, or a profile: --config {'|'.join(PROFILES)}) or --quick."
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


def _check_labels(key: str, values: list[Any]) -> None:
    """Entries of one grid axis must have distinct labels (``name`` or class), or their jobs would share an id."""
    labels = []
    for value in values:
        if isinstance(value, dict) and "name" in value and not (isinstance(value["name"], str) and value["name"]):
            msg = f"'benchmark.{key}' entry 'name' must be a non-empty string, got {value['name']!r}."
            raise BenchmarkConfigError(msg)
        if isinstance(value, dict):
            labels.append(str(value.get("name") or value.get("class_path")).rsplit(".", 1)[-1].lower())
        else:
            labels.append(str(value).rsplit(".", 1)[-1].lower())
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        msg = f"'benchmark.{key}' entries share the label(s) {duplicates}: give each variant its own 'name'."
        raise BenchmarkConfigError(msg)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a configuration and fill in defaults.

    Args:
        config: The configuration dictionary (see the module docstring).

    Returns:
        A deep copy with defaults for the optional keys.

    Raises:
        BenchmarkConfigError: For unknown keys, missing ``benchmark.model``/``benchmark.data``, empty grids, a bad
            accelerator/isolation/n_jobs, a model/data entry without ``class_path``, or two entries of one axis with
            the same label.
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
    for key in ("model", "post_processor"):
        _check_labels(key, _grid_values(bench[key]))
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
    config.setdefault("output_dir", "./results/benchmark/latest")
    config.setdefault("qualitative_samples", 3)
    config.setdefault("plots", True)
    config.setdefault("print_table", True)
    config.setdefault("resume", False)
    _check_jobs(bench)
    return config


# Keys of a grid entry (a model, post-processor or data set given as a mapping).
_ENTRY_KEYS = {
    "model": {"class_path", "init_args", "engine", "name"},
    "post_processor": {"class_path", "init_args", "name"},
    "data": {"class_path", "init_args"},
}


def _unknown(where: str, given: Any, accepted: set[str] | None) -> None:
    """Raise naming the first key of ``given`` not in ``accepted`` (``None``: anything goes), with a suggestion."""
    if not isinstance(given, dict):
        msg = f"{where} must be a mapping, got {given!r}."
        raise BenchmarkConfigError(msg)
    unknown = sorted(set(given) - accepted) if accepted is not None else []
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(accepted or ()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; accepted: {sorted(accepted or ())}"
        msg = f"Unknown key {unknown[0]!r} in {where}{hint}."
        raise BenchmarkConfigError(msg)


def _accepted_args(cls: type) -> set[str] | None:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the MRO; ``None`` if it cannot be told."""
    import torch
    from lightning.pytorch import LightningModule

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in {object, torch.nn.Module, LightningModule}:  # their ``*args, **kwargs`` accept nothing more
            return names
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names |= {p.name for p in params[1:] if p.kind in keyword}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def _engine_args() -> set[str]:
    from anomalib.engine import Engine
    from lightning.pytorch import Trainer

    return (_accepted_args(Engine) or set()) | (_accepted_args(Trainer) or set())


def _check_component(key: str, spec: Any, checked: set[str]) -> None:
    """Check one model/post-processor/data entry: its keys, its class and its ``init_args`` names."""
    from .job import (
        DEFAULT_DATA,
        DEFAULT_DATA_BUILD_KEYS,
        DEFAULT_DATA_LOADER_KEYS,
        ComponentUnavailableError,
        resolve_model_class,
    )

    marker = f"{key}:{json.dumps(spec, sort_keys=True, default=str)}"
    if marker in checked:
        return
    checked.add(marker)
    entry = {"class_path": spec} if isinstance(spec, str) else spec
    _unknown(f"'benchmark.{key}' entry {entry.get('class_path')!r}", entry, _ENTRY_KEYS[key])
    class_path = str(entry["class_path"])
    if key == "post_processor" and class_path.lower() == "default":
        return
    where = f"'benchmark.{key}' {class_path!r} init_args"
    try:
        if key == "model":
            cls = resolve_model_class(class_path)
        elif key == "post_processor":
            from anomalib_pixelrefine import registry

            cls = registry.post_processor_class(class_path)
        elif class_path.lower() in DEFAULT_DATA:
            accepted = {"category", *DEFAULT_DATA_BUILD_KEYS, *DEFAULT_DATA_LOADER_KEYS}
            _unknown(where, entry.get("init_args") or {}, accepted)
            return
        else:
            import anomalib.data

            from anomalib_pixelrefine import registry

            cls = registry.import_object(class_path) if "." in class_path else getattr(anomalib.data, class_path)
    except (ComponentUnavailableError, ImportError):
        return  # e.g. an optional dependency: the job reports it as skipped
    except (ValueError, AttributeError) as error:
        msg = f"'benchmark.{key}': {error}" if isinstance(error, ValueError) else f"Unknown data set {class_path!r}."
        raise BenchmarkConfigError(msg) from None
    _unknown(where, entry.get("init_args") or {}, _accepted_args(cls))
    members = (entry.get("init_args") or {}).get("members")
    if key == "model" and isinstance(members, list):  # FeatureEnsemble's members: one level deeper
        from anomalib_pixelrefine.models.image.feature_ensemble.members import check_member_spec

        for member in members:
            try:
                check_member_spec(member)
            except ValueError as error:
                raise BenchmarkConfigError(f"'benchmark.model' {class_path!r}: {error}") from None
    if key == "model" and entry.get("engine") is not None:
        _unknown(f"'benchmark.model' {class_path!r} engine", entry["engine"], _engine_args())


def _check_jobs(bench: dict[str, Any]) -> None:
    """Check every job's model, post-processor, data set and engine arguments before any job runs.

    A typo (``init_arg``, an unknown argument or model name) would otherwise fail every job, one after another.
    """
    for key in ("model", "post_processor", "data"):  # before the expansion, which drops empty mappings
        for value in _grid_values(bench[key]):
            if isinstance(value, dict):
                _unknown(f"'benchmark.{key}' entry {value.get('class_path')!r}", value, _ENTRY_KEYS[key])
    checked: set[str] = set()
    for container in expand_grid(bench):
        for key in ("model", "post_processor", "data"):
            _check_component(key, container[key], checked)
        engine = container.get("engine") or {}
        marker = f"engine:{json.dumps(engine, sort_keys=True, default=str)}"
        if marker not in checked:
            checked.add(marker)
            _unknown("'benchmark.engine'", engine, _engine_args())


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
