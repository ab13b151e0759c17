"""F2PAD benchmark: Dice/IoU of feature-based hosts before/after F2PAD refinement, ablations and timings.

F2PAD-style data (paper IV-A1): random-colour cut-paste defects with exact masks on real textures
(``build_default_benchmark(..., defects=("cut_paste_color",))``). Hosts are anomalib's PatchCore and PaDiM torch
models (resnet18; ``pre_trained=False`` because the box is offline — the paper uses ImageNet weights, so absolute
numbers differ). Hosts are fitted directly (no Lightning) and the refiner is called through ``refine_batch`` exactly
as in ``on_test_batch_end``; ``m0`` uses the host's F1-optimal pixel threshold on the test set (as in the paper).

Metrics: pooled Dice/IoU over the test defects (x100) of the binary masks; the host's mask uses its best threshold
(oracle, favours the host), F2PAD's mask its fixed ``mask_threshold`` (no calibration) and, for reference, the best
threshold of the refined map. Ablations (paper table III): initialisation only, w/o pixel prior, w/o sparsity,
plain Adan (no gradient sharing, no adaptive step). Timing: seconds/image and iterations; ROI-local vs full image.

Example:
    python benchmarks/f2pad_benchmark.py --image-size 128 --categories brick gravel
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
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


def fit_host(name: str, train: torch.Tensor) -> torch.nn.Module:
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
    else:
        raise ValueError(name)
    return model.eval()


def host_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model((chunk - MEAN) / STD).anomaly_map for chunk in images.split(8)])


def scores(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    return {"dice": 100 * float(dice_score(pred, gt)), "iou": 100 * float(iou_score(pred, gt))}


def run_refiner(refiner: F2PAD, model, images, maps, batch_size: int) -> tuple[torch.Tensor, float, float]:
    refined, seconds, iterations = [], 0.0, []
    for start in range(0, len(images), batch_size):
        x = (images[start : start + batch_size] - MEAN) / STD
        begin = time.perf_counter()
        refined.append(refiner.refine_batch(x, maps[start : start + batch_size], model))
        seconds += time.perf_counter() - begin
        iterations.append(refiner.last_info["iterations"].float())
    return torch.cat(refined), seconds / len(images), float(torch.cat(iterations).mean())


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
    model = fit_host(args.hosts[0], train)
    maps = host_maps(model, images)
    _, threshold = best_threshold_dice(maps, gt)
    timing = []
    for roi_local in (True, False):
        # check_every > max_iters: no early stop, both modes run exactly max_iters iterations.
        refiner = F2PAD(max_iters=args.max_iters, roi_local=roi_local, check_every=args.max_iters + 1)
        refiner.pixel_mean.copy_(MEAN.flatten())
        refiner.pixel_std.copy_(STD.flatten())
        refiner.fit_prior(train)
        refiner.prior_fitted.fill_(True)
        refiner.host_pixel_threshold.fill_(float(threshold))
        refined, sec, its = run_refiner(refiner, model, images, maps, 1)
        dice = 100 * float(dice_score(refiner.binarise(refined), gt))
        timing.append({"host": args.hosts[0], "roi_local": roi_local, "sec": sec, "iterations": its, "dice": dice})
        print(f"timing {args.timing_image_size} px roi_local={roi_local}: {sec:.2f} s/img, dice {dice:.1f}", flush=True)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="./datasets/f2pad_benchmark")
    parser.add_argument("--categories", nargs="+", default=["brick", "gravel"])
    parser.add_argument("--hosts", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=6)
    parser.add_argument("--max-iters", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--ablation-hosts", nargs="+", default=["patchcore"])
    parser.add_argument("--full-image-images", type=int, default=2, help="images timed ROI-local vs full image")
    parser.add_argument("--timing-image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared box)")
    parser.add_argument("--output", default="benchmarks/results/f2pad")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    build_default_benchmark(
        args.root,
        categories=args.categories,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=1,
        n_test_defect=args.n_test,
        defects=("cut_paste_color",),
        seed=0,
        include_elpv=False,
    )
    variants = {
        "F2PAD": {},
        "init only": {"max_iters": 0},
        "w/o pixel prior": {"alpha1": 0.0, "alpha2": 0.0},
        "w/o sparsity": {"beta0": 0.0},
        "plain Adan": {"gradient_sharing": False, "adaptive_step": False},
    }
    rows: list[dict] = []
    timing: list[dict] = []
    started = time.perf_counter()
    for host_name in args.hosts:
        per_variant: dict[str, dict[str, list]] = {}
        host_pred, host_gt = [], []
        for category in args.categories:
            folder = Path(args.root) / category
            train = load_images(folder / "train" / "good")
            images = load_images(folder / "test" / "cut_paste_color")
            gt = load_masks(folder / "ground_truth" / "cut_paste_color")
            model = fit_host(host_name, train)
            maps = host_maps(model, images)
            _, threshold = best_threshold_dice(maps, gt)
            host_pred.append(maps > threshold)
            host_gt.append(gt)
            names = list(variants) if host_name in args.ablation_hosts else ["F2PAD"]
            for name in names:
                refiner = F2PAD(**{"max_iters": args.max_iters, **variants[name]})
                refiner.pixel_mean.copy_(MEAN.flatten())
                refiner.pixel_std.copy_(STD.flatten())
                refiner.fit_prior(train)
                refiner.prior_fitted.fill_(True)
                refiner.host_pixel_threshold.fill_(float(threshold))
                refined, sec, its = run_refiner(refiner, model, images, maps, args.batch_size)
                entry = per_variant.setdefault(name, {"pred": [], "maps": [], "gt": [], "sec": [], "its": []})
                entry["pred"].append(refiner.binarise(refined))
                entry["maps"].append(refined)
                entry["gt"].append(gt)
                entry["sec"].append(sec)
                entry["its"].append(its)
                print(f"{host_name:9s} {category:7s} {name:16s} {sec:6.2f} s/img {its:6.1f} it", flush=True)
        host_scores = scores(torch.cat(host_pred), torch.cat(host_gt))
        rows.append({"host": host_name, "method": "host (best thr.)", **host_scores, "sec_per_image": None})
        for name, entry in per_variant.items():
            gt_all = torch.cat(entry["gt"])
            best, _ = best_threshold_dice(torch.cat(entry["maps"]), gt_all)
            rows.append(
                {
                    "host": host_name,
                    "method": name,
                    **scores(torch.cat(entry["pred"]), gt_all),
                    "best_thr_dice": 100 * float(best),
                    "sec_per_image": float(np.mean(entry["sec"])),
                    "iterations": float(np.mean(entry["its"])),
                },
            )
    if args.full_image_images > 0:
        timing = time_roi_local(args)
    total = time.perf_counter() - started

    local = [t["sec"] for t in timing if t["roi_local"]]
    full = [t["sec"] for t in timing if not t["roi_local"]]
    speedup = float(np.mean(full) / np.mean(local)) if local and full else None
    lines = [
        f"F2PAD benchmark: {args.categories}, {args.image_size} px, {args.n_test} cut-paste colour defects/category, "
        f"resnet18 (random init), max_iters={args.max_iters}, {args.threads} thread(s); total {total:.0f} s",
        "",
        "| host | method | Dice | IoU | Dice (best thr.) | s/image | iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sec = "" if r["sec_per_image"] is None else f"{r['sec_per_image']:.2f}"
        its = f"{r['iterations']:.0f}" if "iterations" in r else ""
        best = f"{r['best_thr_dice']:.1f}" if "best_thr_dice" in r else ""
        lines.append(f"| {r['host']} | {r['method']} | {r['dice']:.1f} | {r['iou']:.1f} | {best} | {sec} | {its} |")
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
    payload = {"args": vars(args), "rows": rows, "timing": timing, "speedup": speedup, "total_seconds": total}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
