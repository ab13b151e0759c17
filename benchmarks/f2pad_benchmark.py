"""F2PAD benchmark: Dice/IoU of feature-based hosts before/after F2PAD refinement, ablations and timings.

F2PAD-style data (paper IV-A1): random-colour cut-paste defects with exact masks on real textures and ELPV solar
cells (``build_default_benchmark(..., defects=("cut_paste_color",))``). Hosts are anomalib's PatchCore, PaDiM and
CFLOW torch models (resnet18; ``pre_trained=False`` because the box is offline — the paper uses ImageNet weights, so
absolute numbers differ). CFLOW uses the first two feature maps (``layer2``, ``layer3``) as the paper's few-shot
setting and is trained as anomalib's ``Cflow.training_step`` for ``--cflow-epochs``. Hosts are fitted directly (no
Lightning) and the refiner is called through ``refine_batch`` exactly as in ``on_test_batch_end``; ``m0`` uses the
host's F1-optimal pixel threshold on the test set (as in the paper).

Metrics: pooled Dice/IoU over the test defects (x100) of the binary masks; the host's mask uses its best threshold
(oracle, favours the host), F2PAD's mask its fixed ``mask_threshold`` (no calibration) and, for reference, the best
threshold of the refined map. Ablations (paper table III): initialisation only, w/o pixel prior, w/o sparsity,
plain Adan (no gradient sharing, no adaptive step). Timing: wall and process-CPU seconds per image (refinement only)
and iterations, load averages at start/end; ROI-local vs full image.

On a shared CPU run with ``OMP_WAIT_POLICY=PASSIVE``: with libgomp's default spin-waiting, 2 intra-op threads on an
oversubscribed 2-core box are 5-10x slower than 1 thread (measured: 17.9 vs 3.9 s/image at load 4).

Example:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/f2pad_benchmark.py --image-size 224 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.models.image.cflow.torch_model import CflowModel
from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from PIL import Image

from anomalib_pixelrefine.data import build_default_benchmark
from anomalib_pixelrefine.metrics.functional import best_threshold_dice, dice_score, iou_score
from anomalib_pixelrefine.post_processing import F2PAD

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_images(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def load_masks(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L")) > 127 for f in files]))[:, None]


def fit_cflow(x: torch.Tensor, epochs: int, lr: float) -> CflowModel:
    """anomalib's ``Cflow.training_step`` without Lightning: Adam on the flow decoders, random fiber batches."""
    model = CflowModel(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False)
    params = [p for decoder in model.decoders for p in decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        activation = model.encoder(x)
    model.decoders.train()
    for _ in range(epochs):
        for layer_idx, layer in enumerate(model.pool_layers):
            feats = activation[layer]
            b, dim, h, w = feats.shape
            cond = positional_encoding_2d(model.condition_vector, h, w).unsqueeze(0).expand(b, -1, -1, -1)
            e_r = feats.permute(0, 2, 3, 1).reshape(-1, dim)
            c_r = cond.permute(0, 2, 3, 1).reshape(-1, cond.shape[1])
            for idx in torch.randperm(len(e_r)).split(model.fiber_batch_size):
                p_u, log_jac_det = model.decoders[layer_idx](e_r[idx], [c_r[idx]])
                loss = -F.logsigmoid(get_logp(dim, p_u, log_jac_det) / dim).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model


def fit_host(name: str, train: torch.Tensor, cflow_epochs: int = 3, cflow_lr: float = 1e-4) -> torch.nn.Module:
    torch.manual_seed(0)
    x = (train - MEAN) / STD
    if name == "patchcore":
        model = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False)
        model.train()
        for chunk in x.split(8):
            model(chunk)
        model.memory_bank = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
    elif name == "padim":
        model = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False)
        model.train()
        for chunk in x.split(8):
            model(chunk)
        model.fit()
    elif name == "cflow":
        model = fit_cflow(x, cflow_epochs, cflow_lr)
    else:
        raise ValueError(name)
    return model.eval()


def host_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        maps = torch.cat([model((chunk - MEAN) / STD).anomaly_map for chunk in images.split(8)])
    return maps if maps.dim() == 4 else maps.unsqueeze(1)  # CFLOW returns (B, H, W)


