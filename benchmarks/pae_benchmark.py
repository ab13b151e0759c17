"""PAEDID benchmark: synthetic cracks on real backgrounds (ELPV solar cells, a scikit-image texture), 128 px.

Compares the best-threshold Dice (one global threshold over the pooled test pixels) of

* **PAEDID**: ``Pae`` (cae, MSE) + latent memory bank + deep image decomposition (eq. 3);
* **PAE**: the same model with ``decompose=False`` (residual ``|X - X̂|``, the paper's ablation);
* **SSIM-AE**: a plain cae trained with the SSIM loss (no memory bank), with Bergmann et al.'s (2018) segmentation
  map ``1 - SSIM(X, AE(X))`` (11x11 window); the same network with the residual ``|X - AE(X)|`` is reported next to it;
* **PatchCore**: anomalib's ``PatchcoreModel`` with a randomly initialised resnet18 (no pretrained weights offline).

Tuning parameters (``l, k, α`` then ``λ``) are chosen on annotated *validation* crack images (the first
``--n-val`` defect images of each category), never on the test images. Also measured: training seconds per epoch of
cae / vae / aae, decomposition seconds per image and the peak RSS of the memory bank build (fresh subprocess).

Example:
    python benchmarks/pae_benchmark.py --out benchmarks/results/pae

All timings use one thread (``torch.set_num_threads(1)``) on a shared CPU; they are upper bounds.
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.engine import Engine
from anomalib.models import Patchcore
from kornia.metrics import ssim
from lightning.pytorch import Callback, seed_everything
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from anomalib_pixelrefine.data import build_default_benchmark
from anomalib_pixelrefine.models.image.pae import Pae, PaeModel, sparse_to_anomaly_map
from anomalib_pixelrefine.models.image.pae.tuning import best_dice, grid_search

# ----------------------------------------------------------------------------- data


def _load_folder(folder: Path, grey: bool = False) -> torch.Tensor:
    """All PNGs of a folder as a float tensor ``(N, C, H, W)`` in ``[0, 1]`` (sorted by name)."""
    arrays = [np.asarray(Image.open(path).convert("L" if grey else "RGB")) for path in sorted(folder.glob("*.png"))]
    tensor = torch.from_numpy(np.stack(arrays)).float() / 255.0
    return tensor.unsqueeze(1) if grey else tensor.permute(0, 3, 1, 2).contiguous()


def load_category(path: Path, n_val: int, defect: str = "crack") -> dict[str, torch.Tensor]:
    """Train images, validation crack images + masks, test images (remaining cracks first, then good ones) + masks."""
    defective = _load_folder(path / "test" / defect)
    masks = (_load_folder(path / "ground_truth" / defect, grey=True) > 0.5).float()
    good = _load_folder(path / "test" / "good")
    if n_val >= len(defective):
        msg = f"--n-val ({n_val}) must be smaller than the number of defect images ({len(defective)})"
        raise ValueError(msg)
    return {
        "train": _load_folder(path / "train" / "good"),
        "val_images": defective[:n_val],
        "val_masks": masks[:n_val],
        "test_images": torch.cat([defective[n_val:], good]),
        "test_masks": torch.cat([masks[n_val:], torch.zeros(len(good), 1, *good.shape[-2:])]),
        "n_test_defect": torch.tensor(len(defective) - n_val),
    }


class _ImageDataset(Dataset):
    """Normal training images as anomalib ``ImageItem`` (for ``Engine.fit`` without a datamodule)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(image=self.images[index], gt_label=torch.tensor(0))


