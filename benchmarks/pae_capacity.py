"""PAEDID on one category: how the autoencoder's size and training length change the prior and the Dice.

For each run it reports how well the plain autoencoder reconstructs *normal* test images (mean ``|X - D(E(X))|`` and
the fraction of pixels above 0.1, the smallest change a synthetic crack makes), how much of the crack it reproduces
(mean residual on crack pixels: lower = the crack is reconstructed), and the best-threshold test Dice of PAE and
PAEDID after a grid search on the validation crack images (same data layout and protocol as ``pae_benchmark.py``),
and where PAEDID's errors are at its best threshold: the share of false-positive pixels inside the latent patches the
memory bank replaced, and the prior error ``|X - X̂|`` on normal pixels inside / outside those patches.

Example (the run behind ``results/pae_capacity_gravel.md``):
    python benchmarks/pae_capacity.py --root /tmp/pae_bench_gg --category gravel \
        --run 32,64:20 --run 64,128:40 --run 64,128:80 --grid-l 5 7 --grid-k 9 13 --grid-alpha 0.2 0.3 0.5 \
        --grid-lam 1 3 --out benchmarks/results/pae_capacity_gravel
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from torch.nn import functional as F

from anomalib_pixelrefine.data import build_default_benchmark
from anomalib_pixelrefine.metrics.functional import best_threshold_dice
from anomalib_pixelrefine.models.image.pae.tuning import grid_search

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pae_benchmark import _dice, load_category, pae_maps, train_pae

PARAMS = ("aggregation_length", "num_neighbors", "alpha", "lam")


def parse_run(text: str) -> tuple[tuple[int, ...], int]:
    """``"64,128:40"`` -> ``((64, 128), 40)`` (encoder widths, epochs)."""
    try:
        widths, epochs = text.split(":")
        return tuple(int(w) for w in widths.split(",")), int(epochs)
    except ValueError as error:
        msg = f"--run must look like '64,128:40' (encoder widths:epochs), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from error


@torch.no_grad()
def reconstruction_stats(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Plain autoencoder residuals on the good test images and on the crack pixels of the validation images."""
    n_defect = int(data["n_test_defect"])
    good = data["test_images"][n_defect:]
    normal = (good - model.decode(model.encode(good))).abs().mean(1)
    cracks = data["val_images"]
    on_crack = (cracks - model.decode(model.encode(cracks))).abs().mean(1)[data["val_masks"][:, 0] > 0.5]
    return {
        "normal_mean_abs_residual": normal.mean().item(),
        "normal_fraction_above_0.1": (normal > 0.1).float().mean().item(),
        "crack_mean_abs_residual": on_crack.mean().item(),
    }


@torch.no_grad()
def error_locations(
    model: torch.nn.Module, data: dict[str, torch.Tensor], anomaly_maps: torch.Tensor
) -> dict[str, float]:
    """Where PAEDID's errors are (defective test images, best global threshold).

    ``anomaly_maps`` are the model's PAEDID maps of all test images (from ``pae_maps``, tuned parameters); only the
    prior and which latent patches were replaced are recomputed here (the decomposition is not run again).
    """
    n_defect = int(data["n_test_defect"])
    images, truth = data["test_images"][:n_defect], data["test_masks"][:n_defect] > 0.5
    anomaly_map = anomaly_maps[:n_defect]
    latents = model.encode(images)
    retrieved, scores = model.retrieve(latents)
    replaced_latents, replaced = model.replace_top_patches(latents, retrieved, scores, model.alpha)
    prior = model.decode(replaced_latents)
    _, threshold = best_threshold_dice(anomaly_map, truth.float())
    false_positive = (anomaly_map >= threshold) & ~truth
    inside = F.interpolate(replaced.float(), scale_factor=model.stride, mode="nearest") > 0.5
    prior_error = (images - prior).abs().mean(1, keepdim=True)
    return {
        "replaced_area": inside.float().mean().item(),
        "false_positives_inside_replaced": ((false_positive & inside).sum() / false_positive.sum().clamp(min=1)).item(),
        "normal_prior_error_inside_replaced": prior_error[inside & ~truth].mean().item(),
        "normal_prior_error_outside_replaced": prior_error[~inside & ~truth].mean().item(),
    }