def scores(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    return {"dice": 100 * float(dice_score(pred, gt)), "iou": 100 * float(iou_score(pred, gt))}


def fitted_refiner(train: torch.Tensor, threshold: float, **kwargs) -> F2PAD:
    """An F2PAD as after ``Engine.fit``: ImageNet pixel statistics, prior fitted on ``train``, host threshold set."""
    refiner = F2PAD(**kwargs)
    refiner.pixel_mean.copy_(MEAN.flatten())
    refiner.pixel_std.copy_(STD.flatten())
    refiner.fit_prior(train)
    refiner.prior_fitted.fill_(True)
    refiner.host_pixel_threshold.fill_(float(threshold))
    return refiner


def run_refiner(refiner: F2PAD, model, images, maps, batch_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Refine all images; returns the refined maps and per-image wall/CPU seconds and mean iterations."""
    refined, wall, cpu, iterations = [], 0.0, 0.0, []
    for start in range(0, len(images), batch_size):
        x = (images[start : start + batch_size] - MEAN) / STD
        begin, cpu_begin = time.perf_counter(), time.process_time()
        refined.append(refiner.refine_batch(x, maps[start : start + batch_size], model))
        wall += time.perf_counter() - begin
        cpu += time.process_time() - cpu_begin
        iterations.append(refiner.last_info["iterations"].float())
    n = len(images)
    stats = {"sec": wall / n, "cpu_sec": cpu / n, "iterations": float(torch.cat(iterations).mean())}
    return torch.cat(refined), stats


def time_roi_local(args: argparse.Namespace) -> list[dict]:
    """Seconds/image of ROI-local vs full-image optimisation at ``--timing-image-size`` (fixed iteration count)."""
    root = Path(args.root) / f"timing_{args.timing_image_size}"
    category = args.categories[0]
    build_default_benchmark(
        root,
        categories=[category],
        image_size=args.timing_image_size,
        n_train=args.n_train,
        n_test_good=1,
        n_test_defect=args.full_image_images,
        defects=("cut_paste_color",),
        seed=1,
        include_elpv=False,
    )
    train = load_images(root / category / "train" / "good")
    images = load_images(root / category / "test" / "cut_paste_color")
    gt = load_masks(root / category / "ground_truth" / "cut_paste_color")
    model = fit_host(args.hosts[0], train, args.cflow_epochs, args.cflow_lr)
    maps = host_maps(model, images)
    _, threshold = best_threshold_dice(maps, gt)
    timing = []
    for roi_local in (True, False):
        # check_every > max_iters: no early stop, both modes run exactly max_iters iterations.
        refiner = fitted_refiner(
            train, threshold, max_iters=args.max_iters, roi_local=roi_local, check_every=args.max_iters + 1
        )
        refined, stats = run_refiner(refiner, model, images, maps, 1)
        dice = 100 * float(dice_score(refiner.binarise(refined), gt))
        timing.append({"host": args.hosts[0], "roi_local": roi_local, **stats, "dice": dice})
        print(f"timing {args.timing_image_size} px roi_local={roi_local}: {stats['sec']:.2f} s/img, dice {dice:.1f}")
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="./datasets/f2pad_benchmark")
    parser.add_argument("--categories", nargs="+", default=["brick", "gravel", "elpv"])
    parser.add_argument("--hosts", nargs="+", default=["patchcore", "padim", "cflow"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=5)
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1, help="images per refine_batch call")
    parser.add_argument("--ablation-hosts", nargs="+", default=["patchcore"])
    parser.add_argument("--cflow-epochs", type=int, default=8)
    parser.add_argument("--cflow-lr", type=float, default=1e-4, help="anomalib Cflow default")
    parser.add_argument("--full-image-images", type=int, default=2, help="images timed ROI-local vs full image")
    parser.add_argument("--timing-image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--output", default="benchmarks/results/f2pad")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    omp_wait = os.environ.get("OMP_WAIT_POLICY", "")
    if args.threads > 1 and omp_wait.upper() != "PASSIVE":
        print("warning: --threads > 1 without OMP_WAIT_POLICY=PASSIVE: spin-waiting threads collapse on a shared CPU")

    build_default_benchmark(
        args.root,
        categories=args.categories,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=1,
        n_test_defect=args.n_test,
        defects=("cut_paste_color",),
        seed=0,
    )
    variants = {
        "F2PAD": {},
        "init only": {"max_iters": 0},
        "w/o pixel prior": {"alpha1": 0.0, "alpha2": 0.0},
        "w/o sparsity": {"beta0": 0.0},
        "plain Adan": {"gradient_sharing": False, "adaptive_step": False},
    }
    rows: list[dict] = []
    per_category: list[dict] = []
    timing: list[dict] = []
    load_start = os.getloadavg()
    started = time.perf_counter()
    for host_name in args.hosts:
        per_variant: dict[str, dict[str, list]] = {}
        host_pred, host_gt = [], []
        for category in args.categories:
            folder = Path(args.root) / category
            train = load_images(folder / "train" / "good")
            images = load_images(folder / "test" / "cut_paste_color")
            gt = load_masks(folder / "ground_truth" / "cut_paste_color")
            model = fit_host(host_name, train, args.cflow_epochs, args.cflow_lr)
            maps = host_maps(model, images)
            _, threshold = best_threshold_dice(maps, gt)
            host_pred.append(maps > threshold)
            host_gt.append(gt)
            host_cat = scores(maps > threshold, gt)
            names = list(variants) if host_name in args.ablation_hosts else ["F2PAD"]
            for name in names:
                refiner = fitted_refiner(train, threshold, **{"max_iters": args.max_iters, **variants[name]})
                load = os.getloadavg()[0]
                refined, stats = run_refiner(refiner, model, images, maps, args.batch_size)
                pred = refiner.binarise(refined)
                entry = per_variant.setdefault(name, {"pred": [], "maps": [], "gt": [], "stats": []})
                entry["pred"].append(pred)
                entry["maps"].append(refined)
                entry["gt"].append(gt)
                entry["stats"].append(stats)
                cat_scores = scores(pred, gt)
                per_category.append(
                    {"host": host_name, "category": category, "method": name, "host_dice": host_cat["dice"],
                     **cat_scores, **stats, "load1": load},
                )  # fmt: skip
                print(
                    f"{host_name:9s} {category:6s} {name:15s} Dice {host_cat['dice']:5.1f} -> {cat_scores['dice']:5.1f}"
                    f"  {stats['sec']:5.2f} s/img wall {stats['cpu_sec']:5.2f} CPU {stats['iterations']:5.1f} it"
                    f"  load {load:.2f}",
                    flush=True,
                )
        host_scores = scores(torch.cat(host_pred), torch.cat(host_gt))
        rows.append({"host": host_name, "method": "host (best thr.)", **host_scores})
        for name, entry in per_variant.items():
            gt_all = torch.cat(entry["gt"])
            best, _ = best_threshold_dice(torch.cat(entry["maps"]), gt_all)
            refined_scores = scores(torch.cat(entry["pred"]), gt_all)
            weights = np.array([len(g) for g in entry["gt"]], dtype=float)
            mean = {k: float(np.average([s[k] for s in entry["stats"]], weights=weights)) for k in entry["stats"][0]}
            rows.append(
                {
                    "host": host_name,
                    "method": name,
                    **refined_scores,
                    "best_thr_dice": 100 * float(best),
                    "sec_per_image": mean["sec"],
                    "cpu_sec_per_image": mean["cpu_sec"],
                    "iterations": mean["iterations"],
                    "dice_gain": refined_scores["dice"] - host_scores["dice"],
                },
            )
    if args.full_image_images > 0:
        timing = time_roi_local(args)
    total = time.perf_counter() - started
    load_end = os.getloadavg()

    local = [t["sec"] for t in timing if t["roi_local"]]
    full = [t["sec"] for t in timing if not t["roi_local"]]
    speedup = float(np.mean(full) / np.mean(local)) if local and full else None
    lines = [
        f"F2PAD benchmark: {args.categories}, {args.image_size} px, {args.n_test} cut-paste colour defects/category, "
        f"resnet18 (random init), max_iters={args.max_iters}, {args.threads} thread(s), "
        f"OMP_WAIT_POLICY={omp_wait or 'unset'}; total {total:.0f} s; load average (1/5/15 min) "
        f"{' '.join(f'{v:.2f}' for v in load_start)} at start, {' '.join(f'{v:.2f}' for v in load_end)} at end",
        "",
        "| host | method | Dice | IoU | Dice gain | Dice (best thr.) | s/image wall | s/image CPU | iterations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r['dice_gain']:+.1f}" if "dice_gain" in r else "",
            f"{r['best_thr_dice']:.1f}" if "best_thr_dice" in r else "",
            f"{r['sec_per_image']:.2f}" if "sec_per_image" in r else "",
            f"{r['cpu_sec_per_image']:.2f}" if "cpu_sec_per_image" in r else "",
            f"{r['iterations']:.0f}" if "iterations" in r else "",
        ]
        lines.append(f"| {r['host']} | {r['method']} | {r['dice']:.1f} | {r['iou']:.1f} | {' | '.join(cells)} |")
    lines += ["", "Per category (F2PAD, Dice host -> refined):", ""]
    lines += ["| host | category | host Dice | F2PAD Dice | F2PAD IoU | s/image wall | s/image CPU | iterations |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in per_category:
        if r["method"] == "F2PAD":
            lines.append(
                f"| {r['host']} | {r['category']} | {r['host_dice']:.1f} | {r['dice']:.1f} | {r['iou']:.1f} | "
                f"{r['sec']:.2f} | {r['cpu_sec']:.2f} | {r['iterations']:.0f} |"
            )
    if speedup is not None:
        lines += [
            "",
            f"ROI-local vs full image ({args.hosts[0]}, {args.timing_image_size} px, {args.full_image_images} images, "
            f"{args.max_iters} iterations each): {np.mean(local):.2f} s vs {np.mean(full):.2f} s per image "
            f"-> speed-up x{speedup:.1f} (Dice {timing[0]['dice']:.1f} vs {timing[1]['dice']:.1f})",
        ]
    table = "\n".join(lines)
    print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    payload = {
        "args": vars(args),
        "omp_wait_policy": omp_wait,
        "load_average_start": list(load_start),
        "load_average_end": list(load_end),
        "rows": rows,
        "per_category": per_category,
        "timing": timing,
        "speedup": speedup,
        "total_seconds": total,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
