"""Short names of the models, post-processors and metrics: the one lookup table of the package.

Used by the ``pixelrefine`` CLI (``--model``, ``--post_processor``), the demo and the benchmark. Names are
case-insensitive and ignore underscores (``FeatureEnsemble``, ``feature_ensemble``, ``featureensemble``); anything
with a dot is taken as a full class path.

anomalib's own lookup (``anomalib.models.get_model("Pni")``, ``--model Pni`` in ``anomalib``'s CLI) searches the
imported subclasses of ``AnomalibModule``: it finds our models once ``anomalib_pixelrefine.models`` is imported
(anomalib 2.7 has no plugin entry point). Plain ``anomalib`` commands take the full class path instead, e.g.
``anomalib train --model anomalib_pixelrefine.models.Pni``.

Example:
    >>> from anomalib_pixelrefine.registry import get_model, post_processor_class
    >>> get_model("pni", pre_trained=False).name  # doctest: +SKIP
    'Pni'
    >>> post_processor_class("f2pad").__name__
    'F2PAD'
"""

from __future__ import annotations

import importlib
from typing import Any

from anomalib_pixelrefine.errors import InvalidArgumentError

# This package's models.
MODELS: dict[str, str] = {
    "pae": "anomalib_pixelrefine.models.image.pae.Pae",
    "pni": "anomalib_pixelrefine.models.image.pni.Pni",
    "featureensemble": "anomalib_pixelrefine.models.image.feature_ensemble.FeatureEnsemble",
}

# Post-processors (``--post_processor NAME``).
POST_PROCESSORS: dict[str, str] = {
    "default": "anomalib.post_processing.PostProcessor",
    "decision": "anomalib_pixelrefine.post_processing.DecisionPostProcessor",
    "f2pad": "anomalib_pixelrefine.post_processing.F2PAD",
    "paedid": "anomalib_pixelrefine.post_processing.PaedidRefiner",
    # anomalib's MEBinPostProcessor as shipped (defaults), with a bit-identical faster component count.
    "mebin": "anomalib_pixelrefine.post_processing.FastMEBinPostProcessor",
}

# Segmentation metrics of this package (anomalib's metrics resolve by their class name, e.g. ``AUROC``).
METRICS: dict[str, str] = {
    "dice": "anomalib_pixelrefine.metrics.Dice",
    "iou": "anomalib_pixelrefine.metrics.IoU",
    "bestdice": "anomalib_pixelrefine.metrics.BestDice",
    "bestiou": "anomalib_pixelrefine.metrics.BestIoU",
    "spro": "anomalib_pixelrefine.metrics.SPRO",
}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def import_object(class_path: str) -> Any:
    """Import ``package.module.Name``.

    Raises:
        ImportError: If the module or the name does not exist.
    """
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        msg = f"{class_path!r} is not a class path (package.module.Name)."
        raise ImportError(msg)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError as error:
        msg = f"module {module_name!r} has no attribute {name!r}"
        raise ImportError(msg) from error


def _path(name: str, table: dict[str, str], package: str, kind: str) -> str:
    """Full class path of ``name``: a class path, one of ``table``'s short names, or a name in ``package.__all__``."""
    if "." in name:
        return name
    key = _key(name)
    if key in table:
        return table[key]
    module = importlib.import_module(package)
    for item in module.__all__:
        if _key(item) == key:
            return f"{package}.{item}"
    msg = f"Unknown {kind} {name!r}: not one of {sorted(table)}, not an anomalib {kind}, not a class path."
    raise InvalidArgumentError(msg)


def model_path(name: str) -> str:
    """Full class path of a model: one of ours, one of anomalib's (``Padim``, ``efficient_ad``) or a class path.

    Raises:
        ValueError: If the name is unknown.
    """
    return _path(name, MODELS, "anomalib.models", "model")


def model_class(name: str) -> type:
    """The ``AnomalibModule`` class of a model name (see :func:`model_path`).

    Raises:
        ValueError: If the name is unknown or not an ``AnomalibModule``.
        ImportError: If the class cannot be imported.
    """
    from anomalib.models import AnomalibModule

    cls = import_object(model_path(name))
    if not (isinstance(cls, type) and issubclass(cls, AnomalibModule)):
        msg = f"{name!r} resolves to {cls!r}, which is not an anomalib AnomalibModule."
        raise InvalidArgumentError(msg)
    return cls


def get_model(name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate a model by short name or class path (``anomalib.models.get_model`` with our models too)."""
    return model_class(name)(*args, **kwargs)


def post_processor_path(name: str) -> str:
    """Full class path of a post-processor short name (``default``, ``f2pad``, ``paedid``, ``mebin``) or class path.

    Raises:
        ValueError: If the name is unknown.
    """
    if "." in name:
        return name
    key = _key(name)
    if key in POST_PROCESSORS:
        return POST_PROCESSORS[key]
    msg = f"Unknown post-processor {name!r}. Known names: {', '.join(POST_PROCESSORS)} (or a class path)."
    raise InvalidArgumentError(msg)


def post_processor_class(name: str) -> type:
    """The class of a post-processor short name or class path."""
    return import_object(post_processor_path(name))


def metric_path(name: str) -> str:
    """Full class path of a metric: ours (``dice``, ``best_iou``, ``spro``), anomalib's (``AUROC``) or a path.

    Raises:
        ValueError: If the name is unknown.
    """
    return _path(name, METRICS, "anomalib.metrics", "metric")
