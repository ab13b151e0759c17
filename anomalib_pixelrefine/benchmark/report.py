"""Benchmark outputs: CSV/JSON/Markdown tables and PNG plots (per-dataset bars, Dice vs anomaly size, qualitative).

Files written by :func:`write_results` into ``output_dir``:

* ``results.csv`` / ``results.json`` (rows + run metadata) / ``results.md`` (table per job and mean per method),
* ``per_image.csv``: Dice/IoU of the final mask per test image with its defect area,
* ``plots/bars_<dataset>.png``, ``plots/dice_vs_size.png``, and ``qualitative/<job_id>.png`` (written by the jobs).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TABLE_COLUMNS",
    "markdown_table",
    "plot_bars",
    "plot_dice_vs_size",
    "plot_qualitative",
    "write_results",
]

TABLE_COLUMNS = (
    "dataset",
    "model",
    "post_processor",
    "seed",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "best_dice",
    "best_iou",
    "dice",
    "iou",
    "train_s",
    "infer_ms_per_image",
    "cpu_s",
    "peak_rss_mb",
    "status",
)
_SCORES = ("image_auroc", "pixel_auroc", "aupro", "best_dice", "best_iou", "dice", "iou")
_MEAN_COLUMNS = (*_SCORES, "train_s", "infer_ms_per_image", "cpu_s", "peak_rss_mb")
# Anomaly size bins (fraction of the image area) for the Dice-vs-size plot, as in F2PAD Fig. 7 (small to large).
SIZE_BINS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _table(frame: Any, columns: Sequence[str]) -> str:
    columns = [column for column in columns if column in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(row[column]) for column in columns) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)


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
    if len(done) > 1 and {"model", "post_processor"} <= set(done.columns):
        present = [column for column in _MEAN_COLUMNS if column in done.columns]
        mean = done.groupby(["model", "post_processor"], sort=False)[present].mean().reset_index()
        mean.insert(2, "jobs", done.groupby(["model", "post_processor"], sort=False).size().to_numpy())
        text += "\n\nMean over datasets and seeds (jobs with status ok):\n\n"
        text += _table(mean, ["model", "post_processor", "jobs", *present])
    skipped = frame[frame["status"] != "ok"] if "status" in frame.columns else frame.iloc[:0]
    if len(skipped):
        text += "\n\nNot run:\n\n" + "\n".join(
            f"- {row['job_id']}: {row['status']} ({row['reason']})" for _, row in skipped.iterrows()
        )
    return text


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


def plot_dice_vs_size(per_image: Any, path: str | Path, bins: Sequence[float] = SIZE_BINS) -> Path | None:
    """Mean Dice of the final mask per anomaly-size bin (defect area / image area), one line per method.

    Args:
        per_image: Per-image records with ``area_fraction``, ``dice``, ``model``, ``post_processor``.
        path: Output PNG.
        bins: Bin edges of the area fraction.

    Returns:
        The file, or ``None`` when there is no defective image with a Dice value.
    """
    if per_image is None or len(per_image) == 0 or "dice" not in per_image:
        return None
    defective = per_image[(per_image["area_fraction"] > 0) & per_image["dice"].notna()].copy()
    if len(defective) == 0:
        return None
    plt = _pyplot()
    edges = np.asarray(bins, dtype=float)
    defective["bin"] = np.clip(np.digitize(defective["area_fraction"].to_numpy(), edges) - 1, 0, len(edges) - 2)
    labels = [f"{100 * low:g}–{100 * high:g}%" for low, high in itertools.pairwise(edges)]
    fig, axis = plt.subplots(figsize=(7, 3.8))
    for (model, post), group in defective.groupby(["model", "post_processor"], sort=False):
        mean = group.groupby("bin")["dice"].mean()
        axis.plot(
            mean.index.to_numpy(), mean.to_numpy(), marker="o", label=model if post == "default" else f"{model}+{post}"
        )
    counts = defective.groupby("bin").size()
    axis.set_xticks(
        range(len(labels)), [f"{label}\n(n={counts.get(i, 0)})" for i, label in enumerate(labels)], fontsize=7
    )
    axis.set_xlabel("anomaly size (defect area / image area)")
    axis.set_ylabel("Dice")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_qualitative(samples: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grid with one row per sample: image, ground truth, host anomaly map, final (refined) mask.

    Args:
        samples: Dicts with ``image_path``, ``gt_mask``, ``host_map`` and ``pred_mask`` (tensors, ``None`` allowed).
        path: Output PNG.
        title: Figure title.

    Returns:
        The file.
    """
    from PIL import Image

    plt = _pyplot()
    columns = ("image", "ground truth", "host map", "final mask")
    fig, axes = plt.subplots(len(samples), 4, figsize=(8, 2.1 * len(samples) + 0.4), squeeze=False)
    for row, sample in enumerate(samples):
        size = tuple(sample["gt_mask"].shape[-2:])
        try:
            image = np.asarray(Image.open(sample["image_path"]).convert("RGB").resize(size[::-1]))
        except (OSError, ValueError):
            image = np.zeros((*size, 3), dtype=np.uint8)
        panels = (image, sample["gt_mask"], sample.get("host_map"), sample.get("pred_mask"))
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
        header += "".join(f"- {key}: `{value}`\n" for key, value in metadata.items() if not isinstance(value, dict))
        header += "\n"
    files["md"].write_text(header + markdown_table(frame) + "\n")
    per_image = frame.attrs.get("per_image")
    if per_image is not None and len(per_image):
        files["per_image"] = output_dir / "per_image.csv"
        per_image.to_csv(files["per_image"], index=False)
    if plots and "status" in frame.columns and (frame["status"] == "ok").any():
        for index, path in enumerate(plot_bars(frame, output_dir / "plots")):
            files[f"bars_{index}"] = path
        size_plot = plot_dice_vs_size(per_image, output_dir / "plots" / "dice_vs_size.png")
        if size_plot is not None:
            files["dice_vs_size"] = size_plot
    return files
