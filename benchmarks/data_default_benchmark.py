"""Time of building the embedded default benchmark and of anomalib Padim (resnet18, random weights) on it.

Usage: python benchmarks/data_default_benchmark.py [--image-size 128] [--root /tmp/pixelrefine_bench]
Writes benchmarks/results/data_default_benchmark.json.
"""

import argparse
import json
import resource
import time
from pathlib import Path

from anomalib.engine import Engine
from anomalib.models import Padim
from lightning.pytorch import seed_everything

from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--root", default="/tmp/pixelrefine_bench")
    args = parser.parse_args()
    start = time.perf_counter()
    paths = build_default_benchmark(args.root, image_size=args.image_size, force=True)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    build_default_benchmark(args.root, image_size=args.image_size)
    cached_seconds = time.perf_counter() - start
    results = {"image_size": args.image_size, "build_seconds": build_seconds, "cached_seconds": cached_seconds}
    for category, path in paths.items():
        seed_everything(0)
        model = Padim(backbone="resnet18", pre_trained=False, visualizer=False)
        engine = Engine(
            accelerator="cpu",
            devices=1,
            default_root_dir=Path(args.root) / "_results",
            logger=False,
            enable_progress_bar=False,
        )
        start = time.perf_counter()
        metrics = engine.train(model=model, datamodule=default_datamodule(path, seed=0))
        results[category] = {
            "train_test_seconds": time.perf_counter() - start,
            **{key: float(value) for key, value in metrics[0].items()},
        }
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(__file__).parent / "results" / "data_default_benchmark.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