class _EpochTimer(Callback):
    """Wall time of every training epoch (the memory bank build after the last epoch is not included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, *_: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


# ----------------------------------------------------------------------------- training / evaluation


def train_pae(train: torch.Tensor, epochs: int, workdir: Path, **kwargs: Any) -> tuple[Pae, float]:
    """Train ``Pae`` with anomalib's Engine; returns the model and the median seconds per epoch."""
    size = train.shape[-1]
    model = Pae(
        pre_processor=Pae.configure_pre_processor(image_size=(size, size)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
        **kwargs,
    )
    loader = DataLoader(_ImageDataset(train), batch_size=8, shuffle=True, collate_fn=ImageBatch.collate)
    timer = _EpochTimer()
    engine = Engine(
        accelerator="cpu",
        devices=1,
        logger=False,
        max_epochs=epochs,
        default_root_dir=workdir,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    engine.fit(model, train_dataloaders=loader)
    return model.eval(), float(np.median(timer.times))


@torch.no_grad()
def pae_maps(model: PaeModel, images: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, float]:
    """Anomaly maps of ``model`` (PAEDID or PAE residual, per ``model.decompose``) and seconds per image."""
    maps, start = [], time.perf_counter()
    for batch in images.split(batch_size):
        _, sparse = model.split(batch, model.deep_prior(batch))
        maps.append(sparse_to_anomaly_map(sparse))
    return torch.cat(maps), (time.perf_counter() - start) / len(images)


@torch.no_grad()
def ae_residual_maps(model: PaeModel, images: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Plain autoencoder maps: ``|X - D(E(X))|`` (``kind="l1"``) or Bergmann's ``1 - SSIM`` map (``"ssim"``)."""
    maps = []
    for batch in images.split(8):
        recon = model.decode(model.encode(batch))
        if kind == "ssim":
            maps.append((1.0 - ssim(batch, recon.clamp(0, 1), window_size=11)).mean(1, keepdim=True))
        else:
            maps.append(sparse_to_anomaly_map(batch - recon))
    return torch.cat(maps)


@torch.no_grad()
def patchcore_maps(train: torch.Tensor, images: torch.Tensor, coreset_ratio: float) -> torch.Tensor:
    """anomalib PatchCore (resnet18, random weights) anomaly maps at the input size."""
    module = Patchcore(backbone="resnet18", pre_trained=False, coreset_sampling_ratio=coreset_ratio)
    normalise = Patchcore.configure_pre_processor(image_size=tuple(train.shape[-2:])).transform
    model = module.model.train()
    for batch in train.split(8):
        model(normalise(batch))
    model.subsample_embedding(coreset_ratio)
    model.eval()
    return torch.cat([model(normalise(batch)).anomaly_map for batch in images.split(8)]).reshape(
        len(images), 1, *images.shape[-2:]
    )


def _proc_status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bank_rss_worker(latents_path: str, model_kwargs: dict[str, Any], ratio: float | None, queue: mp.Queue) -> None:
    """Subprocess: RSS (MB) before and peak RSS during the memory bank build from saved latents.

    Uses ``/proc/self/status`` ``VmHWM`` (reset through ``clear_refs``): ``ru_maxrss`` survives ``exec`` and would
    report the parent's peak.
    """
    torch.set_num_threads(1)
    latents = torch.load(latents_path)
    model = PaeModel(**model_kwargs).eval()
    before = _proc_status_mb("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    start = time.perf_counter()
    model.build_memory_bank(latents, coreset_sampling_ratio=ratio)
    seconds = time.perf_counter() - start
    peak = _proc_status_mb("VmHWM")
    bank = (model.memory_bank_raw.numel() + model.memory_bank_agg.numel()) * 4 / 2**20
    latents_mb = latents.numel() * 4 / 2**20
    queue.put(
        {"rss_before_mb": before, "rss_peak_mb": peak, "bank_mb": bank, "latents_mb": latents_mb, "seconds": seconds}
    )


def bank_peak_rss(model: PaeModel, latents: torch.Tensor, ratio: float | None) -> dict[str, float]:
    """Peak RSS of ``build_memory_bank`` measured in a fresh (spawned) process."""
    kwargs = {
        "channels": list(model.channels),
        "latent_channels": model.latent_channels,
        "aggregation_length": model.aggregation_length,
        "aligned": model.aligned,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "latents.pt")
        torch.save(latents, path)
        context = mp.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=_bank_rss_worker, args=(path, kwargs, ratio, queue))
        process.start()
        result = queue.get()
        process.join()
    return result


# ----------------------------------------------------------------------------- main


def _dice(row: dict[str, Any], method: str, maps: torch.Tensor, data: dict[str, torch.Tensor]) -> None:
    """Best-threshold Dice on the defective test images (paper protocol) and on all test images (with good ones)."""
    n_defect = int(data["n_test_defect"])
    row[f"dice_{method}"] = best_dice(maps[:n_defect], data["test_masks"][:n_defect])
    row[f"dice_{method}_with_good"] = best_dice(maps, data["test_masks"])


def run_category(name: str, path: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """All methods, tuning and timings on one category."""
    data = load_category(path, args.n_val)
    aligned = name == "elpv"  # solar cells are aligned (busbars at fixed rows): same-position search (paper, sec. 4)
    coreset = None if aligned else args.coreset
    common = {
        "channels": tuple(args.channels),
        "num_neighbors": 9,
        "aligned": aligned,
        "coreset_sampling_ratio": coreset,
    }
    decomposition = {"decomposition_steps": args.steps, "decomposition_lr": args.decomposition_lr}
    row: dict[str, Any] = {"aligned": aligned, "n_train": len(data["train"]), "n_val": len(data["val_images"])}
    row["n_test_defect"] = int(data["n_test_defect"])
    row["n_test_good"] = len(data["test_images"]) - row["n_test_defect"]

    seed_everything(args.seed)
    pae, row["cae_sec_per_epoch"] = train_pae(
        data["train"], args.epochs, workdir / name / "cae", **common, **decomposition
    )
    model = pae.model
    for ae_type in ("vae", "aae"):
        seed_everything(args.seed)
        _, row[f"{ae_type}_sec_per_epoch"] = train_pae(
            data["train"], args.timing_epochs, workdir / name / ae_type, ae_type=ae_type, **common
        )
    train_latents = torch.cat([model.encode(b) for b in data["train"].split(8)]).detach()
    row["bank_build"] = bank_peak_rss(model, train_latents, coreset)

    # PAE without decomposition: tune (l, k, α) on validation images.
    model.decompose = False
    pae_tuning = grid_search(
        model,
        train_latents,
        data["val_images"],
        data["val_masks"],
        aggregation_lengths=args.grid_l,
        num_neighbors=args.grid_k,
        alphas=args.grid_alpha,
        lams=(model.lam,),
        coreset_sampling_ratio=coreset,
    )
    row["pae_params"] = {key: pae_tuning.best[key] for key in ("aggregation_length", "num_neighbors", "alpha")}
    pae_test, _ = pae_maps(model, data["test_images"])
    _dice(row, "pae", pae_test, data)

    # PAEDID: (l, k) from stage 1; α around its best and λ tuned with the decomposition on validation images.
    model.decompose = True
    best_alpha = pae_tuning.best["alpha"]
    alphas = sorted({a for a in args.grid_alpha if abs(a - best_alpha) <= 0.1 + 1e-9})
    paedid_tuning = grid_search(
        model,
        train_latents,
        data["val_images"],
        data["val_masks"],
        aggregation_lengths=(model.aggregation_length,),
        num_neighbors=(model.num_neighbors,),
        alphas=alphas,
        lams=args.grid_lam,
        coreset_sampling_ratio=coreset,
    )
    row["paedid_params"] = {
        key: paedid_tuning.best[key] for key in ("aggregation_length", "num_neighbors", "alpha", "lam")
    }
    paedid_test, row["decomposition_sec_per_image"] = pae_maps(model, data["test_images"])
    _dice(row, "paedid", paedid_test, data)
    row["val_dice_pae"], row["val_dice_paedid"] = pae_tuning.best["score"], paedid_tuning.best["score"]

    # SSIM-AE: the same autoencoder trained with the SSIM loss; Bergmann's SSIM map and the plain residual.
    seed_everything(args.seed)
    ssim_ae, _ = train_pae(data["train"], args.epochs, workdir / name / "ssim", **common, reconstruction_loss="ssim")
    _dice(row, "ssim_ae", ae_residual_maps(ssim_ae.model, data["test_images"], kind="ssim"), data)
    _dice(row, "ssim_ae_l1", ae_residual_maps(ssim_ae.model, data["test_images"], kind="l1"), data)

    seed_everything(args.seed)
    maps = patchcore_maps(data["train"], data["test_images"], args.patchcore_coreset)
    _dice(row, "patchcore", maps, data)
    return row


def markdown(results: dict[str, Any]) -> str:
    """Markdown tables of the results."""
    rows = results["categories"]
    methods = ("paedid", "pae", "ssim_ae", "ssim_ae_l1", "patchcore")
    lines = [
        "Best-threshold Dice on the defective test images (paper protocol); in brackets: with the good test images.",
        "",
        "| category | PAEDID | PAE (no decomposition) | SSIM-AE (1 - SSIM map) | SSIM-trained AE, L1 residual "
        "| PatchCore (random resnet18) | PAEDID l, k, α, λ |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in [*rows.items(), ("mean", results["mean"])]:
        cells = [f"{row[f'dice_{m}']:.3f} ({row[f'dice_{m}_with_good']:.3f})" for m in methods]
        params = row.get("paedid_params")
        tuned = (
            ""
            if params is None
            else ", ".join(str(params[key]) for key in ("aggregation_length", "num_neighbors", "alpha", "lam"))
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tuned} |")
    lines += [
        "",
        "| category | cae s/epoch | vae s/epoch | aae s/epoch | decomposition s/image "
        "| bank build: RSS before -> peak MB (bank MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        bank = row["bank_build"]
        lines.append(
            f"| {name} | {row['cae_sec_per_epoch']:.2f} | {row['vae_sec_per_epoch']:.2f} | "
            f"{row['aae_sec_per_epoch']:.2f} | {row['decomposition_sec_per_image']:.2f} | "
            f"{bank['rss_before_mb']:.0f} -> {bank['rss_peak_mb']:.0f} ({bank['bank_mb']:.1f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run every category, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="./datasets/pixelrefine_pae_benchmark", help="data folder (built if missing)")
    parser.add_argument("--categories", nargs="+", default=["elpv", "brick"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-val", type=int, default=6, help="crack images used for tuning (taken before the test)")
    parser.add_argument("--n-test-defect", type=int, default=18, help="crack images per category (val + test)")
    parser.add_argument("--n-test-good", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--timing-epochs", type=int, default=3, help="epochs of the vae / aae timing runs")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=30, help="Adam steps of the decomposition")
    parser.add_argument("--decomposition-lr", type=float, default=0.05)
    parser.add_argument("--coreset", type=float, default=0.1, help="PAE coreset ratio (non-aligned categories)")
    parser.add_argument("--patchcore-coreset", type=float, default=0.1)
    parser.add_argument("--grid-l", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--grid-k", type=int, nargs="+", default=[3, 5, 9, 13])
    parser.add_argument("--grid-alpha", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--grid-lam", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/pae", help="output prefix (.json and .md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    paths = build_default_benchmark(
        args.root,
        categories=args.categories,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        defects=("crack",),
        seed=args.seed,
    )
    categories = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, path in paths.items():
            categories[name] = run_category(name, path, args, Path(workdir))
            print(name, json.dumps(categories[name]), flush=True)
    results = {
        "args": vars(args),
        "categories": categories,
        "mean": {
            key: float(np.mean([row[key] for row in categories.values()]))
            for key in next(iter(categories.values()))
            if key.startswith("dice_")
        },
        "total_seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "machine": platform.platform(),
    }
    table = markdown(results)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    header = f"# PAEDID benchmark\n\nCommand: `python {' '.join(sys.argv)}`\n\n"
    out.with_suffix(".md").write_text(header + table + f"\n\nTotal time: {results['total_seconds']:.0f} s\n")


if __name__ == "__main__":
    main()
