"""Benchmark outputs: CSV/JSON/Markdown tables and PNG plots (per-dataset bars, Dice vs anomaly size, qualitative).

Files written by :func:`write_results` into ``output_dir``:

* ``results.csv`` / ``results.json`` (rows + run metadata) / ``results.md`` (table per job and mean per method),
* ``per_image.csv``: Dice/IoU and predicted area of the final mask per test image, with its defect kind, area and
  size bin; ``results.md`` also breaks the deployed-threshold masks down by defect kind and size bin,
* ``plots/bars_<dataset>.png``, ``plots/dice_vs_size.png``, ``plots/operating_points.png`` (deployed per-image Dice
  vs share of good test images with a mask, per false-alarm budget) and ``qualitative/<job_id>.png`` (by the jobs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TABLE_COLUMNS",
    "breakdown_tables",
    "markdown_table",
    "operating_point_table",
    "plot_bars",
    "plot_dice_vs_size",
    "plot_operating_points",
    "plot_qualitative",
    "size_bin_table",
    "write_results",
]

TABLE_COLUMNS = (
    "dataset",
    "model",
    "post_processor",
    "calibration",
    "pre_trained",
    "seed",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "best_dice",
    "mean_image_dice",
    "mean_image_iou",
    "empty_mask_rate",
    "good_fp_area",
    "dice",
    "iou",
    "train_s",
    "infer_ms_per_image",
    "cpu_s",
    "peak_rss_mb",
    "status",
)
_SCORES = ("image_auroc", "pixel_auroc", "aupro", "best_dice", "mean_image_dice", "empty_mask_rate", "good_fp_area")
_MEAN_COLUMNS = (*_SCORES, "mean_image_iou", "dice", "iou", "train_s", "infer_ms_per_image", "cpu_s", "peak_rss_mb")
_METHOD = ["model", "post_processor", "calibration"]
# Shown names of result columns: the best threshold is picked on the test masks in hindsight.
_HEADERS = {"best_dice": "oracle_best_dice", "best_iou": "oracle_best_iou", "dice": "pooled_dice", "iou": "pooled_iou"}


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _table(frame: Any, columns: Sequence[str]) -> str:
    columns = [column for column in columns if column in frame.columns]
    headers = [_HEADERS.get(column, column) for column in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(row[column]) for column in columns) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)


def _seed_spread(done: Any, keys: list[str]) -> str:
    """Standard deviation of the scores over seeds (per dataset, then averaged), when a method ran several seeds."""
    if "seed" not in done.columns or "dataset" not in done.columns or done["seed"].nunique() < 2:
        return ""
    present = [column for column in _SCORES if column in done.columns]
    spread = done.groupby([*keys, "dataset"], sort=False)[present].std().groupby(keys, sort=False).mean()
    spread.insert(0, "seeds", done.groupby(keys, sort=False)["seed"].nunique())
    title = "Standard deviation over seeds (per dataset, then the mean over datasets):"
    return f"\n\n{title}\n\n" + _table(spread.reset_index(), [*keys, "seeds", *present])


def markdown_table(frame: Any) -> str:
    """Markdown table of every job plus, when there are several, the mean per model/post-processor over datasets.

    Args:
        frame: The collected results (one row per job).

    Returns:
        Markdown text.
    """
    if frame is None or len(frame) == 0:
        return "(no benchmark results)"
    text = _table(frame, TABLE_COLUMNS)
    done = frame[frame["status"] == "ok"] if "status" in frame.columns else frame
    keys = [key for key in _METHOD if key in done.columns]
    if len(done) > 1 and {"model", "post_processor"} <= set(done.columns):
        present = [column for column in _MEAN_COLUMNS if column in done.columns]
        mean = done.groupby(keys, sort=False)[present].mean().reset_index()
        mean.insert(len(keys), "jobs", done.groupby(keys, sort=False).size().to_numpy())
        text += "\n\nMean over datasets and seeds (jobs with status ok; NaN-free mean per column):\n\n"
        text += _table(mean, [*keys, "jobs", *present])
        text += _seed_spread(done, keys)
    skipped = frame[frame["status"] != "ok"] if "status" in frame.columns else frame.iloc[:0]
    if len(skipped):
        text += "\n\nNot run:\n\n" + "\n".join(
            f"- {row['job_id']}: {row['status']} ({row['reason']})" for _, row in skipped.iterrows()
        )
    return text


def breakdown_tables(per_image: Any) -> str:
    """Deployed-threshold masks by defect kind and by size bin: mean per-image Dice and empty-mask rate.

    Args:
        per_image: Per-image records (``defect``, ``size_bin``, ``dice``, ``pred_area_fraction``, ``gt_label``, the
            job labels).

    Returns:
        Markdown: one table per grouping, rows = model/post-processor/calibration, columns = kinds or size bins
        (``dice / empty`` per cell, ``n`` images per column in the header), plus the good-image false-positive area.
    """
    if per_image is None or len(per_image) == 0 or "size_bin" not in per_image:
        return ""
    keys = [key for key in _METHOD if key in per_image.columns]
    frame = per_image.copy()
    frame["empty"] = frame["pred_area_fraction"] == 0
    defective = frame[(frame["area_fraction"] > 0) & frame["dice"].notna()]
    if len(defective) == 0:
        return ""
    sections = []
    for column, title in (("defect", "defect kind"), ("size_bin", "defect size (share of the image)")):
        dice = defective.pivot_table(index=keys, columns=column, values="dice", aggfunc="mean", sort=False)
        empty = defective.pivot_table(index=keys, columns=column, values="empty", aggfunc="mean", sort=False)
        counts = defective.groupby(column).size() / max(len(defective.groupby(keys)), 1)
        order = list(dice.columns)
        if column == "size_bin":
            from anomalib_pixelrefine.data import SIZE_BINS

            order = [name for name, _, _ in SIZE_BINS if name in dice.columns]
        header = [*keys, *(f"{name} (n={counts[name]:.0f})" for name in order)]
        lines = [
            f"Mean per-image Dice / empty-mask rate at the deployed threshold, by {title}:",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        for index, row in dice.iterrows():
            labels = list(index) if isinstance(index, tuple) else [index]
            cells = [f"{_format(float(row[name]))} / {_format(float(empty.loc[index, name]))}" for name in order]
            lines.append("| " + " | ".join(map(str, labels + cells)) + " |")
        sections.append("\n".join(lines))
    good = frame[(frame["gt_label"] == 0) & frame["pred_area_fraction"].notna()]
    if len(good):
        fp = good.groupby(keys, sort=False)["pred_area_fraction"].agg(["mean", lambda x: float((x > 0).mean())])
        lines = [
            "Good images at the deployed threshold: mean predicted area / share with any predicted pixel:",
            "",
            "| " + " | ".join([*keys, "good_fp_area", "good_images_flagged"]) + " |",
            "|" + "|".join("---" for _ in range(len(keys) + 2)) + "|",
        ]
        for index, row in fp.iterrows():
            labels = list(index) if isinstance(index, tuple) else [index]
            lines.append("| " + " | ".join(map(str, [*labels, _format(row.iloc[0]), _format(row.iloc[1])])) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def size_bin_table(frame: Any, prefix: str = "oracle_dice_") -> str:
    """Oracle best Dice (or AUPRO, ``prefix="aupro_"``) per size bin, mean over datasets and seeds per method.

    Args:
        frame: Result rows.
        prefix: Column prefix of the per-bin values (``oracle_dice_<bin>``, ``aupro_<bin>``).

    Returns:
        Markdown table, rows = model/post-processor/calibration, one column per size bin; ``""`` without such columns.
    """
    from anomalib_pixelrefine.data import SIZE_BINS

    columns = [f"{prefix}{name}" for name, _, _ in SIZE_BINS if f"{prefix}{name}" in frame.columns]
    keys = [key for key in _METHOD if key in frame.columns]
    if not columns or not keys:
        return ""
    done = frame[frame["status"] == "ok"] if "status" in frame.columns else frame
    means = done.groupby(keys, sort=False)[columns].mean().reset_index()
    bins = [column.removeprefix(prefix) for column in columns]
    what = "Oracle best Dice (threshold picked on the test masks in hindsight)" if prefix == "oracle_dice_" else "AUPRO"
    title = (
        f"{what} by defect size (each bin's defective images pooled with all good images; mean over datasets and "
        "seeds):"
    )
    return f"{title}\n\n" + _table(means.rename(columns=dict(zip(columns, bins, strict=True))), [*keys, *bins])


def _operating_points(frame: Any) -> tuple[list[str], list[str]]:
    """Budget names present in ``op_dice_<name>`` columns (in :data:`~.job.OPERATING_BUDGETS` order), method keys."""
    from .job import OPERATING_BUDGETS

    names = [name for name in OPERATING_BUDGETS if f"op_dice_{name}" in frame.columns]
    return names, [key for key in _METHOD if key in frame.columns]


def operating_point_table(frame: Any) -> str:
    """Deployed per-image Dice / share of good test images with any mask pixel, per false-alarm budget.

    Rows: method and data set (mean over seeds). Each budget's image threshold is the order statistic of the job's
    held-back normal validation scores that a new normal image exceeds with probability at most the budget
    (``f1``: the synthetic-F1 threshold); the decision rule keeps an image's mask only above it. Host rows
    (``default``) show the host's masks under the same rule.

    Args:
        frame: Result rows with ``op_dice_<budget>``/``op_flagged_<budget>`` columns.

    Returns:
        Markdown (``""`` without such columns).
    """
    names, keys = _operating_points(frame)
    if not names or not keys:
        return ""
    done = frame[frame["status"] == "ok"] if "status" in frame.columns else frame
    columns = [f"op_{kind}_{name}" for name in names for kind in ("dice", "flagged", "val_recall")]
    columns = [column for column in columns if column in done.columns]
    group = [*keys, "dataset"] if "dataset" in done.columns else keys
    columns += ["n_val_normal"] if "n_val_normal" in done.columns else []
    means = done.groupby(group, sort=False)[columns].mean()
    header = [*group, *(f"{name}: dice / flagged" for name in names), "n_val_normal"]
    lines = [
        "Operating points (false-alarm budget on held-back normal validation images -> image threshold; per-image "
        "Dice over defective test images / share of good test images with any mask pixel; mean over seeds):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for index, row in means.iterrows():
        cells = [f"{_format(float(row[f'op_dice_{n}']))} / {_format(float(row[f'op_flagged_{n}']))}" for n in names]
        cells.append(f"{float(row.get('n_val_normal', math.nan)):.0f}")
        lines.append("| " + " | ".join(map(str, [*index, *cells])) + " |")
    recall = [f"op_val_recall_{name}" for name in names if f"op_val_recall_{name}" in done.columns]
    if recall:
        overall = done.groupby(keys, sort=False)[recall].mean().reset_index()
        overall = overall.rename(columns={f"op_val_recall_{n}": n for n in names})
        lines += [
            "",
            "Validation only (the data a default may be chosen on): share of synthetic-defect validation images above "
            "each budget's threshold, mean over data sets and seeds:",
            "",
            _table(overall, [*keys, *names]),
        ]
    return "\n".join(lines)


def plot_operating_points(frame: Any, path: str | Path) -> Path | None:
    """Deployed per-image Dice vs share of good test images with a mask, one line per method (budgets as points).

    Args:
        frame: Result rows with ``op_dice_<budget>``/``op_flagged_<budget>`` columns.
        path: Output PNG.

    Returns:
        The file, or ``None`` without operating-point columns.
    """
    names, keys = _operating_points(frame)
    done = frame[frame["status"] == "ok"] if "status" in frame.columns else frame
    if not names or not keys or len(done) == 0:
        return None
    plt = _pyplot()
    columns = [f"op_{kind}_{name}" for name in names for kind in ("dice", "flagged")]
    means = done.groupby(keys, sort=False)[columns].mean()
    fig, axis = plt.subplots(figsize=(7, 4))
    for labels, row in means.iterrows():
        labels = labels if isinstance(labels, tuple) else (labels,)
        label = labels[0] if len(labels) < 2 or labels[1] == "default" else f"{labels[0]}+{labels[1]}"
        x = [float(row[f"op_flagged_{n}"]) for n in names]
        y = [float(row[f"op_dice_{n}"]) for n in names]
        (line,) = axis.plot(x, y, marker="o", label=label)
        for name, xi, yi in zip(names, x, y, strict=True):
            axis.annotate(name, (xi, yi), fontsize=6, color=line.get_color(), xytext=(2, 2), textcoords="offset points")
    axis.set_xlabel("share of good test images with any mask pixel")
    axis.set_ylabel("mean per-image Dice (defective test images)")
    axis.set_ylim(0, 1)
    axis.set_xlim(left=0)
    return _save_with_legend(plt, fig, axis, path)


def _save(plt: Any, fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (folders created, tight layout) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _save_with_legend(plt: Any, fig: Any, axis: Any, path: str | Path) -> Path:
    """Legend to the right of ``axis``, then :func:`_save`."""
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(plt, fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(frame: Any, output_dir: str | Path, metrics: Sequence[str] = _SCORES) -> list[Path]:
    """One PNG per dataset: grouped bars of each metric for every model/post-processor (mean over seeds).

    Args:
        frame: The collected results.
        output_dir: Folder of the PNG files (``bars_<dataset>.png``).
        metrics: Metric columns to show.

    Returns:
        The written files.
    """
    plt = _pyplot()
    done = frame[frame["status"] == "ok"]
    paths = []
    for dataset, group in done.groupby("dataset", sort=False):
        metrics_present = [metric for metric in metrics if metric in group and group[metric].notna().any()]
        if not metrics_present:
            continue
        mean = group.groupby(["model", "post_processor"], sort=False)[metrics_present].mean()
        labels = [f"{model}+{post}" if post != "default" else model for model, post in mean.index]
        width = 0.8 / max(len(labels), 1)
        positions = np.arange(len(metrics_present))
        fig, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(metrics_present) + 0.25 * len(labels)), 3.8))
        for index, (label, (_, values)) in enumerate(zip(labels, mean.iterrows(), strict=True)):
            axis.bar(positions + index * width, values.to_numpy(dtype=float), width, label=label)
        axis.set_xticks(positions + width * (len(labels) - 1) / 2, metrics_present)
        axis.set_ylim(0, 1)
        axis.set_title(f"{dataset}")
        axis.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        path = Path(output_dir) / f"bars_{str(dataset).replace('/', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_dice_vs_size(per_image: Any, path: str | Path) -> Path | None:
    """Mean per-image Dice of the final mask per defect-size bin (:data:`~anomalib_pixelrefine.data.SIZE_BINS`).

    Args:
        per_image: Per-image records with ``area_fraction``, ``dice``, ``model``, ``post_processor``.
        path: Output PNG.

    Returns:
        The file, or ``None`` when there is no defective image with a Dice value.
    """
    from anomalib_pixelrefine.data import SIZE_BINS, size_bin

    if per_image is None or len(per_image) == 0 or "dice" not in per_image:
        return None
    defective = per_image[(per_image["area_fraction"] > 0) & per_image["dice"].notna()].copy()
    if len(defective) == 0:
        return None
    plt = _pyplot()
    names = [name for name, _, _ in SIZE_BINS]
    bins = defective["area_fraction"].map(size_bin)
    defective["bin"] = bins.map({name: index for index, name in enumerate(names)})
    fig, axis = plt.subplots(figsize=(7, 3.8))
    keys = [key for key in _METHOD if key in defective.columns]
    for labels, group in defective.groupby(keys, sort=False):
        mean = group.groupby("bin")["dice"].mean()
        model, post = labels[0], labels[1]
        label = model if post == "default" else f"{model}+{post}"
        if len(labels) > 2 and labels[2] not in {"synthetic", "datamodule"}:
            label += f" ({labels[2]})"
        axis.plot(mean.index.to_numpy(), mean.to_numpy(), marker="o", label=label)
    counts = defective.groupby("bin").size()
    axis.set_xticks(range(len(names)), [f"{name}\n(n={counts.get(i, 0)})" for i, name in enumerate(names)], fontsize=7)
    axis.set_xlabel("defect size (defect area / image area)")
    axis.set_ylabel("mean per-image Dice (deployed threshold)")
    axis.set_ylim(0, 1)
    return _save_with_legend(plt, fig, axis, path)


def plot_qualitative(samples: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grid with one row per sample: image, ground truth, host anomaly map, host mask and final mask.

    Both masks are at the deployed (calibrated) thresholds: the host's own, and the final one after post-processing.

    Args:
        samples: Dicts with ``image_path``, ``gt_mask``, ``host_map``, ``host_mask`` and ``pred_mask`` (tensors,
            ``None`` allowed).
        path: Output PNG.
        title: Figure title.

    Returns:
        The file.
    """
    from PIL import Image

    plt = _pyplot()
    columns = ("image", "ground truth", "host map", "host mask", "final mask")
    fig, axes = plt.subplots(len(samples), 5, figsize=(10, 2.1 * len(samples) + 0.4), squeeze=False)
    for row, sample in enumerate(samples):
        size = tuple(sample["gt_mask"].shape[-2:])
        try:
            image = np.asarray(Image.open(sample["image_path"]).convert("RGB").resize(size[::-1]))
        except (OSError, ValueError):
            image = np.zeros((*size, 3), dtype=np.uint8)
        panels = (image, sample["gt_mask"], sample.get("host_map"), sample.get("host_mask"), sample.get("pred_mask"))
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.axis("off")
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
            if panel is None:
                continue
            data = panel if isinstance(panel, np.ndarray) else panel.numpy()
            axis.imshow(data, cmap=None if data.ndim == 3 else ("jet" if column == 2 else "gray"))
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path, dpi=100)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_results(
    frame: Any, output_dir: str | Path, metadata: dict[str, Any] | None = None, plots: bool = True
) -> dict[str, Path]:
    """Write CSV, JSON, Markdown and (optionally) the plots.

    Args:
        frame: The collected results (``frame.attrs["per_image"]`` holds the per-image records).
        output_dir: Output folder (created).
        metadata: Run information stored in the JSON (command, configuration, wall time, machine).
        plots: Also write the bar and Dice-vs-size plots.

    Returns:
        ``{kind: path}`` of the written files.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": output_dir / "results.csv", "json": output_dir / "results.json", "md": output_dir / "results.md"}
    frame.to_csv(files["csv"], index=False)
    rows = [{key: _jsonable(value) for key, value in row.items()} for row in frame.to_dict("records")]
    files["json"].write_text(json.dumps({"metadata": metadata or {}, "results": rows}, indent=2, default=str))
    header = "# Benchmark results\n\n"
    if metadata:
        header += "".join(f"- {key}: `{value}`\n" for key, value in metadata.items() if key != "config")
        header += "\n"
    per_image = frame.attrs.get("per_image")
    parts = (
        operating_point_table(frame),
        breakdown_tables(per_image),
        size_bin_table(frame),
        size_bin_table(frame, "aupro_"),
    )
    breakdown = "\n\n".join(part for part in parts if part)
    files["md"].write_text(header + markdown_table(frame) + ("\n\n" + breakdown if breakdown else "") + "\n")
    if per_image is not None and len(per_image):
        files["per_image"] = output_dir / "per_image.csv"
        per_image.to_csv(files["per_image"], index=False)
    if plots and "status" in frame.columns and (frame["status"] == "ok").any():
        for index, path in enumerate(plot_bars(frame, output_dir / "plots")):
            files[f"bars_{index}"] = path
        size_plot = plot_dice_vs_size(per_image, output_dir / "plots" / "dice_vs_size.png")
        if size_plot is not None:
            files["dice_vs_size"] = size_plot
        operating = plot_operating_points(frame, output_dir / "plots" / "operating_points.png")
        if operating is not None:
            files["operating_points"] = operating
    return files
