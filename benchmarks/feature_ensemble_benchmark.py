"""FeatureEnsemble (global / individual block) vs each single member vs the output-level ensemble.

Runs on the embedded default benchmark (``build_default_benchmark``), random backbone weights (``pre_trained=False``,
no downloads). Each (config, category) runs in its own subprocess so that peak RSS is per run.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/feature_ensemble_benchmark.py [--image-size 64] [--epochs 8]
        [--categories gravel elpv] [--configs ...] [--noise-std 0.1] [--hidden 256] [--lr 3e-3] [--steps 20]

Writes benchmarks/results/feature_ensemble.{json,md}.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# strides 4+8 (resnet18) and 4+8 (efficientnet_b0): a 16x16 grid at 64 px
MEMBERS = {
    "resnet18": {"backbone": "resnet18", "layers": ["layer1", "layer2"], "pre_trained": False},
    "efficientnet_b0": {"backbone": "efficientnet_b0", "layers": ["blocks.1", "blocks.2"], "pre_trained": False},
}
CONFIGS = {
    "single_resnet18": {"members": ["resnet18"], "mode": "feature", "block": "global"},
    "single_efficientnet_b0": {"members": ["efficientnet_b0"], "mode": "feature", "block": "global"},
    "ensemble_global": {"members": ["resnet18", "efficientnet_b0"], "mode": "feature", "block": "global"},
    "ensemble_individual": {"members": ["resnet18", "efficientnet_b0"], "mode": "feature", "block": "individual"},
    "output_ensemble": {"members": ["resnet18", "efficientnet_b0"], "mode": "output", "block": "individual"},
}


def run_one(args: argparse.Namespace) -> dict:
    """Train + test one config on one category in this process."""
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule
    from anomalib_pixelrefine.models.image.feature_ensemble import FeatureEnsemble

    paths = build_default_benchmark(args.root, image_size=args.image_size)
    config = CONFIGS[args.config]
    seed_everything(args.seed)
    model = FeatureEnsemble(
        members=[MEMBERS[m] for m in config["members"]],
        mode=config["mode"],
        block=config["block"],
        n_components=args.n_components,
        noise_std=args.noise_std,
        hidden=args.hidden,
        lr=args.lr,
        steps_per_batch=args.steps,
        pre_processor=FeatureEnsemble.configure_pre_processor((args.image_size, args.image_size)),
        visualizer=False,
    )
    datamodule = default_datamodule(paths[args.category], train_batch_size=8, eval_batch_size=8, seed=0)
    engine = Engine(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        default_root_dir=Path(args.root) / "_fe_results",
        logger=False,
        enable_progress_bar=False,
        check_val_every_n_epoch=args.epochs,  # validate (thresholds, normalisation stats) once, after training
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    # pure model inference time over the test set
    model.eval()
    count, infer_seconds = 0, 0.0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            images = model.pre_processor.transform(batch.image)
            start = time.perf_counter()
            model.model(images)
            infer_seconds += time.perf_counter() - start
            count += images.shape[0]
    return {
        "config": args.config,
        "category": args.category,
        "seed": args.seed,
        "head_channels": model.model.head_channels(),
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,  # CPU time of this process: less sensitive to other load than wall time
        "inference_ms_per_image": 1000 * infer_seconds / max(count, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{k: float(v) for k, v in metrics.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/pixelrefine_bench_fe")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-components", type=float, default=0.95)
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="model seeds (data fixed); rows averaged")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "feature_ensemble"))
    parser.add_argument("--merge", nargs="+", help="merge result JSON files of parallel runs into --out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n_components >= 1:
        args.n_components = int(args.n_components)
    if args.worker:
        print("RESULT " + json.dumps(run_one(args)))
        return
    if args.merge:
        # combine the JSON of runs made in parallel processes (e.g. one per category) into one table
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = [r for part in parts for r in part["runs"]]
        categories = list(dict.fromkeys(r["category"] for r in rows))
        settings = {**parts[0]["settings"], "total_minutes": max(p["settings"]["total_minutes"] for p in parts)}
        settings["parallel_processes"] = len(parts)
        settings["seeds"] = sorted({r.get("seed", 0) for r in rows})
        settings["categories"] = categories
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
        out.with_suffix(".md").write_text(to_markdown(settings, rows, categories, args.configs))
        print(out.with_suffix(".md").read_text())
        return

    from anomalib_pixelrefine.data import build_default_benchmark

    paths = build_default_benchmark(args.root, image_size=args.image_size)
    # default: two textures + ELPV solar cells when available
    categories = args.categories or (["gravel", "brick", "elpv"] if "elpv" in paths else ["gravel", "brick"])
    rows = []
    start = time.perf_counter()
    for category, seed in [(c, s) for c in categories for s in args.seeds]:
        for config in args.configs:
            cmd = [sys.executable, __file__, "--worker", "--config", config, "--category", category]
            cmd += ["--seed", str(seed)]
            cmd += ["--root", args.root, "--image-size", str(args.image_size), "--epochs", str(args.epochs)]
            cmd += ["--n-components", str(args.n_components), "--noise-std", str(args.noise_std)]
            cmd += ["--hidden", str(args.hidden), "--lr", str(args.lr), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(proc.stderr[-3000:], file=sys.stderr)
                msg = f"run {config}/{category}/seed {seed} failed"
                raise RuntimeError(msg)
            row = json.loads(lines[-1][len("RESULT ") :])
            print(json.dumps(row), flush=True)
            rows.append(row)
            write_results(args, rows, categories, start)  # after every run: partial results survive a cut-off
    print(Path(args.out).with_suffix(".md").read_text())


def write_results(args: argparse.Namespace, rows: list[dict], categories: list[str], start: float) -> None:
    """Write the JSON and Markdown results of the runs so far."""
    keys = ("image_size", "epochs", "n_components", "noise_std", "hidden", "lr", "steps", "seeds")
    settings = {k: getattr(args, k) for k in keys}
    settings["total_minutes"] = round((time.perf_counter() - start) / 60, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
    configs = [c for c in args.configs if any(r["config"] == c for r in rows)]
    out.with_suffix(".md").write_text(to_markdown(settings, rows, categories, configs))


def to_markdown(settings: dict, rows: list[dict], categories: list[str], configs: list[str]) -> str:
    """Per-category table (mean over seeds) plus the mean over categories."""
    lines = [f"Settings: {settings}", ""]
    header = "| config | " + " | ".join(f"{c} img/pix AUROC" for c in categories)
    header += " | mean image AUROC | mean pixel AUROC | fit s (wall) | fit s (CPU) | infer ms/img | peak RSS MB |"
    lines += [header, "|" + "---|" * (len(categories) + 7)]
    for config in configs:
        runs = {}
        for c in categories:
            group = [r for r in rows if r["config"] == config and r["category"] == c]
            if group:
                runs[c] = {k: sum(r[k] for r in group) / len(group) for k in group[0] if isinstance(group[0][k], float)}
        cells = [f"{runs[c]['image_AUROC']:.3f} / {runs[c]['pixel_AUROC']:.3f}" for c in categories if c in runs]
        values = list(runs.values())

        def mean(key: str, values: list[dict] = values) -> float:
            return sum(v[key] for v in values) / len(values)

        lines.append(
            f"| {config} | "
            + " | ".join(cells)
            + f" | {mean('image_AUROC'):.3f} | {mean('pixel_AUROC'):.3f} | {mean('fit_seconds'):.1f}"
            + f" | {mean('fit_cpu_seconds'):.1f}"
            + f" | {mean('inference_ms_per_image'):.1f} | {max(v['peak_rss_mb'] for v in values):.0f} |",
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
