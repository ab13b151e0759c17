"""``pixelrefine demo``: train and test a model on the embedded default data, offline, in a few minutes on a CPU.

The demo builds the embedded MVTec-style benchmark (scikit-image textures and, when ``elpv-dataset`` is installed,
real solar cells) with exact synthetic defect masks, then runs anomalib's ``Engine.train`` (fit + test) for every
category and prints image/pixel metrics and Dice. Backbones use random weights (``pre_trained=False``) so nothing is
downloaded; with pretrained weights (the default of every model outside the demo) the numbers are higher.
"""

import logging
import time
from pathlib import Path
from typing import Any

from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator
from anomalib.models import AnomalibModule

logger = logging.getLogger(__name__)

# Settings that let each model train on the embedded data in about a minute per category on 2 CPU cores
# (random backbone weights: nothing is downloaded). ``max_epochs`` is the demo's default for models whose epochs the
# trainer sets (Pae, FeatureEnsemble); Padim/Patchcore/Pni fix their own epochs. Pae and Pni use the settings of
# their benchmarks (benchmarks/results/pae.md, pni.md).
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "Padim": {"class_path": "anomalib.models.Padim", "init_args": {"backbone": "resnet18", "pre_trained": False}},
    "Patchcore": {
        "class_path": "anomalib.models.Patchcore",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "coreset_sampling_ratio": 0.1},
    },
    "Pae": {
        "class_path": "anomalib_pixelrefine.models.image.pae.Pae",
        "init_args": {"channels": [32, 64], "alpha": 0.2},  # a smaller autoencoder than the paper's: a CPU demo
        "max_epochs": 10,
    },
    "Pni": {
        "class_path": "anomalib_pixelrefine.models.image.pni.Pni",
        "init_args": {
            "backbone": "resnet18",
            "pre_trained": False,
            "coreset_ratio": 0.1,
            "distribution_size": 256,
            "window": 5,
            "mlp_layers": 3,
            "mlp_width": 256,
            "mlp_channels": 32,
            "mlp_epochs": 8,
            "refine_epochs": 15,
            "refine_channels": [8, 16, 32],
        },
    },
    "FeatureEnsemble": {
        "class_path": "anomalib_pixelrefine.models.image.feature_ensemble.FeatureEnsemble",
        "init_args": {
            "members": [
                {"backbone": "resnet18", "layers": ["layer2", "layer3"], "pre_trained": False},
                {"backbone": "efficientnet_b0", "layers": ["blocks.2", "blocks.4"], "pre_trained": False},
            ],
            "hidden": 256,
        },
        "max_epochs": 8,
    },
}


def _import_class(class_path: str) -> type:
    from anomalib_pixelrefine.registry import import_object

    return import_object(class_path)


def demo_spec(model: str) -> dict[str, Any] | None:
    """The :data:`DEMO_MODELS` entry of ``model`` (case-insensitive), ``None`` for other names."""
    names = {name.lower(): name for name in DEMO_MODELS}
    return DEMO_MODELS[names[model.lower()]] if model.lower() in names else None


def make_evaluator() -> Evaluator:
    """Demo test metrics: image/pixel AUROC, AUPRO, Dice/IoU (at the threshold and the best one), sPRO."""
    from anomalib_pixelrefine.metrics import SPRO, BestDice, BestIoU, Dice, IoU

    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            Dice(fields=["pred_mask", "gt_mask"], prefix="pixel_"),
            IoU(fields=["pred_mask", "gt_mask"], prefix="pixel_"),
            BestDice(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            BestIoU(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            SPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", saturation=0.5),
        ],
    )