def run(channels: tuple[int, ...], epochs: int, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict:
    """Train one autoencoder, then tune and test PAE and PAEDID."""
    seed_everything(args.seed)
    start = time.perf_counter()
    workdir = Path(args.workdir) / f"{'_'.join(map(str, channels))}_{epochs}"
    module, sec_per_epoch = train_pae(data["train"], epochs, workdir, channels=channels, coreset_sampling_ratio=None)
    model = module.model
    row = {"channels": list(channels), "epochs": epochs, "sec_per_epoch": sec_per_epoch}
    row["train_seconds"] = time.perf_counter() - start
    row |= reconstruction_stats(model, data)
    latents = torch.cat([model.encode(batch) for batch in data["train"].split(8)])
    for with_decomposition in (False, True):
        name = "paedid" if with_decomposition else "pae"
        model.decompose = with_decomposition
        tuning = grid_search(
            model,
            latents,
            data["val_images"],
            data["val_masks"],
            aggregation_lengths=args.grid_l,
            num_neighbors=args.grid_k,
            alphas=args.grid_alpha,
            lams=args.grid_lam,
        )
        row[f"{name}_params"] = {key: tuning.best[key] for key in PARAMS}
        maps, _ = pae_maps(model, data["test_images"])
        _dice(row, name, maps, data)
    return row | error_locations(model, data, maps)  # maps: PAEDID's (the last pass)


def markdown(rows: list[dict], command: str) -> str:
    """A Markdown table of the runs."""
    lines = [
        "# PAEDID: autoencoder size and training length",
        "",
        f"Command: `{command}`",
        "",
        "| channels | epochs | s/epoch | normal mean \\|X − X̂\\| | normal pixels > 0.1 | crack-pixel \\|X − X̂\\| "
        "| PAE Dice | PAEDID Dice | PAEDID l, k, α, λ | FP in replaced patches (area) "
        "| normal-pixel prior error in / outside replaced |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        params = ", ".join(str(row["paedid_params"][key]) for key in PARAMS)
        lines.append(
            f"| {tuple(row['channels'])} | {row['epochs']} | {row['sec_per_epoch']:.1f} | "
            f"{row['normal_mean_abs_residual']:.3f} | {row['normal_fraction_above_0.1']:.3f} | "
            f"{row['crack_mean_abs_residual']:.3f} | {row['dice_pae']:.3f} | {row['dice_paedid']:.3f} | {params} | "
            f"{row['false_positives_inside_replaced']:.3f} ({row['replaced_area']:.2f}) | "
            f"{row['normal_prior_error_inside_replaced']:.3f} / {row['normal_prior_error_outside_replaced']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, run every autoencoder setting, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="./datasets/pixelrefine_pae_benchmark", help="data folder (built if missing)")
    parser.add_argument("--category", default="gravel")
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-val", type=int, default=6)
    parser.add_argument("--run", type=parse_run, action="append", help="encoder widths:epochs, e.g. 64,128:40")
    parser.add_argument("--grid-l", type=int, nargs="+", default=[3, 5, 7])
    parser.add_argument("--grid-k", type=int, nargs="+", default=[9, 13])
    parser.add_argument("--grid-alpha", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--grid-lam", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/pae_capacity")
    parser.add_argument("--out", default="benchmarks/results/pae_capacity", help="output prefix (.json and .md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = args.run or [((32, 64), 20), ((64, 128), 40)]

    paths = build_default_benchmark(
        args.root, categories=[args.category], image_size=128, n_train=args.n_train, n_test_good=4,
        n_test_defect=18, defects=("crack",), seed=args.seed,
    )  # fmt: skip
    data = load_category(paths[args.category], args.n_val)
    rows = []
    for channels, epochs in runs:
        rows.append(run(channels, epochs, data, args))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"run": runs}, "runs": rows}, indent=2))
    table = markdown(rows, "python " + " ".join(sys.argv))
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
