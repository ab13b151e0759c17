"""How much do PatchCore-style metrics move with the coreset draw alone? (context for the PNI >= PatchCore check)

For each category and data seed the same training images, test images and backbone (resnet18, random weights,
``pre_trained=False``) are used; only the coreset draw changes:

* anomalib's PatchCore, refitted ``--draws`` times with ``seed_everything(1000 + draw)`` before ``fit`` (its
  ``KCenterGreedy`` draws the random projection and the start point from the global RNG);
* the PNI baseline without N/P/R (plain nearest neighbour on the embedding coreset of
  ``anomalib_pixelrefine.models.components.greedy_coreset``), with coreset seeds ``1000 + draw``, once with the default
  128-d random projection and once without projection.

Both models share the resolution (128 px), layers 2+3 and the coreset ratio (0.1) of ``pni_benchmark.py``; no
refinement and no MLP are trained, so this runs in minutes. The report gives, per category, the mean over seeds and
draws, the within-seed standard deviation over draws (the noise of one comparison) and the PNI-baseline minus
PatchCore difference of the means.

Usage:
    python benchmarks/pni_coreset_noise.py [--categories brick grass gravel elpv] [--seeds 0 1 2] [--draws 4]

Writes benchmarks/results/pni_coreset_noise.{json,md}.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from anomalib_pixelrefine.data.folder import DEFAULT_CATEGORIES

KEYS = ("image_AUROC", "pixel_AUROC", "AUPRO", "best_Dice")


def run_category(category: str, seed: int, draws: int, root: Path) -> list[dict]:
    """All draws of both models on one category and data seed."""
    import torch
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from lightning.pytorch import seed_everything

    from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule
    from anomalib_pixelrefine.models.image.pni import Pni

    sys.path.insert(0, str(Path(__file__).parent))
    from pni_benchmark import evaluate

    paths = build_default_benchmark(
        root / f"seed{seed}", categories=[category], image_size=128, n_test_good=40, n_test_defect=10, seed=seed
    )
    seed_everything(seed)
    datamodule = default_datamodule(paths[category], train_batch_size=8, eval_batch_size=8, seed=seed)
    datamodule.setup()
    size = (128, 128)
    rows = []

    def record(model: str, draw: int, predict) -> None:
        metrics = evaluate(predict, datamodule)
        rows.append({"category": category, "seed": seed, "draw": draw, "model": model, **{k: metrics[k] for k in KEYS}})
        print(json.dumps(rows[-1]), flush=True)

    for draw in range(draws):
        seed_everything(seed)  # same backbone weights as the PNI model below
        patchcore = Patchcore(
            backbone="resnet18",
            pre_trained=False,
            coreset_sampling_ratio=0.1,
            pre_processor=Patchcore.configure_pre_processor(image_size=size),
            visualizer=False,
        )
        seed_everything(1000 + draw)  # the coreset draw
        Engine(
            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=root / "_noise"
        ).fit(model=patchcore, datamodule=datamodule)
        patchcore.eval()
        record("patchcore (anomalib)", draw, lambda image, m=patchcore: m.model(m.pre_processor.transform(image)))

    seed_everything(seed)
    pni = Pni(
        backbone="resnet18",
        pre_trained=False,
        coreset_ratio=0.1,
        distribution_size=256,
        window=5,
        use_neighbourhood=False,
        use_position=False,
        refine=False,
        pre_processor=Pni.configure_pre_processor(size),
        visualizer=False,
    )
    scorer = pni.model.scorers[0]
    with torch.no_grad():
        features = torch.cat(
            [
                scorer.extract(pni.model.normalise_image(pni.pre_processor.transform(batch.image)))
                for batch in datamodule.train_dataloader()
            ]
        )
    for name, projection in (("pni baseline, 128-d projection", 128), ("pni baseline, no projection", None)):
        for draw in range(draws):
            scorer.projection_dim = projection if projection is not None else features.shape[1]
            scorer.seed = 1000 + draw
            scorer.fit_memory(features)
            record(name, draw, lambda image: pni.model(pni.pre_processor.transform(image)))
    return rows


def to_markdown(settings: dict, rows: list[dict]) -> str:
    """Mean, within-seed draw standard deviation and the difference to PatchCore per category."""
    lines = [f"Settings: {json.dumps(settings)}", ""]
    lines += [
        "Mean over seeds and draws; in brackets the standard deviation over coreset draws (within a seed, pooled).",
        "",
        "| category | model | " + " | ".join(KEYS) + " |",
        "|" + "---|" * (len(KEYS) + 2),
    ]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    diffs = []
    for category in categories:
        means = {}
        for model in models:
            runs = [r for r in rows if r["category"] == category and r["model"] == model]
            cells = []
            for key in KEYS:
                by_seed = {}
                for r in runs:
                    by_seed.setdefault(r["seed"], []).append(r[key])
                pooled = statistics.mean(statistics.pvariance(v) for v in by_seed.values()) ** 0.5
                means[model, key] = statistics.mean(r[key] for r in runs)
                cells.append(f"{means[model, key]:.4f} ({pooled:.4f})")
            lines.append(f"| {category} | {model} | " + " | ".join(cells) + " |")
        for model in models[1:]:
            delta = [means[model, k] - means[models[0], k] for k in KEYS]
            diffs.append(f"| {category} | {model} | " + " | ".join(f"{d:+.4f}" for d in delta) + " |")
    lines += ["", f"Difference of the means to {models[0]}:", "", "| category | model | " + " | ".join(KEYS) + " |"]
    lines += ["|" + "---|" * (len(KEYS) + 2), *diffs]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/pni_benchmark_data", help="data folder (same layout as pni_benchmark)")
    parser.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pni_coreset_noise"))
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be >= 2 (a standard deviation over draws is reported)")

    import torch

    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in {"out", "root"}}
    settings["command"] = " ".join(["python", *sys.argv])
    start = time.perf_counter()
    rows = [
        row
        for category in args.categories
        for seed in args.seeds
        for row in run_category(category, seed, args.draws, Path(args.root))
    ]
    settings["total_minutes"] = (time.perf_counter() - start) / 60
    settings["load_average_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
    out.with_suffix(".md").write_text(to_markdown(settings, rows))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