def build_demo_model(
    model: str,
    image_size: int,
    post_processor: str | None = None,
    **model_kwargs: Any,
) -> AnomalibModule:
    """Instantiate a demo model with offline settings, the demo's image size and the segmentation evaluator.

    Args:
        model: A key of :data:`DEMO_MODELS` (case-insensitive) or a full class path of an ``AnomalibModule``.
        image_size: Side of the square input images.
        post_processor: Optional post-processor name (``f2pad``, ``paedid``) or class path.
        **model_kwargs: Overrides of the model's arguments.

    Returns:
        The model, ready for ``Engine.train``.

    Raises:
        ValueError: If the model name is unknown.
    """
    spec = demo_spec(model)
    if spec is not None:
        model_cls = _import_class(spec["class_path"])
        init_args = {**spec["init_args"], **model_kwargs}
    elif "." in model:
        model_cls = _import_class(model)
        init_args = dict(model_kwargs)
    else:
        msg = f"Unknown demo model '{model}'. Known: {', '.join(DEMO_MODELS)} (or a full class path)."
        raise ValueError(msg)
    if post_processor is not None:
        from anomalib_pixelrefine.registry import post_processor_class

        init_args["post_processor"] = post_processor_class(post_processor)()
    pre_processor = model_cls.configure_pre_processor(image_size=(image_size, image_size))
    return model_cls(pre_processor=pre_processor, evaluator=make_evaluator(), visualizer=False, **init_args)


def run_demo(
    model: str = "Padim",
    root: str = "./datasets/pixelrefine",
    results_dir: str = "./results/pixelrefine_demo",
    categories: list[str] | None = None,
    image_size: int = 128,
    max_epochs: int | None = None,
    post_processor: str | None = None,
    include_elpv: bool | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Build the embedded default data and train/test ``model`` on every category; print and return the metrics.

    Args:
        model: Model name (``Padim``, ``Patchcore``, ``Pae``, ``Pni``, ``FeatureEnsemble``) or class path.
        root: Where the embedded data set is written (reused when it is already there).
        results_dir: anomalib's results folder (checkpoints).
        categories: Categories to run; all default categories when omitted.
        image_size: Side of the square images the data are written at and the model is fed.
        max_epochs: Training epochs; when omitted, the demo default of the model (:data:`DEMO_MODELS`) or its own.
        post_processor: Optional refining post-processor (``f2pad``, ``paedid``).
        include_elpv: Add the ELPV solar-cell category; by default only when ``elpv-dataset`` is installed.
        seed: Seed of the data generation and the training.

    Returns:
        Metrics per category (and ``mean``).
    """
    from lightning.pytorch import seed_everything

    from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule

    paths = build_default_benchmark(
        root, categories=categories, image_size=image_size, seed=seed, include_elpv=include_elpv
    )
    results: dict[str, dict[str, float]] = {}
    for category, path in paths.items():
        seed_everything(seed, workers=True)
        # Thresholds are calibrated on held-out test images, so "Dice" is the Dice a user gets at the threshold.
        datamodule = default_datamodule(path, image_size=image_size, seed=seed, val_split_mode="from_test")
        anomaly_model = build_demo_model(model, image_size=image_size, post_processor=post_processor)
        epochs = max_epochs if max_epochs is not None else (demo_spec(model) or {}).get("max_epochs")
        engine_kwargs: dict[str, Any] = {"max_epochs": epochs} if epochs is not None else {}
        engine = Engine(
            default_root_dir=Path(results_dir) / category,
            accelerator="cpu",
            devices=1,
            logger=False,
            **engine_kwargs,
        )
        start = time.perf_counter()
        metrics = engine.train(model=anomaly_model, datamodule=datamodule)
        elapsed = time.perf_counter() - start
        results[category] = {key: float(value) for key, value in metrics[0].items()} | {"seconds": elapsed}
    if results:
        keys = sorted({key for row in results.values() for key in row})
        results["mean"] = {key: sum(row.get(key, 0.0) for row in results.values()) / len(results) for key in keys}
    print(
        format_table(results, title=f"pixelrefine demo: {model}" + (f" + {post_processor}" if post_processor else ""))
    )
    return results


def format_table(results: dict[str, dict[str, float]], title: str = "") -> str:
    """Format ``{row: {column: value}}`` as a Markdown table."""
    columns = sorted({key for row in results.values() for key in row})
    lines = [f"### {title}", ""] if title else []
    lines.append("| category | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for name, row in results.items():
        cells = [f"{row[col]:.3f}" if col in row else "" for col in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
