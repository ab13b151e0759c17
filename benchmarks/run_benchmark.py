"""Thin wrapper of ``pixelrefine benchmark`` (same pipeline, same outputs).

Usage:
    python benchmarks/run_benchmark.py --quick
    python benchmarks/run_benchmark.py --config benchmarks/configs/full.yaml [--output_dir DIR]
    python benchmarks/run_benchmark.py --config realistic            # pretrained models on the realistic data
    python benchmarks/run_benchmark.py --config realistic_refiners   # PaDiM/PatchCore alone, + F2PAD, + PAEDID
    python benchmarks/run_benchmark.py --config realistic --resume   # finish an interrupted run
    python benchmarks/run_benchmark.py --config realistic --report-only [EXTRA_DIR ...]  # tables of a partial run
    python benchmarks/run_benchmark.py --write-configs   # regenerate benchmarks/configs/<profile>.yaml

Writes results.{csv,json,md}, per_image.csv, plots/*.png and qualitative/*.png into the configuration's
``output_dir`` (``benchmarks/results/quick`` for the quick profile) and prints the Markdown table.
"""

import argparse
from pathlib import Path

import yaml

from anomalib_pixelrefine.benchmark import run_benchmark
from anomalib_pixelrefine.benchmark.config import PROFILES

CONFIG_DIR = Path(__file__).parent / "configs"
HEADERS = {
    "quick": """# Quick profile of the benchmark suite: same content as anomalib_pixelrefine.benchmark.QUICK_PROFILE,
# which `pixelrefine benchmark --quick` uses (regenerate: `python benchmarks/run_benchmark.py --write-configs`).
# Target: <= 15 min on 2 CPU cores.   Run: pixelrefine benchmark --config benchmarks/configs/quick.yaml
# Format: anomalib's benchmark format (accelerator + benchmark.{seed,model,data} with `grid` lists) plus
# post_processor, engine, image_size, isolation, output_dir; see anomalib_pixelrefine/benchmark/config.py.
# Pretrained tf_efficientnet_lite0/1 (offline ImageNet weights: `pixelrefine weights`); thresholds calibrated on
# synthetic defects painted on held-back training images.
# isolation: none = all jobs in one process (no start-up cost per job); peak_rss_mb is still per job (VmHWM reset).
""",
    "full": """# Full profile of the benchmark suite: the same content as anomalib_pixelrefine.benchmark.FULL_PROFILE
# (regenerate with `python benchmarks/run_benchmark.py --write-configs`).
# Run: pixelrefine benchmark --config benchmarks/configs/full.yaml   (or: --config full)
# Every job runs in a fresh process (isolation: process), so peak_rss_mb is that job's own peak.
# pre_trained: false because the benchmark machine cannot download weights; set it to true for meaningful numbers.
# With your own data, replace `data` by any anomalib datamodule, e.g.
#   data: {class_path: MVTecAD, init_args: {root: ./datasets/MVTecAD, category: {grid: [bottle, carpet]}}}
# (also Visa, BTech, MVTecLOCO, Folder). With accelerator: cuda, one job per GPU runs in parallel.
""",
    "realistic": """# Realistic profile: anomalib_pixelrefine.benchmark.config.REALISTIC_PROFILE (regenerate with
# `python benchmarks/run_benchmark.py --write-configs`). Run: pixelrefine benchmark --config realistic
# Pretrained tf_efficientnet_lite0/1 (offline: `pixelrefine weights`), every defect kind and size on every background,
# thresholds calibrated on synthetic defects painted on held-back training images (calibration `synthetic`) and, for
# PaDiM/PatchCore, on the test masks themselves (`same_as_test` -> `oracle_test`, an upper bound), real ELPV defects.
""",
    "realistic_refiners": """# Realistic refiner profile: REALISTIC_REFINERS_PROFILE of ...benchmark.config
# (regenerate with `python benchmarks/run_benchmark.py --write-configs`).
# Run: pixelrefine benchmark --config realistic_refiners
# PaDiM and PatchCore (pretrained tf_efficientnet_lite0) alone, with F2PAD and with PAEDID, same data as `realistic`.
""",
}


def write_configs() -> None:
    for name, profile in PROFILES.items():
        path = CONFIG_DIR / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = HEADERS.get(
            name, f"# Profile {name} of anomalib_pixelrefine/benchmark/config.py (regenerate: --write-configs).\n"
        )
        path.write_text(header + yaml.safe_dump(profile, sort_keys=False, default_flow_style=False))
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help=f"YAML file or profile name ({', '.join(PROFILES)})")
    parser.add_argument("--quick", action="store_true", help="quick profile (<= 15 min on 2 CPU cores)")
    parser.add_argument("--output_dir", default=None, help="override the output folder")
    parser.add_argument("--write-configs", action="store_true", help="regenerate benchmarks/configs/*.yaml")
    parser.add_argument("--resume", action="store_true", help="skip the jobs of <output_dir>/rows.partial.jsonl")
    parser.add_argument(
        "--report-only",
        nargs="*",
        metavar="EXTRA_DIR",
        default=None,
        help="write the tables from <output_dir>/rows.partial.jsonl (plus those of EXTRA_DIRs) without running jobs",
    )
    args = parser.parse_args()
    if args.write_configs:
        write_configs()
        return
    if args.report_only is not None:
        from anomalib_pixelrefine.benchmark import load_config
        from anomalib_pixelrefine.benchmark.pipeline import report_partial

        output_dir = args.output_dir or load_config(args.config, quick=args.quick)["output_dir"]
        report_partial(output_dir, args.report_only)
        return
    config = args.config
    if args.resume:
        from anomalib_pixelrefine.benchmark import load_config

        config = {**load_config(config, quick=args.quick), "resume": True}
    run_benchmark(config, quick=args.quick and not args.resume, output_dir=args.output_dir)


if __name__ == "__main__":
    main()
